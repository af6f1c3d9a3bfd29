"""The training loop shared by every method.

A method supplies its trainable tensors, an optimizer and ``loss_fn(generator) -> StepResult``; the engine
does the rest the same way for all of them: per-step seeding (so resume is exact), gradient accumulation,
loss scaling for fp16 hosts, the NaN guard, progress/preview/cancel through the host sink, periodic saves,
and "save state, then re-raise" when the user cancels or something fails mid-run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from ..errors import NoGradientError, OutOfMemoryAnybodyError, ProgressNotSavedError, TrainingDivergedError
from . import curve
from .interrupts import held_signals
from .likeness import LikenessTracker
from .loss_scale import LossScale
from .sink import ProgressSink
from .state import TrainingState


@dataclass
class StepResult:
    loss: torch.Tensor
    preview: Optional[Callable[[], torch.Tensor]] = None  # lazily built [H,W,3] image, only on preview steps


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """All randomness of one (micro-)step comes from here: same seed + step -> same batch, t and noise."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + step * 1_009 + micro) % (2**63 - 1))


class _Overflow(Exception):
    """A loss-scaled step produced inf/NaN gradients: compute it again at a lower scale."""


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
    loss_scale: LossScale | None = None  # set for fp16 hosts
    buffers: Optional[Mapping[str, torch.Tensor]] = None  # updated by after_step (an EMA); saved with the state
    before_step: Optional[Callable[[int], None]] = None  # called with the step index before its gradients (schedules)
    max_grad_norm: float = 0.0  # > 0: clip the global gradient norm of ``clipped`` (all params when None)
    clipped: Optional[Sequence[str]] = None
    #: a step may leave some tensors out (a prompt without one of two tokens): they get a zero gradient, as rows of
    #: one trained embedding table would; at least one tensor must still receive a gradient
    sparse_grads: bool = False
    save_minutes: float = 5.0  # also save when this long has passed since the last save (0: steps only)
    curve_title: str = "loss"  # the chart drawn below each preview (a phase name for multi-phase methods)
    #: renders and scores the identity every N steps, keeps the best step's tensors, may end the run on a plateau;
    #: its kept tensors must be among the buffers the method passed to ``state.load``
    likeness: Optional[LikenessTracker] = None

    def __post_init__(self) -> None:
        #: the loss of every completed step, also of the steps before a resume (kept in the saved state)
        self.history: list[float] = []
        self.stopped_early_at: int | None = None  # the step a likeness plateau ended the run at

    def run(self, start_step: int = 0) -> list[float]:
        """Train from ``start_step`` to ``steps``; returns the loss of each step run."""
        losses: list[float] = []
        self.history = self._earlier_losses(start_step)
        done = saved = start_step
        last_save = began = time.monotonic()
        try:
            if self._evaluate_first(start_step):
                self.stopped_early_at = start_step
            for step in ([] if self.stopped_early_at is not None else range(start_step, self.steps)):
                self.sink.check_cancel()
                if self.before_step is not None:
                    self.before_step(step)
                total, preview = self.step_gradients(step)
                self._check_grads(step)
                if self.max_grad_norm > 0:
                    names = self.clipped if self.clipped is not None else list(self.params)
                    torch.nn.utils.clip_grad_norm_([self.params[n] for n in names], self.max_grad_norm)
                with held_signals():  # parameters, counters and saves change together or not at all
                    self.optimizer.step()
                    if self.loss_scale is not None:
                        self.loss_scale.step_done()
                    if self.after_step is not None:
                        self.after_step()
                    self._check_params(step)
                    done = step + 1
                    losses.append(total)
                    self.history.append(total)
                if self.likeness is not None and self.likeness.due(done, self.steps):
                    self.sink.log(self.likeness.describe(self.likeness.evaluate(done), done))
                    if self.likeness.plateaued() and done < self.steps:
                        self.stopped_early_at = done
                show = preview if (preview is not None and self.preview_every and self.sink.shows_previews and
                                   (done % self.preview_every == 0 or done == self.steps)) else None
                self.sink.progress(done, self.steps, loss=total, preview=self._with_curve(show()) if show else None)
                due = (self.save_every and done % self.save_every == 0) or (
                    self.save_minutes and time.monotonic() - last_save >= self.save_minutes * 60)
                if self.stopped_early_at is not None:
                    self.sink.log(f"Stopped early at step {done}/{self.steps}: likeness has not improved by "
                                  f"{self.likeness.min_delta} for {self.likeness.patience} evaluations.")
                    break
                if self.state is not None and due and done < self.steps:
                    self._save(done)
                    saved, last_save = done, time.monotonic()
        except (TrainingDivergedError, ProgressNotSavedError, NoGradientError):
            raise
        except BaseException as exc:  # cancel (host exception / Ctrl-C), out of memory or crash: keep what was learned
            if self.state is not None and done > saved:
                self._save(done)
                self.sink.log(f"Stopped at step {done}/{self.steps}; progress saved. Run again with the same settings to "
                              "continue (ComfyUI: saved_progress 'resume'; command line: --resume).")
            if is_out_of_memory(exc):
                raise out_of_memory(f"at step {done + 1}" + (f" (state of step {done} saved: resume continues there)"
                                                             if self.state is not None and done else "")) from exc
            raise
        if self.state is not None and done > saved:
            self._save(done)
        if self.likeness is not None and self.likeness.seconds:
            spent = time.monotonic() - began
            self.sink.log(f"Likeness: {len(self.likeness.history)} evaluation(s) took {self.likeness.seconds:.1f} s, "
                          f"{100 * self.likeness.seconds / max(spent, 1e-9):.0f} % of this run's {spent:.0f} s.")
        return losses

    def _evaluate_first(self, start_step: int) -> bool:
        """A resumed run continues the saved likeness curve, and evaluates a due step an interrupt left unevaluated
        (the tensors are exactly those of that step). True when that evaluation already ends the run."""
        if self.likeness is None or not start_step or self.state is None:
            return False
        self.likeness.restore(self.state.extra.get("likeness"))
        evaluated = {step for step, _, _ in self.likeness.history}
        if self.likeness.due(start_step, self.steps) and start_step not in evaluated:
            self.sink.log(self.likeness.describe(self.likeness.evaluate(start_step), start_step))
        return self.likeness.plateaued() and start_step < self.steps

    def step_gradients(self, step: int) -> tuple[float, Optional[Callable[[], torch.Tensor]]]:
        """Leave the (unscaled) gradients of ``step`` in ``.grad``; an overflowing loss scale is lowered and the
        step computed again. Returns the step's loss and its lazy preview."""
        while True:
            try:
                return self._accumulate(step)
            except _Overflow:
                if not self.loss_scale.overflowed():
                    self._diverged_grads(step)

    def _accumulate(self, step: int) -> tuple[float, Optional[Callable[[], torch.Tensor]]]:
        """Forward + backward of every micro-batch of ``step``; the gradients are left unscaled in ``.grad``."""
        self.optimizer.zero_grad(set_to_none=True)
        scale = self.loss_scale.scale if self.loss_scale is not None else 1.0
        total, preview = 0.0, None
        for micro in range(self.grad_accum):
            result = self.loss_fn(step_generator(self.seed, step, micro))
            loss = result.loss / self.grad_accum
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"The loss became {loss.item()} at step {step + 1}. Nothing was written for this run; "
                    f"the last saved state is kept. Lower the learning rate or check the images.")
            (loss * scale if scale != 1.0 else loss).backward()
            total += float(loss.detach())
            self.sink.check_cancel()
            if micro == 0:
                preview = result.preview
        if scale != 1.0:
            grads = [p.grad for p in self.params.values() if p.grad is not None]
            if not all(torch.isfinite(g).all() for g in grads):
                raise _Overflow()
            for g in grads:
                g.div_(scale)
        return total, preview

    def _earlier_losses(self, start_step: int) -> list[float]:
        """The curve of the steps a resumed run already did (NaN where an older state file did not keep them)."""
        saved = list(self.state.extra.get("losses", [])) if (self.state is not None and start_step) else []
        saved = [math.nan if v is None else float(v) for v in saved[:start_step]]
        return [math.nan] * (start_step - len(saved)) + saved

    def _likeness_points(self) -> list:
        return [] if self.likeness is None else list(self.likeness.history)

    def _with_curve(self, preview: torch.Tensor) -> torch.Tensor:
        points = [(step, value) for step, value, _ in self._likeness_points()]
        return curve.beside(preview, lambda width: curve.render(self.history, self.steps, width,
                                                                 title=self.curve_title, likeness=points))

    def curve_csv(self) -> Optional[Path]:
        """Where the loss of every step is written at each save: beside the training state."""
        return None if self.state is None else self.state.directory / f"{self.state.name}.loss.csv"

    def _save(self, done: int) -> None:
        """Save progress with interrupts held back: parameters, counters and the file change together or not at all."""
        extra = {"loss_scale": self.loss_scale.state()} if self.loss_scale is not None else {}
        extra["losses"] = [round(v, 6) if math.isfinite(v) else None for v in self.history[:done]]
        buffers = dict(self.buffers or {})
        if self.likeness is not None:
            extra["likeness"] = self.likeness.state()
            buffers.update(self.likeness.buffers())
        try:
            with held_signals():
                self.state.save(done, self.params, self.optimizer, extra, buffers or None)
                curve.write_csv(self.curve_csv(), self.history[:done], self._likeness_points())
        except OSError as exc:  # full disk, file-size limit, permissions changed mid-run
            raise ProgressNotSavedError(
                f"Could not save the progress of step {done} to {self.state.path} ({exc.strerror or exc}). The last "
                "saved progress there is kept, complete. Free space and run again with the same settings to continue, "
                "or copy that file into another output folder's training state and continue there.") from exc

    def _check_params(self, step: int) -> None:
        """A finite gradient times a huge learning rate can still make the vectors inf: never keep or save those."""
        for name, p in self.params.items():
            if not torch.isfinite(p).all():
                raise TrainingDivergedError(
                    f"'{name}' became NaN/inf in step {step + 1} (the learning rate is far too high?). Nothing was "
                    "written for this run; the last saved progress is kept. Lower the learning rate.")

    def _check_grads(self, step: int) -> None:
        if self.sparse_grads:
            if all(p.grad is None for p in self.params.values()):
                raise no_gradient("any of the trained tensors")
            for p in self.params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        for name, p in self.params.items():
            if p.grad is None:
                raise no_gradient(f"'{name}'")
            if not torch.isfinite(p.grad).all():
                self._diverged_grads(step, name)

    @staticmethod
    def _diverged_grads(step: int, name: str = "the trained vectors") -> None:
        raise TrainingDivergedError(
            f"The gradient of '{name}' became NaN/inf at step {step + 1}. Nothing was written for this run. "
            "Lower the learning rate or check the images.")


def out_of_memory(where: str) -> OutOfMemoryAnybodyError:
    """The out-of-memory error every trainer raises: where it happened, and what to lower."""
    return OutOfMemoryAnybodyError(
        f"Out of memory {where}. Lower 'batch' and raise 'grad_accum' by the same factor (same result), turn on "
        "gradient_checkpointing, or lower the resolution; close other programs using the GPU.")


def no_gradient(what: str) -> NoGradientError:
    """The model's output does not depend on what is trained: training would silently change nothing."""
    return NoGradientError(
        f"No gradient reaches {what}: the model's output does not depend on it, so training would change nothing. An "
        "attention backend without a backward pass does this (ComfyUI: --use-sage-attention; restart without it to "
        "train), as does a node that replaces the conditioning inside the model.")


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
