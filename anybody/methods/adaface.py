"""AdaFace (2024 Arc2Face-only encoder): a face's ArcFace vector becomes 16 SD1.5 prompt vectors, with no training.

Spec: shared/methods/adaface.md §4. ID vector (512) -> Arc2Face's CLIP text encoder, the vector standing in for
the word "id" of "photo of a id person" -> rows 4..19 of its output ("ID prompt", 16x768) -> AdaFace's
``prompt2token_proj`` (a CLIP text encoder with widened attention), those rows standing in for 16 commas ->
a weighted mix of its last three layers, final layer norm, rows 4..19 = the 16 vectors. The host's own CLIP
encodes them where the prompt names the identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import BadInputError, ModelFileError
from ..nets.clip_text import ClipTextTransformer

BOS, EOS, COMMA = 49406, 49407, 267
#: "photo of a id person" (the CLIP-L BPE ids); the ID vector replaces the row of "id" at index 4
ARC2FACE_PROMPT = (BOS, 1125, 539, 320, 1014, 2533, EOS)
ID_INDEX = 4
ARC2FACE_LENGTH = 22  # AdaFace pads the Arc2Face prompt to 22 tokens (causal attention: rows 4..19 do not care)
NUM_VECTORS = 16
#: "photo of a " followed by 16 commas, padded to 77: the ID prompt replaces the commas' rows (indices 4..19)
COMMA_TEMPLATE = (BOS, 1125, 539, 320, *([COMMA] * NUM_VECTORS), EOS)
ROWS = slice(4, 4 + NUM_VECTORS)
DEFAULT_STRENGTH = 1.0  # the 2024 wrapper's; its demo slider starts at 4.0


def padded(ids: tuple[int, ...], length: int) -> torch.Tensor:
    return torch.tensor(list(ids) + [EOS] * (length - len(ids)))


def id_vector(embeddings: torch.Tensor) -> torch.Tensor:
    """One unit ID vector from the ArcFace embeddings ``[n, 512]`` of several photos: the normalised mean of the
    normalised embeddings (averaging at this stage is the method's preferred way to use several photos)."""
    if embeddings.dim() != 2 or embeddings.shape[-1] != 512 or len(embeddings) == 0:
        raise BadInputError(f"AdaFace needs 512-wide ArcFace embeddings, got shape {tuple(embeddings.shape)}.")
    return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(0), dim=0)


def mix_last_layers(states: list[torch.Tensor], weights: torch.Tensor | None) -> torch.Tensor:
    """``sum_l (w_l / sum w) h_l`` over the last three hidden states; ``weights`` ``[3, 1]`` or ``[3, D]`` (both
    occur in released files); None: the last layer alone."""
    if weights is None:
        return states[-1]
    w = weights.to(states[-1]).reshape(3, -1)
    w = w / w.sum(0, keepdim=True)
    return sum(w[i] * h for i, h in enumerate(states[-3:]))


@dataclass
class AdaFaceEncoder:
    """The two networks and what the subject generator stored beside its weights."""

    arc2face: ClipTextTransformer
    prompt2token: ClipTextTransformer
    layer_weights: torch.Tensor | None
    pad_embeddings: torch.Tensor | None  # [16, 768] the generator cached in training; the strength blends towards it
    pad_source: str = "stored"

    @torch.no_grad()
    def id_prompt(self, id_vec: torch.Tensor, length: int = ARC2FACE_LENGTH) -> torch.Tensor:
        """Arc2Face's 16 ID prompt rows ``[16, 768]`` for a unit ID vector ``[512]`` (§4.2)."""
        rows = self.arc2face.token_rows(padded(ARC2FACE_PROMPT, length)).clone()
        rows[ID_INDEX] = torch.cat([id_vec.to(rows), rows.new_zeros(rows.shape[-1] - id_vec.shape[-1])])
        states = self.arc2face(rows[None])
        return self.arc2face.final_layer_norm(states[-1])[0, ROWS]

    @torch.no_grad()
    def subject_vectors(self, id_prompt: torch.Tensor, length: int = len(COMMA_TEMPLATE)) -> torch.Tensor:
        """``prompt2token_proj`` of the ID prompt: 16 vectors in SD1.5's token-embedding space (§4.3). The official
        code pads the template to 77 tokens; attention is causal, so rows 4..19 are the same without the padding
        (tested), at a quarter of the work."""
        rows = self.prompt2token.token_rows(padded(COMMA_TEMPLATE, length)).clone()
        rows[ROWS] = id_prompt.to(rows)
        states = self.prompt2token(rows[None])
        return self.prompt2token.final_layer_norm(mix_last_layers(states, self.layer_weights))[0, ROWS]

    def encode(self, id_vec: torch.Tensor, strength: float = DEFAULT_STRENGTH) -> torch.Tensor:
        """The 16 vectors for a unit ID vector, at ID strength ``s``: ``s*A + (1-s)*pad`` (§4.5)."""
        vectors = self.subject_vectors(self.id_prompt(id_vec)).float()
        return apply_strength(vectors, strength, self.pad_embeddings)


