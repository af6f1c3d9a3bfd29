"""Face parsing with BiSeNet: per-pixel CelebAMask-HQ classes, and the face-region mask MagiCapture trains with.

MagiCapture's recipe (spec magicapture.md): crop the detection box, resize it to 512, parse, keep classes 1-13,
resize back into the box; everything outside the box is background.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadInputError
from ..nets.bisenet import CLASSES, FACE_CLASSES, MEAN, STD

PARSE_SIZE = 512


def parse_classes(spec: str) -> tuple[int, ...]:
    """'1-13', 'skin, nose, 17' -> class ids; names are CelebAMask-HQ's (see ``CLASSES``)."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", spec or ""))):
        if re.fullmatch(r"\d+-\d+", part):
            a, b = map(int, part.split("-"))
            ids += range(a, b + 1)
        elif part.isdigit():
            ids.append(int(part))
        elif part in CLASSES:
            ids.append(CLASSES.index(part))
        else:
            raise BadInputError(f"Unknown parsing class {part!r}; use numbers 0-18, ranges like 1-13, or names: "
                                f"{', '.join(CLASSES)}.")
    bad = [i for i in ids if not 0 <= i < len(CLASSES)]
    if bad or not ids:
        raise BadInputError(f"Parsing classes must be 0-18 (got {spec!r}).")
    return tuple(dict.fromkeys(ids))


@torch.no_grad()
def parse_labels(net, image: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """``[H,W]`` int64 class per pixel of an RGB uint8 image, parsed at 512x512 and resized back (nearest)."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, (PARSE_SIZE, PARSE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(MEAN, device=device).view(1, 3, 1, 1)) / torch.tensor(STD, device=device).view(1, 3, 1, 1)
    logits = net.to(device)(x.to(next(net.parameters()).dtype)).float()
    labels = logits.argmax(1, keepdim=True).float()
    return F.interpolate(labels, (h, w), mode="nearest")[0, 0].long().cpu().numpy()


def region_mask(net, image: np.ndarray, classes: Sequence[int] = FACE_CLASSES, box: Sequence[float] | None = None,
                device: torch.device | str = "cpu") -> np.ndarray:
    """``[H,W]`` float32 {0,1}: pixels whose class is in ``classes``; with ``box`` only inside it, parsed on the box
    crop as MagiCapture does."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.float32)
    if box is None:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return mask
    labels = parse_labels(net, image[y0:y1, x0:x1], device)
    mask[y0:y1, x0:x1] = np.isin(labels, classes)
    return mask


#: a fixed colour per class for the preview image
PALETTE = np.array([[0, 0, 0], [204, 153, 102], [102, 51, 0], [102, 51, 0], [0, 153, 255], [0, 153, 255],
                    [153, 153, 153], [255, 153, 51], [255, 153, 51], [255, 255, 0], [255, 102, 102],
                    [204, 0, 102], [255, 0, 0], [153, 0, 0], [102, 204, 102], [0, 102, 0], [51, 51, 204],
                    [102, 0, 153], [255, 0, 255]], np.uint8)


def colourise(labels: np.ndarray) -> np.ndarray:
    return PALETTE[np.clip(labels, 0, len(PALETTE) - 1)]
