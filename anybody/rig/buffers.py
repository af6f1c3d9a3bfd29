"""DiffusionRig's physical buffers: the fitted head rendered as a shaded image, its normals and its albedo.

The released model was trained on buffers made one exact way (spec §5–§8), so every detail here is part of the
model's input distribution: raw values (no [-1, 1] remap), channel order [rendered, normal, albedo], world-space
normals (y up) that are interpolated but not re-normalised, the FLAME texture basis with its BGR->RGB flip and
nearest 512->256 downsampling, second-order spherical-harmonics shading with no clamping.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .raster import rasterize

#: second-order SH basis constants (Ramamoorthi & Hanrahan), in DECA's band order
SH_CONSTANTS = (1 / math.sqrt(4 * math.pi),
                *(2 * math.pi / 3 * math.sqrt(3 / (4 * math.pi)),) * 3,
                *(math.pi / 4 * 3 * math.sqrt(5 / (12 * math.pi)),) * 3,
                math.pi / 4 * 1.5 * math.sqrt(5 / (12 * math.pi)),
                math.pi / 4 * 0.5 * math.sqrt(5 / (4 * math.pi)))
#: added to every depth before rasterising, as the original does (keeps depths positive)
DEPTH_OFFSET = 10.0


def project(vertices: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """DECA's orthographic camera ``(s, tx, ty)``: world -> crop NDC (x right, y down, depth smaller = closer)."""
    s, t = cam[:, None, :1], cam[:, None, 1:]
    projected = s * torch.cat([vertices[..., :2] + t, vertices[..., 2:]], -1)
    return projected * projected.new_tensor([1.0, -1.0, -1.0])


def crop_to_image(points: torch.Tensor, crop_from_image: torch.Tensor, crop_size: int = 224,
                  image_size: int = 256) -> torch.Tensor:
    """Crop NDC -> NDC of the aligned photo, through the inverse of the crop's similarity transform
    ``crop_from_image (B, 3, 3)`` (column-vector convention: ``crop_pixel = T @ image_pixel``)."""
    pix = (points[..., :2] + 1) / 2 * crop_size
    homog = torch.cat([pix, torch.ones_like(pix[..., :1])], -1)
    image_pix = homog @ torch.linalg.inv(crop_from_image).transpose(1, 2)
    ndc = image_pix[..., :2] / image_size * 2 - 1
    return torch.cat([ndc, points[..., 2:]], -1)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals ``(B, V, 3)``: area-weighted sums of the face normals, wound as the faces are."""
    corners = vertices[:, faces]                                                   # (B, F, 3, 3)
    face_normal = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    summed = torch.zeros_like(vertices)
    for k in range(3):
        summed.index_add_(1, faces[:, k], face_normal)
    return F.normalize(summed, dim=-1, eps=1e-6)


def sh_shading(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Per-pixel RGB shading ``(B, 3, H, W)`` of normals ``(B, 3, H, W)`` under SH light ``(B, 9, 3)``."""
    nx, ny, nz = normals.unbind(1)
    basis = torch.stack([torch.ones_like(nx), nx, ny, nz, nx * ny, nx * nz, ny * nz, nx * nx - ny * ny,
                         3 * nz * nz - 1], 1)                                      # (B, 9, H, W)
    basis = basis * basis.new_tensor(SH_CONSTANTS)[None, :, None, None]
    return torch.einsum("bkhw,bkc->bchw", basis, light)


def flame_albedo(mean: torch.Tensor, basis: torch.Tensor, tex: torch.Tensor) -> torch.Tensor:
    """UV albedo ``(B, 3, S/2, S/2)`` from FLAME's texture space (``mean (S*S*3,)``, ``basis (S*S*3, K)``, stored
    BGR on a 0..255 scale) and DECA's texture code ``tex (B, n)``; nearest 2x downsampling as the original."""
    side = math.isqrt(len(mean) // 3)
    values = (mean[None] + tex @ basis[:, :tex.shape[1]].T) / 255
    image = values.view(len(tex), side, side, 3).permute(0, 3, 1, 2)
    return image[:, [2, 1, 0], ::2, ::2]


def physical_buffers(image_vertices: torch.Tensor, world_vertices: torch.Tensor, faces: torch.Tensor,
                     uv_coords: torch.Tensor, uv_faces: torch.Tensor, albedo_uv: torch.Tensor, light: torch.Tensor,
                     size: int = 256) -> dict[str, torch.Tensor]:
    """The buffers of meshes placed in the aligned photo (``image_vertices``: image NDC + depth) and lit by SH
    ``light (B, 9, 3)``: ``rendered``, ``normal``, ``albedo`` (each ``(B, 3, size, size)``, raw) and ``alpha``."""
    batch = len(image_vertices)
    placed = image_vertices + image_vertices.new_tensor([0.0, 0.0, DEPTH_OFFSET])
    fragments = rasterize(placed, faces, size, size)
    alpha = fragments.covered[:, None].to(image_vertices.dtype)
    normals = vertex_normals(world_vertices, faces)[:, faces]                     # (B, F, 3, 3)
    normal = fragments.interpolate(normals).permute(0, 3, 1, 2)
    uv = torch.stack([uv_coords[:, 0] * 2 - 1, -(uv_coords[:, 1] * 2 - 1)], -1)[uv_faces]  # (F, 3, 2)
    grid = fragments.interpolate(uv.expand(batch, *uv.shape))                      # (B, H, W, 2)
    albedo = F.grid_sample(albedo_uv, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * alpha
    rendered = albedo * sh_shading(normal, light) * alpha
    return {"rendered": rendered, "normal": normal * alpha, "albedo": albedo, "alpha": alpha}


def stack_buffers(buffers: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's 9 conditioning channels, in the trained order."""
    return torch.cat([buffers["rendered"], buffers["normal"], buffers["albedo"]], 1)
