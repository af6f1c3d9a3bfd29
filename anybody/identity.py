"""ANYBODY_IDENTITY: a named set of prompt-space vectors per text encoder, as every method produces it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .text.embedding_file import FAMILY_LABEL, check_vectors, load_embedding, save_embedding


@dataclass
class Identity:
    """What flows between nodes: vectors to splice in where the prompt says ``word``.

    ``vectors`` maps encoder key (``clip_l``/``clip_h``/``clip_g``) to ``[n, D]`` fp32 tensors on the CPU.
    """

    name: str
    family: str
    vectors: dict[str, torch.Tensor]
    method: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_vectors(self.vectors, self.family)

    @property
    def word(self) -> str:
        """The placeholder written in prompts (ComfyUI users write ``embedding:<name>`` instead)."""
        return f"<{self.name}>"

    @property
    def num_vectors(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def require_family(self, family: str) -> None:
        check_vectors(self.vectors, family, what=f"identity '{self.name}'")

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        meta = {"anybody.method": self.method, "anybody.name": self.name, **self.metadata}
        return save_embedding(path, self.vectors, self.family, meta, overwrite=overwrite)

    def save_or_keep(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the embedding; a file that already holds exactly these vectors is kept (a graph or request run
        again), a file with other vectors needs ``overwrite``."""
        from .errors import AnybodyError

        path = Path(path)
        if path.is_file() and not overwrite:
            try:
                existing = Identity.load(path)
                if existing.vectors.keys() == self.vectors.keys() and all(
                        torch.equal(existing.vectors[k], self.vectors[k].float()) for k in self.vectors):
                    return path
            except AnybodyError:
                pass
        return self.save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> "Identity":
        vectors, family, meta = load_embedding(path)
        return cls(name or Path(path).stem, family, vectors, meta.get("anybody.method", "file"), meta)

    def describe(self) -> str:
        return f"{self.name} ({self.method}, {FAMILY_LABEL[self.family]}, {self.num_vectors} vectors)"
