"""MagiCapture's identity term (spec §6.3): the subject's face identity on the image the UNet predicts.

``x0`` is decoded with its gradient, a face is looked for on a detached uint8 copy (none found: the term is skipped
for this step, which in practice gates out very noisy timesteps), the differentiable image is warped to the
ArcFace 112 template by that detection's landmarks and embedded by the frozen recognizer; the loss is
``1 - cos`` to the subject's reference embedding. Gradients reach the adapters through the warp and the VAE decoder.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..face.align import similarity_matrix, warp_differentiable
from ..face.detect import Face
from ..face.recognizer import FaceRecognizer
from ..face.templates import TEMPLATES
from .magicapture_losses import identity_loss

Detector = Callable[[np.ndarray], Sequence[Face]]


def central_face(faces: Sequence[Face], height: int, width: int) -> Face:
    """The official choice among several faces: the largest box, less twice the squared distance of its centre from
    the image centre."""
    centre = np.array([width / 2, height / 2])

    def score(face: Face) -> float:
        box_centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
        return face.area - 2 * float(((box_centre - centre) ** 2).sum())

    return max(faces, key=score)


def identity_term(pixels: torch.Tensor, references: torch.Tensor, detect: Detector,
                  recognizer: FaceRecognizer) -> tuple[torch.Tensor | None, int]:
    """``1 - cos`` averaged over the images of ``pixels [B,3,H,W]`` (0..1, with gradient) in which a face is found,
    against ``references [B,512]``; returns (loss or None when no image has a face, number of images skipped)."""
    template = TEMPLATES["arcface112"]
    crops, refs, skipped = [], [], 0
    batch, _, height, width = pixels.shape
    snapshot = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for b in range(batch):
        faces = detect(snapshot[b])
        if not faces:
            skipped += 1
            continue
        matrix = similarity_matrix(central_face(faces, height, width).landmarks, template)
        crops.append(warp_differentiable(pixels[b:b + 1], matrix[None], template.size))
        refs.append(references[b:b + 1])
    if not crops:
        return None, skipped
    embeddings = recognizer.embed_with_gradient(torch.cat(crops) * 2 - 1)
    return identity_loss(embeddings, torch.cat(refs)), skipped
