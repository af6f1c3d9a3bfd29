"""How a trainer renders its current identity and scores it: the probe behind the likeness curve.

Fixed prompts and seeds, DDIM on the model being trained (``train/sampling.py``), decoded through the host's
training decoder (a VAE copy of its own: decoding with the host's shared VAE could evict the training model), then
the faces are scored against the reference photos with the loaded recognizer (``face/score.py``), exactly as
IdentityScore scores generated images.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import BadInputError
from ..face.detect import detect_faces, select_face
from ..face.pipeline import embed_faces, to_uint8
from ..face.score import report_from_embeddings
from ..train.likeness import Evaluation
from ..train.sampling import ddim_sample

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


def identity_probe(host, injections: Mapping[str, Mapping[str, torch.Tensor]], word: str, face_models,
                   references: np.ndarray, latent_shape: Sequence[int], prompts: Sequence[str] = PROMPTS,
                   seeds: Sequence[int] = SEEDS, steps: int = DDIM_STEPS, guidance: float = GUIDANCE):
    """A probe for ``LikenessTracker``: render ``prompts`` (one seed each) with the current ``injections`` and score
    the faces in the renders. ``latent_shape``: ``[C, h, w]`` of the training latents."""
    noise = torch.cat([torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(seed))
                       for seed in seeds])

    def probe() -> Evaluation:
        host.sink.check_cancel()
        with host.autocast():
            cond = host.encode_prompts([p.format(word=word) for p in prompts], injections)
            uncond = host.encode_prompts([""])
        latents = ddim_sample(host, cond, uncond, noise, steps, guidance)
        host.sink.check_cancel()
        images = host.decode_differentiable(latents).permute(0, 2, 3, 1).float().cpu()
        generated = []
        for image in images:
            rgb = to_uint8(image)
            faces = detect_faces(face_models, rgb)
            generated.append(embed_faces(face_models, rgb, faces) if faces else np.zeros((0, references.shape[1])))
        report = report_from_embeddings(generated, references)
        probe.last_images = images  # what was scored, for tests and debugging
        return Evaluation(report.mean, report.face_rate)

    return probe


def kept_vectors(params: Mapping[str, torch.Tensor], tracker, keep_best: bool) -> tuple[dict, str]:
    """The tensors a run's result holds: the best-scoring evaluation's when ``keep_best`` and it is not the last
    step, else the last step's; and a log line saying which was kept when it matters."""
    if tracker is None or not keep_best or not tracker.best_step or not tracker.history:
        return dict(params), ""
    last_step, last_likeness, _ = tracker.history[-1]
    if tracker.best_step == last_step:
        return dict(params), ""
    last = "no face" if last_likeness is None else f"{last_likeness:.3f}"
    return ({k: v.detach().clone() for k, v in tracker.best.items()},
            f"Kept the vectors of step {tracker.best_step} (likeness {tracker.best_likeness:.3f}) rather than the "
            f"last step's ({last}); turn keep_best off for the last step's.")


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


#: ``likeness_every`` = AUTO: a quarter of the run on a GPU (at least 50 steps apart; always at the end), off on
#: the CPU, where one render of two images costs minutes; off without a face model
AUTO = -1


def resolve_every(every: int, steps: int, device, have_faces: bool) -> int:
    """The cadence a run uses. At a quarter of a 320-step run, 4 renders of 2 images (15 DDIM steps, guided) cost
    about 10 training steps of batch 8: ~3 % of the run."""
    if every != AUTO:
        return every
    if not have_faces or torch.device(device).type == "cpu":
        return 0
    return max(steps // 4, 50)
