"""Tiny AdaFace and Arc2Face files in the official layouts, for the tests.

The AdaFace checkpoint is saved as the authors saved theirs: a pickled subject-generator *object* whose classes
carry the authors' names (``SubjBasisGenerator``, ``CLIPTextModelWrapper``, ``CLIPAttentionMKV``) under one of
their module prefixes. Those modules exist only while the file is written, so loading it cannot import them.
"""
from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import torch
from torch import nn

from anybody.nets.adaface_files import ADAFACE_FILE
from anybody.nets.clip_text import ClipTextShape, ClipTextTransformer, MultiKVAttention

LAYER_WEIGHTS = [[0.92], [0.95], [2.08]]


def tiny_clip(width=768, layers=3, copies=None, vocab=49408, seed=0, mlp=32) -> ClipTextTransformer:
    torch.manual_seed(seed)
    model = ClipTextTransformer(ClipTextShape(width, layers, width // 64, mlp, vocab, 77, tuple(copies or [1] * layers)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1, 0.1)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def authors_modules(prefix: str):
    """The authors' class names, importable under ``prefix`` for the duration."""
    parts = prefix.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    saved = {n: sys.modules.get(n) for n in names}
    module = types.ModuleType(prefix)
    for n in names[:-1]:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[prefix] = module
    for name, base in (("SubjBasisGenerator", nn.Module), ("CLIPTextModelWrapper", nn.Module),
                       ("CLIPAttentionMKV", MultiKVAttention)):
        cls = type(name, (base,), {"__module__": prefix, "__qualname__": name})
        setattr(module, name, cls)
    try:
        yield module
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old


def save_authors_checkpoint(path: Path, prefix: str, text: ClipTextTransformer, pad: torch.Tensor,
                            joint: bool = False) -> None:
    with authors_modules(prefix) as mod:
        wrapper = mod.CLIPTextModelWrapper()
        wrapper.text_model = text
        originals = [layer.self_attn.__class__ for layer in text.encoder.layers]
        for layer in text.encoder.layers:
            layer.self_attn.__class__ = mod.CLIPAttentionMKV
        generator = mod.SubjBasisGenerator()
        generator.prompt2token_proj = wrapper
        generator.hidden_state_layer_weights = nn.Parameter(torch.tensor(LAYER_WEIGHTS))
        generator.pad_embeddings = pad  # a plain tensor attribute, as in the official generator
        generator.num_out_embs_per_layer = 16
        generator.prompt2token_proj_attention_multipliers = [2] * 12  # unreliable by design: shapes decide
        stored = nn.ModuleList([nn.Linear(2, 2), generator]) if joint else generator
        torch.save({"string_to_token": {"z": torch.tensor(265)}, "placeholder_strings": ["z"], "do_zero_shot": True,
                    "string_to_subj_basis_generator_dict": nn.ModuleDict({"z": stored})}, path)  # as EmbeddingManager
        for layer, cls in zip(text.encoder.layers, originals):
            layer.self_attn.__class__ = cls


def write_adaface_files(models_dir: Path, seed: int = 0, prefix: str = "ldm.modules.subj_basis_generator"):
    """``models_dir/adaface/<official name>`` and ``models_dir/arc2face/encoder/pytorch_model.bin``; returns the
    networks and the pad tensor written."""
    text, arc = tiny_clip(seed=seed + 1, copies=[1, 4, 2]), tiny_clip(seed=seed + 2)
    pad = torch.randn(77, 768, generator=torch.Generator().manual_seed(seed))
    (models_dir / "adaface").mkdir(parents=True, exist_ok=True)
    (models_dir / "arc2face" / "encoder").mkdir(parents=True, exist_ok=True)
    save_authors_checkpoint(models_dir / "adaface" / ADAFACE_FILE, prefix, text, pad)
    torch.save({"text_model." + k: v for k, v in arc.state_dict().items()},
               models_dir / "arc2face" / "encoder" / "pytorch_model.bin")
    return text, arc, pad
