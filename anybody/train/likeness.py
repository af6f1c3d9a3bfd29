"""Likeness while training: render the current identity every N steps, score it, keep the best step, stop on a
plateau.

The loss of a diffusion trainer says little about when the identity is right; likeness does. Every ``every`` steps
the method's ``probe`` renders a few images with fixed seeds and prompts through the model being trained and
scores them against the reference photos with the loaded recognizer. The tensors of the best-scoring evaluation
are kept (and saved with the progress, so a resumed run keeps them too); with ``patience`` the run ends once
that many evaluations in a row have not beaten the best by ``min_delta``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch


@dataclass
class Evaluation:
    """What one probe found: the mean identity cosine of the renders (None: no face in any), and the share of
    renders in which a face was detected."""

    likeness: Optional[float]
    face_rate: float


@dataclass
class LikenessTracker:
    every: int
    probe: Callable[[], Evaluation]
    tracked: Mapping[str, torch.Tensor]  # the tensors whose best values are kept (the identity vectors)
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    min_delta: float = 0.005
    history: list[tuple[int, Optional[float], float]] = field(default_factory=list)
    best_step: int = 0
    best_likeness: float = -math.inf
    last_improvement: int = 0  # the step of the last evaluation that beat ``reference`` by min_delta
    reference: float = -math.inf  # the likeness of that evaluation: small gains add up against it, as in Keras
    seconds: float = 0.0  # time spent evaluating in this run

    def __post_init__(self) -> None:
        # the best so far starts as the starting point, so it exists (and is saved) before the first evaluation
        self.best = {k: v.detach().clone() for k, v in self.tracked.items()}

    def due(self, done: int, total: int) -> bool:
        return self.every > 0 and (done % self.every == 0 or done == total)

    def evaluate(self, done: int) -> Evaluation:
        """Probe the current tensors; remember them if they are the most alike so far."""
        began = time.perf_counter()
        with torch.no_grad():
            result = self.probe()
        self.seconds += time.perf_counter() - began
        self.history.append((done, result.likeness, result.face_rate))
        if result.likeness is not None and result.likeness >= self.reference + self.min_delta:
            self.reference, self.last_improvement = result.likeness, done
        if result.likeness is not None and result.likeness > self.best_likeness:
            self.best_likeness, self.best_step = result.likeness, done
            for k, v in self.tracked.items():  # in place: the engine saves these very tensors
                self.best[k].copy_(v.detach())
        return result

    def plateaued(self) -> bool:
        """``patience`` evaluations in a row without beating the best by ``min_delta``."""
        if self.patience <= 0 or not self.history:
            return False
        return sum(1 for step, _, _ in self.history if step > self.last_improvement) >= self.patience

    def describe(self, result: Evaluation, done: int) -> str:
        score = "no face in the renders" if result.likeness is None else f"likeness {result.likeness:.3f}"
        best = f"; best {self.best_likeness:.3f} at step {self.best_step}" if self.best_step else ""
        return f"step {done}: {score} (faces in {result.face_rate:.0%} of the renders){best}"

    # --- saved with the progress ------------------------------------------------------------------------------
    def buffers(self) -> dict[str, torch.Tensor]:
        """The kept tensors, saved beside the parameters (the engine writes and restores them in place)."""
        return {f"likeness_best.{k}": v for k, v in self.best.items()}

    def state(self) -> dict:
        return {"history": [list(h) for h in self.history], "best_step": self.best_step,
                "best_likeness": None if self.best_step == 0 else self.best_likeness,
                "last_improvement": self.last_improvement,
                "reference": None if self.reference == -math.inf else self.reference}

    def restore(self, saved: Optional[dict]) -> None:
        """Continue the saved curve; the kept tensors themselves were restored with the buffers."""
        if not saved:
            return
        self.history = [(int(s), None if v is None else float(v), float(r)) for s, v, r in saved.get("history", [])]
        self.best_step = int(saved.get("best_step", 0))
        self.best_likeness = -math.inf if saved.get("best_likeness") is None else float(saved["best_likeness"])
        self.last_improvement = int(saved.get("last_improvement", 0))
        self.reference = -math.inf if saved.get("reference") is None else float(saved["reference"])
