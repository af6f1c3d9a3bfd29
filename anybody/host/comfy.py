"""ComfyUI adapter: MODEL (ModelPatcher), CLIP and VAE as the host loaded them (hosts/comfyui.md §0, §4-§7).

- Training runs on copies made for training (:mod:`.comfy_training`): fresh weights outside inference mode,
  loaded whole onto the UNet's device once, latents encoded before. The input MODEL/CLIP are never modified.
- ComfyUI's CLIP layers add residuals in place, which autograd cannot differentiate; the training copy's
  layers get an out-of-place forward.
- ``apply_model`` works in sigma space and returns x0; :meth:`predict` converts to DDPM-space eps / v, with the
  noise schedule read through the patcher, so a ModelSamplingDiscrete node (v-prediction, zsnr) is honoured.
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

from ..errors import AnybodyError, WrongModelFamilyError
from ..text.embedding_file import FAMILY_ENCODERS, FAMILY_LABEL
from ..text.prompt import PromptRows
from ..train import diffusion
from ..train.sink import ProgressSink
from .base import Cond, Host, TextEncoder, checkpointed

_ENCODER_ATTRS = ("clip_l", "clip_h", "clip_g")


class ComfySink(ProgressSink):
    """The node's progress bar (with preview images) and ComfyUI's Cancel button."""

    shows_previews = True

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
    """One text encoder of the CLIP; encodes through the host's training copy while training."""

    def __init__(self, host: "ComfyHost", key: str) -> None:
        self.host, self.key = host, key
        self.tok = getattr(host.clip.tokenizer, key)
        self.width = int(self._table().shape[-1])
        self.bos, self.eos, self.pad = self.tok.start_token, self.tok.end_token, self.tok.pad_token

    def tokenize(self, text: str) -> list[int]:
        ids = self.tok.tokenizer(text)["input_ids"]
        return [i for i in ids if i not in (self.bos, self.eos)]

    def _table(self) -> torch.Tensor:
        """The graph CLIP's token table (the training copy holds the same values)."""
        return getattr(self.host.clip.cond_stage_model, self.key).transformer.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        return int(self._table().shape[0])

    def token_rows(self, ids: Sequence[int]) -> torch.Tensor:
        table = self._table()
        with torch.inference_mode(False):
            return table[torch.as_tensor(list(ids), device=table.device)].detach().float().cpu().clone()

    def encode_rows(self, batch: Sequence[PromptRows]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same call ``CLIP.encode_from_tokens`` makes, on a batch, with tensors among the tokens."""
        clip = self.host.active_clip()
        cm = clip.cond_stage_model
        cm.reset_clip_options()
        if clip.layer_idx is not None:
            cm.set_clip_options({"layer": clip.layer_idx})
        cm.set_clip_options({"execution_device": clip.patcher.load_device})
        out = getattr(cm, self.key)([list(rows) for rows in batch])
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


def _checkpointed_blocks(unet: torch.nn.Module):
    """Checkpoint every ResBlock and SpatialTransformer of the UNet: ComfyUI's UNet calls these layers one by one
    (``forward_timestep_embed``), so they are the units to wrap."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    return checkpointed([m for m in unet.modules() if isinstance(m, (ResBlock, SpatialTransformer))])


def _get_attr(module: torch.nn.Module, dotted: str) -> torch.Tensor:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _digest(obj) -> str:
    """Shapes and sums of the tensors inside a weight patch (LoRA adapter, ("diff", (t,)) tuple ...)."""
    if isinstance(obj, torch.Tensor):
        return f"{tuple(obj.shape)}:{obj.detach().float().sum().item():.6g}"
    if isinstance(obj, (tuple, list)):
        return ",".join(_digest(x) for x in obj)
    if hasattr(obj, "weights"):
        return f"{type(obj).__name__}({_digest(obj.weights)})"
    return type(obj).__name__ if not isinstance(obj, (str, int, float)) else str(obj)


def _patches_digest(patches: dict) -> str:
    """Keys, strengths and tensor digests of a patcher's weight patches (what LoraLoader adds)."""
    return "|".join(f"{k}:{[(p[0], _digest(p[1]), p[2]) for p in v]}" for k, v in sorted(patches.items()))


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


def _prediction_of(model_sampling) -> str:
    """'eps' or 'v' from the sampling object ComfyUI will really use (a ModelSamplingDiscrete node replaces it)."""
    import comfy.model_sampling as ms

    kind = type(model_sampling)
    if getattr(ms, "EDM", None) is not None and issubclass(kind, ms.EDM) or not hasattr(model_sampling, "sigmas"):
        kind_name = "EDM"
    elif issubclass(kind, ms.V_PREDICTION):
        return "v"
    elif issubclass(kind, ms.EPS) and not issubclass(kind, getattr(ms, "X0", ())):
        return "eps"
    else:
        kind_name = kind.__name__
    raise WrongModelFamilyError(f"This MODEL samples as {kind_name}; Anybody trains eps- and v-prediction SD1.x/SD2.x/"
                                "SDXL models only. Remove the ModelSampling node before the trainer, or use another checkpoint.")


#: rough activation memory of one training sample per pixel, fp16, no checkpointing (an estimate, reserved so
#: ComfyUI frees other models before loading; the GPU acceptance script measures the real figure)
#: LoRA tree -> the text encoder's attribute on ComfyUI's CLIP model, per family (kohya: te, or te1/te2 for SDXL)
_LORA_TREES = {"sd1": {"te": "clip_l"}, "sd2": {"te": "clip_h"}, "sdxl": {"te1": "clip_l", "te2": "clip_g"}}
_ACTIVATION_BYTES_PER_PIXEL = {"sd1": 6 * 1024, "sd2": 6 * 1024, "sdxl": 4 * 1024}


class AnnealedGuidance:
    """A ``sampler_cfg_function``: classifier-free guidance that follows ``methods.adaface.annealed_guidance`` over
    the sampler's own steps (found from the sigma being denoised among ``sample_sigmas``), in place of the cfg set on
    the KSampler. A sampler that evaluates between steps (heun, dpm_2) gets its nearest step's scale."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = float(start), float(end)

    def scale(self, sigma: torch.Tensor, sample_sigmas: torch.Tensor) -> float:
        from ..methods.adaface import annealed_guidance

        visited = sample_sigmas[:-1].float().cpu()  # the last sigma is where sampling ends (0), never denoised
        step = int((visited - sigma.flatten()[0].float().cpu()).abs().argmin())
        return annealed_guidance(step, len(visited), self.start, self.end)

    def __call__(self, args: dict) -> torch.Tensor:
        sample_sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        if sample_sigmas is None:
            raise AnybodyError("This ComfyUI is too old to tell the model which steps it samples (sample_sigmas), "
                               "which the guidance anneal needs. Update ComfyUI, or remove the node.")
        g = self.scale(args["sigma"], sample_sigmas)
        return args["uncond"] + (args["cond"] - args["uncond"]) * g


class ComfyHost(Host):
    def __init__(self, model, clip, vae, node_id: str | None = None) -> None:
        self.model, self.clip, self.vae = model, clip, vae
        self.family = clip_family(clip)
        context = model.model.model_config.unet_config.get("context_dim")
        want = sum(FAMILY_ENCODERS[self.family].values())
        if context != want:
            raise WrongModelFamilyError(
                f"The CLIP is {FAMILY_LABEL[self.family]} but the MODEL expects {context}-wide conditioning. "
                "Connect MODEL, CLIP and VAE from the same checkpoint loader.")
        self.encoders = {k: ComfyTextEncoder(self, k) for k in FAMILY_ENCODERS[self.family]}
        sampling = model.get_model_object("model_sampling")
        self.prediction = _prediction_of(sampling)
        self.device = model.load_device
        base = model.model
        # read through the patcher: a ModelComputeDtype / device node sets manual_cast_dtype as an object patch
        self._manual_cast = model.get_model_object("manual_cast_dtype")
        self.compute_dtype = self._manual_cast or base.get_dtype()
        if self.device.type == "cpu":
            self.compute_dtype = torch.float32
        self.sink = ComfySink(node_id)
        sigmas = sampling.sigmas.detach().double().cpu()
        self._alphas = 1.0 / (1.0 + sigmas**2)
        self._train_model = self._train_clip = None
        self._train_decoder = None
        self._reserve = 0

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    def fingerprint_extras(self) -> str:
        """What else changes the trained vectors: MODEL and CLIP LoRA patches, clip skip, the noise schedule (a
        ModelSamplingDiscrete node), hook patches."""
        alphas = self._alphas
        hooks = len(getattr(self.model, "hook_patches", {}) or {})
        return (f"model={_patches_digest(self.model.patches)};clip={_patches_digest(self.clip.patcher.patches)};"
                f"layer={self.clip.layer_idx};prediction={self.prediction};"
                f"schedule={alphas.sum().item():.9g}:{alphas[-1].item():.9g};hooks={hooks}")

    def unet_probe_tensors(self) -> list[torch.Tensor]:
        """Input/output convolutions as the file has them (a LoRA patched in while loaded is read from the
        patcher's backup)."""
        probes = []
        for key in ("diffusion_model.input_blocks.0.0.weight", "diffusion_model.out.2.weight"):
            backup = getattr(self.model, "backup", {}).get(key)
            probes.append(getattr(backup, "weight", backup) if backup is not None else _get_attr(self.model.model, key))
        return probes

    def active_model(self):
        """The training copy while training, else the graph's MODEL (loaded through ComfyUI first)."""
        if self._train_model is not None:
            return self._train_model
        import comfy.model_management as mm

        mm.load_models_gpu([self.model])
        return self.model

    def active_clip(self):
        if self._train_clip is not None:
            return self._train_clip
        self.clip.load_model()
        return self.clip

    def lora_layers(self, tree: str, patterns) -> list[tuple[str, str, torch.nn.Module]]:
        """Layers of the graph's MODEL/CLIP by state-dict key (the training copies have the same keys): UNet paths
        in the LDM layout are translated to diffusers paths, CLIP paths to the HF layout, for the kohya names."""
        from ..train.lora import clip_path, find_targets, ldm_to_diffusers

        if tree == "unet":
            blocks = self.model.model.model_config.unet_config.get("num_res_blocks", 2)
            per_level = blocks[0] if isinstance(blocks, (list, tuple)) else blocks
            root = self.model.model.diffusion_model
            return [(f"diffusion_model.{p}", ldm_to_diffusers(p, per_level), layer)
                    for p, layer in find_targets(root, patterns)]
        key = _LORA_TREES[self.family].get(tree)
        if key is None:
            raise ValueError(f"no text encoder {tree!r} in {FAMILY_LABEL[self.family]}")
        root = getattr(self.clip.cond_stage_model, key).transformer
        return [(f"{key}.transformer.{p}", clip_path(p), layer) for p, layer in find_targets(root, patterns)]

    @contextlib.contextmanager
    def cross_attention_maps(self, level: int | None = None):
        """attn2 replace patches (ComfyUI's own hook for attention) on the training copy's level-``level`` blocks:
        those compute the probabilities explicitly and record them; every other layer keeps ComfyUI's attention."""
        from ..train.attention_maps import AttentionStore, level_of, probabilities

        patcher = self.active_model()
        config = patcher.model.model_config.unet_config
        blocks = config.get("num_res_blocks", 2)
        per_level = blocks[0] if isinstance(blocks, (list, tuple)) else blocks
        levels = len(config.get("channel_mult", (1, 2, 4, 4)))
        found = {}
        for name, _ in patcher.model.diffusion_model.named_modules():
            m = re.match(r"^(input|output)_blocks\.(\d+)\.1\.transformer_blocks\.(\d+)\.attn2$", name)
            if m:
                found.setdefault(level_of(name, levels, per_level), []).append((m[1], int(m[2]), int(m[3])))
        level = max(found, default=0) if level is None else level
        keys = found.get(level, [])
        if not keys:
            raise ValueError(f"this UNet has no cross-attention layers at level {level}")
        store = AttentionStore()

        def capture(q, k, v, extra_options):
            heads = extra_options["n_heads"]
            b = q.shape[0]
            q, k, v = (x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (q, k, v))
            probs = probabilities(q, k)
            store.record(probs)
            return (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, -1, heads * v.shape[-1])

        transformer = patcher.model_options.setdefault("transformer_options", {})
        replace = transformer.setdefault("patches_replace", {}).setdefault("attn2", {})
        before = {key: replace.get(key) for key in keys}
        replace.update({key: capture for key in keys})
        try:
            yield store
        finally:
            for key, previous in before.items():
                if previous is None:
                    replace.pop(key, None)
                else:
                    replace[key] = previous

    @contextlib.contextmanager
    def training(self, batch_pixels: int = 0, checkpointing: bool = False, adapters=None) -> Iterator[None]:
        """Make and load the training copies (UNet + text encoders) once; unload them afterwards. ``adapters`` (LoRA
        sets from ``lora_layers``) become weight wrappers of the copies (ComfyUI's own mechanism for trainable
        adapters): they act on every forward, differentiably, and never touch the graph's MODEL or CLIP."""
        import comfy.model_management as mm

        from . import comfy_training as copies

        host_dtype = self.compute_dtype
        with torch.inference_mode(False), torch.enable_grad():
            self.sink.check_cancel()
            train_model = copies.training_patcher(self.model)
            if copies.bf16_instead_of_fp16(train_model.model, train_model.load_device, self._manual_cast):
                copies.to_bf16(train_model)
                self.compute_dtype = torch.bfloat16
            stripped = copies.strip_attention_patches(train_model)
            if stripped:
                self.sink.log(f"Attention patches on the MODEL are not trained through (removed for training "
                              f"only): {', '.join(stripped)}")
            self.sink.check_cancel()
            train_clip = copies.training_clip(self.clip, train_model.load_device)
            for tree, adapter_set in (adapters or {}).items():
                patcher = train_model if tree == "unet" else train_clip.patcher
                adapter_set.to(train_model.load_device)
                for name, adapter in adapter_set.items():
                    patcher.add_weight_wrapper(f"{adapter_set.paths[name]}.weight", adapter.weight_function)
            per_pixel = _ACTIVATION_BYTES_PER_PIXEL[self.family] * torch.finfo(self.compute_dtype).bits // 16
            reserve = batch_pixels * per_pixel // (4 if checkpointing else 1)
            try:
                self.sink.check_cancel()
                copies.load_fully([train_model, train_clip.patcher], memory_required=reserve)
                self._reserve = reserve
                self.sink.log(f"Training on {train_model.load_device} in {str(self.compute_dtype).replace('torch.', '')}"
                              f" ({reserve / 2**30:.1f} GiB reserved for activations)")
                self._train_model, self._train_clip = train_model, train_clip
                with _differentiable_clip(train_clip.cond_stage_model), self.checkpointing(checkpointing):
                    yield
            finally:
                self._train_model = self._train_clip = self._train_decoder = None
                self.compute_dtype = host_dtype
                copies.unload(train_model)
                copies.unload(train_clip.patcher)
                mm.soft_empty_cache()

    def checkpointing(self, enabled: bool):
        """On the training copy's UNet (``training()`` calls it once the copy is loaded)."""
        if not enabled:
            return contextlib.nullcontext()
        return _checkpointed_blocks(self.active_model().model.diffusion_model)

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE latents, a few photos at a time so Cancel is honoured; normal tensors (made outside inference mode)."""
        chunks = []
        with torch.inference_mode(False), torch.no_grad():
            for start in range(0, len(images), 4):
                self.sink.check_cancel()
                chunks.append(self.vae.encode(images[start:start + 4, ..., :3]).float().cpu().clone())
            latents = self.model.model.process_latent_in(torch.cat(chunks)).to(self.device)
        return latents, torch.zeros_like(latents)  # ComfyUI's VAE returns the posterior mode

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """Through an fp32 copy of the VAE made for this training run (the graph's VAE holds inference tensors, which
        autograd cannot keep; fp16 decoding with gradients overflows easily)."""
        if self._train_decoder is None:
            with torch.inference_mode(False):
                decoder = copy.deepcopy(self.vae.first_stage_model).float().to(self.device)
            self._train_decoder = decoder.requires_grad_(False).eval()
        x = self._train_decoder.decode(self.model.model.process_latent_out(latents.float()).to(self.device))
        return ((x.float() + 1) / 2).clamp(0, 1)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.decode(self.model.model.process_latent_out(latents.detach())).float().cpu()

    def preview_image(self, latents: torch.Tensor) -> torch.Tensor:
        """ComfyUI's own latent-to-RGB preview: no VAE load, so the training copy is never evicted mid-run."""
        fmt = self.model.model.latent_format
        if getattr(fmt, "latent_rgb_factors", None) is None:
            return super().preview_image(latents)
        with torch.no_grad():
            z = self.model.model.process_latent_out(latents.detach()).float().cpu()
            factors = torch.tensor(fmt.latent_rgb_factors, dtype=torch.float32)  # [C, 3]
            bias = getattr(fmt, "latent_rgb_factors_bias", None)
            rgb = torch.einsum("bchw,cr->bhwr", z, factors)
            if bias is not None:
                rgb = rgb + torch.tensor(bias, dtype=torch.float32)
            rgb = ((rgb + 1) / 2).clamp(0, 1)
            return torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), scale_factor=8, mode="bilinear").permute(0, 2, 3, 1)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        patcher = self.active_model()
        base = patcher.model
        device = patcher.load_device
        a = self._alphas[t.cpu()].float().to(device).view(-1, 1, 1, 1)
        sigma = ((1 - a) / a).sqrt()
        x = x_t.to(device) / a.sqrt()  # sigma space: x0 + sigma * eps
        extra = {}
        if self.family == "sdxl":
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            extra["y"] = base.encode_adm(pooled_output=cond.pooled.to(device), width=w, height=h, crop_w=0,
                                         crop_h=0, target_width=w, target_height=h)
        options = patcher.model_options.get("transformer_options", {})
        x0 = base.apply_model(x, sigma.view(-1), c_crossattn=cond.context.to(device), transformer_options=options,
                              **extra).float()
        eps = (x - x0) / sigma
        return diffusion.target(self.prediction, x0, eps, a)

    def sample_ddim(self, cond: Cond, uncond: Cond, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        """ComfyUI's own sampler, as a KSampler node runs it (sampler "ddim"), on the active model: mid-run the
        training copy with its adapters and the MODEL's patches, so a render is what a KSampler would make of the
        current identity. The sigmas are SD's DDIM timesteps (``train.sampling.ddim_timesteps``) ending at 0:
        ComfyUI's "ddim_uniform" scheduler would add a step where 1000 is not a multiple of ``steps``. Loading for
        sampling may move weights to make room, so the training copies are loaded whole again afterwards."""
        import comfy.sample

        from ..train.sampling import ddim_timesteps
        from . import comfy_training as copies

        patcher = self.active_model()
        table = patcher.get_model_object("model_sampling").sigmas.detach().float().cpu()
        sigmas = torch.cat([table[ddim_timesteps(steps, len(table))], torch.zeros(1)])
        h, w = noise.shape[-2] * 8, noise.shape[-1] * 8

        def conditioning(c: Cond) -> list:
            options = {}
            if c.pooled is not None:  # as CLIPTextEncodeSDXL sets them
                options = {"pooled_output": c.pooled.detach(), "width": w, "height": h, "crop_w": 0, "crop_h": 0,
                           "target_width": w, "target_height": h}
            return [[c.context.detach(), options]]

        noise = noise.detach().float().cpu()
        with torch.no_grad():
            samples = comfy.sample.sample(patcher, noise, steps, guidance, "ddim", "ddim_uniform", conditioning(cond),
                                          conditioning(uncond), torch.zeros_like(noise), sigmas=sigmas,
                                          disable_pbar=True, seed=0)
        if self._train_model is not None:
            copies.load_fully([self._train_model, self._train_clip.patcher], memory_required=self._reserve)
        return patcher.model.process_latent_in(samples.float()).to(self.device)

    def autocast(self):
        return contextlib.nullcontext()  # ComfyUI computes in the model's own dtype (loss scaling covers fp16)

    def embeddings_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_folder_paths("embeddings")[0])

    def loras_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_folder_paths("loras")[0])

    def state_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_output_directory()) / "anybody_training"
