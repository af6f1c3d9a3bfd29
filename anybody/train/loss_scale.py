"""Dynamic loss scaling for fp16 compute.

At batch 8 x 512 px the gradient of an MSE loss entering the UNet is ~1e-5 per element, under fp16's smallest
normal (6e-5): in an fp16 UNet most of it would round to zero. Multiplying the loss by a power of two lifts the
gradients into range; dividing the trainable tensors' (fp32) gradients by it afterwards is exact. When a scaled
step overflows, the *same* step is computed again at half the scale (its randomness comes from the seed and the
step number), so scaling never skips or changes a step, and resume stays exact.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LossScale:
    scale: float = 2.0**16
    growth_interval: int = 100  # good steps before trying twice the scale
    min_scale: float = 1.0
    good_steps: int = 0

    def overflowed(self) -> bool:
        """Halve the scale after an overflow; False when it cannot go lower (the step is really non-finite)."""
        if self.scale <= self.min_scale:
            return False
        self.scale /= 2
        self.good_steps = 0
        return True

    def step_done(self) -> None:
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= 2

    def state(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def restore(self, state: dict | None) -> None:
        if state:
            self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
