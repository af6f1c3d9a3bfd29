"""DiffusionRig's sampler: deterministic DDIM over 20 of the 1000 training steps, from one fixed noise.

As the released code runs it (guided-diffusion with ``--timestep_respacing ddim20``): the visited steps are
950, 900, ..., 0 and the network sees those original values; each step clips the predicted photo to [-1, 1] and
re-derives the noise from the clipped prediction; the last step goes to ᾱ = 1 (the clean photo itself).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..train.diffusion import ddim_step, eps_from_x0, linear_alphas_cumprod, x0_from

TRAINING_STEPS = 1000
SAMPLING_STEPS = 20


def respaced_timesteps(steps: int = SAMPLING_STEPS, total: int = TRAINING_STEPS) -> list[int]:
    """The visited training steps, high to low: 0, total/steps, ... (guided-diffusion's "ddimN")."""
    stride = total // steps
    return list(range(0, stride * steps, stride))[::-1]


@torch.no_grad()
def ddim_sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                steps: int = SAMPLING_STEPS, on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Photos in [-1, 1] from ``noise (B, 3, H, W)``; ``denoise(x_t, t)`` returns the predicted noise for the
    batch (its buffers and latents bound by the caller); ``on_step(i, x0)`` sees each clipped prediction."""
    alphas = linear_alphas_cumprod(TRAINING_STEPS).to(noise.device)
    visited = respaced_timesteps(steps)
    x = noise.float()
    for i, t in enumerate(visited):
        a = alphas[t].float()
        a_prev = alphas[visited[i + 1]].float() if i + 1 < len(visited) else torch.ones_like(a)
        eps = denoise(x, torch.full((len(x),), t, dtype=torch.long, device=x.device)).float()
        x0 = x0_from("eps", x, eps, a).clamp(-1, 1)
        x = ddim_step(x0, eps_from_x0(x, x0, a), a_prev)
        if on_step is not None:
            on_step(i, x0)
    return x
