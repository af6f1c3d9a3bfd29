"""DECA's coarse encoder: a 224 x 224 face crop in [0, 1] -> the 236-value code (shape, texture, expression, pose,
camera, light). Only ``E_flame`` of ``deca_model.tar`` is used; DiffusionRig never runs DECA's detail branch."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from ..nets.weights import load_checked
from .assets import DECA_MODEL, require, where
from .codes import CODE_SIZE
from .resnet import resnet50_trunk

CROP_SIZE = 224


class DecaEncoder(nn.Module):
    """``encoder`` (ResNet-50 trunk, 2048-d) -> ``layers`` (2048 -> 1024 -> ReLU -> 236): DECA's key names."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = resnet50_trunk()
        self.layers = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, CODE_SIZE))

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return self.layers(self.encoder(crop))


def load_deca(path: Path) -> DecaEncoder:
    """The encoder from ``deca_model.tar`` (read with ``weights_only=True``; its ``E_flame`` state dict)."""
    try:
        checkpoint = torch.load(str(require(path, DECA_MODEL)), map_location="cpu", weights_only=True)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path.name} could not be read as DECA's model ({type(exc).__name__}: "
                             f"{str(exc)[:160]}); it may be truncated. {where(DECA_MODEL)}") from exc
    state = checkpoint.get("E_flame") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path.name} has no 'E_flame' weights: not DECA's model file. {where(DECA_MODEL)}")
    model = DecaEncoder()
    # BatchNorm's step counters are absent from files saved by older PyTorch; they play no part in eval mode
    state = {**{k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}, **state}
    return load_checked(model, state, path, "DECA's coarse encoder (E_flame)", where(DECA_MODEL))
