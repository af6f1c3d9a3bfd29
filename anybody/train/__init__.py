"""The one training engine every method uses (ARCHITECTURE.md §6)."""
from .sink import ConsoleSink, ProgressSink

__all__ = ["ConsoleSink", "ProgressSink"]
