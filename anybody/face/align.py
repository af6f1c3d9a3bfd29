"""Similarity alignment of a face to a template crop, and the way back onto the source image.

The transform is the least-squares similarity (rotation, uniform scale, translation) from the five detected
landmarks to the template, estimated with scikit-image as insightface's ``face_align`` and the papers' data
preparation do; warping is OpenCV's bilinear ``warpAffine`` with a black border (or FFHQ's mirrored one), after an
antialiasing shrink of large photos except for recognition crops. ``M`` (2x3) maps source pixels to crop pixels;
it is what ANYBODY_FACES stores, so any crop can be pasted back.
"""
from __future__ import annotations

import numpy as np

from .templates import Template


def similarity_matrix(landmarks: np.ndarray, tpl: Template) -> np.ndarray:
    """``M [2,3]`` (float64) taking ``landmarks [5,2]`` (source pixels) as close as possible to the template."""
    from skimage.transform import SimilarityTransform

    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, tpl.points)
    else:
        tform = SimilarityTransform()
        tform.estimate(src, tpl.points)
    return np.asarray(tform.params[:2], dtype=np.float64)


BORDERS = ("black", "reflect")


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, size: int, antialias: bool = False,
                 border: str = "black") -> np.ndarray:
    """The ``size x size`` crop of ``image`` ([H,W,C] uint8/float32) under ``matrix``.

    ``antialias``: where the crop takes more than one photo pixel per crop pixel (a phone photo into a 256 crop),
    do as the FFHQ recipe: shrink the photo by its integer factor with area averaging, warp at a multiple of the
    size (a sample per photo pixel at least) and average down, so no photo pixel is skipped (aliasing: jagged hair,
    speckled skin). ``border``: what fills the crop where it leaves the photo; black, or FFHQ's mirrored, blurred
    photo fading to its median colour (``reflect``)."""
    import cv2

    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, not {border!r}")
    supersample = 1
    if antialias:
        image, matrix = _shrunk(image, matrix)
        supersample = max(1, int(np.ceil(1.0 / max(scale_of(matrix), 1e-12) - 1e-6)))
    if border == "reflect":
        image, matrix = _reflect_filled(image, matrix, size)
    if supersample == 1:
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0.0)
    # crop pixel u is the average of the supersample block whose centre is supersample * u + (supersample - 1) / 2
    finer = np.array([[supersample, 0.0, (supersample - 1) / 2], [0.0, supersample, (supersample - 1) / 2],
                      [0.0, 0.0, 1.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
    big = cv2.warpAffine(image, finer[:2], (size * supersample, size * supersample), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def scale_of(matrix: np.ndarray) -> float:
    """Crop pixels per photo pixel of a similarity ``matrix``."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, np.float64)[:, :2]))))


def _moved(matrix: np.ndarray, to_source: np.ndarray) -> np.ndarray:
    """``matrix`` for a new photo whose pixels map to the old photo's by the 3x3 ``to_source``."""
    return (np.vstack([matrix, [0.0, 0.0, 1.0]]) @ to_source)[:2]


def _shrunk(image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo shrunk by ``floor(photo px per crop px / 2)`` with area averaging (FFHQ's rule; nothing below 2:
    the supersampled warp then takes 2 to 4 samples per crop pixel and side), and the matrix from the shrunk photo."""
    import cv2

    factor = int(np.floor(0.5 / max(scale_of(matrix), 1e-12)))
    if factor < 2:
        return image, matrix
    h, w = image.shape[:2]
    new_w, new_h = max(1, int(round(w / factor))), max(1, int(round(h / factor)))
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    sx, sy = w / new_w, h / new_h  # a shrunk pixel's centre u lies at (u + 0.5) s - 0.5 in the photo
    return small, _moved(matrix, np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]]))


def _reflect_filled(image: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ's padding (the recipe DiffusionRig's albums are aligned with), where the crop leaves the photo: the
    photo cut to the crop's footprint plus a border of a tenth of its side; where that still leaves the photo, the
    photo is mirrored outward by at least 0.3 of the side, blurred (sigma 0.02 of the side) over the mirrored part
    and a third of the pad inwards, and faded to its median colour towards the far edge. Returns the filled photo
    and the matrix from it."""
    import cv2

    h, w = image.shape[:2]
    side = size / max(scale_of(matrix), 1e-12)  # the crop's side in photo pixels
    quad = apply(invert(matrix), [[0, 0], [size, 0], [0, size], [size, size]])
    border = max(int(round(side * 0.1)), 3)
    left, top = max(int(np.floor(quad[:, 0].min())) - border, 0), max(int(np.floor(quad[:, 1].min())) - border, 0)
    right = min(int(np.ceil(quad[:, 0].max())) + border, w)
    bottom = min(int(np.ceil(quad[:, 1].max())) + border, h)
    if right <= left or bottom <= top:
        return image, matrix  # the crop misses the photo entirely: nothing to mirror
    image, quad = image[top:bottom, left:right], quad - [left, top]
    h, w = image.shape[:2]
    pads = np.array([max(border - int(np.floor(quad[:, 0].min())), 0), max(border - int(np.floor(quad[:, 1].min())), 0),
                     max(int(np.ceil(quad[:, 0].max())) - w + border, 0),
                     max(int(np.ceil(quad[:, 1].max())) - h + border, 0)])
    if pads.max() > border - 4:
        pads = np.maximum(pads, max(int(np.rint(side * 0.3)), 1))
        pad_l, pad_t, pad_r, pad_b = (int(v) for v in pads)
        dtype = image.dtype
        channels = ((0, 0),) * (image.ndim - 2)
        filled = np.pad(image.astype(np.float32), ((pad_t, pad_b), (pad_l, pad_r), *channels), mode="reflect")
        fh, fw = filled.shape[:2]
        y, x = np.ogrid[:fh, :fw]
        # > 0 outside the photo (1 at the far edge), < 0 inside
        outside = np.maximum(1.0 - np.minimum(x / pad_l, (fw - 1 - x) / pad_r),
                             1.0 - np.minimum(y / pad_t, (fh - 1 - y) / pad_b)).astype(np.float32)
        outside = outside.reshape(outside.shape + (1,) * (image.ndim - 2))
        blur = max(side * 0.02, 1e-3)
        filled += (cv2.GaussianBlur(filled, (0, 0), blur).reshape(filled.shape) - filled) * np.clip(outside * 3 + 1, 0, 1)
        filled += (np.median(filled, axis=(0, 1)) - filled) * np.clip(outside, 0, 1)
        if dtype == np.uint8:
            filled = np.clip(np.rint(filled), 0, 255)
        image = filled.astype(dtype)
        left, top = left - pad_l, top - pad_t
    return image, _moved(matrix, np.array([[1.0, 0.0, left], [0.0, 1.0, top], [0.0, 0.0, 1.0]]))


def invert(matrix: np.ndarray) -> np.ndarray:
    """The 2x3 matrix mapping crop pixels back to source pixels."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def paste_back(source: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None = None,
               ) -> np.ndarray:
    """Put an (edited) crop back where it came from. ``mask`` ([S,S] 0..1, crop space) limits and feathers it;
    without one the whole crop square is used. Returns float32 in the source's value range."""
    import cv2

    h, w = source.shape[:2]
    size = crop.shape[0]
    if mask is None:
        mask = np.ones((size, size), np.float32)
    back = cv2.warpAffine(crop.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha = cv2.warpAffine(mask.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    if back.ndim == 3:
        alpha = alpha[..., None]
    return source.astype(np.float32) * (1 - alpha) + back * alpha


def landmark_mask(landmarks_in_crop: np.ndarray, size: int, feather: float = 0.08) -> np.ndarray:
    """A soft ellipse over the face in crop space ([S,S] float32 0..1), from the five landmarks alone.

    Centred between the eyes and the mouth, 1.1 eye-to-mouth distances tall and two eye distances wide: a
    cheap face region for blending and loss weighting where no parsing model is loaded.
    """
    pts = np.asarray(landmarks_in_crop, dtype=np.float64).reshape(5, 2)
    eyes, mouth = pts[:2].mean(0), pts[3:].mean(0)
    centre = (eyes + mouth) / 2
    up = eyes - mouth
    height = np.linalg.norm(up)
    width = np.linalg.norm(pts[1] - pts[0])
    if height < 1e-6 or width < 1e-6:
        return np.zeros((size, size), np.float32)
    ay, ax = 1.1 * height, 1.0 * width  # semi-axes
    angle = np.arctan2(up[0], -up[1])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    return np.clip((1 + feather - r) / (2 * feather), 0, 1).astype(np.float32)


def warp_differentiable(images, matrices, size: int):
    """``warp_to_crop`` in torch, differentiable with respect to the images (the identity loss backpropagates through
    it): ``images [B,C,H,W]``, ``matrices [B,2,3]`` source pixels -> crop pixels (cv2's pixel-centre convention),
    bilinear, black outside."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    m = torch.as_tensor(np.asarray(matrices), dtype=torch.float64).reshape(b, 2, 3)
    full = torch.cat([m, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(b, 1, 3)], dim=1)
    to_crop_pixels = torch.tensor([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]],
                                  dtype=torch.float64)  # normalised crop coords -> crop pixels
    to_source_normalised = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64)
    theta = (to_source_normalised @ torch.linalg.inv(full) @ to_crop_pixels)[:, :2]
    grid = F.affine_grid(theta.to(images.dtype).to(images.device), [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
