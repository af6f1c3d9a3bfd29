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

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$")


def safe_name(name: str) -> str:
    """Return ``name`` if it is a usable artifact name, else raise with a message saying what is allowed.

    We refuse rather than rewrite: a silently changed name would make ``embedding:<name>`` fail later.
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
    if not _NAME_OK.match(name):
        raise BadInputError(
            f"The name {name!r} has characters that are not allowed. Use 1-64 letters, digits, '_', '-', '.' "
            "or spaces, starting with a letter or digit."
        )
    return name


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Write a file through ``write(tmp_path)`` and move it into place in one rename.

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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
