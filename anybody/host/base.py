"""Host protocol shared by every adapter (see ARCHITECTURE.md §2)."""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import torch

from ..text.embedding_file import FAMILY_ENCODERS
from ..text.prompt import PromptRows, prompt_rows
from ..train.sink import ProgressSink

if TYPE_CHECKING:
    from ..train.lora import LoRASet

#: word as written in the prompt -> encoder key -> [n, D] vectors
Injections = Mapping[str, Mapping[str, torch.Tensor]]


@dataclass
class Cond:
    """Conditioning in the layout the host's UNet reads: ``context [B, 77, D]`` and, for SDXL, ``pooled``: the pooled
    text vector (ComfyUI, diffusers), or the webui's whole ADM vector, pooled text + size embeddings (A1111). Only
    the host that made a Cond reads its ``pooled``."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


class TextEncoder(ABC):
    """One CLIP text encoder of the host (``clip_l``, ``clip_h`` or ``clip_g``)."""

    key: str
    width: int
    bos: int
    eos: int
    pad: int

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS or padding."""

    @abstractmethod
    def token_rows(self, ids: Sequence[int]) -> torch.Tensor:
        """Raw rows of the host token table (no positional embedding), fp32 copy, ``[len(ids), D]``."""

    @abstractmethod
    def encode_rows(self, batch: Sequence[PromptRows]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode 77-row prompts through the host's conditioning path -> (hidden ``[B,77,D]``, pooled or None).

        Differentiable with respect to the tensors among the rows.
        """

    def rows(self, prompt: str, injections: Mapping[str, torch.Tensor]) -> PromptRows:
        return prompt_rows(prompt, injections, self.tokenize, self.bos, self.eos, self.pad)

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows in the host token table."""

    def table_digest(self) -> str:
        """A digest of the whole token table, rounded to fp16 first so that an fp16 and an fp32 load of one
        checkpoint agree. Token-space results (a Celeb Basis) are only valid on a table with this digest."""
        import hashlib

        cached = getattr(self, "_table_digest", None)
        if cached is None:
            digest, n = hashlib.sha256(), self.vocab_size
            for start in range(0, n, 8192):
                digest.update(self.token_rows(range(start, min(start + 8192, n))).half().numpy().tobytes())
            cached = self._table_digest = digest.hexdigest()[:16]
        return cached


@contextlib.contextmanager
def checkpointed(blocks: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Recompute each block's activations in the backward pass (non-reentrant ``torch.utils.checkpoint``), by an
    instance-level ``forward`` removed afterwards. Hosts pick the blocks their UNet calls one by one."""
    import torch.utils.checkpoint

    def wrap(forward):
        def run(*args, **kwargs):
            # dicts a model updates as it runs (ComfyUI's transformer_options["block"]) are copied per call, so the
            # recomputation in the backward pass sees what this forward saw (attention patches are keyed by block)
            args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
            kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    for block in blocks:
        block.forward = wrap(block.forward)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


class Host(ABC):
    """What a method may ask of the host that loaded the checkpoint."""

    family: str  # "sd1" | "sd2" | "sdxl"
    prediction: str  # "eps" | "v"
    encoders: dict[str, TextEncoder]
    device: torch.device
    compute_dtype: torch.dtype  # what the UNet computes in; fp16 makes the engine scale the loss
    sink: ProgressSink

    # --- text -------------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], injections: Injections | None = None) -> Cond:
        """Encode prompts with placeholder words replaced by injected vectors (differentiable)."""
        injections = injections or {}
        hidden, pooled = {}, None
        for key, encoder in self.encoders.items():
            per_word = {w: vecs[key] for w, vecs in injections.items() if key in vecs}
            hidden[key], pooled_k = encoder.encode_rows([encoder.rows(p, per_word) for p in prompts])
            if key == "clip_g":
                pooled = pooled_k
        context = torch.cat([hidden[k] for k in FAMILY_ENCODERS[self.family]], dim=-1)
        return Cond(context, pooled)

    def fingerprint(self) -> str:
        """A short digest of the checkpoint in use, so a trained file is only reused on the model it was made on."""
        import hashlib

        digest = hashlib.sha256()
        for key, encoder in self.encoders.items():
            digest.update(key.encode())
            digest.update(encoder.token_rows(range(256)).numpy().tobytes())
        for tensor in self.unet_probe_tensors():
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        digest.update(self.fingerprint_extras().encode())
        return digest.hexdigest()[:16]

    def fingerprint_extras(self) -> str:
        """Host settings beyond the weights that change a trained result (clip skip, patches ...)."""
        return f"prediction={self.prediction}"

    def unet_probe_tensors(self) -> list[torch.Tensor]:
        """A few small UNet weights that tell fine-tunes apart (input and output convolutions)."""
        return []

    # --- latents ----------------------------------------------------------------------------------------
    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B,H,W,3]`` in 0..1 -> scaled latent mean and std (std is 0 where the host gives the mode)."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images ``[B,H,W,3]`` in 0..1."""

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images ``[B,3,H,W]`` in 0..1 with the gradient kept (pixel-space losses: MagiCapture's
        identity term). Hosts whose VAE weights are inference tensors need a training copy first."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode with gradients yet")

    def preview_image(self, latents: torch.Tensor) -> torch.Tensor:
        """A quick look at latents during training (hosts may approximate, to keep the VAE out of memory)."""
        return self.decode_latents(latents)

    # --- denoiser ---------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def alphas_cumprod(self) -> torch.Tensor:
        """``[1000]`` float64 on the CPU."""

    @abstractmethod
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The UNet's native output (eps or v) for DDPM timesteps ``t``; differentiable."""

    def sample_ddim(self, cond: Cond, uncond: Cond, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        """Latents (this host's latent space) from unit ``noise [B,C,h,w]`` by guided DDIM (eta 0, SD's leading
        timesteps) under ``cond`` (batch B, or 1) against ``uncond`` (batch 1): how the likeness curve and the
        evaluation harness render, on the model being trained. Hosts with a sampler of their own run it (ComfyUI's
        KSampler, the diffusers pipeline); this is ours on ``predict``."""
        from ..train.sampling import ddim_sample

        return ddim_sample(self, cond, uncond, noise, steps, guidance)

    def render_identity(self, prompts: Sequence[str], injections: Injections, seeds: Sequence[int],
                        latent_shape: Sequence[int], steps: int, guidance: float) -> torch.Tensor:
        """``[B,H,W,3]`` images in [0, 1] (CPU) of ``prompts`` (one seed each) with ``injections`` bound, rendered
        mid-training by ``sample_ddim`` against the empty prompt and decoded by the training decoder (the shared
        VAE could evict the model being trained). Hosts whose own image pipeline can render a word's vectors run
        that instead (A1111's processing). ``latent_shape``: ``[C, h, w]``."""
        noise = torch.cat([torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(int(seed)))
                           for seed in seeds])
        with torch.no_grad(), self.autocast():
            cond = self.encode_prompts(prompts, injections)
            uncond = self.encode_prompts([""])
        latents = self.sample_ddim(cond, uncond, noise, steps, guidance)
        self.sink.check_cancel()
        with torch.no_grad():
            return self.decode_differentiable(latents).permute(0, 2, 3, 1).float().cpu()

    # --- runtime ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def training(self, batch_pixels: int = 0, checkpointing: bool = False,
                 adapters: Mapping[str, "LoRASet"] | None = None) -> Iterator[None]:
        """Everything gradient-based runs inside this, after the latents are encoded.

        Hosts that run nodes under inference mode escape it here and load their models once for the whole run;
        ``batch_pixels`` (batch x H x W) lets them reserve activation memory. ``adapters`` (tree -> LoRA set, from
        ``lora_layers``) act on the UNet and text encoders for the duration, through the host's own mechanism.
        """
        with torch.inference_mode(False), torch.enable_grad(), self.checkpointing(checkpointing), \
                self.adapted(adapters or {}):
            yield

    # --- LoRA -------------------------------------------------------------------------------------------
    def lora_roots(self) -> dict[str, torch.nn.Module]:
        """tree ("unet", "te") -> the module whose layers adapters attach to (hosts that hook modules)."""
        raise NotImplementedError(f"{type(self).__name__} cannot train LoRAs yet")

    def lora_layers(self, tree: str, patterns: Sequence[str]) -> list[tuple[str, str, torch.nn.Linear]]:
        """``(host path, canonical path, layer)`` of the linear layers of ``tree`` matching ``patterns``; the
        canonical path (diffusers UNet / HF CLIP layout) names the adapter in kohya files."""
        from ..train.lora import clip_path, find_targets

        canonical = (lambda p: p) if tree == "unet" else clip_path
        return [(path, canonical(path), layer) for path, layer in find_targets(self.lora_roots()[tree], patterns)]

    @contextlib.contextmanager
    def adapted(self, adapters: Mapping[str, "LoRASet"]) -> Iterator[None]:
        """The adapters acting on their layers (forward hooks here; hosts with a patch mechanism override)."""
        from ..train.lora import hooked

        roots = self.lora_roots() if adapters else {}
        with contextlib.ExitStack() as stack:
            for tree, adapter_set in adapters.items():
                adapter_set.to(self.device)
                stack.enter_context(hooked(roots[tree], adapter_set))
            yield

    def cross_attention_maps(self, level: int | None = None):
        """A context that records the cross-attention probabilities of the UNet's ``level`` layers with their
        autograd graph, yielding a ``train.attention_maps.AttentionStore`` (MagiCapture's refocusing loss). None:
        the lowest-resolution level with cross-attention outside the middle block (SD1.5: level 2, the 16x16 maps
        at 512 px)."""
        raise NotImplementedError(f"{type(self).__name__} cannot capture cross-attention maps yet")

    @contextlib.contextmanager
    def checkpointing(self, enabled: bool) -> Iterator[None]:
        """Recompute UNet block activations in the backward pass: less memory, about a third more time."""
        if enabled:
            raise NotImplementedError(f"{type(self).__name__} has no gradient checkpointing")
        yield

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on GPUs, plain fp32 on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @abstractmethod
    def embeddings_dir(self) -> Path:
        """Where the host's stock loader looks for textual-inversion embeddings."""

    def loras_dir(self) -> Path:
        """Where the host's stock LoRA loader looks for LoRA files."""
        raise NotImplementedError(f"{type(self).__name__} has no LoRA folder")

    @abstractmethod
    def state_dir(self) -> Path:
        """Where training state for resume is kept (outside the embeddings folder)."""
