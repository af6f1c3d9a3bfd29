"""Training copies of ComfyUI's MODEL and CLIP: what gradients may flow through without touching the graph's own.

ComfyUI builds its weights under ``torch.inference_mode()``. Autograd refuses to save such tensors, and after
``load_models_gpu`` moves a model (``Module.to`` keeps the inference-mode ``Parameter`` objects and swaps their
data) it still fails — with ``is_inference()`` reporting False. So, as ComfyUI's own trainer does
(``comfy_extras/nodes_train.py``), training runs on a copy made for training, outside inference mode:

- ComfyUI ≥ 0.24 with a loader-built model: ``clone(force_deepcopy=True, disable_dynamic=True)`` re-runs the
  loader, giving fresh, non-dynamic weights (no DynamicVRAM cast buffers) that carry the same patches.
- otherwise: the input is unloaded (so any LoRA patched into its weights is undone) and its module deep-copied
  outside inference mode; a clone of the input patcher is pointed at the copy, so weight patches, object
  patches (ModelSamplingDiscrete) and options come along and are applied again when the copy loads.

The copy is then loaded in full (``force_full_load``, activation memory reserved), never partially: offloaded
layers are cast per forward into shared buffers that autograd cannot safely keep. The input MODEL/CLIP objects
are never modified, and the copies are unloaded when training ends.
"""
from __future__ import annotations

import copy
import inspect
import logging

import torch

from ..errors import AnybodyError

#: transformer_options entries that change attention (IPAdapter, PAG, attention couple ...): not trained through
_ATTENTION_OPTIONS = ("patches", "patches_replace")


def _clone_kwargs(patcher) -> dict:
    takes = inspect.signature(patcher.clone).parameters
    return {"disable_dynamic": True} if "disable_dynamic" in takes else {}


def unload(patcher) -> None:
    """Unload ``patcher`` (and clones sharing its weights) from every device, restoring unpatched weights."""
    import comfy.model_management as mm

    keep = [lm for lm in mm.current_loaded_models if lm.model is not None and not lm.model.is_clone(patcher)]
    for device in {patcher.load_device, patcher.offload_device}:
        mm.free_memory(1e30, device, keep_loaded=keep)
    mm.cleanup_models_gc() if hasattr(mm, "cleanup_models_gc") else mm.cleanup_models()


def _shared_objects(module: torch.nn.Module) -> dict:
    """Deep-copy memo that keeps non-module, non-tensor attributes (model config, latent format ...) shared:
    they hold no weights, and some (ComfyUI 0.33's model config, whose ``__getattr__`` answers None for any
    name) cannot be deep-copied at all."""
    memo = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if not isinstance(value, (torch.nn.Module, torch.Tensor, dict, list, tuple, set, str, int, float, bool,
                                      type(None))):
                memo[id(value)] = value
    return memo


def training_patcher(patcher):
    """A patcher over weights of its own, built outside inference mode, with ``patcher``'s patches and options."""
    takes = inspect.signature(patcher.clone).parameters
    if "force_deepcopy" in takes and getattr(patcher, "cached_patcher_init", None) is not None:
        return _own_hook_backups(patcher.clone(force_deepcopy=True, **_clone_kwargs(patcher)))
    if getattr(patcher, "is_dynamic", lambda: False)():
        raise AnybodyError(
            f"This {type(patcher.model).__name__} was loaded by a loader ComfyUI cannot reload, and ComfyUI's "
            "DynamicVRAM manages its weights, so Anybody cannot make a training copy of it. Load the checkpoint "
            "with the core Load Checkpoint node, or restart ComfyUI with --disable-dynamic-vram.")
    unload(patcher)  # a loaded model may carry LoRA weights patched in place: copy the pristine ones
    module = copy.deepcopy(patcher.model, memo=_shared_objects(patcher.model))
    if "model_override" in takes:
        empty = tuple(type(x)() for x in patcher.get_clone_model_override()[1])
        return _own_hook_backups(patcher.clone(model_override=(module, empty), **_clone_kwargs(patcher)))
    clone = patcher.clone()  # ComfyUI before 0.24: clone() shares the module; point it at the copy
    clone.model = module
    clone.backup, clone.object_patches_backup = {}, {}
    return _own_hook_backups(clone)


