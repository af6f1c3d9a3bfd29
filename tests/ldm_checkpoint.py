"""Write diffusers/transformers SD1.x modules as an original-layout (LDM) single-file checkpoint.

Test infrastructure: ComfyUI's CheckpointLoader and diffusers' ``from_single_file`` read this layout, so tiny
random models built here can be loaded by the real hosts. Our own key mapping, checked by round trips.
"""
from __future__ import annotations

import re

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_to_ldm(sd: dict, layers_per_block: int, attention_up: list[bool]) -> dict:
    L = layers_per_block
    out = {}
    for key, value in sd.items():
        k = key
        k = k.replace("time_embedding.linear_1", "time_embed.0").replace("time_embedding.linear_2", "time_embed.2")
        k = k.replace("conv_in.", "input_blocks.0.0.").replace("conv_norm_out.", "out.0.").replace("conv_out.", "out.2.")
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
        if m:  # level i, layer j -> input_blocks[1 + i(L+1) + j] / output_blocks[i(L+1) + j]; .0 resnet, .1 attention
            first = 1 if m[1] == "down" else 0
            index, sub = first + int(m[2]) * (L + 1) + int(m[4]), 0 if m[3] == "resnets" else 1
            k = f"{'input' if m[1] == 'down' else 'output'}_blocks.{index}.{sub}.{_resnet(m[5]) if sub == 0 else m[5]}"
        m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k)
        if m:
            k = f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
        m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k)
        if m:
            idx = 1 if m[1] == "attentions" else 2 * int(m[2])
            k = f"middle_block.{idx}.{_resnet(m[3]) if m[1] == 'resnets' else m[3]}"
        m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)
        if m:
            i = int(m[1])
            k = f"output_blocks.{i * (L + 1) + L}.{2 if attention_up[i] else 1}.conv.{m[2]}"
        out["model.diffusion_model." + k] = value
    return out


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_RESNET.get(name, name)}.{tail}"


def vae_to_ldm(sd: dict, n_blocks: int) -> dict:
    out = {}
    for key, value in sd.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                   lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
            k = k.replace("group_norm", "norm").replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out")
            if value.dim() == 2:
                value = value[:, :, None, None]
        out["first_stage_model." + k] = value
    return out


def clip_to_ldm(sd: dict) -> dict:
    return {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in sd.items() if "position_ids" not in k}


def save_sd1_checkpoint(path, unet, vae, text_encoder, dtype=torch.float16) -> None:
    from safetensors.torch import save_file

    cfg = unet.config
    att_up = ["CrossAttn" in t for t in cfg.up_block_types]
    sd = {**unet_to_ldm(unet.state_dict(), cfg.layers_per_block, att_up),
          **vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)),
          **clip_to_ldm(text_encoder.state_dict())}
    save_file({k: v.detach().to(dtype).contiguous() for k, v in sd.items()}, str(path))


def comfy_detectable_sd15(seed: int = 0):
    """Random modules ComfyUI detects as SD1.5 (320-channel 2-level UNet, full CLIP-L and SD VAE): the smallest
    checkpoint the stock CheckpointLoaderSimple accepts as SD1.5 (hosts/comfyui.md §13)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(320, 640),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                                attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, hidden_act="quick_gelu", max_position_embeddings=77))
    return unet, vae, te


def full_size_sd15(seed: int = 0):
    """Random modules with SD1.5's exact architecture (what the A1111 webui instantiates from v1-inference.yaml and
    loads a checkpoint into; it accepts nothing smaller)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                                cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, hidden_act="quick_gelu", max_position_embeddings=77))
    with torch.no_grad():  # trained layer norms have biases: with zero ones the webui's emphasis divides 0 by 0
        for norm in (m for m in te.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.add_(torch.randn_like(norm.weight) * 0.1)
            norm.bias.add_(torch.randn_like(norm.bias) * 0.1)
    return unet, vae, te
