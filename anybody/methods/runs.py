"""What every training method shares about a run: the key of its result (so a re-queued graph reuses the file
instead of training again), the family's default resolution, and what a finished run returns."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import AnybodyError
from ..host.base import Host
from ..identity import Identity
from ..train.state import RESUMABLE_CHANGES


def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha256((images * 255).round().to(torch.uint8).cpu().numpy().tobytes()).hexdigest()[:16]


#: the resolution each family was trained at (SD2.x v-prediction is the 768 model)
FAMILY_RESOLUTION = {"sd1": 512, "sd2": 512, "sdxl": 1024}


def default_resolution(host: Host) -> int:
    if host.family == "sd2" and host.prediction == "v":
        return 768
    return FAMILY_RESOLUTION[host.family]


class TrainedIdentity(NamedTuple):
    identity: Identity
    path: Path
    reused: bool  # True when a file from the same settings, photos and checkpoint was loaded instead of training


#: settings that do not change the trained vectors: those a resume may change, except the number of steps
_NOT_IN_RESULT = tuple(k for k in RESUMABLE_CHANGES if k != "steps")
RESULT_KEY = "anybody.result_key"


def result_key(config: dict, fingerprint: str) -> str:
    fixed = {k: v for k, v in config.items() if k not in _NOT_IN_RESULT}
    blob = json.dumps({**fixed, "checkpoint": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reusable(target: Path, key: str) -> Identity | None:
    """The identity already in ``target`` when it was trained from exactly this key, else None."""
    if not target.is_file():
        return None
    try:
        identity = Identity.load(target)
    except AnybodyError:
        return None
    return identity if identity.metadata.get(RESULT_KEY) == key else None
