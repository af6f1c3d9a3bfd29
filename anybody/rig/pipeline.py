"""Photo -> DECA fit -> edited buffers -> DiffusionRig sample: what RigRender runs, in host-free steps.

Alignment uses the pack's FFHQ 256 template (a least-squares similarity on the 5 landmarks: the FFHQ recipe's eye
and mouth points, without its quad padding/blur for faces near the border). DECA's crop box is the pack's detector
box carried into the aligned photo, with DECA's rule for detector boxes (see :mod:`.crop`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import BadInputError
from ..face.align import apply, scale_of
from ..face.pipeline import AlignedFace, align_images
from .codes import EDIT_MODES, FaceCode, edited, with_shape
from .crop import crop_transform, warp_crop
from .flame import rodrigues
from .head import HeadModel
from .sample import SAMPLING_STEPS, ddim_sample
from .unet import DiffusionRig

SIZE = 256


@dataclass
class RigFit:
    """Aligned photos, their DECA codes and where DECA's crop sat in each."""

    photos: torch.Tensor           # (B, 3, 256, 256) in [0, 1]
    codes: FaceCode
    crop_from_photo: torch.Tensor  # (B, 3, 3)
    aligned: list[AlignedFace]     # how each aligned photo sits in its original (for paste-back)

    def select(self, index) -> "RigFit":
        index = torch.as_tensor(index).reshape(-1)
        return RigFit(self.photos[index], self.codes.select(index), self.crop_from_photo[index],
                      [self.aligned[int(i)] for i in index])


def fit_photos(face_models, deca, images: Sequence, device) -> RigFit:
    """Align each image's largest face to 256 px and fit DECA to it."""
    aligned = align_images(face_models, list(images), "ffhq256", border="reflect")  # FFHQ's recipe (spec 2.1)
    boxes = [box_in_crop(a) for a in aligned]
    photos = torch.from_numpy(np.stack([a.crop for a in aligned])).permute(0, 3, 1, 2).float().div(255).to(device)
    transform = crop_transform(torch.tensor(np.stack(boxes), dtype=torch.float32)).to(device)
    with torch.no_grad():
        code = deca.to(device)(warp_crop(photos, transform))
    return RigFit(photos, FaceCode.split(code.float()), transform, aligned)


def box_in_crop(face: AlignedFace) -> np.ndarray:
    """The detector's face box carried into the aligned photo: its centre mapped, its sides scaled by the
    alignment's scale (the aligned face is upright, so the box stays axis-aligned with it)."""
    left, top, right, bottom = face.face.box
    centre = apply(face.matrix, np.array([[(left + right) / 2, (top + bottom) / 2]]))[0]
    scale = scale_of(face.matrix)
    half = np.array([right - left, bottom - top]) * scale / 2
    return np.concatenate([centre - half, centre + half])


