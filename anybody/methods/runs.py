"""What every training method shares about a run: the key of its result (so a re-queued graph reuses the file
instead of training again), the family's default resolution, and what a finished run returns."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import AnybodyError, BadInputError, FileExistsAnybodyError
from ..host.base import Host
from ..identity import Identity
from ..train.state import RESUMABLE_CHANGES, TrainingState


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


# --- saved progress and existing results: never lost silently -------------------------------------------------

def continues_saved(states: list[TrainingState], who: str, resume: bool, restart: bool) -> bool:
    """Whether this run continues a stopped run's saved progress. Saved progress without ``resume`` or ``restart``
    is an error that says which to choose; a resume with other settings is refused before anything loads."""
    saved = [s for s in states if s.exists()]
    if not saved or restart:
        return False
    if not resume:
        latest = saved[-1]
        raise BadInputError(f"{who}: saved progress from a stopped run (step {latest.saved_step()}, in {latest.path}). "
                            "Continue it (node: saved_progress 'resume'; CLI: --resume) or discard it (node: 'start "
                            "over'; CLI: --restart).")
    for s in saved:
        s.check_resumable()
    return True


def refuse_existing(paths: list[Path], allowed: bool) -> None:
    """Result files of other photos, settings or checkpoints are replaced only when asked (or by a resumed run)."""
    clashes = [p for p in paths if p.exists()]
    if clashes and not allowed:
        one = len(clashes) == 1
        raise FileExistsAnybodyError(f"{', '.join(map(str, clashes))} already exist{'s' if one else ''} from other "
                                     "photos, settings or another checkpoint. Choose another name, or replace "
                                     f"{'it' if one else 'them'} (node: overwrite; command line: --overwrite).")


def discard_saved(states: list[TrainingState], who: str, log) -> None:
    """``restart``: delete the saved progress (after every check has passed, so an error never costs it)."""
    saved = [s for s in states if s.exists()]
    for s in saved:
        s.clear()
    if saved:
        log(f"Discarded the saved progress of {who} (start over).")
