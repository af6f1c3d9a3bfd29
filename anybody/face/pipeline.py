"""Detect -> choose -> align for a batch of images: what the FaceAlign node and ``anybody align`` run."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import BadInputError
from .align import apply, landmark_mask, similarity_matrix, warp_to_crop
from .detect import Face, detect_faces, embed_aligned, select_face
from .models import FaceModels
from .templates import TEMPLATES, Template, template

NO_FACE = ("error", "pass_through")
log = logging.getLogger("anybody")


@dataclass
class AlignedFace:
    """One output crop and how it relates to its source image (the ANYBODY_FACES entry)."""

    crop: np.ndarray  # [S,S,3] uint8 RGB
    mask: np.ndarray  # [S,S] float32 0..1, face region in crop space
    matrix: np.ndarray  # [2,3] source pixels -> crop pixels
    source_index: int
    source_size: tuple[int, int]  # (height, width)
    template: str
    face: Face | None  # None: no face was found and the image was passed through
    similarity: float | None = None

    def record(self) -> dict:
        """JSON-friendly description (the CLI writes these; nodes pass them along as ANYBODY_FACES)."""
        f = self.face
        return {"source_index": self.source_index, "source_size": list(self.source_size), "template": self.template,
                "found": f is not None, "matrix": self.matrix.tolist(),
                "box": f.box.tolist() if f else None, "landmarks": f.landmarks.tolist() if f else None,
                "score": f.score if f else None, "similarity": self.similarity,
                "landmarks_in_crop": apply(self.matrix, f.landmarks).tolist() if f else None}


def to_uint8(image) -> np.ndarray:
    """[H,W,C] float 0..1 (tensor or array) or uint8/uint16 array -> contiguous [H,W,3] uint8 RGB.

    Row blocks keep the temporary float copies small, so an 8000x8000 photo costs about its uint8 size.
    """
    if hasattr(image, "detach"):  # a torch tensor (ComfyUI IMAGE); numpy has no bfloat16
        import torch

        image = image.detach().cpu()
        arr = (image.float() if image.dtype in (torch.float16, torch.bfloat16) else image).numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInputError(f"An image has shape {tuple(arr.shape)}; expected [height, width, channels].")
    h, w, c = arr.shape
    if arr.dtype == np.uint8 and c == 3:
        return np.ascontiguousarray(arr)  # no copy for the common case
    out = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, 1024):
        block = arr[y:y + 1024]
        block = np.repeat(block[..., :1], 3, axis=2) if c < 3 else block[..., :3]
        if block.dtype == np.uint8:
            out[y:y + 1024] = block
        elif block.dtype == np.uint16:
            out[y:y + 1024] = (block >> 8).astype(np.uint8)
        else:
            out[y:y + 1024] = np.clip(np.nan_to_num(block.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def center_matrix(height: int, width: int, size: int) -> np.ndarray:
    """Source -> crop matrix of a centred square crop resized to ``size`` (the pass-through for no face)."""
    s = size / min(height, width)
    return np.array([[s, 0.0, (size - width * s) / 2], [0.0, s, (size - height * s) / 2]])


def embed_faces(models: FaceModels, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """Unit recognition embeddings ``[N, D]`` of ``faces`` in ``image``, each ArcFace-aligned first."""
    tpl = TEMPLATES["arcface112"]
    return embed_aligned(models, [warp_to_crop(image, similarity_matrix(f.landmarks, tpl), tpl.size, tpl.antialias)
                                  for f in faces])


def reference_embeddings(models: FaceModels, references: Sequence) -> np.ndarray:
    """Unit embeddings ``[N, D]`` of the largest face in each reference photo (tensors or arrays, as ``to_uint8``
    takes); a reference without a face is an error naming it."""
    if len(references) == 0:
        raise BadInputError("Connect at least one reference photo of the person.")
    embeddings = []
    for i, reference in enumerate(references):
        rgb = to_uint8(reference)
        faces = detect_faces(models, rgb)
        if not faces:
            raise BadInputError(f"No face was found in reference photo {i + 1}; use clear, frontal photos as the "
                                "reference.")
        embeddings.append(embed_faces(models, rgb, [select_face(faces, "largest")])[0])
    return np.stack(embeddings)


def reference_embedding(models: FaceModels, references: Sequence) -> np.ndarray:
    """Unit mean embedding of the reference photos' faces: the identity generated faces are compared with."""
    mean = reference_embeddings(models, references).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def align_one(models: FaceModels, image: np.ndarray, tpl: Template, select: str = "largest", index: int = 0,
              reference: np.ndarray | None = None, on_no_face: str = "error", source_index: int = 0,
              faces: Sequence[Face] | None = None, border: str = "black") -> AlignedFace:
    """``faces``: already found (landmarks from another node) instead of detected here. ``border``: what fills
    the crop beyond the photo (``align.warp_to_crop``)."""
    if on_no_face not in NO_FACE:
        raise BadInputError(f"Unknown no-face behaviour {on_no_face!r}; choose one of {', '.join(NO_FACE)}.")
    h, w = image.shape[:2]
    if faces is None:
        faces = detect_faces(models, image) if min(h, w) >= 2 else []
    faces = list(faces)
    if not faces:
        if on_no_face == "error":
            raise BadInputError(f"No face found in image {source_index + 1} ({w}x{h}). Use a photo where the face is "
                                "clearly visible, or set 'if no face' to pass_through.")
        log.warning("[Anybody] no face found in image %d (%dx%d); passing it through as a centred crop",
                    source_index + 1, w, h)
        m = center_matrix(h, w, tpl.size)
        return AlignedFace(warp_to_crop(image, m, tpl.size, tpl.antialias, border),
                           np.zeros((tpl.size, tpl.size), np.float32), m,
                           source_index, (h, w), tpl.name, None)
    similarities = None
    if select == "most_similar":
        if reference is None:
            raise BadInputError("'most_similar' needs a reference face image; connect one.")
        similarities = embed_faces(models, image, faces) @ reference
    face = select_face(faces, select, index, similarities)
    m = similarity_matrix(face.landmarks, tpl)
    crop = warp_to_crop(image, m, tpl.size, tpl.antialias, border)
    sim = float(similarities[[f is face for f in faces].index(True)]) if similarities is not None else None
    return AlignedFace(crop, landmark_mask(apply(m, face.landmarks), tpl.size), m, source_index, (h, w), tpl.name,
                       face, sim)


def align_images(models: FaceModels, images: Sequence, template_name: str = "ffhq512", select: str = "largest",
                 index: int = 0, references: Sequence | None = None, on_no_face: str = "error",
                 progress: Callable[[int, int], None] | None = None,
                 found: Sequence[Sequence[Face]] | None = None, border: str = "black") -> list[AlignedFace]:
    """Align one face per image. ``images``/``references``: [H,W,C] float 0..1 tensors or uint8 arrays.
    ``found``: per image, faces another node found (MediaPipe landmarks); the detector is not run then.
    ``border``: black, or FFHQ's mirrored fill where a crop leaves its photo (``align.warp_to_crop``)."""
    tpl = template(template_name)
    if len(images) == 0:
        raise BadInputError("No images were given.")
    reference = None
    if select == "most_similar":
        if not references:
            raise BadInputError("'most_similar' needs a reference face image; connect one.")
        reference = reference_embedding(models, references)
    out = []
    for i, image in enumerate(images):
        out.append(align_one(models, to_uint8(image), tpl, select, index, reference, on_no_face, i,
                             None if found is None else found[i], border))
        if progress:
            progress(i + 1, len(images))
    return out