@dataclass(frozen=True)
class Sliders:
    """Edits without a target photo. Angles in degrees; light direction as azimuth (right +) and elevation (up +)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    jaw_open: float = 0.0
    expression_scale: float = 1.0
    light_azimuth: float = 0.0
    light_elevation: float = 0.0
    light_strength: float = 0.0  # 0: keep the photo's light; > 0: a directional light of this share of the ambient

    def is_identity(self) -> bool:
        return self == Sliders()


def axis_angle(rotation: torch.Tensor) -> torch.Tensor:
    """The axis-angle vector (angle in [0, pi]) of rotation matrices ``(..., 3, 3)``: the inverse of :func:`rodrigues`.
    Below 90 degrees the axis comes from the antisymmetric part (2 sin(angle) axis); above, where sin(angle) fades,
    from the symmetric part (cos(angle) I + (1 - cos(angle)) axis axis^T) by its best-conditioned column, with the
    sign the antisymmetric part gives: a head turned near 180 degrees keeps its axis."""
    cos = ((rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    skew = torch.stack([rotation[..., 2, 1] - rotation[..., 1, 2], rotation[..., 0, 2] - rotation[..., 2, 0],
                        rotation[..., 1, 0] - rotation[..., 0, 1]], -1)
    angle = torch.atan2(skew.norm(dim=-1) / 2, cos)  # acos loses the angle near 0 and pi
    sin = angle.sin()
    regular = sin.abs() > 1e-6
    scale = torch.where(regular, angle / (2 * torch.where(regular, sin, torch.ones_like(sin))), torch.full_like(sin, 0.5))
    from_skew = skew * scale[..., None]
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    outer = ((rotation + rotation.transpose(-1, -2)) / 2 - cos[..., None, None] * eye) / (1 - cos).clamp_min(1e-6)[..., None, None]
    column = outer.diagonal(dim1=-2, dim2=-1).argmax(-1)
    axis = torch.nn.functional.normalize(outer.gather(-1, column[..., None, None].expand(*column.shape, 3, 1))[..., 0], dim=-1)
    axis = torch.where((axis * skew).sum(-1, keepdim=True) < 0, -axis, axis)
    return torch.where((cos > 0)[..., None], from_skew, axis * angle[..., None])


def slider_edit(source: FaceCode, sliders: Sliders) -> FaceCode:
    """The source's code turned, re-expressed and relit by the sliders."""
    pose = source.pose.clone()
    turn = torch.tensor([math.radians(sliders.pitch), math.radians(sliders.yaw), math.radians(sliders.roll)])
    # yaw about y (up), pitch about x, roll about z, applied after the photo's own head rotation
    delta = rodrigues(turn[None, [0]] * torch.tensor([[1.0, 0, 0]])) @ rodrigues(
        turn[None, [1]] * torch.tensor([[0, 1.0, 0]])) @ rodrigues(turn[None, [2]] * torch.tensor([[0, 0, 1.0]]))
    pose[:, :3] = axis_angle(delta.to(pose) @ rodrigues(pose[:, :3]))
    pose[:, 3] = pose[:, 3] + math.radians(sliders.jaw_open)
    light = source.light.clone()
    if sliders.light_strength > 0:
        az, el = math.radians(sliders.light_azimuth), math.radians(sliders.light_elevation)
        direction = torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)]).to(light)
        ambient = light[:, :1]                                             # (B, 1, 3) band 0 per colour
        light[:, 1:4] = sliders.light_strength * ambient * direction[None, :, None]
    return replace(source, pose=pose, exp=source.exp * sliders.expression_scale, light=light)


@dataclass
class Edit:
    """One image to make: the code to render, whose photo's latent to use, and a label for the grid."""

    code: FaceCode       # batch 1
    source_index: int
    latent_index: int    # index into the fit whose latent is used (a target's for "latent" edits)
    latent_from_target: bool
    label: str


def plan_edits(source: RigFit, target: RigFit | None, modes: Sequence[str], sliders: Sliders) -> list[Edit]:
    """Every source photo x (each mode with each target photo, or the sliders; the reconstruction first)."""
    for mode in modes:
        if mode not in EDIT_MODES:
            raise BadInputError(f"Unknown edit {mode!r}; choose among {', '.join(EDIT_MODES)}.")
    plans = []
    for i in range(len(source.photos)):
        own = source.codes.select([i])
        plans.append(Edit(own, i, i, False, f"photo {i + 1}: reconstruction"))
        if target is not None:
            for j in range(len(target.photos)):
                for mode in modes:
                    plans.append(Edit(edited(own, target.codes.select([j]), mode), i, j, mode == "latent",
                                      f"photo {i + 1}: {mode} of target {j + 1}"))
        if not sliders.is_identity():
            plans.append(Edit(slider_edit(own, sliders), i, i, False, f"photo {i + 1}: sliders"))
    return plans


def render_buffers(head: HeadModel, source: RigFit, plans: Sequence[Edit], mean_shape: torch.Tensor | None = None,
                   centre: bool = True) -> dict[str, torch.Tensor]:
    """The buffers of every planned edit, kept where its source photo has the face (spec §9; ``centre`` False:
    as stage-2 training data, see :meth:`HeadModel.buffers`)."""
    codes = [with_shape(p.code, mean_shape) for p in plans]
    batch = FaceCode(**{name: torch.cat([getattr(c, name) for c in codes]) for name in FaceCode.__dataclass_fields__})
    index = [p.source_index for p in plans]
    sources = source.select(index)
    return head.buffers(batch, sources.codes, sources.crop_from_photo, SIZE, centre)


