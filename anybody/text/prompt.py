"""Turn a prompt with placeholder words into the 77 token rows a CLIP text encoder reads.

A row is either a token id (looked up in the host's own token table) or a vector that replaces the table
lookup at that position. Both ComfyUI (tensors in the token list) and our diffusers adapter (a hook on the
token-embedding layer) consume this form, so injection is written once. Vectors stay attached to autograd,
which is what makes textual-inversion training through the host encoder possible.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence, Union

import torch

from ..errors import BadInputError

Row = Union[int, torch.Tensor]
PromptRows = list  # list[Row] of length `length`
CONTEXT_LENGTH = 77


def prompt_rows(
    prompt: str,
    injections: Mapping[str, torch.Tensor],
    tokenize: Callable[[str], Sequence[int]],
    bos: int,
    eos: int,
    pad: int,
    length: int = CONTEXT_LENGTH,
) -> PromptRows:
    """Lay out ``prompt`` as ``[BOS, ..., EOS, PAD...]`` with each placeholder replaced by its vectors.

    ``injections`` maps a placeholder string as written in the prompt (e.g. ``"<alice>"``) to a ``[n, D]``
    tensor; each occurrence takes ``n`` rows. ``tokenize`` returns ids without BOS/EOS. Text between
    placeholders is tokenized piece by piece; CLIP's BPE pre-splits on whitespace, so this matches
    tokenizing the whole prompt whenever placeholders are separated by spaces.
    """
    body: list[Row] = []
    words = sorted((w for w in injections if w), key=len, reverse=True)
    pieces = re.split("(" + "|".join(re.escape(w) for w in words) + ")", prompt) if words else [prompt]
    for piece in pieces:
        if piece in injections:
            vectors = injections[piece]
            if vectors.dim() != 2:
                raise BadInputError(f"Vectors for {piece!r} must be [n, D], got {tuple(vectors.shape)}.")
            body.extend(vectors.unbind(0))
        elif piece.strip():
            body.extend(int(i) for i in tokenize(piece))
    if len(body) > length - 2:
        raise BadInputError(
            f"The prompt is {len(body)} tokens long; at most {length - 2} fit in one CLIP window. Shorten it."
        )
    return [bos, *body, eos] + [pad] * (length - 2 - len(body))


def rows_width(rows: PromptRows) -> int | None:
    """Width D of the injected vectors in ``rows``, or None if there are none."""
    for r in rows:
        if isinstance(r, torch.Tensor):
            return int(r.shape[-1])
    return None
