"""Cross-attention probabilities of chosen UNet layers, kept with their autograd graph (MagiCapture's refocusing).

Only the chosen layers compute ``softmax(q k^T / sqrt(d))`` explicitly (in fp32); every other layer keeps the host's
fast attention. Layers are chosen by UNet level — the resolution step, 0 at the top — never by class name or by
the size of their input, so the choice holds for any training resolution and any host's attention classes. SD1.5's
16x16 layers at 512 px are level 2: ``down_blocks.2.attentions.{0,1}`` and ``up_blocks.1.attentions.{0,1,2}``
(LDM ``input_blocks.7/8.1``, ``output_blocks.3/4/5.1``), 8 heads each: 40 maps.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch


def level_of(path: str, levels: int = 4, layers_per_block: int = 2) -> int | None:
    """The resolution level of a UNet attention module path (diffusers or LDM layout), None for the middle block."""
    m = re.search(r"(?:^|\.)down_blocks\.(\d+)\.attentions\.", path)
    if m:
        return int(m[1])
    m = re.search(r"(?:^|\.)up_blocks\.(\d+)\.attentions\.", path)
    if m:
        return levels - 1 - int(m[1])
    m = re.search(r"(?:^|\.)input_blocks\.(\d+)\.1\.", path)
    if m:
        return (int(m[1]) - 1) // (layers_per_block + 1)
    m = re.search(r"(?:^|\.)output_blocks\.(\d+)\.1\.", path)
    if m:
        return levels - 1 - int(m[1]) // (layers_per_block + 1)
    return None


def probabilities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` in fp32 for ``[B, heads, N, d]`` and ``[B, heads, T, d]`` -> ``[B, heads, N, T]``."""
    with torch.autocast(device_type=query.device.type, enabled=False):  # fp32 even inside a host's autocast
        scores = query.float() @ key.float().transpose(-1, -2) / math.sqrt(query.shape[-1])
        return scores.softmax(dim=-1)


@dataclass
class AttentionStore:
    """What the captured layers produced in the current forward pass; ``active`` is switched off for passes whose
    maps are not needed (MagiCapture's identity pass)."""

    active: bool = True
    maps: list[torch.Tensor] = field(default_factory=list)  # per layer call: [B, heads, N, T]

    def record(self, probs: torch.Tensor) -> None:
        if self.active:
            self.maps.append(probs)

    def clear(self) -> None:
        self.maps.clear()

    def stacked(self) -> torch.Tensor:
        """``[B, L, h, w, T]``: every recorded head of every layer as a square map (L = layers x heads)."""
        if not self.maps:
            raise RuntimeError("no attention maps were recorded: the captured layers did not run")
        b, _, n, t = self.maps[0].shape
        side = math.isqrt(n)
        if side * side != n or any(m.shape[2] != n for m in self.maps):
            raise RuntimeError(f"captured maps are not one square resolution: {[tuple(m.shape) for m in self.maps]}")
        return torch.cat(self.maps, dim=1).view(b, -1, side, side, t)
