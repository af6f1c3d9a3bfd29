"""Safe file handling: names from users become plain file names, writes are atomic, nothing is overwritten
silently.

Why atomic: a training run can be cancelled or crash at any moment; a half-written embedding that the
host then fails to load (or worse, loads as garbage) is worse than no file.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable

from .errors import BadInputError, FileExistsAnybodyError

MAX_NAME = 64
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: names Windows reserves for devices, with or without an extension ("nul.safetensors" is the device too)
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_name(name: str) -> str:
    """Return ``name`` if it is a usable artifact name, else raise with a message saying what is allowed.

    One rule for file names, ComfyUI's ``embedding:<name>`` (which ends at whitespace) and A1111 prompts. We
    refuse rather than rewrite: a silently changed name would make ``embedding:<name>`` fail later.
    """
    name = (name or "").strip()
    if name.lower().endswith((".safetensors", ".pt", ".bin")):
        name = name.rsplit(".", 1)[0]
    if not name:
        raise BadInputError("The name is empty. Give the identity a short name such as 'alice'.")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise BadInputError(
            f"The name {name!r} contains a path ('/', '\\\\' or '..'). Use a plain name such as 'alice': "
            "the file is always written into the embeddings folder."
        )
    if len(name) > MAX_NAME:
        raise BadInputError(f"The name is {len(name)} characters long; use at most {MAX_NAME}.")
    if any(c.isspace() for c in name):
        suggestion = re.sub(r"\s+", "_", name)
        raise BadInputError(
            f"The name {name!r} contains spaces. Prompts end a name at the first space (embedding:{name.split()[0]} "
            f"would be looked up), so use {suggestion!r} instead."
        )
    if not _NAME_OK.match(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        raise BadInputError(
            f"The name {name!r} has characters that are not allowed ({' '.join(bad) or 'a first character other than a letter or digit'}). "
            "Use letters, digits, '_', '-' and '.', starting with a letter or digit."
        )
    if name.split(".")[0].lower() in _WINDOWS_DEVICES:
        raise BadInputError(f"The name {name!r} is a device name on Windows (CON, NUL, COM1, …), where such a "
                            "file cannot be created. Choose another name.")
    return name


def _file_mode() -> int:
    """0666 less the process umask: what ``open()`` would give, so other users (a webui in Docker) can read it.

    The umask is read, not set and restored: hosts run nodes in threads, and a moment of umask 0 would leak into
    files other threads create then."""
    try:
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = 0o022
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Write a file through ``write(tmp_path)`` and move it into place in one rename.

    The data is flushed to disk before the rename (a power cut leaves the old file or the new one, never an
    empty one) and the file gets normal permissions (``mkstemp`` alone would leave it 0600).
    Raises :class:`FileExistsAnybodyError` when the target exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsAnybodyError(
            f"{path} already exists. Choose another name, or enable 'overwrite' to replace it."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open folders and needs no such step."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some network/FUSE mounts refuse fsync on folders; the rename itself has happened
        pass


def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; else a clear error naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".anybody-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise BadInputError(f"Cannot write into {folder} ({exc.strerror or exc}). Choose another output folder "
                            "(command line: --out), or fix its permissions or free space.") from exc
    return folder
