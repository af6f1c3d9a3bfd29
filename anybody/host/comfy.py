"""ComfyUI adapter: MODEL (ModelPatcher), CLIP and VAE as the host loaded them (hosts/comfyui.md §0, §4-§7).

Strategy for training inside ComfyUI, chosen for zero extra weight memory and no reload from disk:
- nodes run under ``torch.inference_mode()``; :meth:`ComfyHost.training` leaves it, loads the models through
  ComfyUI's memory manager, and swaps any inference-mode weight tensor for a normal one with the same values,
  one tensor at a time (the values, devices and dtypes stay; only autograd can now save them). Nothing is
  patched or added to the MODEL/CLIP, so the objects the graph passed in behave exactly as before.
- ComfyUI's CLIP layers add residuals in place, which autograd cannot differentiate; while training, each
  layer instance gets an out-of-place forward, restored afterwards.
- ``apply_model`` works in sigma space and returns x0; :meth:`predict` converts to DDPM-space eps / v.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import re
import types
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.utils.checkpoint

from ..errors import WrongModelFamilyError
from ..text.embedding_file import FAMILY_ENCODERS, FAMILY_LABEL
from ..text.prompt import PromptRows
from ..train.sink import ProgressSink
from .base import Cond, Host, TextEncoder

_ENCODER_ATTRS = ("clip_l", "clip_h", "clip_g")


class ComfySink(ProgressSink):
    """The node's progress bar (with preview images) and ComfyUI's Cancel button."""

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id, self.pbar = node_id, None

    def progress(self, step, total, loss=None, preview=None) -> None:
        import comfy.utils

        if self.pbar is None:
            try:
                self.pbar = comfy.utils.ProgressBar(total, node_id=self.node_id)
            except TypeError:  # ComfyUI before per-node progress bars
                self.pbar = comfy.utils.ProgressBar(total)
        image = None
        if preview is not None:
            from PIL import Image

            image = Image.fromarray((preview.clamp(0, 1) * 255).round().byte().cpu().numpy())
        self.pbar.update_absolute(step, total, ("JPEG", image, 512) if image is not None else None)

    def check_cancel(self) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()

    def log(self, message: str) -> None:
        logging.info("[Anybody] %s", message)


class ComfyTextEncoder(TextEncoder):
    def __init__(self, clip, key: str) -> None:
        self.clip, self.key = clip, key
        self.model = getattr(clip.cond_stage_model, key)
        self.tok = getattr(clip.tokenizer, key)
        self.width = int(self.model.transformer.get_input_embeddings().weight.shape[-1])
        self.bos, self.eos, self.pad = self.tok.start_token, self.tok.end_token, self.tok.pad_token

    def tokenize(self, text: str) -> list[int]:
        ids = self.tok.tokenizer(text)["input_ids"]
        return [i for i in ids if i not in (self.bos, self.eos)]

    def token_rows(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.model.transformer.get_input_embeddings().weight
        with torch.inference_mode(False):
            return table[torch.as_tensor(list(ids), device=table.device)].detach().float().cpu().clone()

    def encode_rows(self, batch: Sequence[PromptRows]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same call ``CLIP.encode_from_tokens`` makes, on a batch, with tensors among the tokens."""
        cm = self.clip.cond_stage_model
        cm.reset_clip_options()
        if self.clip.layer_idx is not None:
            cm.set_clip_options({"layer": self.clip.layer_idx})
        self.clip.load_model()
        cm.set_clip_options({"execution_device": self.clip.patcher.load_device})
        out = self.model([list(rows) for rows in batch])
        return out[0].float(), (out[1].float() if out[1] is not None else None)


def _out_of_place_clip_forward(self, x, mask=None, optimized_attention=None):
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


