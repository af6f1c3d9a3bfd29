"""A converted copy of a slow-to-read model file, kept beside it as ``<file>.anybody.safetensors``.

Some released files can only be read by a restricted unpickler that rebuilds them piece by piece (AdaFace's
pickled module, FLAME's chumpy pickle). They are converted once; the cache records the source's size, mtime, ctime,
inode and SHA-256, so later loads are a plain safetensors read, and a file replaced under the same name (even with
its mtime kept, as ``cp -p`` does) is converted again rather than trusted.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch

from ..files import atomic_write

log = logging.getLogger("anybody")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(source: Path) -> Path:
    return source.with_name(source.name + ".anybody.safetensors")


def converted_tensors(path: Path, convert: Callable[[Path], dict[str, torch.Tensor]],
                      what: str) -> dict[str, torch.Tensor]:
    """``convert(path)``'s tensors, from the cache when it matches the file, else converted now (and cached)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    stat, cache = path.stat(), cache_path(path)
    stamp = {"source_size": str(stat.st_size), "source_mtime_ns": str(stat.st_mtime_ns),
             "source_ctime_ns": str(stat.st_ctime_ns), "source_inode": str(stat.st_ino)}
    digest, tensors = None, None
    if cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as f:
                meta = f.metadata() or {}
                same = all(meta.get(k) == v for k, v in stamp.items())
                if same:
                    return {k: f.get_tensor(k) for k in f.keys()}
                if meta.get("source_size") == stamp["source_size"]:
                    digest = sha256(path)  # touched, copied or replaced: the content decides
                    if meta.get("source_sha256") == digest:
                        tensors = {k: f.get_tensor(k) for k in f.keys()}  # same content: re-stamped below
        except Exception as exc:  # a damaged cache is rebuilt, not trusted
            log.warning("[Anybody] ignoring the unreadable %s cache %s (%s)", what, cache, exc)
    if tensors is None:
        tensors = convert(path)
    meta = {**stamp, "source_sha256": digest or sha256(path), "source_name": path.name}
    try:
        atomic_write(cache, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta),
                     overwrite=True)
    except OSError as exc:  # a read-only model folder: work from memory, convert again next time
        log.warning("[Anybody] could not cache the converted %s at %s (%s)", what, cache, exc)
    return tensors
