"""User-facing errors: each message says what is wrong and what to do about it.

Hosts show these messages verbatim (ComfyUI's error dialog, A1111's status line, the CLI's stderr), so
they are written for the person at the keyboard, not for a developer reading a traceback.
"""


def _torch_oom() -> type:
    import torch

    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


class AnybodyError(Exception):
    """A problem the user can fix; the message says how."""


class BadInputError(AnybodyError):
    """The images, names or options given cannot be used."""


class ModelFileError(AnybodyError):
    """A model file is missing, unreadable or not what it claims to be."""


class WrongModelFamilyError(AnybodyError):
    """An identity or file made for one base-model family was used with another (e.g. SDXL on SD1.5)."""


class TrainingDivergedError(AnybodyError):
    """The loss became NaN/inf; the last good state is kept on disk."""


class NoGradientError(AnybodyError):
    """The trained tensors got no gradient: the host's model ignores them (an attention kernel without backward)."""


class ProgressNotSavedError(AnybodyError):
    """Saving the training progress failed; the previous save is intact."""


class FileExistsAnybodyError(AnybodyError):
    """A file would be overwritten without the user asking for it."""


class TrainingCancelled(Exception):
    """Raised by non-ComfyUI hosts when the user cancels; ComfyUI raises its own interrupt exception."""


class OutOfMemoryAnybodyError(AnybodyError, _torch_oom()):
    """The device ran out of memory; the message names what to lower, and the state is saved. It is also a
    ``torch.OutOfMemoryError``, so hosts still run their own out-of-memory cleanup (ComfyUI unloads models)."""
