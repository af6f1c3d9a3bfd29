"""AUTOMATIC1111 webui adapter: ``shared.sd_model`` as the webui loaded it (hosts/a1111.md §6-§10).

- Text goes through the webui's own hijacked CLIP (emphasis, BREAK, long prompts, clip skip and the user's
  embeddings keep working): placeholder words are registered as temporary embeddings whose vectors are the
  tensors being trained, and ``EmbeddingsWithFixes`` splices them in with ``torch.cat`` (differentiable).
- Training runs on the loaded weights with their ``requires_grad`` switched off for the run (the webui leaves
  it on; ``backward`` would fill 860 M gradients), the webui's gradient checkpointing and attention setting for
  training, and the VAE moved off the GPU when the user's "unload models when training" option says so.
- Progress, preview images and Interrupt are ``shared.state``; callers hold ``call_queue.queue_lock``.
"""
from __future__ import annotations

import contextlib
import html
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Sequence

import torch

from ..errors import AnybodyError, TrainingCancelled, WrongModelFamilyError
from ..text.embedding_file import FAMILY_ENCODERS
from ..text.prompt import PromptRows
from ..train.sink import ProgressSink
from .base import Cond, Host, Injections, TextEncoder, checkpointed


def is_forge() -> bool:
    """Forge replaces ldm/sd_hijack with its own backend: Anybody's webui adapter targets A1111's object model."""
    import importlib.util

    return importlib.util.find_spec("backend") is not None and importlib.util.find_spec("ldm") is None


FORGE_MESSAGE = ("Anybody's AUTOMATIC1111 adapter does not support Forge yet: Forge replaces the webui's Stable "
                 "Diffusion code (ldm, sd_hijack) with its own backend. Embedding files Anybody wrote elsewhere "
                 "load in Forge's own embeddings folder; for training use ComfyUI or the command line.")


