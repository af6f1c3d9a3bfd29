"""The user's AdaFace and Arc2Face files -> :class:`AdaFaceEncoder`, with a safetensors cache for the pickled one.

AdaFace's released checkpoint is a pickled embedding manager whose subject generator is a whole ``nn.Module``
object; it is read with :mod:`.pickle_stubs` (nothing in it runs) and its tensors are cached beside it as
``<file>.anybody.safetensors``, recording the source's size, mtime and SHA-256, so later loads are a plain
safetensors read. Arc2Face's encoder is an ordinary ``CLIPTextModel`` state dict.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..files import atomic_write
from ..methods.adaface import EOS, NUM_VECTORS, ROWS, AdaFaceEncoder
from .clip_text import ClipTextTransformer
from .pickle_stubs import Stub, attribute, load_stubbed, module_tensors
from .weights import read_state_dict

ADAFACE_FILE = "subjects-celebrity2024-05-16T17-22-46_zero3-ada-30000.pt"
ADAFACE_SOURCE = "the Hugging Face model repo adaface-neurips/adaface (MIT)"
ARC2FACE_SOURCE = "the Hugging Face model repo FoivosPar/Arc2Face, folder encoder/ (config.json, pytorch_model.bin)"
P2T = "prompt2token_proj."
log = logging.getLogger("anybody")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(source: Path) -> Path:
    return source.with_name(source.name + ".anybody.safetensors")


def subject_generator_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The subject generator's tensors (``prompt2token_proj.text_model.*``, ``hidden_state_layer_weights``,
    ``pad_embeddings`` ...), from the cache when it matches the file, else from the pickle (and cached)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"AdaFace checkpoint not found: {path}. Get {ADAFACE_FILE} from {ADAFACE_SOURCE}.")
    stat, cache = path.stat(), cache_path(path)
    # ctime too: copies that keep mtime (cp -p, rsync -a) cannot keep it, so other content under the same size and
    # mtime is hashed, not trusted
    stamp = {"source_size": str(stat.st_size), "source_mtime_ns": str(stat.st_mtime_ns),
             "source_ctime_ns": str(stat.st_ctime_ns), "source_inode": str(stat.st_ino)}
    sha, tensors = None, None
    if cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as f:
                meta = f.metadata() or {}
                same = all(meta.get(k) == v for k, v in stamp.items())
                if not same and meta.get("source_size") == stamp["source_size"]:
                    sha = _sha256(path)  # touched, copied or replaced: the content decides
                    if meta.get("source_sha256") == sha:
                        tensors = {k: f.get_tensor(k) for k in f.keys()}  # same content: re-stamp below
                if same:
                    return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # a damaged cache is rebuilt, not trusted
            log.warning("[Anybody] ignoring the unreadable AdaFace cache %s (%s)", cache, exc)
    if tensors is None:
        tensors = _from_pickle(path)
    meta = {**stamp, "source_sha256": sha or _sha256(path), "source_name": path.name}
    try:
        atomic_write(cache, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta),
                     overwrite=True)
    except OSError as exc:  # a read-only model folder: work from memory, convert again next time
        log.warning("[Anybody] could not cache the converted AdaFace weights at %s (%s)", cache, exc)
    return tensors


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
