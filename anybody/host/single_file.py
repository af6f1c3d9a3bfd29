"""SD1.x single-file checkpoints -> diffusers/transformers modules, one tensor at a time.

Why not ``StableDiffusionPipeline.from_single_file``: it holds the whole state dict, converted copies and the new
model at once — 6.4 GiB peak for a 2 GiB fp16 SD1.5 file whose loaded fp32 model takes 4.4 GiB (8.4 GiB for an
fp32 file). Here each tensor is read from the file with plain reads (safetensors' own reader maps the whole file,
and every page it touched counts as resident until it is closed) and converted to its final dtype as it is read;
the UNet and VAE are built on the meta device and take those tensors as their parameters (``assign``), so the
peak is the loaded model plus one tensor. Key renaming is diffusers' own (``single_file_utils``).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from ..errors import ModelFileError

UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, **{name: getattr(torch, attr) for name, attr in (("F8_E4M3", "float8_e4m3fn"),
                                                                               ("F8_E5M2", "float8_e5m2"))
                                    if hasattr(torch, attr)}}


class FileTensors:
    """The tensors of a ``.safetensors`` file (format: u64 header size, JSON header, raw little-endian data), each
    read into its own fresh memory on request, without mapping the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(self.size - 8, 100 * 2**20):
                raise ModelFileError(f"{self.path.name} has a damaged safetensors header; download it again.")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.header, self.data_start = header, 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def get_tensor(self, key: str) -> torch.Tensor:
        info = self.header[key]
        begin, end = info["data_offsets"]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelFileError(f"{self.path.name}: tensor {key} has dtype {info['dtype']}, which this loader does not "
                                 "read; convert the checkpoint to fp16 or fp32.")
        if self.data_start + end > self.size:
            raise ModelFileError(f"{self.path.name} is truncated (tensor {key}); download it again.")
        tensor = torch.empty(info["shape"], dtype=dtype)
        view = tensor.view(-1).view(torch.uint8).numpy() if tensor.numel() else None
        if view is not None:
            with open(self.path, "rb") as f:
                f.seek(self.data_start + begin)
                if f.readinto(view) != end - begin:
                    raise ModelFileError(f"{self.path.name} is truncated; download it again.")
        return tensor


def _read(f, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor under ``prefix``, converted to ``dtype`` as it is read (floating point only)."""
    out = {}
    for key in f.keys():
        if key.startswith(prefix):
            tensor = f.get_tensor(key)
            out[key] = tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor
    return out


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Make ``state``'s tensors the parameters of a meta-device ``model``; non-persistent position-id buffers
    (CLIP) are rebuilt; anything else left without a value is an error naming it."""
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelFileError(f"The checkpoint's {what} does not match the SD1.x layout: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}.")
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta and name == "position_ids":
                module._buffers[name] = torch.arange(buffer.shape[-1]).expand(buffer.shape).contiguous()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelFileError(f"The checkpoint's {what} has no values for {left[:3]}.")
    return model


def load_sd1_modules(path: str | Path, config: Path, unet_dtype: torch.dtype = torch.float32):
    """(unet, vae, text_encoder) from an LDM-layout SD1.x file; text encoder and VAE in fp32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config = UNet2DConditionModel.load_config(config / "unet")
    vae_config = AutoencoderKL.load_config(config / "vae")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(str(config / "text_encoder" / "config.json")))
    f = FileTensors(path)
    _assign(unet, convert_ldm_unet_checkpoint(_read(f, UNET_PREFIX, unet_dtype), unet_config), "UNet")
    _assign(vae, convert_ldm_vae_checkpoint(_read(f, VAE_PREFIX, torch.float32), vae_config), "VAE")
    own = set(text_encoder.state_dict())
    state = {}
    for key, tensor in _read(f, CLIP_PREFIX, torch.float32).items():
        name = key[len(CLIP_PREFIX):]
        if name not in own and name.startswith("text_model."):  # transformers 5 does not nest text_model
            name = name[len("text_model."):]
        elif name not in own and f"text_model.{name}" in own:  # old files without the text_model level
            name = f"text_model.{name}"
        if name in own or not name.endswith("position_ids"):  # some files carry the position-id buffer
            state[name] = tensor
    _assign(text_encoder, state, "text encoder")
    return unet.eval(), vae.eval(), text_encoder.eval()
