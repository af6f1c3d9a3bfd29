"""Training state on disk, for exact resume: ``<name>.state.safetensors`` (tensors) + ``<name>.state.json``.

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


def config_hash(config: Mapping[str, object]) -> str:
    fixed = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingState:
    def __init__(self, directory: str | Path, name: str, config: Mapping[str, object]) -> None:
        self.directory = Path(directory)
        self.name = name
        self.config = dict(config)
        self.tensors_path = self.directory / f"{name}.state.safetensors"
        self.json_path = self.directory / f"{name}.state.json"
        self.extra: dict = {}

    def exists(self) -> bool:
        return self.json_path.is_file() and self.tensors_path.is_file()

    def save(self, step: int, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             extra: Mapping[str, object] | None = None) -> None:
        from safetensors.torch import save_file

        opt = optimizer.state_dict()
        tensors = {f"param.{k}": v.detach().float().cpu().contiguous() for k, v in params.items()}
        scalars: dict[str, dict[str, object]] = {}
        for pid, st in opt["state"].items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        meta = {"step": step, "config": self.config, "config_hash": config_hash(self.config),
                "param_groups": opt["param_groups"], "optimizer_scalars": scalars, "extra": dict(extra or {})}
        # tensors first, then the JSON that points at them: a crash between the two leaves the old JSON,
        # whose step no longer matches the tensors -> load() refuses rather than resuming wrongly.
        atomic_write(self.tensors_path, lambda tmp: save_file(tensors, tmp, metadata={"step": str(step)}), overwrite=True)
        atomic_write(self.json_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1, default=str)), overwrite=True)

    def load(self, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
        """Restore ``params`` in place and the optimizer; return the number of completed steps."""
        from safetensors import safe_open

        try:
            meta = json.loads(self.json_path.read_text())
            with safe_open(str(self.tensors_path), framework="pt") as f:
                tensor_step = int((f.metadata() or {}).get("step", -1))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ModelFileError(f"Training state {self.json_path} could not be read ({exc}). "
                                 "Delete it to start over.") from exc
        if tensor_step != meta["step"]:
            raise ModelFileError(f"Training state {self.directory}/{self.name}.state.* is inconsistent "
                                 "(interrupted while saving). Delete both files to start over.")
        self._check_config(meta)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[f"param.{k}"].to(p))
        state: dict[int, dict[str, object]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        for pid, extra in meta["optimizer_scalars"].items():
            state.setdefault(int(pid), {}).update(extra)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.extra = meta.get("extra", {})  # engine state beside the optimizer's (the loss scale)
        return int(meta["step"])

    def check_resumable(self) -> None:
        """Refuse a resume with other settings before any photo is encoded or model loaded (cheap: reads the JSON)."""
        try:
            meta = json.loads(self.json_path.read_text())
        except Exception as exc:
            raise ModelFileError(f"Training state {self.json_path} could not be read ({exc}). "
                                 "Delete it to start over.") from exc
        self._check_config(meta)

    def _check_config(self, meta: dict) -> None:
        if meta["config_hash"] != config_hash(self.config):
            changed = sorted(k for k in set(meta["config"]) | set(self.config)
                             if k not in RESUMABLE_CHANGES and meta["config"].get(k) != self.config.get(k))
            raise BadInputError(f"Cannot resume '{self.name}': these settings differ from the saved run: "
                                f"{', '.join(changed)}. Use the same settings, or turn resume off and pick a new name.")

    def clear(self) -> None:
        for path in (self.tensors_path, self.json_path):
            path.unlink(missing_ok=True)
