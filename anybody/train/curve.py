"""The training curve users see beside each preview, and the CSV it is also written to.

Diffusion losses are noisy (each step draws its own timestep), so the chart draws every step's loss faintly and a
bias-corrected moving average over it: the average is what tells whether training still moves. Drawn with Pillow
(which both hosts ship) into a plain ``[H,W,3]`` float image, so every host shows it the way it shows a preview.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..files import atomic_write

SMOOTHING = 0.9  # the moving average's decay: about the last ten steps
BACKGROUND, AXES, RAW, SMOOTH, TEXT = (24, 24, 28), (90, 90, 100), (80, 110, 150), (250, 180, 60), (220, 220, 225)
LIKENESS = (110, 220, 140)  # identity similarity to the photos, on its own 0..1 axis


def smoothed(values: Sequence[float], decay: float = SMOOTHING) -> list[float]:
    """Exponential moving average with Adam's bias correction, so the first points are not pulled toward zero.
    Missing values (NaN: steps an older saved state did not record) are skipped and stay NaN."""
    out, average, seen = [], 0.0, 0
    for value in values:
        if math.isfinite(value):
            seen += 1
            average = decay * average + (1 - decay) * float(value)
        out.append(average / (1 - decay ** seen) if seen and math.isfinite(value) else math.nan)
    return out


def _scale(values: Sequence[float]) -> tuple[float, float]:
    """The value range to draw: the 2nd to 98th percentile widened by 10 %, so one spike does not flatten the rest."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [2, 98]) if finite.size >= 20 else (finite.min(), finite.max())
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    return float(low - pad), float(high + pad)


def render(losses: Sequence[float], total_steps: int, width: int = 512, height: int = 160,
           title: str = "loss", likeness: Sequence[tuple[int, float | None]] = ()) -> torch.Tensor:
    """The loss of steps 1..len(losses) on an x axis of ``total_steps``: ``[height, width, 3]`` float 0..1.
    ``likeness``: (step, identity cosine or None) of each evaluation, drawn green on a 0..1 scale."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 8, width - 8, 18, height - 16
    draw.rectangle([left, top, right, bottom], outline=AXES)
    stats = ""
    if losses:
        trend = smoothed(losses)
        known = [v for v in trend if math.isfinite(v)]
        if known:
            stats = f"step {len(losses)}/{total_steps}  average {known[-1]:.4g} (first {known[0]:.4g})"
        low, high = _scale(list(losses) + trend)
        span = max(total_steps, len(losses), 2) - 1

        def point(i: int, value: float) -> tuple[float, float]:
            x = left + (right - left) * (i / span)
            y = bottom - (bottom - top) * ((min(max(value, low), high) - low) / (high - low))
            return x, y

        for i, value in enumerate(losses):
            if math.isfinite(value):
                x, y = point(i, value)
                draw.point((x, y), fill=RAW)
        line = [point(i, v) for i, v in enumerate(trend) if math.isfinite(v)]
        if len(line) > 1:
            draw.line(line, fill=SMOOTH, width=2)
        scored = [(step, value) for step, value in likeness if value is not None]
        if scored:
            marks = [(left + (right - left) * ((step - 1) / span), bottom - (bottom - top) * min(max(value, 0.0), 1.0))
                     for step, value in scored]
            if len(marks) > 1:
                draw.line(marks, fill=LIKENESS, width=1)
            for x, y in marks:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=LIKENESS)
            best_step, best = max(scored, key=lambda item: item[1])
            title += f"  likeness {scored[-1][1]:.3f} (best {best:.3f} @ {best_step})"
        draw.text((right - 40, bottom - 12), f"{low:.3g}", fill=AXES)
        draw.text((right - 40, top + 2), f"{high:.3g}", fill=AXES)
    draw.text((left, 3), title, fill=TEXT)
    draw.text((left, bottom + 3), stats, fill=TEXT)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def beside(preview: torch.Tensor, chart_of_width) -> torch.Tensor:
    """``preview [H,W,3]`` with the chart (drawn at the preview's width by ``chart_of_width(width)``) below it."""
    preview = preview.cpu()
    chart = chart_of_width(max(int(preview.shape[1]), 256)).to(preview.dtype)
    if chart.shape[1] != preview.shape[1]:
        pad = torch.zeros(preview.shape[0], chart.shape[1] - preview.shape[1], 3, dtype=preview.dtype)
        preview = torch.cat([preview, pad], dim=1)
    return torch.cat([preview, chart], dim=0)


def write_csv(path: Path, losses: Sequence[float], likeness: Sequence[tuple[int, float | None, float]] = ()) -> None:
    """``step,loss,average[,likeness,face_rate]`` per line, beside the training state: the curve for a spreadsheet
    or a plot. ``likeness``: (step, identity cosine or None, share of renders with a face) per evaluation."""
    evaluated = {step: (score, rate) for step, score, rate in likeness}

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            rows = csv.writer(handle)
            rows.writerow(["step", "loss", "average"] + (["likeness", "face_rate"] if likeness else []))
            for step, (value, trend) in enumerate(zip(losses, smoothed(losses)), start=1):
                row = [step, f"{value:.6g}", f"{trend:.6g}"]
                if likeness:
                    score, rate = evaluated.get(step, (None, None))
                    row += ["" if score is None else f"{score:.6g}", "" if rate is None else f"{rate:.6g}"]
                rows.writerow(row)

    atomic_write(path, write, overwrite=True)


def read_csv(path: Path) -> tuple[list[float], list[tuple[int, float | None]]]:
    """The losses and likeness points of a curve CSV (``write_csv``'s format); empty when there is none."""
    losses, likeness = [], []
    if not Path(path).is_file():
        return losses, likeness
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            losses.append(float(row["loss"]))
            if row.get("likeness"):
                likeness.append((int(row["step"]), float(row["likeness"])))
    return losses, likeness
