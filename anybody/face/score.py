"""Identity score: cosine similarity between recognition embeddings of generated faces and the reference.

The field's standard identity metric (ArcFace/insightface cosine; papers report the mean over images). In a
generated image with several faces the one most like the reference counts; an image without a face scores None.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .detect import detect_faces
from .models import FaceModels
from .pipeline import embed_faces, reference_embedding, to_uint8


def identity_scores(models: FaceModels, images: Sequence, references: Sequence) -> list[float | None]:
    ref = reference_embedding(models, references)
    scores: list[float | None] = []
    for image in images:
        rgb = to_uint8(image)
        faces = detect_faces(models, rgb)
        if not faces:
            scores.append(None)
            continue
        scores.append(float(np.max(embed_faces(models, rgb, faces) @ ref)))
    return scores


def summarize(scores: Sequence[float | None]) -> str:
    found = [s for s in scores if s is not None]
    if not found:
        return f"no face found in {len(scores)} image(s)"
    text = f"identity cosine {np.mean(found):.3f} (mean of {len(found)}; min {min(found):.3f}, max {max(found):.3f})"
    missing = len(scores) - len(found)
    return text + (f"; {missing} image(s) without a face" if missing else "")


def score_plot(scores: Sequence[float | None], width: int = 512, height: int = 192) -> np.ndarray:
    """A small bar chart (RGB uint8): one bar per image on a -0.2..1 axis, grey 'x' where no face was found."""
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
    found = [s for s in scores if s is not None]
    if found:
        draw.text((left, bottom + 4), f"mean {np.mean(found):.3f}", fill=(230, 230, 235))
    return np.array(img)
