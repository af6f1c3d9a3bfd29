"""Detection, choosing one face among several, and recognition embeddings, on RGB uint8 numpy images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError
from .models import FaceModels

#: detector input sizes tried in turn until a face is found: faces that fill the frame, or tiny ones, are
#: missed at one size and found at another (the retry InstantID, PuLID and IPAdapter users rely on)
DETECTION_SIZES = (640, 512, 384, 256)
#: larger photos are detected on a copy of this long side (the detector sees at most 640 px anyway), so a huge
#: image never gets a second full-size copy; landmarks are scaled back to the original pixels
DETECT_MAX_SIDE = 2048
SELECT_MODES = ("largest", "index", "most_similar")


@dataclass(eq=False)
class Face:
    box: np.ndarray  # [4] x1, y1, x2, y2 in source pixels
    landmarks: np.ndarray  # [5, 2] source pixels: left eye, right eye, nose, left/right mouth corner
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def detect_faces(models: FaceModels, image: np.ndarray, sizes=DETECTION_SIZES) -> list[Face]:
    """All faces in ``image`` ([H,W,3] RGB uint8), left to right; empty if none at any detector size."""
    h, w = image.shape[:2]
    back = np.ones(2)  # detector pixels -> source pixels (x, y)
    if max(h, w) > DETECT_MAX_SIDE:
        import cv2

        scale = DETECT_MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        back = np.array([w / size[0], h / size[1]])
    bgr = np.ascontiguousarray(image[..., ::-1])
    if getattr(models.detector, "fixed_size", False):  # a detector with one input size of its own: no retries
        sizes = sizes[:1]
    for size in sizes:
        boxes, kpss = models.detector.detect(bgr, input_size=(size, size), max_num=0)
        if kpss is None and len(boxes):
            raise BadInputError(f"The detector {models.detector.model_file} gives no landmarks; use a pack with a "
                                "5-point detector (scrfd_*_bnkps / det_10g).")
        if len(boxes):
            faces = [Face(b[:4].astype(np.float64) * np.tile(back, 2), k.astype(np.float64) * back, float(b[4]))
                     for b, k in zip(boxes, kpss)]
            return sorted(faces, key=lambda f: (f.box[0], f.box[1]))
    return []


def embed_aligned(models: FaceModels, crops_112: list[np.ndarray]) -> np.ndarray:
    """Unit-length recognition embeddings ``[N, D]`` of ArcFace-aligned RGB uint8 crops."""
    if models.embedder is not None:  # torch: [-1, 1] RGB tensors in, unit embeddings out
        import torch

        if not crops_112:
            return np.zeros((0, 512), np.float32)
        faces = torch.from_numpy(np.stack(crops_112)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        feats = models.embedder(faces).numpy().astype(np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if models.recognizer is None:
        raise BadInputError(f"The face model {models.name} has no recognizer (e.g. glintr100.onnx / w600k_r50.onnx "
                            "in its pack, or FaceRecognizerLoader's); identity matching and scores need one.")
    if not crops_112:
        return np.zeros((0, 512), np.float32)
    size = models.recognizer.input_size
    crops = [np.ascontiguousarray(c[..., ::-1]) for c in crops_112]  # insightface takes BGR and swaps to RGB
    if crops[0].shape[1::-1] != tuple(size):
        import cv2

        crops = [cv2.resize(c, tuple(size), interpolation=cv2.INTER_AREA) for c in crops]
    feats = np.asarray(models.recognizer.get_feat(crops), dtype=np.float32).reshape(len(crops), -1)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def select_face(faces: list[Face], mode: str, index: int = 0, similarities: np.ndarray | None = None) -> Face:
    """Pick one face: the largest box, the ``index``-th from the left, or the most similar to a reference."""
    if not faces:
        raise BadInputError("No face to choose from.")
    if mode == "largest":
        return max(faces, key=lambda f: f.area)
    if mode == "index":
        if not 0 <= index < len(faces):
            raise BadInputError(f"Face index {index} asked for, but {len(faces)} face(s) were found "
                                f"(index counts from 0, left to right).")
        return faces[index]
    if mode == "most_similar":
        if similarities is None:
            raise BadInputError("'most_similar' needs a reference face image; connect one.")
        return faces[int(np.argmax(similarities))]
    raise BadInputError(f"Unknown face choice {mode!r}; choose one of {', '.join(SELECT_MODES)}.")