class A1111Sink(ProgressSink):
    """``shared.state``: the progress bar and live preview of the webui and ``/sdapi/v1/progress``; Interrupt."""

    shows_previews = True

    def __init__(self, job: str = "Anybody") -> None:
        self.job, self.step_times = job, []

    def seconds_per_step(self) -> float | None:
        """Median time between progress reports (the first step, which loads and warms up, left out)."""
        gaps = sorted(b - a for a, b in zip(self.step_times[1:], self.step_times[2:]))
        return gaps[len(gaps) // 2] if gaps else None

    def progress(self, step, total, loss=None, preview=None) -> None:
        import time

        from modules import shared

        self.step_times.append(time.perf_counter())
        state = shared.state
        state.job_count, state.job_no = total, step
        state.sampling_steps, state.sampling_step = 0, 0
        state.textinfo = f"{self.job}: step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else "")
        if preview is not None:
            from PIL import Image

            state.assign_current_image(Image.fromarray((preview.clamp(0, 1) * 255).round().byte().cpu().numpy()))

    def check_cancel(self) -> None:
        from modules import shared

        # Interrupt; or its first click, which on a multi-step job (job_count > 1) only asks to stop after the current
        # step, as a whole-step trainer may
        if shared.state.interrupted or getattr(shared.state, "stopping_generation", False):
            raise TrainingCancelled("Interrupted: the progress is saved; run again with the same settings and "
                                    "saved_progress 'resume' to continue.")

    def log(self, message: str) -> None:
        from modules import shared

        print(f"[Anybody] {message}", flush=True)
        shared.state.textinfo = html.escape(message)  # the page shows it as HTML; file names come from uploads


def _token_embedding(module: torch.nn.Module) -> torch.nn.Module:
    """The raw token-embedding layer under the webui's ``EmbeddingsWithFixes`` wrapper."""
    from modules import sd_hijack

    for m in module.modules():
        if isinstance(m, sd_hijack.EmbeddingsWithFixes):
            return m.wrapped
    raise WrongModelFamilyError("The webui's text encoder is not hijacked (no EmbeddingsWithFixes found); Anybody "
                                "needs AUTOMATIC1111's own text-encoder path. Is this Forge or a modified webui?")


def _fixes_for(rows: PromptRows, device: torch.device | str = "cpu") -> tuple[list[int], list[tuple[int, object]]]:
    """Token ids (a placeholder id where vectors go) and the ``(offset, embedding)`` fixes that splice each run of
    injected rows in, as the webui's prompt parser hands them to ``EmbeddingsWithFixes`` (rows after ``offset``), on
    ``device`` (the token table's: the webui concatenates them with its rows)."""
    ids = [0 if isinstance(r, torch.Tensor) else int(r) for r in rows]
    fixes, i = [], 0
    while i < len(rows):
        if not isinstance(rows[i], torch.Tensor):
            i += 1
            continue
        end = i
        while end < len(rows) and isinstance(rows[end], torch.Tensor):
            end += 1
        fixes.append((i - 1, SimpleNamespace(vec=torch.stack(rows[i:end]).to(device), name="anybody-rows")))
        i = end
    return ids, fixes


class A1111TextEncoder(TextEncoder):
    """One hijacked encoder (``FrozenCLIPEmbedderWithCustomWordsBase`` subclass) of the loaded model."""

    def __init__(self, key: str, wrapper) -> None:
        self.key, self.wrapper = key, wrapper
        self.bos, self.eos, self.pad = wrapper.id_start, wrapper.id_end, wrapper.id_pad
        self.table = _token_embedding(wrapper.wrapped)  # found once: the module walk is not per prompt
        self.width = int(self.table.weight.shape[-1])

    def tokenize(self, text: str) -> list[int]:
        return list(self.wrapper.tokenize([text])[0])

    @property
    def vocab_size(self) -> int:
        return int(self.table.weight.shape[0])

    def table_digest(self) -> str:
        """Computed once per loaded table: the script asks on every generation with a Celeb Basis file bound."""
        weight = self.table.weight
        key = (self.key, weight.data_ptr(), weight._version, tuple(weight.shape), _checkpoint_file())
        if key not in _TABLE_DIGESTS:
            if len(_TABLE_DIGESTS) > 8:
                _TABLE_DIGESTS.clear()
            _TABLE_DIGESTS[key] = super().table_digest()
        return _TABLE_DIGESTS[key]

    def token_rows(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.table.weight
        with torch.no_grad():
            return table[torch.as_tensor(list(ids), device=table.device)].float().cpu().clone()

    def encode_rows(self, batch: Sequence[PromptRows]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One 77-token chunk through the webui's ``process_tokens`` (clip skip, SD2 padding, the encoder's own
        layer choice), with the injected rows spliced in by the hijack's fixes."""
        device = self.table.weight.device
        laid_out = [_fixes_for(rows, device) for rows in batch]
        self.wrapper.hijack.fixes = [fixes for _, fixes in laid_out]
        z = self.wrapper.process_tokens([ids for ids, _ in laid_out], [[1.0] * len(ids) for ids, _ in laid_out])
        pooled = getattr(z, "pooled", None)
        return z.float(), (pooled.float() if pooled is not None else None)


_TABLE_DIGESTS: dict[tuple, str] = {}


def _checkpoint_file() -> str | None:
    from modules import shared

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    return getattr(info, "filename", None)


def text_encoders(sd_model) -> dict[str, A1111TextEncoder]:
    if getattr(sd_model, "is_sdxl", False):
        embedders = [e for e in sd_model.conditioner.embedders if hasattr(e, "process_tokens")]
        if len(embedders) != 2:
            raise WrongModelFamilyError("This SDXL model does not have the two text encoders of SDXL base "
                                        "(a refiner has one); Anybody needs an SDXL base checkpoint.")
        return {"clip_l": A1111TextEncoder("clip_l", embedders[0]), "clip_g": A1111TextEncoder("clip_g", embedders[1])}
    key = "clip_h" if getattr(sd_model, "is_sd2", False) else "clip_l"
    return {key: A1111TextEncoder(key, sd_model.cond_stage_model)}


def model_family(sd_model) -> str:
    for attr, family in (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1")):
        if getattr(sd_model, attr, False):
            return family
    raise WrongModelFamilyError("The checkpoint loaded in the webui is not SD1.x, SD2.x or SDXL (SD3 and others are "
                                "not supported); select an SD1.5, SD2.x or SDXL checkpoint at the top of the page.")


def device_of_webui() -> torch.device:
    from modules import devices

    return torch.device(devices.device)


def register_vectors(sd_model, word: str, vec) -> None:
    """Make ``word`` in prompts stand for ``vec`` (a ``[n, D]`` tensor, or ``{"clip_l", "clip_g"}`` for SDXL), as
    an embedding file of that name would; the tensors are used as given (gradients reach them)."""
    from modules import sd_hijack
    from modules.textual_inversion.textual_inversion import Embedding

    emb = Embedding(vec, word)
    parts = [vec] if torch.is_tensor(vec) else list(vec.values())
    emb.vectors, emb.shape = int(parts[0].shape[0]), sum(int(v.shape[-1]) for v in parts)  # as the webui's loader
    sd_hijack.model_hijack.embedding_db.register_embedding(emb, sd_model)


@contextlib.contextmanager
def temporary_embeddings(sd_model, words: dict[str, object]) -> Iterator[None]:
    """:func:`register_vectors` for each ``word -> vectors`` for the duration; what those names held before (an
    embedding file of the same name, say) is put back afterwards."""
    from modules import sd_hijack

    db = sd_hijack.model_hijack.embedding_db
    previous = {w: db.word_embeddings.get(w) for w in words}
    try:
        for word, vec in words.items():
            register_vectors(sd_model, word, vec)
        yield
    finally:
        for word, old in previous.items():
            db.register_embedding_by_name(old, sd_model, word)


_UNSET = object()


class A1111Host(Host):
    """The model currently loaded in the webui (``shared.sd_model``); make a new host after a checkpoint switch."""

    def __init__(self, sink: ProgressSink | None = None) -> None:
        from modules import devices, shared

        if is_forge():
            raise WrongModelFamilyError(FORGE_MESSAGE)
        self.sd_model = sd_model = shared.sd_model
        if sd_model is None:
            raise AnybodyError("No checkpoint is loaded in the webui; select one at the top of the page.")
        self.family = model_family(sd_model)
        self.prediction = "v" if getattr(sd_model, "parameterization", "eps") == "v" else "eps"
        self.encoders = text_encoders(sd_model)
        self.device = torch.device(devices.device)
        self.compute_dtype = torch.float32 if self.device.type == "cpu" else devices.dtype_unet
        self.sink = sink or A1111Sink()
        if getattr(sd_model.model.diffusion_model, "in_channels", 4) != 4 or getattr(sd_model, "is_sdxl_inpaint", False):
            raise WrongModelFamilyError("The checkpoint loaded in the webui is an inpainting or instruct-pix2pix model; "
                                        "identities are trained on a base (txt2img) checkpoint. Select one at the top of "
                                        "the page; the identity then works with the inpainting model too.")
        self._unmerge_loras()
        schedule = getattr(sd_model, "alphas_cumprod_original", None)  # the webui's sampling overrides replace the other
        self._alphas = (schedule if schedule is not None else sd_model.alphas_cumprod).detach().double().cpu()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    def _unmerge_loras(self) -> None:
        """The webui leaves the last generation's LoRAs merged into the weights until a layer next runs; identities
        are trained on the checkpoint's own weights (each layer gets them back on its first forward)."""
        import sys

        networks = sys.modules.get("networks")
        loaded = [getattr(n, "name", "?") for n in getattr(networks, "loaded_networks", None) or []]
        if loaded:
            networks.load_networks([])
            self.sink.log(f"Training on the checkpoint without the LoRAs of the last generation ({', '.join(loaded)}).")

    # --- text -------------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], injections: Injections | None = None) -> Cond:
        """The webui's ``get_learned_conditioning`` with each placeholder word registered as a temporary embedding
        whose vectors are the injected tensors (gradients reach them through the hijack's splice)."""
        with temporary_embeddings(self.sd_model, self._embedding_words(injections)), self._differentiable_conditioner():
            out = self.sd_model.get_learned_conditioning(list(prompts))
        if isinstance(out, dict):  # SDXL: cross-attention context and the ADM vector (pooled + size embeddings)
            return Cond(out["crossattn"].float(), out["vector"].float())
        return Cond(out.float())

    def _embedding_words(self, injections: Injections | None, detach: bool = False) -> dict[str, object]:
        """``word -> vectors`` as :func:`register_vectors` takes them: SDXL's per-encoder dict, else the one tensor."""
        words = {}
        for word, per_encoder in (injections or {}).items():
            if set(per_encoder) != set(FAMILY_ENCODERS[self.family]):
                raise WrongModelFamilyError(f"Vectors for {word!r} are for encoders {sorted(per_encoder)}, the webui's "
                                            f"model has {sorted(FAMILY_ENCODERS[self.family])}.")
            vectors = {k: v.detach() if detach else v for k, v in per_encoder.items()}
            words[word] = vectors if self.family == "sdxl" else next(iter(vectors.values()))
        return words

    @contextlib.contextmanager
    def _differentiable_conditioner(self) -> Iterator[None]:
        """SDXL's conditioner runs embedders not marked trainable under ``no_grad`` (the webui's own trainer has
        no SDXL support); while gradients are wanted, the hijacked embedders say they are trainable."""
        wrappers = [e.wrapper for e in self.encoders.values()] if torch.is_grad_enabled() else []
        before = [getattr(w, "is_trainable", False) for w in wrappers]
        for w in wrappers:
            w.is_trainable = True
        try:
            yield
        finally:
            for w, was in zip(wrappers, before):
                w.is_trainable = was

    def fingerprint_extras(self) -> str:
        """Settings beyond the weights that change the trained vectors: clip skip, emphasis."""
        from modules import shared

        return (f"prediction={self.prediction};clip_skip={shared.opts.CLIP_stop_at_last_layers};"
                f"emphasis={getattr(shared.opts, 'emphasis', '')}")

    def unet_probe_tensors(self) -> list[torch.Tensor]:
        unet = self.sd_model.model.diffusion_model
        return [unet.input_blocks[0][0].weight, unet.out[-1].weight]

    # --- latents ----------------------------------------------------------------------------------------
    def require_whole_model(self) -> None:
        """Training needs every part on the GPU at once; the webui's low-memory modes move parts away in use."""
        if getattr(self.sd_model, "lowvram", False):
            raise AnybodyError("Training needs the whole model on the GPU, and the webui was started with --medvram, "
                               "--medvram-sdxl or --lowvram, which move parts of it away while they are in use. Restart "
                               "the webui without that flag to train (gradient_checkpointing and a smaller batch with "
                               "more grad_accum keep memory low); generating with identities works with either flag.")

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean/std through the webui's VAE, two photos at a time, honouring Interrupt."""
        from modules import devices

        self.require_whole_model()

        means, stds = [], []
        vae = self.sd_model.first_stage_model
        for start in range(0, len(images), 2):
            self.sink.check_cancel()
            x = images[start:start + 2, ..., :3].permute(0, 3, 1, 2).to(devices.device, devices.dtype_vae) * 2 - 1
            with torch.no_grad(), devices.autocast():
                dist = _sgm_posterior(vae, x) if self.family == "sdxl" else self.sd_model.encode_first_stage(x)
            scale = float(self.sd_model.scale_factor)
            means.append(dist.mean.float() * scale)
            stds.append(dist.std.float() * scale)
        mean = torch.cat(means)
        if not torch.isfinite(mean).all():  # SDXL's VAE overflows in fp16
            raise AnybodyError("The VAE turned the photos into NaN/inf latents (it overflows in half precision, as "
                               "SDXL's VAE does). Start the webui with --no-half-vae, or select a fixed fp16 VAE.")
        return mean, torch.cat(stds)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        from modules import devices

        with torch.no_grad(), devices.autocast():
            x = self.sd_model.decode_first_stage(latents.to(devices.device, devices.dtype_vae))
        return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    def preview_image(self, latents: torch.Tensor) -> torch.Tensor:
        """The webui's "Approx cheap" preview: a fixed linear map, no VAE pass while the UNet trains."""
        from modules import sd_vae_approx

        with torch.no_grad():
            rgb = torch.stack([sd_vae_approx.cheap_approximation(z.float()) for z in latents.detach()])
            rgb = torch.nn.functional.interpolate(rgb.float().cpu(), scale_factor=8, mode="bilinear")
        return ((rgb + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    # --- denoiser ---------------------------------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        from modules import devices

        dtype = devices.dtype_unet  # fp16 weights without autocast (--precision half) need fp16 inputs
        x = x_t.to(devices.device, dtype)
        if self.family == "sdxl":
            vector = self.sdxl_vector(cond.pooled.to(devices.device), x.shape[-2] * 8, x.shape[-1] * 8)
            c = {"crossattn": cond.context.to(devices.device, dtype), "vector": vector.to(dtype)}
        else:
            c = cond.context.to(devices.device, dtype)
        return self.sd_model.apply_model(x, t.to(devices.device), c).float()

    def sdxl_vector(self, vector: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """SDXL's ADM vector for the image size being trained: ``get_learned_conditioning`` embeds 1024x1024 unless
        told otherwise; the size embedders (after the pooled text part) are run again for ``height x width``."""
        from modules import shared

        sizes = {"original_size_as_tuple": [height, width], "target_size_as_tuple": [height, width],
                 "crop_coords_top_left": [shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left]}
        parts = [e(torch.tensor([sizes[e.input_key]] * len(vector), device=vector.device, dtype=vector.dtype))
                 for e in self.sd_model.conditioner.embedders if getattr(e, "input_key", None) in sizes]
        width_of_sizes = sum(p.shape[-1] for p in parts)
        return torch.cat([vector[:, :vector.shape[-1] - width_of_sizes], *[p.to(vector.dtype) for p in parts]], dim=-1)

    def autocast(self):
        from modules import devices

        return devices.autocast()

    # --- runtime ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def training(self, batch_pixels: int = 0, checkpointing: bool = False, adapters=None) -> Iterator[None]:
        """Frozen weights that fill no gradients, the webui's attention setting for training, VAE off the GPU
        when the user's option says so. Each change is registered with its undo as it is made, so an error or
        out-of-memory anywhere puts every one of them back."""
        from modules import devices, sd_hijack, shared

        self.require_whole_model()
        with contextlib.ExitStack() as undo:
            undo.callback(devices.torch_gc)
            modules = [self.sd_model.model, *(e.wrapper for e in self.encoders.values())]
            trainable = [p for m in modules for p in m.parameters() if p.requires_grad]
            undo.callback(lambda: [p.requires_grad_(True) for p in trainable])
            for p in trainable:
                p.requires_grad_(False)
            if self.device.type == "cpu":
                for hook in _contiguous_transformer_outputs(self.sd_model):
                    undo.callback(hook.remove)
            if not getattr(shared.opts, "training_xattention_optimizations", False):
                undo.callback(sd_hijack.apply_optimizations)
                sd_hijack.undo_optimizations()
            if getattr(shared.opts, "unload_models_when_training", False) and self.device.type != "cpu":
                vae = self.sd_model.first_stage_model
                undo.callback(lambda: vae.to(devices.device))
                undo.callback(devices.torch_gc)  # runs first: free the activations before the VAE comes back
                vae.to(devices.cpu)
            undo.callback(lambda: setattr(self, "_train_decoder", None))
            undo.enter_context(super().training(batch_pixels, checkpointing, adapters))
            yield

    @contextlib.contextmanager
    def checkpointing(self, enabled: bool) -> Iterator[None]:
        """Recompute block activations in the backward pass: the webui's own switch for SD1.x/SD2.x (ldm), and the
        same wrapping of sgm's blocks (which the webui's switch does not reach) for SDXL."""
        if not enabled:
            yield
            return
        if self.family != "sdxl":
            from modules import sd_hijack_checkpoint

            sd_hijack_checkpoint.add()
            try:
                yield
            finally:
                sd_hijack_checkpoint.remove()
            return
        from sgm.modules.attention import BasicTransformerBlock
        from sgm.modules.diffusionmodules.openaimodel import ResBlock

        with checkpointed([m for m in self.sd_model.model.diffusion_model.modules()
                           if isinstance(m, (ResBlock, BasicTransformerBlock))]):
            yield

    # --- LoRA, attention capture, differentiable decode (MagiCapture) --------------------------------------
    def lora_roots(self) -> dict[str, torch.nn.Module]:
        roots = {"unet": self.sd_model.model.diffusion_model}
        if self.family == "sdxl":
            roots["te1"], roots["te2"] = (self.encoders[k].wrapper.wrapped for k in ("clip_l", "clip_g"))
        else:
            roots["te"] = next(iter(self.encoders.values())).wrapper.wrapped
        return roots

    def lora_layers(self, tree: str, patterns) -> list[tuple[str, str, torch.nn.Module]]:
        """The loaded model's layers (forward hooks attach to them); UNet paths are the LDM layout's, translated to
        diffusers paths for the kohya names the webui's own Lora reads back."""
        from ..train.lora import clip_path, find_targets, ldm_to_diffusers

        if tree != "unet":
            return [(p, clip_path(p), layer) for p, layer in find_targets(self.lora_roots()[tree], patterns)]
        unet = self.sd_model.model.diffusion_model
        per_level = list(getattr(unet, "num_res_blocks", [2]))[0]
        return [(p, ldm_to_diffusers(p, per_level), layer) for p, layer in find_targets(unet, patterns)]

    @contextlib.contextmanager
    def cross_attention_maps(self, level: int | None = None):
        """The chosen CrossAttention modules get an instance ``forward`` that computes the probabilities explicitly
        and records them (over whatever attention optimisation the webui installed on the class); removed after."""
        from ..train.attention_maps import AttentionStore, level_of, probabilities

        unet = self.sd_model.model.diffusion_model
        per_level = list(getattr(unet, "num_res_blocks", [2]))[0]
        levels = len(getattr(unet, "channel_mult", (1, 2, 4, 4)))
        found: dict = {}
        for name, module in unet.named_modules():
            if re.match(r"^(input|output)_blocks\.\d+\.1\.transformer_blocks\.\d+\.attn2$", name):
                found.setdefault(level_of(name, levels, per_level), []).append(module)
        level = max(found, default=0) if level is None else level
        if level not in found:
            raise ValueError(f"this UNet has no cross-attention layers at level {level}")
        store = AttentionStore()

        def capturing(module):
            def forward(x, context=None, mask=None, **kwargs):
                context = x if context is None else context
                heads, b = module.heads, x.shape[0]
                q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)
                           for t in (module.to_q(x), module.to_k(context), module.to_v(context)))
                probs = probabilities(q, k)
                store.record(probs)
                return module.to_out((probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, -1, heads * v.shape[-1]))
            return forward

        modules = found[level]
        for module in modules:
            module.forward = capturing(module)
        try:
            yield store
        finally:
            for module in modules:
                del module.forward

    def render_identity(self, prompts: Sequence[str], injections: Injections, seeds: Sequence[int],
                        latent_shape: Sequence[int], steps: int, guidance: float) -> torch.Tensor:
        """The webui's own txt2img processing, as its textual-inversion trainer renders previews mid-run: the words
        bound to the current vectors as temporary embeddings, sampler DDIM, the user's settings otherwise (clip skip,
        VAE, noise source). Nothing is saved (not even params.txt), no scripts run, no face restoration (it would
        change what is scored), and the checkpoint being trained is pinned for the render (a checkpoint chosen in
        the page meanwhile loads after training). The VAE comes back to the GPU for the decode if training moved
        it off. A Skip would leave a half-denoised image to score: the render is made again."""
        from modules import shared

        for _ in range(2):
            shared.state.skipped = False
            images = self._processed(prompts, injections, seeds, latent_shape, steps, guidance)
            self.sink.check_cancel()  # an Interrupt ends the render early with what it had
            if not shared.state.skipped:
                break
        shared.state.skipped = False
        if len(images) != len(prompts):
            raise AnybodyError(f"The webui rendered {len(images)} of {len(prompts)} likeness images; see its console. "
                               "Turn the likeness curve off (likeness_every 0) to train without it.")
        return torch.stack(images)

    def _processed(self, prompts, injections, seeds, latent_shape, steps, guidance) -> list[torch.Tensor]:
        import numpy as np
        from modules import devices, processing, shared

        height, width = latent_shape[-2] * 8, latent_shape[-1] * 8
        words = self._embedding_words(injections, detach=True)
        checkpoint = getattr(getattr(self.sd_model, "sd_checkpoint_info", None), "title", None)
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=self.sd_model, prompt=list(prompts), negative_prompt="", seed=[int(s) for s in seeds],
            sampler_name="DDIM", steps=steps, cfg_scale=guidance, width=width, height=height,
            batch_size=len(prompts), n_iter=1, restore_faces=False, tiling=False, do_not_save_samples=True,
            do_not_save_grid=True, do_not_reload_embeddings=True)
        p.cached_c, p.cached_uc = [None, None], [None, None]  # cached by prompt text, not by the vectors bound
        vae = self.sd_model.first_stage_model
        vae_device = next(vae.parameters()).device
        history, chosen = shared.cmd_opts.no_prompt_history, shared.opts.data.get("sd_model_checkpoint", _UNSET)
        try:
            vae.to(devices.device)
            shared.cmd_opts.no_prompt_history = True  # params.txt is the user's last generation, not this render
            if checkpoint:  # processing loads the setting's checkpoint: for this render, the one being trained
                shared.opts.data["sd_model_checkpoint"] = checkpoint  # (no setter: no callbacks, --freeze-settings)
            with temporary_embeddings(self.sd_model, words), contextlib.closing(p), torch.no_grad():
                processed = processing.process_images(p)
        finally:
            if chosen is _UNSET:
                shared.opts.data.pop("sd_model_checkpoint", None)
            else:
                shared.opts.data["sd_model_checkpoint"] = chosen
            shared.cmd_opts.no_prompt_history = history
            vae.to(vae_device)
        rendered = processed.images[processed.index_of_first_image:]
        return [torch.from_numpy(np.asarray(im.convert("RGB"))).float() / 255 for im in rendered]

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """Through an fp32 copy of the checkpoint's VAE made for this training run (the webui's may be fp16, or
        moved to RAM while training)."""
        import copy

        if getattr(self, "_train_decoder", None) is None:
            self._train_decoder = copy.deepcopy(self.sd_model.first_stage_model).float().to(self.device)
            self._train_decoder.requires_grad_(False).eval()
        x = self._train_decoder.decode(latents.float().to(self.device) / self.sd_model.scale_factor)
        return ((x.float() + 1) / 2).clamp(0, 1)

    def loras_dir(self) -> Path:
        from modules import shared

        return Path(getattr(shared.cmd_opts, "lora_dir", None) or Path(_models_path()) / "Lora")

    def embeddings_dir(self) -> Path:
        return embeddings_dir()

    def state_dir(self) -> Path:
        return training_state_dir()


def training_state_dir() -> Path:
    """Where saved progress and loss curves go: the webui's outputs folder (in its data dir)."""
    from modules import paths

    return Path(paths.data_path) / "outputs" / "anybody_training"


def _contiguous_transformer_outputs(sd_model) -> list:
    """The webui patches ldm's SpatialTransformer to skip its ``.contiguous()`` calls (faster on CUDA); on the CPU
    the permuted output then makes every following convolution reorder its weights, in the backward pass too
    (a third of a training step for SD1.5). Training on the CPU gets the contiguous output back, by hooks removed
    afterwards; generation is untouched."""
    classes = []
    for module in ("ldm.modules.attention", "sgm.modules.attention"):
        try:
            classes.append(__import__(module, fromlist=["SpatialTransformer"]).SpatialTransformer)
        except (ImportError, AttributeError):
            continue
    return [m.register_forward_hook(lambda mod, inputs, out: out.contiguous())
            for m in sd_model.model.diffusion_model.modules() if isinstance(m, tuple(classes))]


def _sgm_posterior(vae, x: torch.Tensor):
    """SDXL's (sgm) ``encode`` samples and scales in one call; the posterior's mean and std come from the encoder
    and quant conv it runs first."""
    moments = vae.encoder(x)
    if getattr(vae, "quant_conv", None) is not None:
        moments = vae.quant_conv(moments)
    mean, logvar = moments.float().chunk(2, dim=1)
    return SimpleNamespace(mean=mean, std=torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))


def _models_path() -> str:
    from modules import paths

    return paths.models_path


def embeddings_dir() -> Path:
    """``--embeddings-dir`` (default ``<data path>/embeddings``): where the webui loads embeddings from."""
    from modules import shared

    return Path(shared.cmd_opts.embeddings_dir)


def face_model_roots() -> list[str]:
    """``models/insightface`` of the webui (the InstantID/ReActor layout) and insightface's own ``~/.insightface``."""
    from modules import paths

    return [os.path.join(paths.models_path, "insightface"), os.path.join(os.path.expanduser("~"), ".insightface")]


def refresh_embeddings() -> None:
    """Reload the embeddings folder so a new file works as ``<name>`` in the next generation at once.

    The webui caches conditioning by prompt text (not by the embeddings it used) across jobs, so a prompt that
    named the word before the file existed would keep its old conditioning: those caches are dropped too.
    """
    from modules import processing, sd_hijack

    sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]
    txt2img = processing.StableDiffusionProcessingTxt2Img
    if hasattr(txt2img, "cached_hr_c"):
        txt2img.cached_hr_c, txt2img.cached_hr_uc = [None, None], [None, None]
