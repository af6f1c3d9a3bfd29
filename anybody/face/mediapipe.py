"""ComfyUI's own MediaPipe face model as the pack's detector: face detection with no onnxruntime and no insightface.

ComfyUI (from the release with ``comfy_extras/nodes_mediapipe.py``) ships a pure-PyTorch MediaPipe Face Landmarker:
BlazeFace boxes and the 478-point FaceMesh v2. Its 478 points reduce to the five that alignment uses: the iris centres
(468 and 473) for the eyes — the eye-corner midpoints when a mesh has no iris points — a point on the nose (5) and the
mouth corners (61, 291). As insightface orders them, "left" is the one with the smaller x in the image.

The nose is not the mesh's tip (1): on real faces (MediaPipe's own FaceMesh with irises, the same topology, on five
faces from insightface's and scikit-image's sample photos) the tip sits 9.7 px (of 112) below where 5-point detectors
put the nose (the ArcFace template, after a fit on eyes and mouth), point 5 within 0.7 px of it; with 5 the fit
leaves 0.107 of the eye distance against 0.132, and the crops move by about 2 px of 112.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import BadInputError

IRIS_CENTRES = (468, 473)
EYE_CORNERS = ((33, 133), (362, 263))
NOSE = 5  # where 5-point detectors' nose lands on the mesh (see above), not the tip (1)
MOUTH_CORNERS = (61, 291)


def five_points(landmarks_xy) -> np.ndarray:
    """``[5, 2]`` float64 (left eye, right eye, nose tip, left and right mouth corner) from a FaceMesh's points."""
    pts = np.asarray(landmarks_xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 468:
        raise BadInputError(f"Face landmarks have {len(pts)} points; MediaPipe FaceMesh gives 468 or 478.")
    if len(pts) >= 478:
        eyes = pts[list(IRIS_CENTRES)]
    else:
        eyes = np.stack([pts[list(pair)].mean(0) for pair in EYE_CORNERS])
    eyes = eyes[np.argsort(eyes[:, 0])]
    mouth = pts[list(MOUTH_CORNERS)]
    mouth = mouth[np.argsort(mouth[:, 0])]
    return np.concatenate([eyes, pts[NOSE][None], mouth])


def faces_from_landmarks(frame: Sequence[dict]):
    """The ``Face`` records of one image of ComfyUI's FACE_LANDMARKS (``frames[i]``), left to right."""
    from .detect import Face

    faces = [Face(np.asarray(f["bbox_xyxy"], dtype=np.float64).reshape(4), five_points(f["landmarks_xy"]),
                  float(f.get("score", 1.0))) for f in frame]
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


class MediaPipeDetector:
    """insightface's detector interface over ComfyUI's ``FACE_DETECTION_MODEL`` (its ``detect_batch``)."""

    fixed_size = True  # MediaPipe scales every image to its own input: retrying other sizes would find nothing new

    def __init__(self, model, variant: str = "short", min_confidence: float = 0.5, max_faces: int = 16,
                 model_file: str = "mediapipe_face_landmarker") -> None:
        if not hasattr(model, "detect_batch"):
            raise BadInputError("This is not ComfyUI's MediaPipe face detection model; connect the output of "
                                "'Load Face Detection Model (MediaPipe)'.")
        self.model, self.variant, self.min_confidence, self.max_faces = model, variant, min_confidence, max_faces
        self.model_file = model_file

    def detect(self, bgr: np.ndarray, input_size=None, max_num: int = 0):
        """``(boxes [N,5] with the score last, kps [N,5,2])`` like insightface's SCRFD; the size is MediaPipe's own."""
        import torch

        rgb = np.ascontiguousarray(bgr[..., ::-1])
        with torch.no_grad():  # called inside training runs too, where gradients are on; ComfyUI's code needs them off
            (frame,) = self.model.detect_batch([rgb], num_faces=max_num or self.max_faces,
                                               score_thresh=self.min_confidence, variant=self.variant)
        if not frame:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        boxes = np.stack([np.append(np.asarray(f["bbox_xyxy"], np.float32).reshape(4), float(f["score"]))
                          for f in frame])
        kps = np.stack([five_points(f["landmarks_xy"]) for f in frame]).astype(np.float32)
        return boxes, kps
