"""FLAME, the head model DECA fits: a template mesh bent by identity and expression blendshapes, pose correctives
and linear blend skinning over five joints (root, neck, jaw, two eyes).

Only what DiffusionRig uses is here: DECA's 100 identity + 50 expression coefficients (blendshape columns 0:100
and 300:350 of the FLAME 2020 file), its 6-value pose (global rotation, jaw; neck and eyes stay at rest), and the
51 static landmarks that place the face's FFHQ centre. The arrays come from :mod:`anybody.rig.assets`, never from
the licence-gated pickle directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: DECA's slices of FLAME's 400 blendshapes: 300 identity components (DECA keeps 100), then 100 expression (keeps 50)
IDENTITY_COLUMNS, EXPRESSION_COLUMNS = slice(0, 100), slice(300, 350)
#: static-landmark indices (68-point numbering minus the 17 contour points) of the eyes and the outer mouth corners
LEFT_EYE, RIGHT_EYE = range(36 - 17, 42 - 17), range(42 - 17, 48 - 17)
MOUTH_LEFT, MOUTH_RIGHT = 48 - 17, 54 - 17


@dataclass
class FlameArrays:
    """FLAME's arrays as plain tensors (float32; integer index arrays as int64)."""

    v_template: torch.Tensor        # (V, 3)
    faces: torch.Tensor             # (F, 3)
    shapedirs: torch.Tensor         # (V, 3, 400) or already DECA's (V, 3, 150)
    posedirs: torch.Tensor          # (V, 3, 36)
    j_regressor: torch.Tensor       # (5, V) dense
    weights: torch.Tensor           # (V, 5) skinning weights
    parents: torch.Tensor           # (5,) with -1 at the root
    static_lmk_faces: torch.Tensor  # (51,) face index of each static landmark
    static_lmk_bary: torch.Tensor   # (51, 3) its barycentric coordinates


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from axis-angle vectors ``(..., 3)``.

    FLAME's code adds 1e-8 before taking the norm; here a zero rotation gives the identity exactly and any other
    differs from that form by at most ~1e-8.
    """
    angle = axis_angle.norm(dim=-1, keepdim=True)
    axis = axis_angle / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*axis.shape[:-1], 3, 3)
    sin, cos = angle.sin()[..., None], angle.cos()[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + sin * k + (1 - cos) * (k @ k)


def full_pose(pose6: torch.Tensor) -> torch.Tensor:
    """DECA's (global, jaw) pose -> FLAME's five joints ``(B, 5, 3)``: neck and both eyes at rest."""
    zero = pose6.new_zeros(len(pose6), 3)
    return torch.stack([pose6[:, :3], zero, pose6[:, 3:6], zero, zero], 1)


def blend_skin(v_posed: torch.Tensor, joints: torch.Tensor, rotations: torch.Tensor, parents: list[int],
               weights: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning: each joint's rigid transform (its chain of parents, rest-pose joint removed), mixed
    per vertex by the skinning weights."""
    batch, n_joints = rotations.shape[:2]
    chain = []
    for j in range(n_joints):
        local = torch.zeros(batch, 4, 4, dtype=v_posed.dtype, device=v_posed.device)
        local[:, :3, :3] = rotations[:, j]
        local[:, :3, 3] = joints[:, j] - (joints[:, parents[j]] if parents[j] >= 0 else 0)
        local[:, 3, 3] = 1
        chain.append(local if parents[j] < 0 else chain[parents[j]] @ local)
    world = torch.stack(chain, 1)                                          # (B, J, 4, 4)
    rest_removed = world.clone()
    rest_removed[..., :3, 3] = world[..., :3, 3] - (world[..., :3, :3] @ joints[..., None])[..., 0]
    per_vertex = torch.einsum("vj,bjrc->bvrc", weights, rest_removed)     # (B, V, 4, 4)
    return (per_vertex[..., :3, :3] @ v_posed[..., None])[..., 0] + per_vertex[..., :3, 3]


class Flame(nn.Module):
    """Vertices ``(B, V, 3)`` from DECA's shape (100), expression (50) and pose (6) codes."""

    def __init__(self, arrays: FlameArrays) -> None:
        super().__init__()
        dirs = arrays.shapedirs
        if dirs.shape[-1] == 400:
            dirs = torch.cat([dirs[..., IDENTITY_COLUMNS], dirs[..., EXPRESSION_COLUMNS]], -1)
        n_verts = len(arrays.v_template)
        self.register_buffer("v_template", arrays.v_template.float())
        self.register_buffer("faces", arrays.faces.long())
        self.register_buffer("blendshapes", dirs.float())                                     # (V, 3, 150)
        self.register_buffer("pose_basis", arrays.posedirs.float().reshape(n_verts * 3, -1).T)  # (36, 3V)
        self.register_buffer("j_regressor", arrays.j_regressor.float())
        self.register_buffer("skin_weights", arrays.weights.float())
        self.register_buffer("lmk_faces", arrays.static_lmk_faces.long())
        self.register_buffer("lmk_bary", arrays.static_lmk_bary.float())
        self.parents = [int(p) for p in arrays.parents]

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        betas = torch.cat([shape, expression], 1)
        v_shaped = self.v_template + torch.einsum("vck,bk->bvc", self.blendshapes, betas)
        joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v_shaped)
        rotations = rodrigues(full_pose(pose))                              # (B, 5, 3, 3)
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        pose_features = (rotations[:, 1:] - eye).flatten(1)                 # root excluded: 4 joints x 9 = 36
        v_posed = v_shaped + (pose_features @ self.pose_basis).view_as(v_shaped)
        return blend_skin(v_posed, joints, rotations, self.parents, self.skin_weights)

    def static_landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """The 51 static landmarks ``(B, 51, 3)``: barycentric points on their faces."""
        corners = vertices[:, self.faces[self.lmk_faces]]                   # (B, 51, 3, 3)
        return (corners * self.lmk_bary[None, :, :, None]).sum(2)

    def ffhq_centre(self, vertices: torch.Tensor) -> torch.Tensor:
        """The FFHQ crop centre in 3D ``(B, 3)``: eye midpoint moved a tenth of the way to the mouth."""
        lmk = self.static_landmarks(vertices)
        eyes = (lmk[:, list(LEFT_EYE)].mean(1) + lmk[:, list(RIGHT_EYE)].mean(1)) / 2
        mouth = (lmk[:, MOUTH_LEFT] + lmk[:, MOUTH_RIGHT]) / 2
        return eyes + 0.1 * (mouth - eyes)
