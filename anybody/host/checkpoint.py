"""Local single-file checkpoints for the CLI: what family a file is, and loading it into a diffusers host offline.

The family is read from key names alone (the same evidence ComfyUI uses), so a LoRA, a VAE or an
unsupported model is refused with a message before gigabytes are loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..assets import asset_path, clip_tokenizer
from ..errors import ModelFileError

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
FAMILY_MARKERS = {  # text-encoder key -> family
    "conditioner.embedders.1.model.ln_final.weight": "sdxl",
    "cond_stage_model.model.ln_final.weight": "sd2",
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": "sd1",
    "cond_stage_model.transformer.final_layer_norm.weight": "sd1",  # early SD1 files, without text_model.
}
SUPPORTED = {"sd1": "sd15"}  # family -> shipped diffusers config folder


def detect_family(path: str | Path) -> str:
    """'sd1' | 'sd2' | 'sdxl' for a Stable Diffusion checkpoint; a clear error for anything else."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give the checkpoint file itself (a .safetensors file, e.g. "
                             "ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors).")
    if not path.is_file():
        raise ModelFileError(f"Checkpoint not found: {path}. Give the path of a .safetensors checkpoint "
                             "(e.g. ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors).")
    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path.name}: only .safetensors checkpoints are loaded (pickled .ckpt files can run "
                             "code when opened). Convert it to .safetensors first.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable .safetensors file ({exc}). It may be truncated: "
                             "download it again.") from exc
    if UNET_KEY not in keys:
        kind = "a LoRA" if any(k.startswith(("lora_", "lycoris_")) for k in keys) else \
               "a VAE" if any(k.startswith(("encoder.", "decoder.")) for k in keys) else "not a Stable Diffusion checkpoint"
        raise ModelFileError(f"{path.name} is {kind}: it has no UNet ({UNET_KEY}). Pass a full SD1.5/SD2.x/SDXL "
                             "checkpoint (UNet + text encoder + VAE in one file).")
    for marker, family in FAMILY_MARKERS.items():
        if marker in keys:
            return family
    raise ModelFileError(f"{path.name} has a UNet but no SD1.x/SD2.x/SDXL text encoder; this model family is not supported.")


def load_checkpoint_host(path: str | Path, out_dir: str | Path = "anybody_out", prediction: str | None = None,
                         config_dir: str | Path | None = None, device: str | None = None, sink=None,
                         low_memory: bool = False, cpu_compute: torch.dtype | None = None):
    """Load a local single-file checkpoint into a :class:`DiffusersHost`, with no network access."""
    from .diffusers import DiffusersHost, DiffusersTextEncoder
    from .single_file import load_sd1_modules

    family = detect_family(path)
    if family not in SUPPORTED and config_dir is None:
        raise ModelFileError(f"{Path(path).name} is an {family.upper()} checkpoint; the command-line trainer loads "
                             "SD1.x checkpoints so far. Train SD2.x/SDXL identities in ComfyUI.")
    config = Path(config_dir) if config_dir else asset_path("configs", SUPPORTED[family])
    scheduler_config = json.loads((config / "scheduler" / "scheduler_config.json").read_text())
    if prediction:
        scheduler_config["prediction_type"] = "v_prediction" if prediction == "v" else "epsilon"
    # low_memory keeps the UNet's weights in fp16, read straight into fp16 whatever the file's dtype, so no fp32
    # copy of the UNet ever exists; text encoder and VAE are fp32 either way.
    try:
        unet, vae, text_encoder = load_sd1_modules(path, config, torch.float16 if low_memory else torch.float32)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"Could not load {Path(path).name} as {family}: {exc}") from exc
    encoder = DiffusersTextEncoder("clip_l", text_encoder, clip_tokenizer())
    return DiffusersHost(unet, vae, [encoder], scheduler_config, family, out_dir=out_dir,
                         sink=sink, device=device, low_memory=low_memory, cpu_compute=cpu_compute)
