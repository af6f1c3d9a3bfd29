"""ANYBODY_FACE_RECOGNIZER: a face-recognition network as a function ``[B,3,112,112] RGB in [-1,1] -> unit [B,512]``.

Two kinds: an insightface ``arcface_torch`` IResNet ``.pth`` run in torch (the recognizer Celeb Basis and
MagiCapture were trained with: glint360k CosFace r100), or the ArcFace ONNX recognizer of a loaded face model
pack. The input crop is the caller's business: each method warps faces the way its paper did.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInputError, ModelFileError
from .models import FaceModels


@dataclass
class FaceRecognizer:
    name: str
    embed_fn: Callable[[torch.Tensor], torch.Tensor]
    source: str  # "torch" or "onnx": shown in logs and recorded in metadata
    module: torch.nn.Module | None = None  # the torch network, so a trainer can move it to its device and back

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() != 4 or faces.shape[1:] != (3, 112, 112):
            raise BadInputError(f"A face recognizer takes [B, 3, 112, 112] crops, got {tuple(faces.shape)}.")
        with torch.no_grad():
            return F.normalize(self.embed_fn(faces).float().cpu(), dim=-1)

    def embed_with_gradient(self, faces: torch.Tensor) -> torch.Tensor:
        """Unit embeddings with the gradient flowing back to ``faces`` (the network stays frozen): the identity loss
        of a training run. Only the torch recognizer can; an ONNX one is an error that says what to load."""
        if self.module is None:
            raise BadInputError(f"The identity loss needs a torch face recognizer (an insightface arcface_torch "
                                f".pth, via FaceRecognizerLoader); {self.name} is an ONNX model without gradients.")
        if faces.dim() != 4 or faces.shape[1:] != (3, 112, 112):
            raise BadInputError(f"A face recognizer takes [B, 3, 112, 112] crops, got {tuple(faces.shape)}.")
        return F.normalize(self.embed_fn(faces).float(), dim=-1)

    def for_training(self, device: str | torch.device) -> "FaceRecognizer":
        """A copy whose weights are normal tensors on ``device``: a network loaded under a host's inference mode
        (any ComfyUI loader node) cannot be part of a backward pass, even frozen."""
        if self.module is None:
            return self
        import copy

        with torch.inference_mode(False):
            module = copy.deepcopy(self.module).to(device).requires_grad_(False).eval()
        dtype = next(module.parameters()).dtype
        return FaceRecognizer(self.name, lambda faces: module(faces.to(device=device, dtype=dtype)), self.source, module)

    def describe(self) -> str:
        return f"{self.name} ({self.source})"


def torch_recognizer(path: str | Path, device: str | torch.device = "cpu") -> FaceRecognizer:
    """An IResNet recognizer from an insightface ``backbone.pth``; wrong or damaged files are errors naming them."""
    from ..nets.iresnet import load_iresnet

    net = load_iresnet(path)
    if net.fc.out_features != 512:
        raise ModelFileError(f"{Path(path).name} gives {net.fc.out_features}-d features; Anybody's methods need the "
                             "512-d ones of insightface's arcface_torch models.")
    net = net.to(device)
    dtype = next(net.parameters()).dtype

    def embed(faces: torch.Tensor) -> torch.Tensor:
        return net(faces.to(device=next(net.parameters()).device, dtype=dtype))

    return FaceRecognizer(Path(path).name, embed, "torch", net)


def pack_recognizer(models: FaceModels) -> FaceRecognizer:
    """The face model's recognizer behind this interface: its torch ``embedder`` when it has one, else the pack's
    ArcFace ONNX recognizer."""
    if models.embedder is not None:
        return models.embedder
    if models.recognizer is None:
        raise BadInputError(f"The face model pack {models.name} has no recognizer (glintr100.onnx / w600k_r50.onnx); "
                            "connect a FaceRecognizerLoader, or use antelopev2 or buffalo_l.")
    onnx = models.recognizer
    size = tuple(onnx.input_size)

    def embed(faces: torch.Tensor) -> torch.Tensor:
        rgb = ((faces.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        crops = [np.ascontiguousarray(c[..., ::-1]) for c in rgb]  # insightface takes BGR and swaps to RGB
        if crops[0].shape[1::-1] != size:
            import cv2

            crops = [cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in crops]
        return torch.from_numpy(np.asarray(onnx.get_feat(crops), dtype=np.float32).reshape(len(crops), -1))

    return FaceRecognizer(f"{models.name}/{Path(onnx.model_file).name}", embed, "onnx")
