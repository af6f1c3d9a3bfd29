"""DECA's input crop: a square around the face, 1.25 x its size, warped to 224 x 224 (spec §2.2).

DECA sizes the square from a box: FAN's 68-landmark extent (grown by 1.1) or, for a face detector's box, the box
itself with its centre moved down by 0.12 of its size (DECA's own rule for detector boxes). Anybody's detectors give
boxes and 5 points, not 68 landmarks, so the detector rule is the default; a 68-point extent can be passed instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .deca import CROP_SIZE

SCALE = 1.25
BOX_KINDS = ("detector", "landmarks68")


def crop_transform(box: torch.Tensor, kind: str = "detector", scale: float = SCALE,
                   size: int = CROP_SIZE) -> torch.Tensor:
    """The similarity ``(B, 3, 3)`` taking photo pixels to crop pixels, from boxes ``(B, 4)`` = left, top, right,
    bottom (pixel coordinates, pixel centres at integers as DECA's skimage warp has them)."""
    left, top, right, bottom = box.double().unbind(-1)
    extent = (right - left + bottom - top) / 2
    cx, cy = (left + right) / 2, (top + bottom) / 2
    if kind == "landmarks68":
        extent = extent * 1.1
    elif kind == "detector":
        cy = cy + extent * 0.12
    else:
        raise ValueError(f"unknown box kind {kind!r}: choose one of {', '.join(BOX_KINDS)}")
    side = torch.floor(extent * scale)                     # DECA: int(old_size * scale)
    k = (size - 1) / side                                  # corners go to 0 and size - 1
    transform = torch.zeros(len(box), 3, 3, dtype=torch.float64)
    transform[:, 0, 0] = transform[:, 1, 1] = k
    transform[:, 0, 2] = -(cx - side / 2) * k
    transform[:, 1, 2] = -(cy - side / 2) * k
    transform[:, 2, 2] = 1
    return transform.float()


def warp_crop(photo: torch.Tensor, crop_from_photo: torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
    """Bilinear crop ``(B, 3, size, size)`` of ``photo (B, 3, H, W)``; outside the photo is black (skimage's
    ``warp`` with constant 0, as DECA uses)."""
    batch, _, height, width = photo.shape
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    crop_points = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3).to(photo.device)
    photo_points = crop_points @ torch.linalg.inv(crop_from_photo.to(photo.device)).transpose(1, 2)  # (B, N, 3)
    grid = torch.stack([photo_points[..., 0] / (width - 1) * 2 - 1, photo_points[..., 1] / (height - 1) * 2 - 1], -1)
    return F.grid_sample(photo, grid.view(batch, size, size, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=True)
