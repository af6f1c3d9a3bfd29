"""Reading official weight files safely, and checking they are the network we think they are."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..errors import ModelFileError


def read_state_dict(path: str | Path, what: str, source: str) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from ``.safetensors`` or ``.pth`` (``torch.load(weights_only=True)``: never the
    full unpickler). Nested ``{'state_dict': ...}`` wrappers and ``module.`` prefixes are undone."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} weights not found: {path}. Get them from {source}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path} could not be read as {what} weights ({type(exc).__name__}: {str(exc)[:160]}). "
                             f"The file is damaged or not a weights file; get it again from {source}.") from exc
    for key in ("state_dict", "model", "net"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path} is not a plain state dict of tensors; expected {what} weights from {source}.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, what: str,
                 source: str) -> torch.nn.Module:
    """Load ``state`` into ``model`` strictly; any missing/unexpected/mis-shaped key is an error saying which."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        details = "; ".join(filter(None, [
            f"{len(missing)} missing, e.g. {missing[:3]}" if missing else "",
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}" if unexpected else "",
            f"wrong shapes: {shapes[:2]}" if shapes else ""]))
        raise ModelFileError(f"{Path(path).name} is not {what} weights ({details}). Expected the file from {source}.")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
