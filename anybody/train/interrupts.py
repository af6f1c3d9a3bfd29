"""Ctrl-C and SIGTERM for the command line: stop like a Cancel, but never in the middle of a state change.

ComfyUI and A1111 cancel cooperatively (the trainer asks between steps), so they need none of this. In a terminal
the interrupt is a signal that can land anywhere — between the optimizer update and the step counter, say, which
would save parameters of step n+1 labelled n. Signals are held back inside :func:`held_signals` and raised as
KeyboardInterrupt when it ends; SIGTERM (``kill``, a container stop) is turned into the same KeyboardInterrupt, so
it saves the progress too.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, so training saves its progress and stops."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _raise_interrupt)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Delay SIGINT/SIGTERM until the block is done (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            raise KeyboardInterrupt(f"signal {pending[0]}")
