"""DiffusionRig model files: the official ``.pt`` state dicts and our safetensors with what a model needs beside
its weights (stage, the album mean shape a personalised model was trained with, DECA variant, texture basis).

Only the stage-1 (generic FFHQ prior) model was ever released; stage-2 models are what users make with
RigPersonalize. The official stage-2 recipe keeps its mean shape in a separate ``mean_shape.pkl`` (a pickled CUDA
tensor), which :func:`read_mean_shape` reads without the full unpickler; renamed ``<model>.mean_shape.pkl`` and put
beside an official stage-2 ``.pt``, it is picked up with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..files import atomic_write
from .pickles import load_restricted
from .unet import OFFICIAL, DiffusionRig, from_state_dict

RIG_SOURCE = ("the stage-1 model linked from https://github.com/adobe-research/diffusion-rig (Adobe Research "
              "licence, non-commercial research only); put it in ComfyUI/models/diffusionrig/")
SHAPE_SIZE = 100


@dataclass
class RigInfo:
    """What a model file says about itself."""

    stage: int | None = None               # 1 generic, 2 personalised, None unknown (an official .pt says nothing)
    mean_shape: torch.Tensor | None = None  # (1, 100): a stage-2 model's album mean DECA shape
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        stage = {1: "stage 1 (generic prior)", 2: "stage 2 (personalised)"}.get(self.stage, "stage unknown")
        shape = "with its album mean shape" if self.mean_shape is not None else "no mean shape"
        return f"{stage}, {shape}"


def read_model(path: Path, image_size: int = OFFICIAL.image_size) -> tuple[DiffusionRig, RigInfo]:
    """The model and its info from an official ``.pt``/``.pth`` or our ``.safetensors``."""
    if not path.is_file():
        raise ModelFileError(f"DiffusionRig model not found: {path}. Get {RIG_SOURCE}.")
    meta: dict = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path.name} could not be read as a DiffusionRig model ({type(exc).__name__}: "
                             f"{str(exc)[:160]}); it may be truncated. Get {RIG_SOURCE}.") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path.name} is not a plain state dict of tensors. Get {RIG_SOURCE}.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        size = int(meta.get("anybody.image_size", image_size))
        groups = int(meta["anybody.groups"]) if "anybody.groups" in meta else None
        model = from_state_dict(state, image_size=size, groups=groups)
    except ModelFileError as exc:
        raise ModelFileError(f"{path.name}: {exc}. Expected {RIG_SOURCE}.") from None
    info = RigInfo(stage=int(meta["anybody.stage"]) if "anybody.stage" in meta else None)
    if "anybody.mean_shape" in meta:
        info.mean_shape = _shape_tensor(json.loads(meta["anybody.mean_shape"]), path)
    beside = mean_shape_beside(path)
    if info.mean_shape is None and beside.is_file():  # an official stage-2 model with its data script's mean shape
        info.mean_shape, info.stage = read_mean_shape(beside), 2
    info.extra = {k: v for k, v in meta.items() if k.startswith("anybody.")}
    return model, info


def save_model(path: Path, model: DiffusionRig, info: RigInfo, overwrite: bool = False) -> Path:
    """Our format: the official key names in safetensors, plus the info as metadata."""
    from safetensors.torch import save_file

    meta = {**{k: str(v) for k, v in info.extra.items()}, "anybody.image_size": str(model.config.image_size),
            "anybody.groups": str(model.config.groups),
            "anybody.texture_basis": "FLAME", "anybody.deca_variant": "DECA coarse (E_flame), FLAME 2020"}
    if info.stage is not None:
        meta["anybody.stage"] = str(info.stage)
    if info.mean_shape is not None:
        meta["anybody.mean_shape"] = json.dumps([round(float(v), 7) for v in info.mean_shape.reshape(-1)])
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=overwrite)


def mean_shape_beside(path: Path) -> Path:
    """Where an official stage-2 model's ``mean_shape.pkl`` is looked for: ``<model>.mean_shape.pkl`` beside it."""
    return path.with_name(f"{path.stem}.mean_shape.pkl")


def read_mean_shape(path: Path) -> torch.Tensor:
    """An official ``mean_shape.pkl`` (a pickled, possibly CUDA, (1, 100) tensor) as a CPU tensor."""
    value = load_restricted(path, "a DiffusionRig mean shape", "It is written by the official stage-2 data script.")
    if not isinstance(value, torch.Tensor):
        raise ModelFileError(f"{path.name} holds a {type(value).__name__}, not the mean-shape tensor.")
    return _shape_tensor(value, path)


def _shape_tensor(values, path: Path) -> torch.Tensor:
    shape = torch.as_tensor(values, dtype=torch.float32).reshape(1, -1)
    if shape.shape[1] != SHAPE_SIZE or not torch.isfinite(shape).all():
        raise ModelFileError(f"{path.name}: the mean shape has {shape.shape[1]} values, expected {SHAPE_SIZE} finite "
                             "DECA shape coefficients.")
    return shape
