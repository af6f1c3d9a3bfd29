"""DECA's 236-value code of a face photo, and DiffusionRig's edits of it.

An edit copies the source's code and takes one group of parameters from a target (or from sliders): the lighting,
the expression with the jaw, or the global head rotation. The edited head is then moved so its FFHQ centre stays
where the source's was, so the edit does not shift the face in the frame (spec §9).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

#: field -> width, in the order DECA's encoder emits them
LAYOUT = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))
CODE_SIZE = sum(width for _, width in LAYOUT)
EDIT_MODES = ("light", "exp", "pose", "latent")


@dataclass
class FaceCode:
    """One batch of DECA codes, split into named fields (``light`` as 9 SH bands x RGB)."""

    shape: torch.Tensor  # (B, 100)
    tex: torch.Tensor    # (B, 50)
    exp: torch.Tensor    # (B, 50)
    pose: torch.Tensor   # (B, 6): global rotation, jaw (axis-angle)
    cam: torch.Tensor    # (B, 3): scale, tx, ty
    light: torch.Tensor  # (B, 9, 3)

    @classmethod
    def split(cls, code: torch.Tensor) -> "FaceCode":
        if code.shape[-1] != CODE_SIZE:
            raise ValueError(f"a DECA code has {CODE_SIZE} values, got {code.shape[-1]}")
        parts, start = {}, 0
        for name, width in LAYOUT:
            parts[name] = code[:, start:start + width]
            start += width
        parts["light"] = parts["light"].reshape(len(code), 9, 3)
        return cls(**parts)

    def join(self) -> torch.Tensor:
        return torch.cat([getattr(self, name).reshape(len(self.shape), -1) for name, _ in LAYOUT], 1)

    def __len__(self) -> int:
        return len(self.shape)

    def select(self, index) -> "FaceCode":
        return FaceCode(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def edited(source: FaceCode, target: FaceCode, mode: str) -> FaceCode:
    """The source's code with the target's parameters for ``mode`` (``latent`` changes nothing physical)."""
    if mode == "light":
        return replace(source, light=target.light.clone())
    if mode == "exp":
        pose = source.pose.clone()
        pose[:, 3:6] = target.pose[:, 3:6]
        return replace(source, exp=target.exp.clone(), pose=pose)
    if mode == "pose":
        pose = source.pose.clone()
        pose[:, :3] = target.pose[:, :3]
        return replace(source, pose=pose)
    if mode == "latent":
        return replace(source)
    raise ValueError(f"unknown edit {mode!r}: choose one of {', '.join(EDIT_MODES)}")


def with_shape(code: FaceCode, shape: torch.Tensor | None) -> FaceCode:
    """The code with a personalised model's album mean shape (``(1, 100)`` or ``(B, 100)``), when there is one."""
    return code if shape is None else replace(code, shape=shape.to(code.shape).expand_as(code.shape).clone())


def centred_vertices(flame, source: FaceCode, edit: FaceCode) -> torch.Tensor:
    """The edited head's vertices, moved so its FFHQ centre is the source's own (unedited, own shape) centre.

    As in the released code the source centre uses the source photo's own DECA shape even when the edit carries
    the album mean shape, so every edit of a personalised model — lighting too — is shifted by that difference.
    """
    own = flame(source.shape, source.exp, source.pose)
    vertices = flame(edit.shape, edit.exp, edit.pose)
    return vertices + (flame.ffhq_centre(own) - flame.ffhq_centre(vertices))[:, None]
