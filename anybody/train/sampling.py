"""Deterministic DDIM sampling on the host's own denoiser: how a trainer renders its current identity mid-run.

It runs on ``host.predict`` — the very model being trained, with its LoRA adapters and the host's patches — so a
mid-training render needs no second model in memory. DDIM with eta 0 and SD's "leading" timesteps (offset 1, the
last step to ᾱ_0, as SD's scheduler config says) is the sampler the papers' evaluations use; classifier-free guidance
mixes the conditioned and unconditioned outputs, which is exact for eps and v alike since both are linear in them.
"""
from __future__ import annotations

import torch

from .diffusion import ddim_step, eps_from, x0_from


def ddim_timesteps(steps: int, total: int = 1000) -> list[int]:
    """The ``steps`` DDPM timesteps visited, high to low: 0, k, 2k, ... plus SD's offset of 1."""
    stride = total // steps
    return [min(i * stride + 1, total - 1) for i in range(steps)][::-1]


@torch.no_grad()
def ddim_sample(host, cond, uncond, noise: torch.Tensor, steps: int = 15, guidance: float = 5.0) -> torch.Tensor:
    """Latents from ``noise [B,C,h,w]`` (unit variance) under ``cond`` with ``uncond`` for guidance (both the host's
    ``Cond`` with batch B, or batch 1 to be repeated)."""
    from ..host.base import Cond

    alphas = host.alphas_cumprod.double()
    b = len(noise)

    def batch(c):
        rep = b // len(c.context)
        return Cond(c.context.repeat(rep, 1, 1), None if c.pooled is None else c.pooled.repeat(rep, 1))

    cond, uncond = batch(cond), batch(uncond)
    both = Cond(torch.cat([uncond.context, cond.context]),
                None if cond.pooled is None else torch.cat([uncond.pooled, cond.pooled]))
    x = noise.to(host.device, torch.float32)
    visited = ddim_timesteps(steps, len(alphas))
    for i, t in enumerate(visited):
        a = alphas[t].float().to(host.device)
        a_prev = alphas[visited[i + 1]].float().to(host.device) if i + 1 < len(visited) else alphas[0].float().to(host.device)
        with host.autocast():
            out = host.predict(torch.cat([x, x]), torch.full((2 * b,), t, dtype=torch.long), both).float()
        plain, guided = out.chunk(2)
        pred = plain + guidance * (guided - plain)
        x0 = x0_from(host.prediction, x, pred, a)
        eps = eps_from(host.prediction, x, pred, a)
        x = ddim_step(x0, eps, a_prev)
    return x