def _own_hook_backups(clone):
    """``clone()`` shares the hook-weight backups with the input; loading the copy would move the input's backups
    into the copy and clear them, leaving a hooked input (Hook LoRA) patched for good. The copy's weights are
    pristine, so it starts with none (as ComfyUI's own multi-GPU deep clone does)."""
    if hasattr(clone, "hook_backup"):
        clone.hook_backup = {}
    if hasattr(clone, "hook_patches_backup"):
        clone.hook_patches_backup = None
    return clone


def strip_attention_patches(patcher) -> list[str]:
    """Remove attention patches and model wrappers from a training clone's options; return what was removed.

    An identity trained through another node's attention patch (IPAdapter, PAG ...) would learn to undo or lean
    on it, and would not work without it; weight patches (LoRA) stay, as users expect.
    """
    removed = []
    options = patcher.model_options
    transformer = options.get("transformer_options", {})
    for key in _ATTENTION_OPTIONS:
        if transformer.get(key):
            removed += [f"{key}:{name}" for name in transformer[key]]
            transformer.pop(key)
    if options.pop("model_function_wrapper", None) is not None:
        removed.append("model_function_wrapper")
    return removed


def bf16_instead_of_fp16(base, device: torch.device, manual_cast: torch.dtype | None = None) -> bool:
    """Train in bf16 where the device supports it and ComfyUI computes this UNet in fp16: bf16's range needs no
    loss scaling. Elsewhere fp16 stays, with the engine's loss scaling; the CPU computes in fp32."""
    import comfy.model_management as mm

    if device.type == "cpu" or base.get_dtype() != torch.float16 or manual_cast is not None:
        return False
    try:
        return bool(mm.should_use_bf16(device, prioritize_performance=False))
    except TypeError:  # older signature
        return bool(mm.should_use_bf16(device))


def to_bf16(patcher) -> None:
    """Store the training copy's UNet in bf16 (it is ours alone); ComfyUI casts inputs to ``diffusion_model.dtype``."""
    unet = patcher.model.diffusion_model
    unet.to(torch.bfloat16)  # floating-point parameters and buffers only
    unet.dtype = torch.bfloat16


def training_clip(clip, device: torch.device):
    """A CLIP whose text model is a training copy loaded on ``device`` (the UNet's, even in LOW_VRAM mode)."""
    patcher = training_patcher(clip.patcher)
    patcher.load_device = device
    clone = clip.clone()
    clone.patcher = patcher
    clone.cond_stage_model = patcher.model
    return clone


def load_fully(patchers, memory_required: float) -> None:
    """Load the training copies once, whole, with ``memory_required`` bytes left free for activations."""
    import comfy.model_management as mm

    if getattr(mm, "vram_state", None) == mm.VRAMState.NO_VRAM:
        raise AnybodyError("ComfyUI runs with --novram, which streams every weight from RAM for each layer; "
                           "training needs the model resident on the GPU. Restart ComfyUI without --novram "
                           "(--lowvram works).")
    mm.load_models_gpu(list(patchers), memory_required=memory_required, force_full_load=True)
    for p in patchers:
        loaded, size = p.loaded_size(), p.model_size()
        if getattr(p.model, "model_lowvram", False) or loaded < size:
            raise AnybodyError(f"ComfyUI loaded only {loaded / 2**30:.2f} of {size / 2**30:.2f} GiB of "
                               f"{type(p.model).__name__} onto {p.load_device}; training needs all of it. "
                               "Free GPU memory (close other programs, lower the batch) or use a smaller checkpoint.")
    logging.info("[Anybody] training copies loaded on %s", ", ".join(str(p.load_device) for p in patchers))
