"""Training photos seen through the face detector: which have no face, and face crops when asked.

A photo without a detectable face still trains the identity (on whatever it shows), so every trainer says which
ones they are when a face model is connected; cropping to the face (FFHQ alignment, as the papers' data) is an
option, with face-less photos passed through as a centred crop.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .detect import detect_faces
from .models import FaceModels
from .pipeline import align_images, to_uint8


def photos_without_faces(models: FaceModels, images: Sequence) -> list[int]:
    """0-based indices of the photos in which the detector finds no face."""
    return [i for i, image in enumerate(images) if not detect_faces(models, to_uint8(image))]


def face_crops(models: FaceModels, images: Sequence, size: int) -> list[torch.Tensor]:
    """The largest face of each photo aligned to the FFHQ template at 256, 512 or 1024 px (the nearest at or above
    ``size``), as ``[S,S,3]`` float 0..1; a photo without a face becomes a centred crop."""
    template = next((f"ffhq{s}" for s in (256, 512, 1024) if s >= size), "ffhq1024")
    aligned = align_images(models, images, template, on_no_face="pass_through")
    return [torch.from_numpy(a.crop).float() / 255.0 for a in aligned]


def describe_missing(missing: Sequence[int], names: Sequence[str] | None = None) -> str:
    """"No face found in photo 2, 5 (b.jpg, e.png): ..." for logs and node messages."""
    which = ", ".join(str(i + 1) for i in missing)
    files = f" ({', '.join(names[i] for i in missing)})" if names else ""
    return (f"No face found in photo {which}{files}: it still trains the identity on whatever it shows. Remove it, "
            "or use a photo where the face is clearly visible.")


def ffhq_faces(models: FaceModels, images: Sequence, size: int, labels: Sequence[str] | None = None,
               log=None) -> list[torch.Tensor]:
    """The largest face of each photo aligned to the FFHQ template scaled to ``size`` px (the crops Celeb Basis
    and DiffusionRig train on), ``[S,S,3]`` float 0..1. A photo without a face is an error naming it; a photo with
    several faces uses the largest, and says so through ``log``."""
    import numpy as np

    from ..errors import BadInputError
    from .align import similarity_matrix, warp_to_crop
    from .detect import select_face
    from .templates import FFHQ_512, Template

    tpl = Template(f"ffhq{size}", size, FFHQ_512 * (size / 512))
    crops = []
    for i, image in enumerate(images):
        rgb = to_uint8(image)
        faces = detect_faces(models, rgb)
        label = f"photo {i + 1}" + (f" ({labels[i]})" if labels else "")
        if not faces:
            raise BadInputError(f"No face found in {label}. Each photo must show the person's face clearly; remove it "
                                "or replace it.")
        if len(faces) > 1 and log:
            log(f"{label} shows {len(faces)} faces; the largest is used.")
        face = select_face(faces, "largest")
        crop = warp_to_crop(rgb, similarity_matrix(face.landmarks, tpl), size, tpl.antialias)
        crops.append(torch.from_numpy(np.ascontiguousarray(crop)).float() / 255.0)
    return crops
