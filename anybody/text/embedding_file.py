"""Textual-inversion embedding files in the formats the stock loaders of ComfyUI, A1111 and diffusers read.

Written: ``.safetensors`` with ``emb_params [n, 768]`` (SD1.x) or ``[n, 1024]`` (SD2.x), or
``clip_l [n, 768]`` + ``clip_g [n, 1280]`` (SDXL), with string metadata. Read: those, A1111 ``.pt``
(``string_to_param``), diffusers single-key files and the Cross-Init official ``{"<x>_v0": .., "<x>_v1": ..}``
dict. Pickled files are only ever opened with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from ..errors import ModelFileError, WrongModelFamilyError
from ..files import atomic_write

#: encoder key -> token width, per base-model family.
FAMILY_ENCODERS: dict[str, dict[str, int]] = {
    "sd1": {"clip_l": 768},
    "sd2": {"clip_h": 1024},
    "sdxl": {"clip_l": 768, "clip_g": 1280},
}
FAMILY_LABEL = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


def check_vectors(vectors: Mapping[str, torch.Tensor], family: str, what: str = "identity") -> None:
    """Raise :class:`WrongModelFamilyError` unless ``vectors`` has exactly the encoders/widths of ``family``."""
    want = FAMILY_ENCODERS[family]
    have = {k: int(v.shape[-1]) for k, v in vectors.items()}
    if have != want:
        got = family_of(vectors)
        label = FAMILY_LABEL.get(got, f"encoders {have}")
        raise WrongModelFamilyError(
            f"This {what} was made for {label}, but the model in use is {FAMILY_LABEL[family]}. "
            f"Train or load an {what} for {FAMILY_LABEL[family]}, or switch to a {label} checkpoint."
        )
    counts = {int(v.shape[0]) for v in vectors.values()}
    if len(counts) != 1 or any(v.dim() != 2 for v in vectors.values()):
        raise ModelFileError(f"The {what} vectors have inconsistent shapes: {[tuple(v.shape) for v in vectors.values()]}")
    if counts == {0}:
        raise ModelFileError(f"The {what} holds no vectors (0 rows): it is empty or damaged. Train it again.")
    if not all(torch.isfinite(v).all() for v in vectors.values()):
        raise ModelFileError(f"The {what} contains NaN/inf values (a diverged training or a damaged file); it would "
                             "break every prompt it is used in. Train it again with a lower learning rate.")


def family_of(vectors: Mapping[str, torch.Tensor]) -> str | None:
    have = {k: int(v.shape[-1]) for k, v in vectors.items()}
    for family, want in FAMILY_ENCODERS.items():
        if have == want:
            return family
    return None


def save_embedding(
    path: str | Path,
    vectors: Mapping[str, torch.Tensor],
    family: str,
    metadata: Mapping[str, object] | None = None,
    overwrite: bool = False,
) -> Path:
    """Atomically write ``vectors`` (encoder key -> ``[n, D]``) as a stock-loadable ``.safetensors``."""
    from safetensors.torch import save_file

    check_vectors(vectors, family)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in vectors.items()}
    if family in ("sd1", "sd2"):
        tensors = {"emb_params": next(iter(tensors.values()))}
    meta = {"anybody.family": family}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=overwrite)


def load_embedding(path: str | Path) -> tuple[dict[str, torch.Tensor], str, dict[str, str]]:
    """Read an embedding file in any supported format -> (encoder key -> ``[n, D]``, family, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Embedding file not found: {path}")
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                raw = {k: f.get_tensor(k) for k in f.keys()}
                metadata = dict(f.metadata() or {})
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: say which and why
        raise ModelFileError(f"Could not read embedding file {path}: {exc}") from exc
    try:
        vectors = _vectors_from_dict(raw, path)
    except ModelFileError:
        raise
    except Exception as exc:  # a dict of the wrong shapes (a malformed A1111 .pt, say)
        raise ModelFileError(f"{path} is not an embedding file Anybody can read ({type(exc).__name__}: {exc}).") from exc
    family = family_of(vectors)
    if family is None:
        raise ModelFileError(f"{path} holds vectors of widths {[v.shape[-1] for v in vectors.values()]}, "
                             "which match no SD1.x (768), SD2.x (1024) or SDXL (768 + 1280) text encoder.")
    check_vectors(vectors, family, what=f"embedding file {path.name}")
    return vectors, family, metadata


def _vectors_from_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict) or not raw:
        raise ModelFileError(f"{path} is not an embedding file (expected a dict of tensors).")
    if "clip_l" in raw and "clip_g" in raw:
        return {"clip_l": _as_matrix(raw["clip_l"]), "clip_g": _as_matrix(raw["clip_g"])}
    if "string_to_param" in raw:  # A1111 .pt
        return _one_encoder(_as_matrix(next(iter(raw["string_to_param"].values()))))
    if "emb_params" in raw:
        return _one_encoder(_as_matrix(raw["emb_params"]))
    numbered = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor) and re.search(r"_v(\d+)>?$", str(k))}
    if len(numbered) == len(raw) and len(raw) > 1:  # Cross-Init official: {"<x>_v0": [D], "<x>_v1": [D]}
        order = sorted(numbered, key=lambda k: int(re.search(r"_v(\d+)>?$", k).group(1)))
        return _one_encoder(torch.stack([_as_matrix(numbered[k])[0] for k in order]))
    tensors = [v for v in raw.values() if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:  # diffusers: {"<token>": [D] or [n, D]}
        return _one_encoder(_as_matrix(tensors[0]))
    raise ModelFileError(f"{path}: unrecognised embedding layout with keys {list(raw)[:8]}.")


def _as_matrix(t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() not in (1, 2):
        raise ModelFileError(f"Expected a 1-D or 2-D tensor in the embedding file, got {type(t).__name__}.")
    return (t[None] if t.dim() == 1 else t).float()


def _one_encoder(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    key = {768: "clip_l", 1024: "clip_h"}.get(int(matrix.shape[-1]), "clip_l")
    return {key: matrix}