def apply_strength(vectors: torch.Tensor, strength: float, pad: torch.Tensor | None) -> torch.Tensor:
    if strength == 1.0:
        return vectors
    if pad is None:
        raise ModelFileError("This AdaFace file stores no pad embeddings, so an ID strength other than 1.0 has "
                             "nothing to blend towards; use strength 1.0.")
    return strength * vectors + (1.0 - strength) * pad.to(vectors)


#: the authors' NeurIPS evaluation: guidance annealed linearly from 4 at the first DDIM step to 1 at the last
ANNEALED_GUIDANCE = (4.0, 1.0)


def annealed_guidance(step: int, steps: int, start: float = ANNEALED_GUIDANCE[0],
                      end: float = ANNEALED_GUIDANCE[1]) -> float:
    """The guidance scale at ``step`` (0-based) of ``steps``: ``start`` at the first, ``end`` at the last, linear
    in between (``g_i = 4 - 3 i / 49`` for the authors' 50 steps)."""
    if steps <= 1:
        return float(start)
    return float(start + (end - start) * min(max(step, 0), steps - 1) / (steps - 1))


#: AdaFace's own preprocessing: the photo, padded to a square, at 512x512 (nearest) and detected at that size
PREPROCESS_SIZE = 512


def as_adaface_sees_it(rgb):
    """Pad to a square (the 2025 code; the 2024 code stretched instead) and resize to 512 with nearest sampling,
    as the authors prepared every photo for detection and recognition (spec §4.1)."""
    import numpy as np
    from PIL import Image

    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = rgb
    return np.asarray(Image.fromarray(square).resize((PREPROCESS_SIZE, PREPROCESS_SIZE), Image.NEAREST))


def face_id_vector(face_models, images) -> tuple[torch.Tensor, list[int]]:
    """The unit ID vector of the largest face in each photo (photos without a face are skipped and returned)."""
    import numpy as np

    from ..face.detect import detect_faces, select_face
    from ..face.pipeline import embed_faces, to_uint8

    embeddings, missing = [], []
    for i, image in enumerate(images):
        rgb = as_adaface_sees_it(to_uint8(image))
        faces = detect_faces(face_models, rgb, sizes=(PREPROCESS_SIZE,))
        if not faces:
            missing.append(i)
            continue
        embeddings.append(embed_faces(face_models, rgb, [select_face(faces, "largest")])[0])
    if not embeddings:
        raise BadInputError(f"No face was found in {'the photo' if len(images) == 1 else f'any of the {len(images)} photos'}; "
                            "AdaFace needs a clear, frontal face.")
    return id_vector(torch.from_numpy(np.stack(embeddings))), missing


def adaface_identity(encoder: AdaFaceEncoder, face_models, images, name: str,
                     strength: float = DEFAULT_STRENGTH):
    """Photos of one person -> an SD1.x identity of 16 vectors (and the indices of photos without a face)."""
    from ..files import safe_name
    from ..identity import Identity

    name = safe_name(name)
    if not 0.0 <= strength <= 10.0:
        raise BadInputError(f"ID strength {strength} is outside 0-10 (1.0 keeps AdaFace's vectors as they are; the "
                            "authors' demo starts at 4).")
    vec, missing = face_id_vector(face_models, images)
    vectors = encoder.encode(vec, strength)
    recognizer = getattr(getattr(face_models, "recognizer", None), "model_file", None)
    metadata = {"anybody.strength": str(strength), "anybody.faces": str(len(images) - len(missing)),
                "anybody.pad": encoder.pad_source, "anybody.recognizer": Path(recognizer).name if recognizer else "?",
                "anybody.note": "AdaFace 2024 (Arc2Face encoder), zero-shot"}
    return Identity(name, "sd1", {"clip_l": vectors}, "adaface", metadata), missing
