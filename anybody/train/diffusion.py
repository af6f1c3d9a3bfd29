"""The DDPM formulas every method trains with, written once: noising, the eps/v target, and x0 from a prediction.

``a`` is ᾱ_t (``alphas_cumprod`` at the step's timesteps) shaped ``[B, 1, 1, 1]``. eps-prediction targets the
noise; v-prediction (SD2.x-768) targets ``v = √ᾱ·eps − √(1−ᾱ)·x0`` (Salimans & Ho 2022).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .engine import StepResult, no_gradient


def noisy(z0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``x_t = √ᾱ·z0 + √(1−ᾱ)·eps``."""
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def target(prediction: str, z0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """What the UNet should output: eps, or v."""
    return eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * z0


def x0_from(prediction: str, x_t: torch.Tensor, pred: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by the UNet's output (for previews)."""
    if prediction == "eps":
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * pred


def eps_from(prediction: str, x_t: torch.Tensor, pred: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The noise implied by the UNet's output (DDIM's second ingredient beside x0)."""
    if prediction == "eps":
        return pred
    return (1 - a).sqrt() * x_t + a.sqrt() * pred


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The noise that takes ``x0`` to ``x_t`` at ᾱ ``a``: re-derived after x0 is clipped, as guided-diffusion does."""
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta 0): the next, less noisy sample from the predicted clean image and noise."""
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def linear_alphas_cumprod(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t of the DDPM paper's linear beta schedule (pixel-space models such as DiffusionRig), in float64."""
    return torch.cumprod(1 - torch.linspace(beta_start, beta_end, steps, dtype=torch.float64), 0)


def p2_weight(a: torch.Tensor, k: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """Perception-prioritised loss weight ``1 / (k + SNR)^gamma`` (Choi et al. 2022); with k = gamma = 1 it is
    ``1 − ᾱ``: the least noisy steps, which only polish details, count least."""
    return 1 / (k + a / (1 - a)) ** gamma


def denoising_loss(host, z0: torch.Tensor, encode: Callable[[torch.Generator], object],
                   gen: torch.Generator) -> StepResult:
    """The plain diffusion loss of one batch: ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, MSE of the host UNet's output
    against its target, with a lazy preview of the first sample's predicted x0.

    ``encode(gen)`` returns the batch's conditioning (a host ``Cond``); it runs under the host's autocast after
    ``t`` and ``eps`` are drawn, so it may draw further randomness (prompt templates) from ``gen``.
    """
    alphas = host.alphas_cumprod.float()
    t = torch.randint(0, len(alphas), (len(z0),), generator=gen)
    eps = torch.randn(z0.shape, generator=gen).to(host.device)
    a = alphas[t].to(host.device).view(-1, 1, 1, 1)
    x_t = noisy(z0, eps, a)
    with host.autocast():
        cond = encode(gen)
        pred = host.predict(x_t, t, cond).float()
    if torch.is_grad_enabled() and not pred.requires_grad:
        raise no_gradient("the identity vectors through the UNet")
    loss = F.mse_loss(pred, target(host.prediction, z0, eps, a))

    def preview() -> torch.Tensor:
        with torch.no_grad():
            return host.preview_image(x0_from(host.prediction, x_t[:1], pred[:1].detach(), a[:1]))[0]

    return StepResult(loss, preview)