@torch.no_grad()
def sample_edits(model: DiffusionRig, buffers: torch.Tensor, source: RigFit, target: RigFit | None,
                 plans: Sequence[Edit], seed: int, steps: int = SAMPLING_STEPS, chunk: int = 4,
                 on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The edited photos ``(N, 3, 256, 256)`` in [0, 1]: DDIM from ONE noise shared by every edit, as the paper
    does, so the edits differ only by their conditioning."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    model.eval()
    latents_of = {}
    for fit, tag in ((source, "source"), (target, "target")):
        if fit is not None:
            latents_of[tag] = model.encode((fit.photos * 2 - 1).to(device, dtype)).float()
    noise = torch.randn((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(int(seed))).to(device)
    out = []
    chunks = range(0, len(plans), chunk)
    for n, start in enumerate(chunks):
        part = plans[start:start + chunk]
        z = torch.stack([latents_of["target" if p.latent_from_target else "source"][p.latent_index] for p in part])
        b = buffers[start:start + chunk].to(device)

        def denoise(x, t):
            return model.denoise(x.to(dtype), t, b.to(dtype), z.to(dtype)).float()

        def progress(i, _x0, n=n):
            if on_step is not None:
                on_step(n * steps + i + 1, len(chunks) * steps)

        x = ddim_sample(denoise, noise.expand(len(part), -1, -1, -1), steps, progress)
        out.append(((x + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


def feathered_square(size: int = SIZE, border: int = 16) -> np.ndarray:
    """A mask over the whole crop that fades out over ``border`` pixels: the edit replaces the aligned square
    (DiffusionRig regenerates hair and background too) without a visible seam."""
    ramp = np.clip((np.arange(size) + 0.5) / border, 0, 1)
    edge = np.minimum(ramp, ramp[::-1])
    return np.minimum(edge[:, None], edge[None, :]).astype(np.float32)


def paste_back(original: np.ndarray, face: AlignedFace, edit: np.ndarray) -> np.ndarray:
    """The edited 256 px photo ``[256, 256, 3]`` in [0, 1] put back into the ``original`` photo (same range)."""
    from ..face.align import paste_back as paste

    return paste(original, edit, face.matrix, feathered_square(edit.shape[0]))


def buffer_pictures(buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The buffers as viewable images ``(B, 3, H, W)`` in [0, 1]: normals as (n+1)/2, black where no head is."""
    return {"rendered": buffers["rendered"].clamp(0, 1), "normals": ((buffers["normal"] + 1) / 2 * buffers["alpha"]),
            "albedo": buffers["albedo"].clamp(0, 1)}


@dataclass
class RenderedEdits:
    """What RigRender makes, in every front end's terms."""

    plans: list[Edit]
    images: list[np.ndarray]           # [H, W, 3] float32 in [0, 1]: the edits (pasted back if asked), or the renders
    buffers: dict[str, torch.Tensor]   # rendered, normal, albedo, alpha: (N, 3|1, 256, 256)
    sampled: bool                      # False: no model, the images are the shaded renders

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.plans]


def edit_photos(head: HeadModel, deca, face_models, photos: Sequence[torch.Tensor],
                targets: Sequence[torch.Tensor] | None, modes: Sequence[str], sliders: Sliders,
                model: DiffusionRig | None, mean_shape: torch.Tensor | None, seed: int, device,
                paste: bool = False, steps: int = SAMPLING_STEPS,
                on_step: Callable[[int, int], None] | None = None) -> RenderedEdits:
    """RigRender end to end: fit ``photos`` (and ``targets``), plan the edits, render their buffers and, with a
    model, sample them (fp32, as the release; DECA and the model go back to the CPU afterwards)."""
    try:
        source = fit_photos(face_models, deca, photos, device)
        target = fit_photos(face_models, deca, targets, device) if targets else None
    finally:
        deca.to("cpu")
    plans = plan_edits(source, target, modes, sliders)
    buffers = render_buffers(head.to(device), source, plans, None if mean_shape is None else mean_shape.to(device))
    if model is not None:
        stacked = torch.cat([buffers["rendered"], buffers["normal"], buffers["albedo"]], 1)
        try:
            model.to(device)
            edits = sample_edits(model, stacked, source, target, plans, seed, steps, on_step=on_step)
        finally:
            model.to("cpu")
    else:
        edits = buffers["rendered"].clamp(0, 1).cpu()
    images = []
    for k, plan in enumerate(plans):
        image = edits[k].permute(1, 2, 0).float().numpy()
        if paste:
            original = photos[plan.source_index].detach().cpu().float().numpy()
            image = paste_back(original, source.aligned[plan.source_index], image)
        images.append(np.clip(image, 0, 1).astype(np.float32))
    return RenderedEdits(plans, images, buffers, model is not None)
