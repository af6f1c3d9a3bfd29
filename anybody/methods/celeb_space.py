"""The Celeb Basis: a PCA basis of the host's token-embedding space spanned by celebrity names (spec §4).

Per text encoder: for BPE position 1 and 2 of the names, the mean token row ``mu`` and the first K principal
directions ``B`` (orthonormal rows), stored as one ``[2, K+1, D]`` tensor (row 0 the mean), exactly the layout of
the official ``celeb_basis.pt``. An identity is two coefficient vectors ``alpha [2, K]`` and becomes the two token
vectors ``mu + alpha @ B``.

SVD signs are arbitrary, so coefficients only mean something against the basis they were trained on: each
direction is made to have its largest-magnitude entry positive, the basis is computed in float64 on the CPU, and
it is cached on disk under the digest of the token table and of the name list, then reused while both stay the same.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import BadInputError
from ..files import atomic_write
from ..host.base import TextEncoder
from ..text.names import name_columns, names_digest, unique_sorted

N_COMPONENTS = 512
N_TOKENS = 2
#: of the official extraction: "as_built" keeps repeated token ids in a column (its de-duplication never matched,
#: spec §4 step 3); "distinct_tokens" keeps each id once
ROW_MODES = ("as_built", "distinct_tokens")


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def name_token_columns(encoder: TextEncoder, names: Sequence[str], mode: str = "as_built") -> list[list[int]]:
    """Token ids of BPE positions 1 and 2 over the de-duplicated, sorted names (spec §4 steps 1-3)."""
    if mode not in ROW_MODES:
        raise BadInputError(f"Unknown basis row mode {mode!r}; choose one of {', '.join(ROW_MODES)}.")
    columns = name_columns(encoder.tokenize, unique_sorted(names), N_TOKENS)
    if mode == "distinct_tokens":
        columns = [list(dict.fromkeys(col)) for col in columns]
    return columns


def complete_orthonormal(directions: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` unit vectors orthogonal to ``directions`` [r, D] and to each other, by Gram-Schmidt over the standard
    basis e_1, e_2, ... (twice, for float64 accuracy): fixed, unlike the arbitrary null-space rows an SVD returns."""
    found = [d for d in directions.double()]
    extra = []
    for i in range(directions.shape[1]):
        if len(extra) == count:
            break
        v = torch.zeros(directions.shape[1], dtype=torch.float64)
        v[i] = 1.0
        for _ in range(2):
            for u in found:
                v = v - (v @ u) * u
        norm = v.norm()
        if norm > 1e-6:
            found.append(v / norm)
            extra.append(v / norm)
    return torch.stack(extra) if extra else directions.new_zeros(0, directions.shape[1]).double()


