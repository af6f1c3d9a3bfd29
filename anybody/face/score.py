"""Identity score: cosine similarity between recognition embeddings of generated faces and the reference.

The field's standard identity metric (ArcFace/insightface cosine; papers report the mean over images). In a
generated image with several faces the one most like the reference counts; an image without a face scores None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .detect import detect_faces
from .models import FaceModels
from .pipeline import embed_faces, reference_embeddings, to_uint8


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass
class IdentityReport:
    """What one set of generated images says about likeness, with the numbers needed to read it.

    ``scores``: per image, the cosine of its face most like the person to the mean reference embedding (None: no
    face). ``baseline``: the same statistic for each reference photo against the mean of the *other* references
    (leave-one-out): how alike the person's own photos are, the ceiling a generation can be expected to reach.
    ``closest``/``others``: per image, the cosine to the single most similar reference photo and the mean cosine to
    the remaining ones; their mean gap is the copy-paste indicator. It is positive by construction (the closest
    photo is the most similar one), so it is read against ``copy_paste_references``, the same gap among the photos
    themselves (each against the others; 3+ photos): a new photo of the person shows about that gap, a generation
    that replicates one photo a clearly larger one. ``baseline`` compares each photo with the mean of the other
    N-1; generations are compared with the mean of all N, which sits a little closer to any face of the person,
    so with few photos a genuine likeness can score slightly above the baseline."""

    scores: list[Optional[float]]
    closest: list[Optional[float]]
    others: list[Optional[float]]
    baseline: Optional[float]
    references: int
    copy_paste_references: Optional[float] = None

    @property
    def found(self) -> list[float]:
        return [s for s in self.scores if s is not None]

    @property
    def mean(self) -> Optional[float]:
        return float(np.mean(self.found)) if self.found else None

    @property
    def face_rate(self) -> float:
        """The share of generated images in which a face was detected."""
        return len(self.found) / len(self.scores) if self.scores else 0.0

    @property
    def copy_paste(self) -> Optional[float]:
        gaps = [c - o for c, o in zip(self.closest, self.others) if c is not None and o is not None]
        return float(np.mean(gaps)) if gaps else None

    def as_dict(self) -> dict:
        return {"mean": self.mean, "scores": self.scores, "baseline": self.baseline, "face_rate": self.face_rate,
                "copy_paste": self.copy_paste, "copy_paste_references": self.copy_paste_references,
                "closest": self.closest, "others": self.others, "references": self.references}


def report_from_embeddings(generated: Sequence[np.ndarray], references: np.ndarray) -> IdentityReport:
    """``generated``: per image the unit embeddings ``[F, D]`` of its faces (``F`` may be 0); ``references``:
    ``[N, D]`` unit embeddings, one per reference photo."""
    references = np.asarray(references, dtype=np.float64)
    n = len(references)
    mean = _unit(references.mean(axis=0))
    baseline = (float(np.mean([_unit(np.delete(references, i, axis=0).mean(axis=0)) @ references[i]
                               for i in range(n)])) if n >= 2 else None)
    reference_gaps = []
    for i in range(n if n >= 3 else 0):  # each photo as if it were a generation, against the others
        to_others = np.delete(references, i, axis=0) @ references[i]
        best = int(np.argmax(to_others))
        reference_gaps.append(float(to_others[best] - np.delete(to_others, best).mean()))
    scores, closest, others = [], [], []
    for faces in generated:
        faces = np.asarray(faces, dtype=np.float64).reshape(-1, references.shape[1])
        if len(faces) == 0:
            scores.append(None), closest.append(None), others.append(None)
            continue
        to_mean = faces @ mean
        face = faces[int(np.argmax(to_mean))]  # in a picture of several people, the one most like this person
        scores.append(float(to_mean.max()))
        to_each = references @ face
        best = int(np.argmax(to_each))
        closest.append(float(to_each[best]))
        others.append(float(np.delete(to_each, best).mean()) if n >= 2 else None)
    return IdentityReport(scores, closest, others, baseline, n,
                          float(np.mean(reference_gaps)) if reference_gaps else None)


def identity_report(models: FaceModels, images: Sequence, references: Sequence) -> IdentityReport:
    """Detect and embed the faces of ``images`` and of the reference photos with the loaded recognizer."""
    refs = reference_embeddings(models, references)
    generated = []
    for image in images:
        rgb = to_uint8(image)
        faces = detect_faces(models, rgb)
        generated.append(embed_faces(models, rgb, faces) if faces else np.zeros((0, refs.shape[1])))
    return report_from_embeddings(generated, refs)


def summarize(report: IdentityReport) -> str:
    """The report in a few lines, each number with what it means."""
    total = len(report.scores)
    if not report.found:
        return f"no face found in {total} image(s)"
    found = report.found
    lines = [f"identity cosine {report.mean:.3f} (mean of {len(found)}; min {min(found):.3f}, max {max(found):.3f})",
             f"faces found in {len(found)}/{total} image(s) ({report.face_rate:.0%})"]
    if report.baseline is not None:
        lines.append(f"baseline {report.baseline:.3f}: the {report.references} reference photos to each other "
                     "(leave-one-out); a score near it is as alike as the person's own photos")
        own = report.copy_paste_references
        lines.append(f"copy-paste {report.copy_paste:+.3f}: similarity to the closest reference photo minus to the "
                     "others" + (f"; the photos among themselves: {own:+.3f} (clearly above that = one photo "
                                 "replicated)" if own is not None else "; 3+ reference photos give its yardstick"))
    else:
        lines.append("connect 2 or more reference photos for the baseline and the copy-paste indicator")
    return "\n".join(lines)


def score_plot(report: IdentityReport, width: int = 512, height: int = 192) -> np.ndarray:
    """A small bar chart (RGB uint8): one bar per image on a -0.2..1 axis, grey 'x' where no face was found, and
    the references' own baseline as a dashed line."""
    scores = report.scores
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    left, top, bottom = 36, 12, height - 20
    lo, hi = -0.2, 1.0

    def y_of(v: float) -> float:
        return bottom - (min(max(v, lo), hi) - lo) / (hi - lo) * (bottom - top)

    for tick in (0.0, 0.5, 1.0):
        y = y_of(tick)
        draw.line([(left, y), (width - 6, y)], fill=(70, 70, 80))
        draw.text((4, y - 6), f"{tick:.1f}", fill=(170, 170, 180))
    n = max(1, len(scores))
    slot = (width - left - 8) / n
    for i, s in enumerate(scores):
        x0, x1 = left + i * slot + slot * 0.15, left + (i + 1) * slot - slot * 0.15
        if s is None:
            draw.text(((x0 + x1) / 2 - 3, bottom - 14), "x", fill=(140, 140, 140))
            continue
        colour = (80, 200, 120) if s >= 0.5 else (230, 180, 60) if s >= 0.3 else (230, 90, 80)
        draw.rectangle([x0, min(y_of(s), y_of(0.0)), x1, max(y_of(s), y_of(0.0))], fill=colour)
    caption = f"mean {report.mean:.3f}" if report.found else "no face"
    if report.baseline is not None:
        y = y_of(report.baseline)
        for x in range(left, width - 6, 8):
            draw.line([(x, y), (min(x + 4, width - 6), y)], fill=(120, 170, 255))
        caption += f"   baseline {report.baseline:.3f} (dashed)"
    draw.text((left, bottom + 4), caption, fill=(230, 230, 235))
    return np.array(img)
