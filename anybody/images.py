"""Reading and checking training photos, in ComfyUI's IMAGE layout (``[B,H,W,3]`` float 0..1)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 64


def image_files(source: str | Path) -> list[Path]:
    """Image files in a folder (sorted), or the file itself."""
    path = Path(source)
    if not path.exists():
        raise BadInputError(f"No such file or folder: {path}")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise BadInputError(f"No images found in {path}. Put one or more face photos (PNG/JPEG/WebP) there.")
    return files


def read_image_uint8(path: str | Path):
    """Decode one file to ``[H,W,3]`` uint8 RGB (numpy): EXIF rotation applied, 16-bit scaled down, alpha and
    palettes dropped. A file that is not an image (corrupt, empty, wrong format) is an error naming it."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                im = im.point(lambda v: v / 256).convert("L")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"{path} is not a readable image ({exc.__class__.__name__}). Remove it or convert it "
                            "to PNG/JPEG.") from exc


def load_images(paths: Iterable[Path]) -> list[torch.Tensor]:
    """Decode each file to ``[H,W,3]`` float 0..1; a file that is not an image is an error naming it."""
    return [torch.from_numpy(read_image_uint8(p)).float() / 255.0 for p in paths]


def check_images(images: Sequence[torch.Tensor] | torch.Tensor) -> None:
    if len(images) == 0:
        raise BadInputError("No images were given. Connect one or more face photos.")
    for i, im in enumerate(images):
        if im.dim() != 3 or im.shape[-1] not in (3, 4):
            raise BadInputError(f"Image {i + 1} has shape {tuple(im.shape)}; expected [H, W, 3].")
        h, w = int(im.shape[0]), int(im.shape[1])
        if min(h, w) < MIN_SIDE:
            raise BadInputError(f"Image {i + 1} is {w}x{h} pixels; face photos must be at least {MIN_SIDE}x{MIN_SIDE}.")
        if not torch.isfinite(im).all():
            raise BadInputError(f"Image {i + 1} contains NaN/inf pixel values.")


def square_batch(images: Sequence[torch.Tensor] | torch.Tensor, size: int, center_crop: bool = False) -> torch.Tensor:
    """Resize each image to ``size x size`` (bicubic; aspect not kept unless ``center_crop``) -> ``[B,size,size,3]``."""
    check_images(images)
    out = []
    for im in images:
        im = im[..., :3]
        if center_crop:
            h, w = im.shape[:2]
            s = min(h, w)
            im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = im.permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        out.append(x[0].permute(1, 2, 0).clamp(0, 1))
    return torch.stack(out)
