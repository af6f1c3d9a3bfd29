"""A CLIP text transformer in plain torch that starts from input embeddings, in the HF ``text_model.*`` key layout.

AdaFace runs two of them on vectors that are not token rows: Arc2Face's encoder (an ID vector placed in the
prompt) and its own ``prompt2token_proj``, some of whose attention layers were widened during training to
``M`` key/value copies per token ("multi-K/V"). Hosts' CLIP modules cannot run either, so this is the one place
that does: causal attention, quick-GELU MLP, final layer norm, every hidden state returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError


@dataclass(frozen=True)
class ClipTextShape:
    width: int
    layers: int
    heads: int
    mlp: int
    vocab: int
    positions: int
    kv_copies: tuple[int, ...]  # M per layer (1 = ordinary attention)


def infer_shape(tensors: Mapping[str, torch.Tensor], prefix: str = "text_model.", heads: int | None = None) -> ClipTextShape:
    """Layer count, width and each layer's key/value multiplier from the tensor shapes (never from config)."""
    try:
        vocab, width = tensors[f"{prefix}embeddings.token_embedding.weight"].shape
        positions = tensors[f"{prefix}embeddings.position_embedding.weight"].shape[0]
        layers = 1 + max(int(k[len(prefix) + len("encoder.layers."):].split(".")[0])
                         for k in tensors if k.startswith(f"{prefix}encoder.layers."))
        mlp = tensors[f"{prefix}encoder.layers.0.mlp.fc1.weight"].shape[0]
        copies = []
        for i in range(layers):
            rows = tensors[f"{prefix}encoder.layers.{i}.self_attn.k_proj.weight"].shape[0]
            if rows % width or tensors[f"{prefix}encoder.layers.{i}.self_attn.v_proj.weight"].shape[0] != rows:
                raise ModelFileError(f"layer {i}: key/value projections of {rows} rows are not a multiple of the "
                                     f"width {width}")
            copies.append(rows // width)
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"not a CLIP text encoder in the expected layout (missing or misshapen {exc}).") from exc
    return ClipTextShape(int(width), layers, heads or max(1, int(width) // 64), int(mlp), int(vocab), int(positions),
                         tuple(copies))


class MultiKVAttention(nn.Module):
    """CLIP self-attention whose keys/values come in ``copies`` per token, ordered token-major (``t*M + m``); a
    token's copies are masked together by the causal mask and share one softmax. ``copies=1`` is plain CLIP."""

    def __init__(self, width: int, heads: int, copies: int = 1) -> None:
        super().__init__()
        self.heads, self.copies = heads, copies
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width * copies)
        self.v_proj = nn.Linear(width, width * copies)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, m = self.heads, self.copies
        q = self.q_proj(x).view(b, t, h, d // h).transpose(1, 2)
        k = self.k_proj(x).view(b, t * m, h, d // h).transpose(1, 2)  # [t][m] rows -> index t*m + copy
        v = self.v_proj(x).view(b, t * m, h, d // h).transpose(1, 2)
        key_token = torch.arange(t * m, device=x.device) // m
        allowed = key_token[None, :] <= torch.arange(t, device=x.device)[:, None]
        mask = torch.zeros(t, t * m, device=x.device, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1 / math.sqrt(d // h))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _Layer(nn.Module):
    def __init__(self, shape: ClipTextShape, copies: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(shape.width)
        self.self_attn = MultiKVAttention(shape.width, shape.heads, copies)
        self.layer_norm2 = nn.LayerNorm(shape.width)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(shape.width, shape.mlp)
        self.mlp.fc2 = nn.Linear(shape.mlp, shape.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        hidden = self.mlp.fc1(self.layer_norm2(x))
        return x + self.mlp.fc2(hidden * torch.sigmoid(1.702 * hidden))  # quick GELU, as CLIP ViT-L


class ClipTextTransformer(nn.Module):
    """``text_model`` of a CLIP text encoder; :meth:`forward` takes input embeddings (token rows or anything else)."""

    def __init__(self, shape: ClipTextShape) -> None:
        super().__init__()
        self.shape = shape
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(shape.vocab, shape.width)
        self.embeddings.position_embedding = nn.Embedding(shape.positions, shape.width)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Layer(shape, m) for m in shape.kv_copies)
        self.final_layer_norm = nn.LayerNorm(shape.width)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "text_model.") -> "ClipTextTransformer":
        """From HF-layout tensors (``text_model.*`` as the released files; bare keys as transformers 5 keeps them)."""
        if f"{prefix}embeddings.token_embedding.weight" not in tensors and "embeddings.token_embedding.weight" in tensors:
            prefix = ""
        model = cls(infer_shape(tensors, prefix))
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and "position_ids" not in k}
        missing, unexpected = model.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise ModelFileError(f"CLIP text weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
        return model.eval().requires_grad_(False)

    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings.token_embedding(ids)

    def forward(self, inputs_embeds: torch.Tensor) -> list[torch.Tensor]:
        """``[B, T, D]`` input embeddings -> hidden states ``[embedding output, layer 1, ..., layer N]`` (the last
        before the final layer norm, as HF's ``hidden_states``)."""
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        x = inputs_embeds + self.embeddings.position_embedding(positions)[None]
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            states.append(x)
        return states
