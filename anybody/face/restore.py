"""CodeFormer face restoration, MagiCapture's post-processing step (spec magicapture.md §9).

Each face is aligned to the FFHQ 512 template from its five landmarks, restored by CodeFormer (fidelity ``w``, AdaIN
on), and pasted into the image upscaled bilinearly (the official script's background: no Real-ESRGAN), through a
soft square mask, optionally intersected with a face-parsing mask of the restored crop. The network is
spandrel-extra-arches' CodeFormer (the webui loads CodeFormer the same way); its weights are the user's own
file: S-Lab licence 1.0, non-commercial, so nothing here downloads or bundles them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import BadInputError, ModelFileError
from .align import paste_back, similarity_matrix
from .templates import TEMPLATES

SOURCE = "https://github.com/sczhou/CodeFormer/releases (codeformer.pth; S-Lab License 1.0, non-commercial use only)"
CROP = TEMPLATES["ffhq512"]
#: keys every CodeFormer checkpoint has (the transformer's position table, code predictor, codebook, first conv)
CODEFORMER_KEYS = ("position_emb", "idx_pred_layer.1.weight", "quantize.embedding.weight", "encoder.blocks.0.weight")
#: the parsing classes kept when blending (CelebAMask-HQ: face 1-13 and the necklace slot 15, as the official code)
BLEND_CLASSES = tuple(range(1, 14)) + (15,)


def read_codeformer(path: str | Path) -> dict[str, torch.Tensor]:
    """The CodeFormer state dict of ``path`` (``.pth`` read with ``weights_only=True``, or ``.safetensors``);
    the official file keeps it under ``params_ema``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"CodeFormer weights '{path.name}' not found at {path.parent}. Get codeformer.pth from "
                             f"{SOURCE} and put it there.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path} cannot be read as CodeFormer weights ({type(exc).__name__}: {exc}). Download "
                             f"codeformer.pth again from {SOURCE}.") from exc
    for wrapper in ("params_ema", "params", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    missing = [k for k in CODEFORMER_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ModelFileError(f"{path.name} is not a CodeFormer file (it lacks {', '.join(missing)}). Use "
                             f"codeformer.pth from {SOURCE}; GFPGAN and other restorers are not supported here.")
    return state


def load_codeformer(path: str | Path) -> torch.nn.Module:
    """The CodeFormer network with the file's weights, in eval mode on the CPU."""
    state = read_codeformer(path)
    try:
        from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch
    except ImportError as exc:
        raise ModelFileError(
            "CodeFormer needs the spandrel-extra-arches package, which ComfyUI does not install by itself: run "
            "`pip install spandrel-extra-arches` in ComfyUI's Python (the AUTOMATIC1111 webui ships it) and restart. "
            f"({type(exc).__name__}: {exc})") from exc
    return CodeFormerArch().load(state).model.eval()


def blend_mask(size: int, parsing: Optional[np.ndarray] = None) -> np.ndarray:
    """``[S,S]`` float32 0..1 in crop space: where the restored crop replaces the image.

    A square shrunk by a tenth of the crop and feathered over another tenth (the official paste-back's soft mask
    at 512 px); with ``parsing`` (a 0/1 face-class mask of the restored crop) also limited to the face, blurred
    twice with a 101 px Gaussian (sigma 11) and its 10 px border cleared, as the official code does."""
    import cv2

    edge = max(size // 10, 1)
    square = np.zeros((size, size), np.float32)
    square[edge:-edge, edge:-edge] = 1.0
    square = cv2.GaussianBlur(square, (edge | 1, edge | 1), 0)
    if parsing is None:
        return square
    scale = size / 512
    kernel = max(int(101 * scale), 3) | 1
    face = parsing.astype(np.float32)
    for _ in range(2):
        face = cv2.GaussianBlur(face, (kernel, kernel), 11 * scale)
    border = max(int(round(10 * scale)), 1)
    face[:border], face[-border:], face[:, :border], face[:, -border:] = 0, 0, 0, 0
    return np.minimum(square, face)


@torch.no_grad()
def restore_crop(net: torch.nn.Module, crop: np.ndarray, fidelity: float, device: torch.device | str = "cpu"
                 ) -> np.ndarray:
    """One aligned 512 crop (uint8 RGB) through CodeFormer: float32 0..255. ``fidelity`` is CodeFormer's ``w``:
    0 trusts the codebook (cleaner, less like the input), 1 keeps the input's features."""
    dtype = next(net.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(crop)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    out = net(x.to(dtype), weight=float(fidelity))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return ((out.float().clamp(-1, 1) + 1) * 127.5)[0].permute(1, 2, 0).cpu().numpy()


def restore_faces(image: np.ndarray, landmarks: Sequence[np.ndarray], restore: Callable[[np.ndarray], np.ndarray],
                  upscale: int = 2, parse: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
    """``image`` (uint8 RGB) upscaled bilinearly by ``upscale`` with every face (its 5 landmarks, source pixels)
    restored and pasted back; float32 0..1. ``restore`` maps an aligned uint8 crop to float 0..255; ``parse`` gives
    the restored crop's 0/1 face mask (None: the square mask alone)."""
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadInputError("Face restoration takes RGB images.")
    if int(upscale) < 1:
        raise BadInputError(f"upscale must be 1 or more (got {upscale}).")
    h, w = image.shape[:2]
    out = cv2.resize(image, (w * upscale, h * upscale), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    for points in landmarks:
        to_crop = similarity_matrix(points, CROP)  # the crop is taken from the original, sharper than the upscale
        # mirrored beyond the image's edges: a face near an edge gets plausible surroundings, not a black band that
        # the restorer would treat as part of the picture and the paste-back would blend in
        crop = cv2.warpAffine(image, to_crop, (CROP.size, CROP.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
        restored = restore(crop)
        mask = blend_mask(CROP.size, None if parse is None else parse(np.clip(restored, 0, 255).astype(np.uint8)))
        # upscaled pixel u sits at original (u + 0.5) / upscale - 0.5 (cv2's pixel centres): the same map from there
        from_upscaled = to_crop.copy()
        from_upscaled[:, :2] /= upscale
        from_upscaled[:, 2] += to_crop[:, :2] @ np.full(2, 0.5 / upscale - 0.5)
        out = paste_back(out, restored, from_upscaled, mask)
    return np.clip(out / 255.0, 0.0, 1.0)
