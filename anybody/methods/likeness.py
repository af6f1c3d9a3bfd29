"""How a trainer renders its current identity and scores it: the probe behind the likeness curve.

Fixed prompts and seeds, DDIM on the model being trained, rendered by the host's own image pipeline
(``Host.render_identity``: ComfyUI's KSampler, diffusers' DDIMScheduler, A1111's txt2img processing), then the faces
are scored against the reference photos with the loaded recognizer (``face/score.py``), exactly as IdentityScore
scores generated images.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import BadInputError
from ..face.detect import detect_faces, select_face
from ..face.pipeline import embed_faces, to_uint8
from ..face.score import report_from_embeddings
from ..train.likeness import Evaluation

#: two framings, so one lucky composition does not decide the curve; ``{word}`` is the identity's placeholder
PROMPTS = ("a photo of {word} person", "a close-up portrait photo of {word} person, looking at the camera")
SEEDS = (1234, 5678)
DDIM_STEPS = 15
GUIDANCE = 5.0


def reference_faces(face_models, photos: Sequence) -> np.ndarray:
    """Unit embeddings ``[N, D]`` of the largest face of each training photo that has one."""
    found = []
    for photo in photos:
        rgb = to_uint8(photo)
        faces = detect_faces(face_models, rgb)
        if faces:
            found.append(embed_faces(face_models, rgb, [select_face(faces, "largest")])[0])
    if not found:
        raise BadInputError("The likeness curve compares renders with the training photos' faces, but the face model "
                            "found no face in any photo. Turn likeness off (likeness_every 0) or use face photos.")
    return np.stack(found)


def embedder_of(face_models) -> Callable[[np.ndarray], np.ndarray]:
    """``rgb uint8 -> [F, D]``: the unit embeddings of every face a face model finds in an image."""
    def faces_in(rgb: np.ndarray) -> np.ndarray:
        faces = detect_faces(face_models, rgb)
        return embed_faces(face_models, rgb, faces) if faces else np.zeros((0, 512), np.float32)

    return faces_in


def identity_probe(host, injections, word: str, faces_in: Callable[[np.ndarray], np.ndarray], references: np.ndarray,
                   latent_shape: Sequence[int], prompts: Sequence[str] = PROMPTS, seeds: Sequence[int] = SEEDS,
                   steps: int = DDIM_STEPS, guidance: float = GUIDANCE):
    """A probe for ``LikenessTracker``: render ``prompts`` (one seed each) with the current ``injections`` (a
    mapping of live tensors, or a function giving one, or None when there is nothing to render yet) and score the
    faces ``faces_in`` finds in the renders (``embedder_of(face_models)``, or a method's own detector and
    recognizer). ``latent_shape``: ``[C, h, w]`` of the training latents."""
    def probe() -> Evaluation:
        host.sink.check_cancel()
        current = injections() if callable(injections) else injections
        if current is None:
            return Evaluation(None, 0.0)
        images = host.render_identity([p.format(word=word) for p in prompts], current, seeds, latent_shape, steps,
                                      guidance)
        host.sink.check_cancel()
        generated = [np.asarray(faces_in(to_uint8(image))).reshape(-1, references.shape[1]) for image in images]
        report = report_from_embeddings(generated, references)
        probe.last_images = images  # what was scored, for tests and debugging
        return Evaluation(report.mean, report.face_rate)

    return probe


def mean_probe(probes: Sequence):
    """One probe over several identities (a joint run): the mean likeness, defined only when every identity has
    a face in its renders (a step where someone is missing must never become the kept one), and the mean face rate."""
    def probe() -> Evaluation:
        results = [p() for p in probes]
        scored = [r.likeness for r in results]
        return Evaluation(None if any(v is None for v in scored) else float(np.mean(scored)),
                          float(np.mean([r.face_rate for r in results])))

    return probe


def keep_best(tracked: Mapping[str, torch.Tensor], tracker, enabled: bool) -> str:
    """Put the best-scoring evaluation's values back into ``tracked`` (in place) when ``enabled`` and it was not the
    last step; returns the log line saying so ("" when the last step's values stay)."""
    if tracker is None or not enabled or not tracker.best_step or not tracker.history:
        return ""
    last_step, last_likeness, _ = tracker.history[-1]
    if tracker.best_step == last_step:
        return ""
    with torch.no_grad():
        for k, v in tracker.best.items():
            tracked[k].copy_(v)
    last = "no face" if last_likeness is None else f"{last_likeness:.3f}"
    return (f"Kept step {tracker.best_step} (likeness {tracker.best_likeness:.3f}) rather than the last step "
            f"({last}); turn keep_best off for the last step's.")


def likeness_metadata(tracker, stopped_early_at: int | None) -> dict[str, str]:
    """The curve and the kept step, recorded in the saved file (safetensors metadata is text)."""
    import json

    meta = {"anybody.likeness.curve": json.dumps([[s, None if v is None else round(v, 4), round(r, 3)]
                                                  for s, v, r in tracker.history])}
    if tracker.best_step:
        meta["anybody.likeness.best_step"] = str(tracker.best_step)
        meta["anybody.likeness.best"] = f"{tracker.best_likeness:.4f}"
    if stopped_early_at is not None:
        meta["anybody.likeness.stopped_early_at"] = str(stopped_early_at)
    return meta


#: ``likeness_every`` = AUTO: on a GPU, every quarter of the run, or less often where that would cost more than
#: ``BUDGET`` of the training time (always also at the end); off where even one evaluation would, on the CPU (where
#: one render costs minutes) and without a face model
AUTO = -1
BUDGET = 0.10
#: cost model, measured (benchmarks/likeness_bench.py, SD1.5 at 256 px on the CPU): one evaluation took 41 s and a
#: Cross-Init step of batch 8 11.8 s, i.e. an evaluation (2 renders x 15 guided DDIM steps = 60 UNet image passes,
#: plus decoding) costs what training 27 images costs: a training image is about 2.2 image passes
EVALUATION_PASSES = 60
TRAINING_PASSES_PER_IMAGE = 2.2


def can_score(face_models) -> bool:
    """A face model that can both find and recognise faces (a MediaPipe one without a recognizer cannot)."""
    return face_models is not None and (getattr(face_models, "embedder", None) is not None
                                        or getattr(face_models, "recognizer", None) is not None)


def likeness_settings(requested: int, resolved: int, patience: int, keep: bool, scorer: str) -> dict:
    """What of the likeness options goes into a run's result key: nothing when no evaluation runs (so results made
    before the curve existed are still found), else the request as given (a resume with more steps may move an
    auto cadence) and the face model that scores."""
    if not resolved:
        return {}
    return {"likeness_every": requested, "likeness_patience": patience, "keep_best": keep, "likeness_faces": scorer}


LIKENESS_FIELDS = ("likeness_every", "likeness_patience", "keep_best")


def without_likeness(settings: Mapping) -> dict:
    """A config's fields less the likeness options (``likeness_settings`` says what of those counts)."""
    return {k: v for k, v in settings.items() if k not in LIKENESS_FIELDS}


def resolve_every(every: int, steps: int, device, have_faces: bool, batch: int = 1, identities: int = 1) -> int:
    """The cadence a run uses: ``every`` itself unless AUTO. ``batch``: images per training step; ``identities``:
    renders per evaluation scale with the people of a joint run."""
    if every != AUTO:
        return every
    if not have_faces or torch.device(device).type == "cpu":
        return 0
    training = steps * TRAINING_PASSES_PER_IMAGE * max(batch, 1)
    evaluations = math.floor(BUDGET * training / (EVALUATION_PASSES * identities))  # the final one included
    if evaluations < 1:
        return 0  # a short run (a fast preset): even the final evaluation would cost more than the budget
    return max(steps // 4, math.ceil(steps / evaluations))
