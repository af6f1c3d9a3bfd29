"""The user's AdaFace and Arc2Face files -> :class:`AdaFaceEncoder`, with a safetensors cache for the pickled one.

AdaFace's released checkpoint is a pickled embedding manager whose subject generator is a whole ``nn.Module``
object; it is read with :mod:`.pickle_stubs` (nothing in it runs) and its tensors are cached beside it as
``<file>.anybody.safetensors``, recording the source's size, mtime and SHA-256, so later loads are a plain
safetensors read. Arc2Face's encoder is an ordinary ``CLIPTextModel`` state dict.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelFileError
from ..methods.adaface import EOS, NUM_VECTORS, ROWS, AdaFaceEncoder
from .clip_text import ClipTextTransformer
from .converted import cache_path, converted_tensors  # noqa: F401  (cache_path: where the cache goes)
from .pickle_stubs import Stub, attribute, load_stubbed, module_tensors
from .weights import read_state_dict

ADAFACE_FILE = "subjects-celebrity2024-05-16T17-22-46_zero3-ada-30000.pt"
ADAFACE_SOURCE = "the Hugging Face model repo adaface-neurips/adaface (MIT)"
ARC2FACE_SOURCE = "the Hugging Face model repo FoivosPar/Arc2Face, folder encoder/ (config.json, pytorch_model.bin)"
P2T = "prompt2token_proj."


def subject_generator_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The subject generator's tensors (``prompt2token_proj.text_model.*``, ``hidden_state_layer_weights``,
    ``pad_embeddings`` ...), from the cache when it matches the file, else from the pickle (and cached)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"AdaFace checkpoint not found: {path}. Get {ADAFACE_FILE} from {ADAFACE_SOURCE}.")
    return converted_tensors(path, _from_pickle, "AdaFace weights")


def _from_pickle(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_stubbed(path)
    generators = checkpoint.get("string_to_subj_basis_generator_dict") if isinstance(checkpoint, dict) else None
    if isinstance(generators, Stub):  # the authors' EmbeddingManager saves an nn.ModuleDict
        generators = attribute(generators, "_modules", {})
    if not isinstance(generators, dict) or "z" not in generators:
        raise ModelFileError(f"{path.name} has no subject generator ('string_to_subj_basis_generator_dict' -> 'z'): "
                             f"not an AdaFace checkpoint. Expected {ADAFACE_FILE} from {ADAFACE_SOURCE}.")
    generator = generators["z"]
    if "ModuleList" in getattr(generator, "_stub_name", ""):
        raise ModelFileError(f"{path.name} is a 2025 joint (ConsistentID + Arc2Face) AdaFace checkpoint, which Anybody "
                             f"does not run yet; use the 2024 Arc2Face checkpoint {ADAFACE_FILE} from {ADAFACE_SOURCE}.")
    if not isinstance(generator, Stub):
        raise ModelFileError(f"{path.name}: the subject generator is a {type(generator).__name__}, not a module.")
    tensors = module_tensors(generator)
    if not any(k.startswith(P2T + "text_model.") for k in tensors):
        raise ModelFileError(f"{path.name}: the subject generator has no prompt2token_proj text encoder; not the "
                             f"AdaFace checkpoint expected ({ADAFACE_FILE} from {ADAFACE_SOURCE}).")
    return tensors


def arc2face_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Arc2Face's text encoder from ``<folder>`` or ``<folder>/encoder`` (``model.safetensors`` or
    ``pytorch_model.bin``, read with ``weights_only``)."""
    folder = Path(folder)
    for sub in (folder / "encoder", folder):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (sub / name).is_file():
                return read_state_dict(sub / name, "Arc2Face encoder", ARC2FACE_SOURCE)
    raise ModelFileError(f"Arc2Face encoder not found in {folder} (looked for encoder/model.safetensors and "
                         f"encoder/pytorch_model.bin). Get it from {ARC2FACE_SOURCE}.")


def load_adaface(adaface_path: str | Path, arc2face_folder: str | Path) -> AdaFaceEncoder:
    generator = subject_generator_tensors(adaface_path)
    arc2face = ClipTextTransformer.from_tensors(arc2face_tensors(arc2face_folder))
    prompt2token = ClipTextTransformer.from_tensors({k[len(P2T):]: v for k, v in generator.items()
                                                     if k.startswith(P2T)})
    for net, name in ((arc2face, "Arc2Face encoder"), (prompt2token, "AdaFace prompt2token_proj")):
        if net.shape.width != 768:
            raise ModelFileError(f"The {name} is {net.shape.width} wide; AdaFace works in SD1.5's 768-wide CLIP-L space.")
    weights = generator.get("hidden_state_layer_weights")
    if weights is not None and weights.shape[0] != 3:
        raise ModelFileError(f"hidden_state_layer_weights has shape {tuple(weights.shape)}; expected [3, 1] or [3, 768].")
    pad = generator.get("pad_embeddings")  # [77, 768]: the pad token's embedding rows at every position
    if pad is not None:
        pad = pad.reshape(-1, pad.shape[-1])
        if len(pad) not in (77, NUM_VECTORS) or pad.shape[-1] != 768:
            raise ModelFileError(f"pad_embeddings has shape {tuple(pad.shape)}; expected [77, 768].")
        pad, source = (pad[ROWS] if len(pad) == 77 else pad), "stored"
    else:  # as the 2024 wrapper does without one: the EOS row plus the position rows of prompt2token_proj
        with torch.no_grad():
            emb = prompt2token.embeddings
            pad = emb.token_embedding.weight[EOS] + emb.position_embedding.weight[ROWS]
        source = "prompt2token EOS + positions"
    return AdaFaceEncoder(arc2face, prompt2token, weights.float() if weights is not None else None,
                          pad.float().clone(), pad_source=source)
