"""Training state on disk, for exact resume: one file, ``<name>.state.safetensors``.

Tensors (parameters, optimizer moments) and the rest (step, settings, optimizer scalars, loss scale) travel in one
safetensors file — the scalars as JSON in its metadata — written atomically. So at every instant the state on disk
is one complete save or the previous one, never a mix; a kill at any moment cannot strand the progress.

The step's randomness is derived from (seed, step), so parameters + optimizer state + step number are all a
resumed run needs to continue on exactly the trajectory of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import torch

from ..errors import BadInputError, ModelFileError
from ..files import atomic_write

#: settings that may change between a run and its resume without changing the trajectory
RESUMABLE_CHANGES = ("steps", "save_every", "preview_every", "gradient_checkpointing")
_META_KEY = "anybody.state"


def config_hash(config: Mapping[str, object]) -> str:
    fixed = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingState:
    def __init__(self, directory: str | Path, name: str, config: Mapping[str, object]) -> None:
        self.directory = Path(directory)
        self.name = name
        self.config = dict(config)
        self.path = self.directory / f"{name}.state.safetensors"
        self.extra: dict = {}

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, step: int, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             extra: Mapping[str, object] | None = None, buffers: Mapping[str, torch.Tensor] | None = None) -> None:
        """``buffers``: tensors a method updates outside the optimizer (an EMA), saved and restored with the rest."""
        from safetensors.torch import save_file

        opt = optimizer.state_dict()
        tensors = {f"param.{k}": v.detach().float().cpu().contiguous() for k, v in params.items()}
        tensors.update({f"buffer.{k}": v.detach().float().cpu().contiguous() for k, v in (buffers or {}).items()})
        scalars: dict[str, dict[str, object]] = {}
        for pid, st in opt["state"].items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        meta = {"step": step, "config": self.config, "config_hash": config_hash(self.config),
                "param_groups": opt["param_groups"], "optimizer_scalars": scalars, "extra": dict(extra or {})}
        blob = json.dumps(meta, default=str)
        atomic_write(self.path, lambda tmp: save_file(tensors, tmp, metadata={_META_KEY: blob}), overwrite=True)

    def _unreadable(self, exc: Exception) -> ModelFileError:
        return ModelFileError(f"The saved progress {self.path} cannot be read ({type(exc).__name__}: {exc}). "
                              "Start over (node: saved_progress 'start over'; CLI: --restart).")

    def _read(self, with_tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})[_META_KEY])
                return meta, ({k: f.get_tensor(k) for k in f.keys()} if with_tensors else {})
        except Exception as exc:
            raise self._unreadable(exc) from exc

    def saved_step(self) -> int:
        """The step the saved progress reached (cheap: reads the file's header)."""
        return int(self._read(with_tensors=False)[0].get("step", 0))

    def load(self, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             buffers: Mapping[str, torch.Tensor] | None = None) -> int:
        """Restore ``params`` and ``buffers`` in place and the optimizer; return the number of completed steps."""
        meta, tensors = self._read()
        self._check_config(meta)
        try:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(tensors[f"param.{k}"].to(p))
                for k, b in (buffers or {}).items():
                    b.copy_(tensors[f"buffer.{k}"].to(b))
            state: dict[int, dict[str, object]] = {}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, pid, name = key.split(".", 2)
                    state.setdefault(int(pid), {})[name] = value
            for pid, extra in meta["optimizer_scalars"].items():
                state.setdefault(int(pid), {}).update(extra)
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
            step = int(meta["step"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise ModelFileError(f"The saved progress {self.path} is incomplete ({type(exc).__name__}: {exc}). "
                                 "Start over (node: saved_progress 'start over'; CLI: --restart).") from exc
        self.extra = meta.get("extra", {})  # engine state beside the optimizer's (the loss scale)
        return step

    def check_resumable(self) -> None:
        """Refuse a resume with other settings before any photo is encoded or model loaded (cheap: reads the header)."""
        self._check_config(self._read(with_tensors=False)[0])

    def _check_config(self, meta: dict) -> None:
        if meta.get("config_hash") != config_hash(self.config):
            saved = meta.get("config", {})
            changed = sorted(k for k in set(saved) | set(self.config)
                             if k not in RESUMABLE_CHANGES and saved.get(k) != self.config.get(k))
            raise BadInputError(f"Cannot resume '{self.name}': these settings differ from the saved run (step "
                                f"{meta.get('step', '?')}): {', '.join(changed) or 'unknown'}. Use the same settings "
                                "to continue, or start over (node: saved_progress 'start over'; CLI: --restart).")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
