"""Celebrity name lists and their token columns: the statistics Cross-Init and Celeb Basis build on.

A *column* is a BPE position, not a word: column 0 holds the first token of every name, column 1 the second
(which for a name like "Zendaya Coleman" may be the second piece of the first name). Both papers index this way.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ..assets import asset_path, read_lines
from ..errors import BadInputError

BUNDLED_NAMES = asset_path("celebrity_names.txt")


def read_name_file(path: str | Path | None) -> list[str]:
    """The names of a list file (one per line, ``#`` comments skipped, duplicates kept); the bundled list for None.
    Every way the file can be unusable is a :class:`BadInputError` naming it."""
    names_path = Path(path) if path else BUNDLED_NAMES
    if not names_path.is_file():
        raise BadInputError(f"Celebrity name file not found: {names_path} (one name per line, UTF-8 text).")
    try:
        names = read_lines(names_path)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(f"{names_path} is not a UTF-8 text file of names, one per line ({exc}).") from exc
    if not names:
        raise BadInputError(f"{names_path} has no names in it (one name per line).")
    return names


def unique_sorted(names: Sequence[str]) -> list[str]:
    """Exact duplicates dropped, then sorted: the order Celeb Basis builds its basis in (spec §4 step 1)."""
    return sorted(set(names))


def names_digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def name_columns(tokenize, names: Sequence[str], n: int) -> list[list[int]]:
    """Token ids per BPE position c < n over all names (duplicates count). ``tokenize(text)`` gives ids without
    BOS/EOS."""
    columns: list[list[int]] = [[] for _ in range(n)]
    for name in names:
        ids = tokenize(name)
        for c in range(min(n, len(ids))):
            columns[c].append(ids[c])
    return columns
