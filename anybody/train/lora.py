"""LoRA for every LoRA method of the pack: the adapter, where it goes, and the kohya file both UIs load.

An adapter on a linear layer ``y = W x`` adds ``scale * U (D x)`` with ``D [r, in] ~ N(0, 1/r^2)`` and ``U [out, r] = 0``
(so a fresh adapter changes nothing, and the first gradient reaches only ``U``). It is applied through whatever the
host offers — a forward hook on a plain torch module, or a weight function (``W + scale * U D``) such as ComfyUI's
weight wrappers — and never by writing into the host's weights.

Names: every adapter is keyed by its kohya name built from the diffusers module path (``lora_unet_down_blocks_0_…``,
``lora_te_text_model_encoder_layers_0_self_attn_q_proj``), which diffusers, ComfyUI's LoraLoader and A1111's Lora
all read. Hosts whose UNet uses the original LDM layout (ComfyUI, A1111) translate their paths with
``ldm_to_diffusers``. The file stores ``alpha = rank`` so a loader's ``alpha / rank`` scale is exactly 1.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import ModelFileError

#: module-path patterns of the layers MagiCapture adapts (spec §5): attention projections and the GEGLU input of
#: every UNet transformer block; the attention projections of every text-encoder layer
UNET_ATTENTION_TARGETS = (r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$", r"\.ff\.net\.0\.proj$")
TEXT_ATTENTION_TARGETS = (r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$",)
PREFIX = {"unet": "lora_unet_", "te": "lora_te_", "te1": "lora_te1_", "te2": "lora_te2_"}


class LoRA(nn.Module):
    """One low-rank adapter for a linear layer ``[out, in]``."""

    def __init__(self, in_features: int, out_features: int, rank: int = 4, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.rank, self.scale = rank, scale
        with torch.inference_mode(False):  # trainable even when made inside a host's inference mode (ComfyUI nodes)
            self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) / rank)
            self.up = nn.Parameter(torch.zeros(out_features, rank))

    def delta(self) -> torch.Tensor:
        """``scale * U D`` ``[out, in]``: what the adapter adds to the weight."""
        return self.scale * (self.up @ self.down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's output for input ``x`` (to be added to the layer's own output)."""
        return self.scale * nn.functional.linear(nn.functional.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype))

    def weight_function(self, weight: torch.Tensor) -> torch.Tensor:
        """``W + scale * U D`` in ``W``'s dtype: the form a host weight wrapper applies per forward."""
        return weight + self.delta().to(weight.dtype)


def kohya_name(tree: str, diffusers_path: str) -> str:
    """``("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")`` ->
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``."""
    return PREFIX[tree] + diffusers_path.replace(".", "_")


def ldm_to_diffusers(path: str, layers_per_block: int = 2) -> str:
    """A UNet module path in the LDM layout (ComfyUI, A1111) -> the diffusers path of the same layer.

    ``input_blocks.{1 + i(L+1) + j}.1`` is ``down_blocks.i.attentions.j``, ``output_blocks.{i(L+1) + j}.1`` is
    ``up_blocks.i.attentions.j`` and ``middle_block.1`` is ``mid_block.attentions.0`` (L: layers per block); the path
    inside a transformer block is the same in both. Other layers are not mapped (a ValueError names them).
    """
    step = layers_per_block + 1
    m = re.match(r"^(?:.*diffusion_model\.)?input_blocks\.(\d+)\.1\.(.+)$", path)
    if m and int(m[1]) >= 1:
        level, j = divmod(int(m[1]) - 1, step)
        return f"down_blocks.{level}.attentions.{j}.{m[2]}"
    m = re.match(r"^(?:.*diffusion_model\.)?output_blocks\.(\d+)\.1\.(.+)$", path)
    if m:
        level, j = divmod(int(m[1]), step)
        return f"up_blocks.{level}.attentions.{j}.{m[2]}"
    m = re.match(r"^(?:.*diffusion_model\.)?middle_block\.1\.(.+)$", path)
    if m:
        return f"mid_block.attentions.0.{m[1]}"
    raise ValueError(f"{path} is not a UNet attention layer in the LDM layout")