def pca_rows(rows: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``[components + 1, D]``: the mean row, then the leading principal directions (float64 SVD, sign-fixed); the
    singular values; and the rank of the centred rows.

    When the rows span fewer than ``components`` directions (repeated token ids: the paper's own list gives 408 in
    column 1), the basis is completed with fixed orthonormal directions outside their span; the official code keeps
    whatever null-space rows its SVD returned there.
    """
    x = rows.double()
    mean = x.mean(0)
    _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
    rank = int((singular > singular[0] * 1e-9).sum()) if len(singular) and singular[0] > 0 else 0
    if rank == 0:
        raise BadInputError("All names give the same token in this position, so there is nothing to build a basis "
                            "from. Use a real list of names (the paper's wiki_names_v2.txt or the bundled one).")
    directions = vh[:min(rank, components)]
    biggest = directions.abs().argmax(dim=1)
    directions = directions * directions[torch.arange(len(directions)), biggest].sign()[:, None]
    if len(directions) < components:
        directions = torch.cat([directions, complete_orthonormal(directions, components - len(directions))])
    return torch.cat([mean[None], directions]).float(), singular[:components].float(), rank


def build_basis(encoder: TextEncoder, names: Sequence[str], components: int = N_COMPONENTS,
                mode: str = "as_built") -> tuple[torch.Tensor, list[int]]:
    """``[2, components + 1, D]`` for one text encoder, and the rank the names span in each column."""
    columns = name_token_columns(encoder, names, mode)
    for c, col in enumerate(columns):
        if len(col) <= components:
            raise BadInputError(f"Only {len(col)} names have a BPE token at position {c + 1}; a basis of {components} "
                                f"directions needs more than {components}. Use a longer name list (the paper's "
                                "wiki_names_v2.txt or the bundled one).")
    # rows rounded through fp16, as the table digest is: an fp16 and an fp32 load of one checkpoint build one basis
    built = [pca_rows(encoder.token_rows(col).half().float(), components) for col in columns]
    return torch.stack([b for b, _, _ in built]), [rank for _, _, rank in built]


@dataclass
class CelebBasis:
    """The bases of every text encoder of one checkpoint, and what they were built from."""

    tensors: dict[str, torch.Tensor]  # encoder key -> [2, K+1, D]
    table_digests: dict[str, str]
    names_digest: str
    mode: str

    @property
    def components(self) -> int:
        return int(next(iter(self.tensors.values())).shape[1]) - 1

    def digests(self) -> dict[str, str]:
        return {k: tensor_digest(v) for k, v in self.tensors.items()}

    def vectors(self, coefficients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Token vectors ``mu + alpha @ B`` per encoder; ``alpha [..., 2, K]`` -> ``[..., 2, D]``."""
        out = {}
        for key, alpha in coefficients.items():
            basis = self.tensors[key].to(alpha)
            out[key] = basis[:, 0] + torch.einsum("...jk,jkd->...jd", alpha, basis[:, 1:])
        return out

    def metadata(self) -> dict[str, str]:
        """What a trained file records so that it can be checked against (and recomputed from) its basis."""
        meta = {"anybody.celeb_basis.names": self.names_digest, "anybody.celeb_basis.rows": self.mode,
                "anybody.celeb_basis.components": str(self.components)}
        for key, digest in self.digests().items():
            meta[f"anybody.celeb_basis.{key}.basis"] = digest
            meta[f"anybody.token_table.{key}"] = self.table_digests[key]
        return meta


def cache_path(folder: Path, key: str, table_digest: str, names_key: str, mode: str, components: int) -> Path:
    return Path(folder) / f"{key}-{table_digest}-{names_key}-{mode}-k{components}.safetensors"


def load_or_build(encoders: Mapping[str, TextEncoder], names: Sequence[str], folder: Path,
                  components: int = N_COMPONENTS, mode: str = "as_built", log=None) -> CelebBasis:
    """The checkpoint's basis from the cache in ``folder``, built and cached when its token table or the name list
    is new. A cached file that fails its own digest is rebuilt."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    names_key = names_digest(unique_sorted(names))
    tensors, digests = {}, {}
    for key, encoder in encoders.items():
        digests[key] = encoder.table_digest()
        path = cache_path(folder, key, digests[key], names_key, mode, components)
        basis = None
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    basis = f.get_tensor("basis")
                    if (f.metadata() or {}).get("anybody.basis_digest") != tensor_digest(basis):
                        basis = None
            except Exception:  # a damaged cache file is only a cache: rebuild it
                basis = None
            if basis is None and log:
                log(f"The cached Celeb Basis {path.name} is damaged; building it again.")
        if basis is None:
            basis, ranks = build_basis(encoder, names, components, mode)
            short = [f"position {c + 1}: {r}" for c, r in enumerate(ranks) if r < components]
            if short and log:
                log(f"The names span fewer than {components} directions of the {key} token table ({', '.join(short)}); "
                    "the rest of the basis is filled with fixed orthonormal directions (as the official code does with "
                    "the paper's own list, whose repeated first names span 408).")
            meta = {"anybody.basis_digest": tensor_digest(basis), "anybody.token_table": digests[key],
                    "anybody.names": names_key, "anybody.rows": mode}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp, b=basis, m=meta: save_file({"basis": b.contiguous()}, tmp, metadata=m),
                         overwrite=True)
            if log:
                log(f"Built the Celeb Basis of {key} ({components} directions per token position) and cached it in "
                    f"{path}.")
        tensors[key] = basis
    return CelebBasis(tensors, digests, names_key, mode)


def token_table_warning(metadata: Mapping[str, str], encoders: Mapping[str, TextEncoder], what: str) -> str | None:
    """A clear warning when ``what`` (an identity file) was made on a token table other than the encoders' own:
    its vectors are positions in that other table's space."""
    differ = [key for key, encoder in encoders.items()
              if metadata.get(f"anybody.token_table.{key}") not in (None, encoder.table_digest())]
    if not differ:
        return None
    return (f"{what} was trained on a checkpoint whose text encoder token table differs from this one "
            f"({', '.join(differ)}); its vectors may mean something else here. Train it again on this checkpoint for "
            "a faithful likeness.")
