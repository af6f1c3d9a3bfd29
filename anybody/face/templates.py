"""Where the five landmarks (left eye, right eye, nose tip, left and right mouth corner) go in each crop.

Both are the published constants: ArcFace's 112x112 template (insightface ``face_align.arcface_dst``; AdaFace and
MagiCapture align to it) and the FFHQ-style template that Celeb Basis defines at 512x512 and scales for other
sizes (Celeb Basis, DiffusionRig and training crops). "Left" is the subject's left as seen in the image, i.e.
the eye with the smaller x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
FFHQ_512 = np.array([[192.98, 239.95], [318.90, 240.19], [256.63, 314.02],
                     [201.26, 371.41], [313.09, 371.15]], dtype=np.float64)


@dataclass(frozen=True)
class Template:
    name: str
    size: int
    points: np.ndarray  # [5, 2] in crop pixels
    #: shrink large photos with area averaging before warping (``align.warp_to_crop``); off for recognition crops,
    #: which recognizers were trained on as insightface's ``norm_crop`` warps them (plain bilinear)
    antialias: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} ({self.size}x{self.size})"


TEMPLATES = {
    "ffhq256": Template("ffhq256", 256, FFHQ_512 * 0.5),
    "ffhq512": Template("ffhq512", 512, FFHQ_512.copy()),
    "ffhq1024": Template("ffhq1024", 1024, FFHQ_512 * 2.0),
    "arcface112": Template("arcface112", 112, ARCFACE_112.copy(), antialias=False),
}


def template(name: str) -> Template:
    from ..errors import BadInputError

    if name not in TEMPLATES:
        raise BadInputError(f"Unknown alignment template {name!r}; choose one of {', '.join(TEMPLATES)}.")
    return TEMPLATES[name]