@contextlib.contextmanager
def _differentiable_clip(module: torch.nn.Module) -> Iterator[None]:
    import comfy.clip_model

    layers = [m for m in module.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    for layer in layers:
        layer.forward = types.MethodType(_out_of_place_clip_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _checkpointed_forward(forward):
    def run(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


@contextlib.contextmanager
def _checkpointed_blocks(unet: torch.nn.Module) -> Iterator[None]:
    """Checkpoint every ResBlock and SpatialTransformer of the UNet, as instance attributes removed afterwards.

    ComfyUI's UNet calls these layers one by one (``forward_timestep_embed``), so they are the units to wrap.
    """
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    blocks = [m for m in unet.modules() if isinstance(m, (ResBlock, SpatialTransformer))]
    for block in blocks:
        block.forward = _checkpointed_forward(block.forward)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def _normal_tensors(module: torch.nn.Module) -> None:
    """Replace inference-mode parameters/buffers by equal normal tensors, one at a time (no 2x peak)."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_inference():
                sub._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_inference():
                sub._buffers[name] = b.clone()


def clip_family(clip) -> str:
    cm = clip.cond_stage_model
    present = tuple(a for a in _ENCODER_ATTRS if getattr(cm, a, None) is not None)
    for family, encoders in FAMILY_ENCODERS.items():
        if present == tuple(encoders):
            return family
    raise WrongModelFamilyError(f"This CLIP ({type(cm).__name__}) is not an SD1.x, SD2.x or SDXL text encoder. "
                                "Anybody's identities need an SD1.5, SD2.x or SDXL checkpoint.")


def clip_with_identity(clip, identity):
    """A clone of ``clip`` whose prompts resolve the identity from memory: ``<name>`` or ``embedding:name``.

    Only the clone's tokenizer changes (a shallow copy per text encoder); the input CLIP and its weights are
    shared, untouched. The trained vectors win over any same-named file in the embedding folders.
    """
    family = clip_family(clip)
    identity.require_family(family)
    clone = clip.clone()
    clone.tokenizer = _tokenizer_with(clip.tokenizer, identity)
    return clone


def _tokenizer_with(tokenizer, identity):
    top = copy.copy(tokenizer)
    for key in _ENCODER_ATTRS:
        sub = getattr(tokenizer, key, None)
        if sub is None or key not in identity.vectors:
            continue
        if not hasattr(sub, "_try_get_embedding"):
            raise WrongModelFamilyError("This ComfyUI's tokenizer has no embedding lookup Anybody can extend; use the "
                                        f"stock CLIP with embedding:{identity.name} instead.")
        sub = copy.copy(sub)
        sub._try_get_embedding = _lookup_first(sub._try_get_embedding, identity.name, identity.vectors[key])
        setattr(top, key, sub)
    # every identity applied so far (clones of clones keep them all): <name> -> embedding:name, then stock parsing
    top._anybody_names = [*getattr(tokenizer, "_anybody_names", []), identity.name]
    words = re.compile("|".join(re.escape(f"<{n}>") for n in top._anybody_names))

    def tokenize_with_weights(text, *args, **kwargs):
        text = words.sub(lambda m: f" embedding:{m.group(0)[1:-1]} ", text)
        return type(top).tokenize_with_weights(top, text, *args, **kwargs)

    top.tokenize_with_weights = tokenize_with_weights
    return top


def _lookup_first(stock_lookup, name: str, vectors: torch.Tensor):
    """Wrap ComfyUI's ``_try_get_embedding``, answering ``name`` first.

    It returns ``(embed, name, leftover)`` today and returned ``(embed, leftover)`` in 0.3.60; a probe for a
    name no file can have tells which, so the wrapper answers in the host's own shape.
    """
    arity = len(stock_lookup("anybody-arity-probe\x00"))

    def lookup(embedding_name: str):
        first, _, rest = embedding_name.strip().partition(" ")
        bare = first.rstrip(",.;")
        if bare == name:
            leftover = " ".join(x for x in (first[len(bare):], rest) if x)
            return (vectors.clone(), bare, leftover) if arity == 3 else (vectors.clone(), leftover)
        return stock_lookup(embedding_name)

    return lookup


class ComfyHost(Host):
    def __init__(self, model, clip, vae, node_id: str | None = None) -> None:
        import comfy.model_base

        self.model, self.clip, self.vae = model, clip, vae
        self.family = clip_family(clip)
        context = model.model.model_config.unet_config.get("context_dim")
        want = sum(FAMILY_ENCODERS[self.family].values())
        if context != want:
            raise WrongModelFamilyError(
                f"The CLIP is {FAMILY_LABEL[self.family]} but the MODEL expects {context}-wide conditioning. "
                "Connect MODEL, CLIP and VAE from the same checkpoint loader.")
        self.encoders = {k: ComfyTextEncoder(clip, k) for k in FAMILY_ENCODERS[self.family]}
        mtype = model.model.model_type
        if mtype == comfy.model_base.ModelType.EPS:
            self.prediction = "eps"
        elif mtype == comfy.model_base.ModelType.V_PREDICTION:
            self.prediction = "v"
        else:
            raise WrongModelFamilyError(f"Model type {mtype.name} is not supported for training (eps or v only).")
        self.device = model.load_device
        self.sink = ComfySink(node_id)
        sigmas = model.model.model_sampling.sigmas.detach().double().cpu()
        self._alphas = 1.0 / (1.0 + sigmas**2)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        import comfy.model_management as mm

        with torch.inference_mode(False), torch.enable_grad():
            mm.load_models_gpu([self.model, self.clip.patcher])
            _normal_tensors(self.model.model)
            _normal_tensors(self.clip.cond_stage_model)
            with _differentiable_clip(self.clip.cond_stage_model):
                yield

    def checkpointing(self, enabled: bool):
        if not enabled:
            return contextlib.nullcontext()
        return _checkpointed_blocks(self.model.model.diffusion_model)

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # latents are constants of the loss; the VAE's weights stay out of autograd
            latents = self.model.model.process_latent_in(self.vae.encode(images[..., :3]).float()).to(self.device)
        return latents, torch.zeros_like(latents)  # ComfyUI's VAE returns the posterior mode

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.decode(self.model.model.process_latent_out(latents.detach())).float().cpu()

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        base = self.model.model
        a = self._alphas[t.cpu()].float().to(self.device).view(-1, 1, 1, 1)
        sigma = ((1 - a) / a).sqrt()
        x = x_t.to(self.device) / a.sqrt()  # sigma space: x0 + sigma * eps
        extra = {}
        if self.family == "sdxl":
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            extra["y"] = base.encode_adm(pooled_output=cond.pooled.to(self.device), width=w, height=h, crop_w=0,
                                         crop_h=0, target_width=w, target_height=h)
        x0 = base.apply_model(x, sigma.view(-1), c_crossattn=cond.context.to(self.device),
                              transformer_options=self.model.model_options.get("transformer_options", {}), **extra).float()
        eps = (x - x0) / sigma
        return eps if self.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    def autocast(self):
        return contextlib.nullcontext()  # ComfyUI already computes in the model's own dtype

    def embeddings_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_folder_paths("embeddings")[0])

    def state_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_output_directory()) / "anybody_training"
