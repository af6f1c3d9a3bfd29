"""Progress, preview and cancel: how a long job talks to whichever UI runs it."""
from __future__ import annotations

import sys
import time
from typing import Optional

import torch


class ProgressSink:
    """Base sink: silent, never cancels. Hosts subclass it (ComfyUI progress bar, A1111 ``shared.state``)."""

    #: whether preview images are shown: a console cannot, and decoding one costs a VAE pass (and its memory)
    shows_previews = False

    def progress(self, step: int, total: int, loss: float | None = None, preview: Optional[torch.Tensor] = None) -> None:
        """Report that ``step`` of ``total`` steps are done; ``preview`` is an optional ``[H,W,3]`` 0..1 image."""

    def check_cancel(self) -> None:
        """Raise the host's own cancel exception if the user asked to stop."""

    def log(self, message: str) -> None:
        print(f"[Anybody] {message}", file=sys.stderr, flush=True)


class ConsoleSink(ProgressSink):
    """Prints a single updating progress line; cancel is Ctrl-C (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def progress(self, step, total, loss=None, preview=None) -> None:
        elapsed = time.perf_counter() - self._start
        rate = step / elapsed if elapsed > 0 else 0.0
        text = f"\r[Anybody] step {step}/{total}  {rate:.2f} steps/s"
        if loss is not None:
            text += f"  loss {loss:.4f}"
        print(text, end="\n" if step == total else "", file=sys.stderr, flush=True)


class PhaseSink(ProgressSink):
    """One progress bar over several training phases: phase steps are reported after ``offset`` of ``total``."""

    def __init__(self, inner: ProgressSink, offset: int, total: int) -> None:
        self.inner, self.offset, self.total = inner, offset, total
        self.shows_previews = inner.shows_previews

    def progress(self, step, total, loss=None, preview=None) -> None:
        self.inner.progress(self.offset + step, self.total, loss=loss, preview=preview)

    def check_cancel(self) -> None:
        self.inner.check_cancel()

    def log(self, message: str) -> None:
        self.inner.log(message)
