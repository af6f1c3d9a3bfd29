"""MagiCapture's losses, masks and schedules (spec: shared/methods/magicapture.md §2-§6), as pure tensor functions.

Three sample kinds train together: ``instance`` (a subject photo, prompt with the subject token), ``style`` (a style
portrait, prompt with the style token) and ``both`` (the composed prompt; pseudo label: the style image outside the
face, the subject's identity on the face). Masks ``m`` are soft: 1 on the token's region, about 0.01 elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

KINDS = ("instance", "style", "both")
SUBJECT, STYLE = "subject", "style"
FLOOR = 0.01  # added before normalising: the weight (0.01 / 1.01) every pixel keeps outside its region


# --- masks (spec §2) ---------------------------------------------------------------------------------------------

def latent_mask(mask: torch.Tensor, size: tuple[int, int], per_sample: bool = True) -> torch.Tensor:
    """A binary pixel mask ``[B, H, W]`` -> the soft loss mask ``[B, 1, h, w]``: nearest downsampling (PyTorch
    ``nearest``: pixel (8i, 8j) at SD's 1/8), softened as ``(m + 0.01) / max(m + 0.01)`` — 1 on the region, 0.0099
    elsewhere, the official values for style samples (its twice-softened subject masks reach 0.0099-0.0197 off the
    face: documented deviation). The official code takes one max over
    the whole batch (``per_sample=False``); per sample is the same at its batch of 1."""
    small = F.interpolate(mask.float()[:, None], size=size, mode="nearest")
    shifted = small + FLOOR
    top = shifted.amax(dim=(1, 2, 3), keepdim=True) if per_sample else shifted.max()
    return shifted / top


# --- reconstruction (spec §6.1, §6.2) ----------------------------------------------------------------------------

def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample ``sum_{c,h,w} m^2 (pred - target)^2 / C / sum_{h,w} m``, averaged over the batch: the MSE of the
    masked prediction and target, rescaled so the loss does not depend on the region's size."""
    channels = pred.shape[1]
    mask = mask.to(pred)
    per_sample = ((mask * (pred - target)) ** 2).sum(dim=(1, 2, 3)) / channels / mask.sum(dim=(1, 2, 3))
    return per_sample.mean()


def style_weight(kind: str, progress: float, weight: float = 2.0) -> float:
    """Style and composed samples count double during the first half of each phase (the identity loss dominates
    early, README)."""
    return weight if kind in ("style", "both") and progress < 0.5 else 1.0


# --- identity (spec §6.3) ----------------------------------------------------------------------------------------

def identity_loss(embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``1 - cos(embedding, reference)`` per face, averaged."""
    return (1 - F.cosine_similarity(embedding.float(), reference.float().to(embedding.device), dim=-1)).mean()


# --- attention refocusing (spec §6.4) ----------------------------------------------------------------------------

def refocus_targets(kind: str, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which region each placeholder token of a sample should attend to. ``mask``: the sample's soft mask (the
    face for ``instance``, everything but the face for ``style`` and ``both``)."""
    if kind == "instance":
        return {SUBJECT: mask}
    if kind == "style":
        return {STYLE: mask}
    if kind == "both":
        return {SUBJECT: 1 - mask, STYLE: mask}
    raise ValueError(f"unknown sample kind {kind!r}; one of {KINDS}")


def refocus_loss(maps: torch.Tensor, positions: Mapping[str, int], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The attention-refocusing loss of one sample.

    ``maps [L, h, w, T]``: the cross-attention probabilities of the captured layers (all heads, L maps) for the T
    prompt tokens; ``positions``: token -> its column (first occurrence); ``targets``: token -> soft region
    ``[H, W]`` at the loss resolution. Each token's maps are upsampled (bilinear), min-max normalised with the
    extremes held constant, set to the constant 1 inside the region (R >= 0.5), averaged over the L maps and
    compared with R: only attention that leaks outside the region is penalised. Mean over the sample's tokens.
    """
    losses = []
    for token, region in targets.items():
        if token not in positions:
            continue
        column = maps[..., positions[token]]  # [L, h, w]
        up = F.interpolate(column[:, None].float(), size=region.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        low = up.detach().amin(dim=(1, 2), keepdim=True)
        high = up.detach().amax(dim=(1, 2), keepdim=True)
        normalised = (up - low) / (high - low).clamp_min(1e-12)
        region = region.to(normalised)
        inside = (region >= 0.5).expand_as(normalised)
        normalised = torch.where(inside, torch.ones_like(normalised), normalised)
        losses.append(((normalised.mean(0) - region) ** 2).mean())
    if not losses:
        return maps.new_zeros(())
    return torch.stack(losses).mean()


# --- textual inversion details (spec §3, §4) ---------------------------------------------------------------------

def pull_norms(vectors: torch.Tensor, lr: float, target: float = 0.4) -> torch.Tensor:
    """After each phase-1 update: ``e <- e/|e| * (|e| + lam (0.4 - |e|))`` with ``lam = min(1, 100 lr)``."""
    lam = min(1.0, 100 * lr)
    norms = vectors.norm(dim=-1, keepdim=True)
    return vectors / norms.clamp_min(1e-12) * (norms + lam * (target - norms))


def style_token_init(width: int, generator: torch.Generator) -> torch.Tensor:
    """The style token has no initializer word: N(0, 0.017^2) per dimension (norm ~0.47 at 768)."""
    return torch.randn(1, width, generator=generator) * 0.017


# --- schedules (spec §4, §5) -------------------------------------------------------------------------------------

def decayed_lr(base: float, update: int, total: int) -> float:
    """Linear decay to 0, the scheduler stepped before each update: update ``k`` (0-based) uses
    ``base * (1 - (k + 1) / total)``, so the last update's rate is 0."""
    return base * max(0.0, 1 - (update + 1) / total)


def sample_timesteps(n: int, upper: int, generator: torch.Generator) -> torch.Tensor:
    """``t ~ U{0 .. upper-1}``: 1000 in phase 1, 800 in phase 2 (the official ``t`` multiplier 0.8)."""
    return torch.randint(0, upper, (n,), generator=generator)


# --- the sample list (spec §2) -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    kind: str
    subject: int | None  # index of the subject photo (instance, both)
    style: int | None  # index of the style photo (style, both)


def compose_items(n_subject: int, n_style: int, generator: torch.Generator, with_both: bool = True) -> list[Item]:
    """``r = max(1, N_style // N_subject)`` copies of every subject photo and every style photo, then half as many
    distinct random (subject, style) pairs (composed samples): the three kinds about 1:1:1. Phase 1 uses no pairs."""
    repeat = max(1, n_style // n_subject)
    base = [Item("instance", i, None) for _ in range(repeat) for i in range(n_subject)]
    base += [Item("style", None, j) for j in range(n_style)]
    if not with_both:
        return base
    pairs = [(i, j) for i in range(n_subject) for j in range(n_style)]
    count = min(len(base) // 2, len(pairs))
    chosen = torch.randperm(len(pairs), generator=generator)[:count].tolist()
    return base + [Item("both", pairs[c][0], pairs[c][1]) for c in sorted(chosen)]


#: our own variants of the official prompt families (spec §2 fixes the pattern and the counts: 10, 7, 10)
TEMPLATES = {
    "instance": ("a photo of a {S} person", "the photo of a {S} person", "a good photo of a {S} person",
                 "a close-up photo of a {S} person", "a bright photo of a {S} person", "a cropped photo of a {S} person",
                 "a clean photo of a {S} person", "a nice photo of a {S} person", "a photo of the {S} person",
                 "a portrait photo of a {S} person"),
    "style": ("a painting of a person in the style of {T}", "a picture of a person in the style of {T}",
              "a rendering of a person in the style of {T}", "a portrait of a person in the style of {T}",
              "a close-up picture of a person in the style of {T}", "a good picture of a person in the style of {T}",
              "a nice painting of a person in the style of {T}"),
    "both": ("a photo of a {S} person in the style of {T}", "the photo of a {S} person in the style of {T}",
             "a good photo of a {S} person in the style of {T}", "a close-up photo of a {S} person in the style of {T}",
             "a bright photo of a {S} person in the style of {T}", "a cropped photo of a {S} person in the style of {T}",
             "a clean photo of a {S} person in the style of {T}", "a nice photo of a {S} person in the style of {T}",
             "a portrait photo of a {S} person in the style of {T}", "a photo of the {S} person in the style of {T}"),
}
#: the paper's inference prompt (its wording differs from the training templates, as in the official pipeline)
INFERENCE_PROMPT = "A photo of a {S} person with style {T}"


def log_skip_rate(skipped: int, total: int) -> str:
    """"identity term skipped in 12 of 40 steps (30 %)" for the phase log."""
    rate = 100 * skipped / total if total else math.nan
    return f"identity term skipped in {skipped} of {total} steps ({rate:.0f} %): no face found in the predicted image"
