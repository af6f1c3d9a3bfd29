"""A triangle rasterizer in plain PyTorch (CPU and GPU, deterministic, no compiled extension).

DiffusionRig's buffers were made with pytorch3d's mesh rasterizer (one face per pixel, no blur, no culling,
nearest depth wins, screen-space barycentrics). This does the same without pytorch3d or nvdiffrast, which do not
install everywhere ComfyUI and A1111 run (and nvdiffrast's licence is non-commercial). Faces are grouped by the size
of their pixel bounding box so each group tests only the pixel centres its triangles can cover.

Conventions: vertices in image NDC — x right, y DOWN, both in [-1, 1] across the image — and a depth where smaller
is closer. Pixel (row i, col j) of an H x W image samples ``((2j+1)/W - 1, (2i+1)/H - 1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: a pixel centre on a shared edge belongs to both faces (the depth test then picks one), whatever the rounding
_EDGE_TOLERANCE = 1e-6
#: candidate (face, pixel) pairs tested at once: bounds the memory of one pass
_PAIRS_PER_PASS = 1 << 22


@dataclass
class Fragments:
    """Which face covers each pixel (-1: none) and the pixel centre's barycentric coordinates in it."""

    face: torch.Tensor  # (B, H, W) long
    bary: torch.Tensor  # (B, H, W, 3)

    @property
    def covered(self) -> torch.Tensor:
        return self.face >= 0

    def interpolate(self, face_attributes: torch.Tensor) -> torch.Tensor:
        """Per-pixel attribute ``(B, H, W, C)`` from per-face-corner values ``(B, F, 3, C)``; 0 where uncovered."""
        b = torch.arange(len(self.face), device=self.face.device)[:, None, None]
        corners = face_attributes[b, self.face.clamp_min(0)]                       # (B, H, W, 3, C)
        value = (self.bary[..., None] * corners).sum(-2)
        return value * self.covered[..., None]


def _edge_planes(tri: torch.Tensor) -> torch.Tensor:
    """Per triangle ``tri (..., 3, 2)`` (pixel units) the affine maps ``(x, y, 1) -> b_k`` of its barycentric
    coordinates, as ``(..., 3, 3)``; degenerate triangles get planes no point is inside."""
    x, y = tri[..., 0], tri[..., 1]
    nxt, prv = [1, 2, 0], [2, 0, 1]
    # b_k is the signed area opposite corner k over the whole area: linear in the point
    a = y[..., nxt] - y[..., prv]
    b = x[..., prv] - x[..., nxt]
    c = x[..., nxt] * y[..., prv] - x[..., prv] * y[..., nxt]
    area = c.sum(-1, keepdim=True)
    ok = area.abs() > 1e-12
    planes = torch.stack([a, b, c], -1) / torch.where(ok, area, torch.ones_like(area))[..., None]
    dead = planes.new_tensor([0.0, 0.0, -1.0])
    return torch.where(ok[..., None], planes, dead)


def _apply(planes: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Barycentrics ``(..., 3)`` of points from planes ``(..., 3, 3)`` broadcast against the points."""
    return planes[..., 0] * px[..., None] + planes[..., 1] * py[..., None] + planes[..., 2]


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> Fragments:
    """Nearest face per pixel for meshes ``vertices (B, V, 3)`` (image NDC + depth) sharing ``faces (F, 3)``."""
    batch, device = len(vertices), vertices.device
    with torch.no_grad():
        # pixel units: pixel centres at integers
        pix = torch.stack([(vertices[..., 0] + 1) * width / 2 - 0.5, (vertices[..., 1] + 1) * height / 2 - 0.5], -1)
        tri = pix[:, faces]                                                       # (B, F, 3, 2)
        depth = vertices[..., 2][:, faces]                                        # (B, F, 3)
        planes = _edge_planes(tri)                                                # (B, F, 3, 3)
        lo = tri.amin(2).ceil().long()
        hi = tri.amax(2).floor().long()
        lo[..., 0].clamp_(0, width), lo[..., 1].clamp_(0, height)
        hi[..., 0].clamp_(-1, width - 1), hi[..., 1].clamp_(-1, height - 1)
        extent = (hi - lo + 1).clamp_min(0)                                       # (B, F, 2) columns, rows
        visible = (extent > 0).all(-1)
        b_idx, f_idx = visible.nonzero(as_tuple=True)
        zbuf = torch.full((batch * height * width,), float("inf"), device=device)
        winner = torch.full((batch * height * width,), len(faces), dtype=torch.long, device=device)
        candidates = []
        if len(f_idx):
            size = extent[b_idx, f_idx]
            # group by bounding-box size (rounded up to a power of two) so each group's pixel grid fits all of it
            log_size = size.float().log2().ceil().long()
            bucket = log_size[:, 0] * 64 + log_size[:, 1]
            for key in bucket.unique():
                sel = (bucket == key).nonzero(as_tuple=True)[0]
                w = int(size[sel, 0].max())
                h = int(size[sel, 1].max())
                per = max(1, _PAIRS_PER_PASS // (w * h))
                for start in range(0, len(sel), per):
                    part = sel[start:start + per]
                    candidates.append(_cover(planes, depth, lo, hi, b_idx[part], f_idx[part], w, h, width, height))
        for flat, z, _ in candidates:
            zbuf.scatter_reduce_(0, flat, z, reduce="amin")
        for flat, z, face in candidates:
            nearest = z == zbuf[flat]
            winner.scatter_reduce_(0, flat[nearest], face[nearest], reduce="amin")  # ties: lowest face index
        winner = winner.view(batch, height, width)
        face = torch.where(winner < len(faces), winner, torch.full_like(winner, -1))
        rows = torch.arange(height, device=device, dtype=pix.dtype)[None, :, None].expand(batch, height, width)
        cols = torch.arange(width, device=device, dtype=pix.dtype)[None, None, :].expand(batch, height, width)
        b = torch.arange(batch, device=device)[:, None, None]
        bary = _apply(planes[b, face.clamp_min(0)], cols, rows) * (face >= 0)[..., None]
    return Fragments(face, bary)


def _cover(planes, depth, lo, hi, b_idx, f_idx, w: int, h: int, width: int, height: int):
    """Pixels inside each listed triangle: flat pixel index, depth there, face index."""
    dx = torch.arange(w, device=planes.device)
    dy = torch.arange(h, device=planes.device)
    cols = lo[b_idx, f_idx, 0][:, None, None] + dx[None, None, :]               # (N, 1, w)
    rows = lo[b_idx, f_idx, 1][:, None, None] + dy[None, :, None]               # (N, h, 1)
    cols, rows = torch.broadcast_tensors(cols, rows)
    inside_box = (cols <= hi[b_idx, f_idx, 0][:, None, None]) & (rows <= hi[b_idx, f_idx, 1][:, None, None])
    bary = _apply(planes[b_idx, f_idx][:, None, None], cols.to(planes.dtype), rows.to(planes.dtype))  # (N, h, w, 3)
    inside = inside_box & (bary >= -_EDGE_TOLERANCE).all(-1)
    z = (bary * depth[b_idx, f_idx][:, None, None]).sum(-1)
    flat = (b_idx[:, None, None] * height + rows) * width + cols
    face = f_idx[:, None, None].expand_as(flat)
    return flat[inside], z[inside], face[inside]
