"""The training loop shared by every method.

A method supplies its trainable tensors, an optimizer and ``loss_fn(generator) -> StepResult``; the engine
does the rest the same way for all of them: per-step seeding (so resume is exact), gradient accumulation,
the NaN guard, progress/preview/cancel through the host sink, periodic saves, and "save state, then
re-raise" when the user cancels or something fails mid-run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch

from ..errors import TrainingDivergedError
from .sink import ProgressSink
from .state import TrainingState


@dataclass
class StepResult:
    loss: torch.Tensor
    preview: Optional[Callable[[], torch.Tensor]] = None  # lazily built [H,W,3] image, only on preview steps


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """All randomness of one (micro-)step comes from here: same seed + step -> same batch, t and noise."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + step * 1_009 + micro) % (2**63 - 1))


@dataclass
class Trainer:
    params: Mapping[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Generator], StepResult]
    sink: ProgressSink
    steps: int
    seed: int
    grad_accum: int = 1
    save_every: int = 0
    preview_every: int = 0
    state: TrainingState | None = None
    after_step: Optional[Callable[[], None]] = None

    def run(self, start_step: int = 0) -> list[float]:
        """Train from ``start_step`` to ``steps``; returns the loss of each step run."""
        losses: list[float] = []
        done = saved = start_step
        try:
            for step in range(start_step, self.steps):
                self.sink.check_cancel()
                self.optimizer.zero_grad(set_to_none=True)
                total, preview = 0.0, None
                for micro in range(self.grad_accum):
                    result = self.loss_fn(step_generator(self.seed, step, micro))
                    loss = result.loss / self.grad_accum
                    if not torch.isfinite(loss):
                        raise TrainingDivergedError(
                            f"The loss became {loss.item()} at step {step + 1}. Nothing was written for this run; "
                            f"the last saved state (step {saved}) is kept. Lower the learning rate or check the images.")
                    loss.backward()
                    total += float(loss.detach())
                    self.sink.check_cancel()
                    if micro == 0:
                        preview = result.preview
                self._check_grads(step)
                self.optimizer.step()
                if self.after_step is not None:
                    self.after_step()
                done = step + 1
                losses.append(total)
                show = preview if (preview is not None and self.preview_every and
                                   (done % self.preview_every == 0 or done == self.steps)) else None
                self.sink.progress(done, self.steps, loss=total, preview=show() if show else None)
                if self.state is not None and self.save_every and done % self.save_every == 0:
                    self.state.save(done, self.params, self.optimizer)
                    saved = done
        except TrainingDivergedError:
            raise
        except BaseException:  # cancel (host exception / Ctrl-C) or crash: keep what was learned so far
            if self.state is not None and done > saved:
                self.state.save(done, self.params, self.optimizer)
                self.sink.log(f"Stopped at step {done}/{self.steps}; state saved — queue again with resume on to continue.")
            raise
        if self.state is not None and done > saved:
            self.state.save(done, self.params, self.optimizer)
        return losses

    def _check_grads(self, step: int) -> None:
        for name, p in self.params.items():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise TrainingDivergedError(
                    f"The gradient of '{name}' became NaN/inf at step {step + 1}. Nothing was written for this run. "
                    "Lower the learning rate or check the images.")

