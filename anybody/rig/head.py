"""The fitted head as DiffusionRig sees it: FLAME geometry, FLAME texture and the UV layout, rendered into the
aligned photo's frame as the nine-channel condition."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .buffers import crop_to_image, flame_albedo, physical_buffers, project
from .codes import FaceCode, centred_vertices
from .flame import Flame


@dataclass
class HeadModel:
    """Everything needed to turn a DECA code into buffers (all tensors on one device)."""

    flame: Flame
    tex_mean: torch.Tensor    # (S*S*3,) 0..255, BGR
    tex_basis: torch.Tensor   # (S*S*3, >= 50)
    faces: torch.Tensor       # (F, 3) the rendered triangles (DECA's head template)
    uv_coords: torch.Tensor   # (VT, 2) in [0, 1]
    uv_faces: torch.Tensor    # (F, 3) indices into uv_coords

    def to(self, device) -> "HeadModel":
        """A copy on ``device`` (the loaded one, which loader nodes cache, stays where it is)."""
        return HeadModel(copy.deepcopy(self.flame).to(device), self.tex_mean.to(device), self.tex_basis.to(device),
                         self.faces.to(device), self.uv_coords.to(device), self.uv_faces.to(device))

    @torch.no_grad()
    def buffers(self, edit: FaceCode, source: FaceCode, crop_from_image: torch.Tensor, size: int = 256,
                centre: bool = True) -> dict[str, torch.Tensor]:
        """Buffers of the edited code, kept where the source's face is in its photo (``crop_from_image``: the
        DECA crop's 3x3 similarity transform from the source photo, batch-aligned with the codes).

        ``centre``: move the edited head so its FFHQ centre is the source's, as the release does at inference only;
        its stage-2 training data (``create_data.py``) is rendered without this shift, so album buffers are too.
        """
        world = (centred_vertices(self.flame, source, edit) if centre
                 else self.flame(edit.shape, edit.exp, edit.pose))
        placed = crop_to_image(project(world, edit.cam), crop_from_image.to(world))
        albedo = flame_albedo(self.tex_mean, self.tex_basis, edit.tex)
        return physical_buffers(placed, world, self.faces, self.uv_coords, self.uv_faces, albedo, edit.light,
                                size)
