"""Diffusers adapter: the standalone CLI and the test host.

Wraps diffusers/transformers modules already in memory (a pipeline loaded from a local single-file
checkpoint, or the tiny random model of ``anybody demo``). Vectors are injected with a forward hook on the
token-embedding layer, so the rest of the text encoder (positions, causal mask, layer choice) runs exactly
as the library wrote it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..text.prompt import PromptRows
from ..train.attention_maps import AttentionStore, level_of, probabilities
from ..train.sink import ConsoleSink, ProgressSink
from .base import Cond, Host, TextEncoder
from .half_weights import freeze_weights

#: a token id that is neither BOS nor EOS, used at injected positions (its table row is replaced)
_INJECT_ID = 0


class DiffusersTextEncoder(TextEncoder):
    """A transformers CLIP text model + tokenizer. ``layer``: 'last' (+final LN, SD1/SD2) or 'penultimate' (SDXL)."""

    def __init__(self, key: str, model, tokenizer, layer: str = "last") -> None:
        self.key, self.model, self.tokenizer, self.layer = key, model, tokenizer, layer
        self.width = int(model.config.hidden_size)
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    def token_rows(self, ids: Sequence[int]) -> torch.Tensor:
        table = self.model.get_input_embeddings().weight
        return table[torch.as_tensor(list(ids), dtype=torch.long, device=table.device)].detach().float().cpu().clone()

    def encode_rows(self, batch: Sequence[PromptRows]) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self.model.get_input_embeddings().weight.device
        ids = torch.tensor([[r if isinstance(r, int) else _INJECT_ID for r in rows] for rows in batch], device=device)
        where = [(b, i, r) for b, rows in enumerate(batch) for i, r in enumerate(rows) if isinstance(r, torch.Tensor)]

        def splice(module, inputs, out):
            if not where:
                return out
            bi = torch.tensor([b for b, _, _ in where], device=out.device)
            ii = torch.tensor([i for _, i, _ in where], device=out.device)
            values = torch.stack([r for _, _, r in where]).to(device=out.device, dtype=out.dtype)
            return out.index_put((bi, ii), values)  # out of place: gradients reach `values`

        handle = self.model.get_input_embeddings().register_forward_hook(splice)
        try:
            out = self.model(input_ids=ids, output_hidden_states=self.layer != "last")
        finally:
            handle.remove()
        hidden = out.last_hidden_state if self.layer == "last" else out.hidden_states[-2]
        pooled = getattr(out, "text_embeds", None)
        return hidden.float(), (pooled.float() if pooled is not None else None)


class DiffusersHost(Host):
    """Host over diffusers modules. ``encoders`` are in the family's order (SDXL: clip_l then clip_g)."""

    def __init__(self, unet, vae, encoders: Sequence[DiffusersTextEncoder], scheduler_config: dict, family: str,
                 out_dir: str | Path = "anybody_out", sink: ProgressSink | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 low_memory: bool = False, cpu_compute: torch.dtype | None = None) -> None:
        self.family = family
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.unet, self.vae = unet, vae
        self.encoders = {e.key: e for e in encoders}
        for module in (unet, vae, *(e.model for e in encoders)):
            module.requires_grad_(False).eval().to(self.device)
        self.compute_dtype = self.dtype
        if self.device.type == "cpu" and (low_memory or cpu_compute not in (None, torch.float32)):
            # fp16 storage (~1.6 GiB less for SD1.5) and/or bf16 matmuls; activations stay fp32
            freeze_weights(self.unet, storage=torch.float16 if low_memory else None, compute=cpu_compute)
            self.dtype, self.compute_dtype = torch.float32, cpu_compute or torch.float32
        elif self.unet.dtype != self.dtype:
            self.unet.to(self.dtype)
        self.prediction = "v" if scheduler_config.get("prediction_type") == "v_prediction" else "eps"
        self._alphas = _alphas_cumprod(scheduler_config)
        self.scheduler_config = dict(scheduler_config)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.out_dir = Path(out_dir)
        self.sink = sink or ConsoleSink()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    def unet_probe_tensors(self) -> list[torch.Tensor]:
        return [self.unet.conv_in.weight, self.unet.conv_out.weight]

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean/std, two photos at a time: the VAE encoder's activations (about 0.25 GiB per 512 px photo)
        would otherwise grow with the number of photos."""
        means, stds = [], []
        for start in range(0, len(images), 2):
            x = images[start:start + 2].permute(0, 3, 1, 2).to(self.device, torch.float32) * 2 - 1
            with torch.no_grad():
                dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
            means.append(dist.mean.float() * self.scaling_factor)
            stds.append(dist.std.float() * self.scaling_factor)
        return torch.cat(means), torch.cat(stds)

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((latents / self.scaling_factor).to(self.device, self.vae.dtype)).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.vae.decode((latents / self.scaling_factor).to(self.device, self.vae.dtype)).sample
        return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        extra = {}
        if self.family == "sdxl":
            h, w = x_t.shape[-2] * 8, x_t.shape[-1] * 8
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype).repeat(x_t.shape[0], 1)
            extra["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(self.dtype), "time_ids": time_ids}
        out = self.unet(x_t.to(self.device, self.dtype), t.to(self.device),
                        encoder_hidden_states=cond.context.to(self.device, self.dtype), **extra).sample
        return out.float()

    @torch.no_grad()
    def sample_ddim(self, cond: Cond, uncond: Cond, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        """diffusers' DDIMScheduler made from the checkpoint's scheduler config, in the pipelines' denoising loop
        (DDIM needs no input scaling and starts at unit noise), on ``predict``: the adapters and the low-memory
        weights take part as in training. Latents are never clipped, whatever the config says about pixels."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler_config, clip_sample=False)
        scheduler.set_timesteps(steps)
        b = len(noise)

        def repeated(c: Cond, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            return c.context.repeat(n, 1, 1), None if c.pooled is None else c.pooled.repeat(n, 1)

        (uc, up), (cc, cp) = repeated(uncond, b // len(uncond.context)), repeated(cond, b // len(cond.context))
        both = Cond(torch.cat([uc, cc]), None if cp is None else torch.cat([up, cp]))
        x = noise.to(self.device, torch.float32) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            with self.autocast():
                plain, guided = self.predict(torch.cat([x, x]), t.repeat(2 * b), both).float().chunk(2)
            x = scheduler.step(plain + guidance * (guided - plain), t, x).prev_sample
        return x

    def lora_roots(self) -> dict[str, torch.nn.Module]:
        roots = {"unet": self.unet}
        if self.family in ("sd1", "sd2"):
            roots["te"] = next(iter(self.encoders.values())).model
        else:
            roots["te1"], roots["te2"] = self.encoders["clip_l"].model, self.encoders["clip_g"].model
        return roots

    @contextlib.contextmanager
    def cross_attention_maps(self, level: int | None = None) -> Iterator[AttentionStore]:
        """Record the cross-attention probabilities of the UNet's ``level`` layers (see ``train.attention_maps``)."""
        config = self.unet.config
        levels = {name: level_of(name, len(config.block_out_channels), config.layers_per_block)
                  for name, _ in self.unet.named_modules() if name.endswith(".attn2")}
        if level is None:
            level = max((v for v in levels.values() if v is not None), default=0)
        modules = dict(self.unet.named_modules())
        targets = {name: modules[name] for name, v in levels.items() if v == level}
        if not targets:
            raise ValueError(f"this UNet has no cross-attention layers at level {level}")
        store = AttentionStore()
        saved = {name: module.processor for name, module in targets.items()}
        for module in targets.values():
            module.set_processor(_CapturingProcessor(store))
        try:
            yield store
        finally:
            for name, module in targets.items():
                module.set_processor(saved[name])

    @contextlib.contextmanager
    def checkpointing(self, enabled: bool):
        if not enabled:
            yield
            return
        self.unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            self.unet.disable_gradient_checkpointing()

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.device.type == "cuda" else contextlib.nullcontext()

    def embeddings_dir(self) -> Path:
        return self.out_dir / "embeddings"

    def loras_dir(self) -> Path:
        return self.out_dir / "loras"

    def state_dir(self) -> Path:
        return self.out_dir / "training_state"


class _CapturingProcessor:
    """A diffusers attention processor for plain cross-attention that computes the probabilities explicitly and
    hands them to the store (the layers SD UNets use: no masks, no group or spatial norms)."""

    def __init__(self, store: AttentionStore) -> None:
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        batch, tokens, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        heads = attn.heads
        q, k, v = (x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)
                   for x in (attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)))
        probs = probabilities(q, k)
        self.store.record(probs)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(batch, tokens, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _alphas_cumprod(config: dict) -> torch.Tensor:
    """DDPM ᾱ from a diffusers scheduler config (SD uses 'scaled_linear' betas 0.00085 -> 0.012)."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    if config.get("beta_schedule", "scaled_linear") == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)
