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
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:  # /dev/null, a FIFO, a socket: reading it would block or give nothing
        raise BadInputError(f"{path} is not a photo or a folder of photos (it is a device, pipe or socket).")
    if not files:
        raise BadInputError(f"No images found in {path}. Put one or more face photos (PNG/JPEG/WebP) there.")
    return files


def _to_uint8(im):
    """8-bit RGB from any mode Pillow opens: 16-bit by its 0..65535 range, 32-bit integers and floats by their
    real range (floats within 0..1 as 0..1), so no photo turns silently black or white."""
    import numpy as np
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("the image holds NaN/inf values")
        low, high = float(values.min()), float(values.max())
        if im.mode == "F" and low >= 0 and high <= 1:
            scale, offset = 255.0, 0.0
        elif im.mode.startswith("I;16") or (low >= 0 and high <= 65535 and high > 255):
            scale, offset = 255.0 / 65535.0, 0.0
        elif low >= 0 and high <= 255:
            scale, offset = 1.0, 0.0
        else:
            scale, offset = 255.0 / max(high - low, 1e-12), low
        im = Image.fromarray(np.clip((values - offset) * scale + 0.5, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def read_image_uint8(path: str | Path, max_side: int | None = None):
    """Decode one file to ``[H,W,3]`` uint8 RGB (numpy): EXIF rotation applied, high bit depths and floats scaled
    by their range, alpha and palettes dropped, and (with ``max_side``) downscaled as it is read, so a huge photo
    never exists at full size in memory. A file that is not an image is an error naming it."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if max_side and im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))  # JPEG decodes directly at 1/2, 1/4 or 1/8 size
            im = ImageOps.exif_transpose(im)
            if max_side and max(im.size) > max_side:
                im = im if im.mode in ("RGB", "L", "RGBA", "P") else _to_uint8(im)
                im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return np.asarray(_to_uint8(im), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise BadInputError(f"{path} is not a readable image ({exc.__class__.__name__}: {exc}). Remove it or convert "
                            "it to PNG/JPEG.") from exc


def load_images(paths: Iterable[Path], max_side: int | None = None) -> list[torch.Tensor]:
    """Decode each file to ``[H,W,3]`` float 0..1 (at most ``max_side`` pixels on a side); a file that is not an
    image is an error naming it."""
    return [torch.from_numpy(read_image_uint8(p, max_side)).float() / 255.0 for p in paths]


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