def clip_path(path: str) -> str:
    """A CLIP text-encoder module path from any host's tree (``transformer.text_model.encoder…`` in ComfyUI and
    A1111, ``text_model.encoder…`` or, in transformers 5, ``encoder…``) -> the canonical ``text_model.encoder…``."""
    m = re.search(r"(?:^|\.)(encoder\.layers\.\d+\..+)$", path)
    if not m:
        raise ValueError(f"{path} is not a layer of a CLIP text encoder")
    return f"text_model.{m[1]}"


def find_targets(root: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """``(path, layer)`` of every linear layer under ``root`` whose path matches one of ``patterns``, in module
    order. Matching is by path, never by class name (hosts name their attention classes differently)."""
    compiled = [re.compile(p) for p in patterns]
    return [(name, module) for name, module in root.named_modules()
            if isinstance(module, nn.Linear) and any(p.search("." + name) for p in compiled)]


class LoRASet(nn.Module):
    """Adapters keyed by kohya name, with the module path each one adapts in the host's tree."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.paths: dict[str, str] = {}

    def add(self, name: str, path: str, layer: nn.Linear, rank: int, scale: float,
            generator: torch.Generator | None = None) -> LoRA:
        if name in self.adapters:
            raise ValueError(f"two layers map to the LoRA name {name}")
        adapter = LoRA(layer.in_features, layer.out_features, rank, scale, generator)
        self.adapters[name] = adapter
        self.paths[name] = path
        return adapter

    def items(self) -> Iterator[tuple[str, LoRA]]:
        return iter(self.adapters.items())

    def __len__(self) -> int:
        return len(self.adapters)


def build(root: nn.Module, tree: str, patterns: Sequence[str], rank: int = 4, scale: float = 1.0,
          generator: torch.Generator | None = None, to_diffusers: Callable[[str], str] | None = None) -> LoRASet:
    """Adapters for every target of ``root``; ``to_diffusers`` translates the host's paths into the canonical ones
    the names are built from (default: none for a UNet, ``clip_path`` for text encoders)."""
    if to_diffusers is None:
        to_diffusers = (lambda p: p) if tree == "unet" else clip_path
    adapters = LoRASet()
    for path, layer in find_targets(root, patterns):
        adapters.add(kohya_name(tree, to_diffusers(path)), path, layer, rank, scale, generator)
    return adapters


def for_host(host, targets: Mapping[str, Sequence[str]], rank: int = 4, scale: float = 1.0,
             generator: torch.Generator | None = None) -> dict[str, LoRASet]:
    """tree -> adapters for the layers of ``host`` that match the tree's patterns (``host.lora_layers``), named by
    their canonical path and attached by the host's own path; pass the result to ``host.training(adapters=...)``."""
    sets = {}
    for tree, patterns in targets.items():
        adapters = LoRASet()
        for host_path, canonical, layer in host.lora_layers(tree, patterns):
            adapters.add(kohya_name(tree, canonical), host_path, layer, rank, scale, generator)
        if not len(adapters):
            raise ValueError(f"no layer of the {tree} matches {list(patterns)}")
        sets[tree] = adapters
    return sets


#: what MagiCapture adapts (spec §5), per tree
MAGICAPTURE_TARGETS = {"unet": UNET_ATTENTION_TARGETS, "te": TEXT_ATTENTION_TARGETS}


@contextlib.contextmanager
def hooked(root: nn.Module, adapters: LoRASet, multiplier: float = 1.0) -> Iterator[None]:
    """Add each adapter's output to its layer's output (forward hooks on ``root``), removed on exit."""
    modules = dict(root.named_modules())
    handles = []
    for name, adapter in adapters.items():
        def hook(module, inputs, output, adapter=adapter):
            return output + multiplier * adapter(inputs[0])
        handles.append(modules[adapters.paths[name]].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def merged(root: nn.Module, adapters: LoRASet, multiplier: float = 1.0) -> Iterator[None]:
    """The adapters merged into the weights (``W + m * scale * U D``) for the block, the exact original weights
    restored after (for inference on hosts that apply LoRAs by merging)."""
    modules = dict(root.named_modules())
    saved = {}
    try:
        with torch.no_grad():
            for name, adapter in adapters.items():
                layer = modules[adapters.paths[name]]
                saved[name] = layer.weight.detach().clone()
                layer.weight.add_(multiplier * adapter.delta().to(layer.weight))
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                modules[adapters.paths[name]].weight.copy_(weight)


# --- kohya files ---------------------------------------------------------------------------------------------

def kohya_tensors(*sets: LoRASet) -> dict[str, torch.Tensor]:
    """``<name>.lora_down.weight``, ``<name>.lora_up.weight`` (the scale folded into ``up``) and ``<name>.alpha = rank``
    (so a loader's ``alpha / rank`` is 1) for every adapter."""
    out = {}
    for adapters in sets:
        for name, adapter in adapters.items():
            out[f"{name}.lora_down.weight"] = adapter.down.detach().float().cpu().contiguous()
            out[f"{name}.lora_up.weight"] = (adapter.up.detach().float() * adapter.scale).cpu().contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(adapter.rank))
    return out


def kohya_metadata(rank: int, base_model: str, title: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``ss_*`` keys A1111 and kohya tools read (network module, dim/alpha, base model) and modelspec's
    (architecture, title) — strings only, as safetensors metadata must be."""
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(float(rank)),
            "ss_base_model_version": base_model, "ss_output_name": title,
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{_ARCHITECTURE.get(base_model, base_model)}/lora",
            "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts", "modelspec.title": title}
    meta.update({str(k): str(v) for k, v in (extra or {}).items()})
    return meta


_ARCHITECTURE = {"sd_v1": "stable-diffusion-v1", "sd_v2": "stable-diffusion-v2-512", "sdxl_base_v1-0": "stable-diffusion-xl-v1-base"}


def save_kohya(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
               overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    from ..files import atomic_write

    return atomic_write(path, lambda tmp: save_file(dict(tensors), tmp, metadata=dict(metadata)), overwrite=overwrite)


def read_kohya(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``name -> (down, up with alpha/rank folded in, alpha)`` of a kohya LoRA file; other keys are ignored."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelFileError(f"{path} could not be read as a LoRA file ({type(exc).__name__}: {exc}).") from exc
    out = {}
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        down, up = tensors[key].float(), tensors.get(f"{name}.lora_up.weight")
        if up is None or up.shape[1] != down.shape[0]:
            raise ModelFileError(f"{path}: {name} has no matching lora_up weight of rank {down.shape[0]}.")
        alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else float(down.shape[0])
        out[name] = (down, up.float() * alpha / down.shape[0], alpha)
    if not out:
        raise ModelFileError(f"{path} holds no kohya LoRA weights (no '*.lora_down.weight' keys).")
    return out


def load_into(adapters: LoRASet, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]]) -> list[str]:
    """Copy a file's weights into matching adapters (``up`` un-scaled by the adapter's scale); returns the names of
    adapters the file did not have."""
    missing = []
    with torch.no_grad():
        for name, adapter in adapters.items():
            if name not in weights:
                missing.append(name)
                continue
            down, up, _ = weights[name]
            if down.shape != adapter.down.shape or up.shape != adapter.up.shape:
                raise ModelFileError(f"LoRA {name}: the file has shapes {tuple(down.shape)}/{tuple(up.shape)}, the "
                                     f"model needs {tuple(adapter.down.shape)}/{tuple(adapter.up.shape)} (another "
                                     "base model or rank).")
            adapter.down.copy_(down)
            adapter.up.copy_(up / adapter.scale)
    return missing


def parameter_count(sets: Iterable[LoRASet]) -> int:
    return sum(p.numel() for adapters in sets for p in adapters.parameters())
