"""A tiny random-weight model with the SD1.x architecture, built in seconds with no download.

It has SD1.x's real interfaces (CLIP BPE tokenizer, 768-wide token table and context, 4-channel latents at
1/8 resolution, the SD noise schedule) at a fraction of the depth and width, so every code path — and every
file format — is exercised exactly as with a real checkpoint. Its images are noise: it has learned nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..assets import clip_tokenizer

SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
                "set_alpha_to_one": False, "clip_sample": False}


def _tiny_vae(scaling_factor: float):
    """A 4-level SD VAE (8x down, 4 latent channels) at width 32; the families differ only in latent scale."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, sample_size=64, scaling_factor=scaling_factor)


def tiny_sd1_modules(seed: int = 0, unet_channels: tuple[int, ...] = (32, 64), text_layers: int = 2):
    """(unet, vae, text_encoder, tokenizer) with SD1.x interfaces and random weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=256, num_hidden_layers=text_layers,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=unet_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    return unet, _tiny_vae(0.18215), text_encoder, clip_tokenizer()


def tiny_sdxl_modules(seed: int = 0):
    """(unet, vae, (clip_l, tokenizer), (clip_g with projection, tokenizer_2)) with SDXL interfaces.

    Real widths where files and prompts see them (768 + 1280 = 2048 context, 1280 pooled, 2816 added
    embedding input); shallow and narrow everywhere else.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    common = dict(vocab_size=49408, intermediate_size=256, num_hidden_layers=2, max_position_embeddings=77,
                  bos_token_id=49406, eos_token_id=49407)
    clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, num_attention_heads=12, hidden_act="quick_gelu",
                                          pad_token_id=49407, **common))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, num_attention_heads=20, hidden_act="gelu",
                                                        projection_dim=1280, pad_token_id=0, **common))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=2048, attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    return unet, _tiny_vae(0.13025), (clip_l, clip_tokenizer()), (clip_g, clip_tokenizer(pad_token="!"))


def tiny_host(out_dir: str | Path, seed: int = 0, sink=None, device: str | None = "cpu", family: str = "sd1"):
    """A :class:`DiffusersHost` over :func:`tiny_sd1_modules` (or :func:`tiny_sdxl_modules` for ``family='sdxl'``)."""
    from .diffusers import DiffusersHost, DiffusersTextEncoder

    if family == "sdxl":
        unet, vae, (clip_l, tok_l), (clip_g, tok_g) = tiny_sdxl_modules(seed)
        encoders = [DiffusersTextEncoder("clip_l", clip_l, tok_l, layer="penultimate"),
                    DiffusersTextEncoder("clip_g", clip_g, tok_g, layer="penultimate")]
    else:
        unet, vae, text_encoder, tokenizer = tiny_sd1_modules(seed)
        encoders = [DiffusersTextEncoder("clip_l", text_encoder, tokenizer)]
    return DiffusersHost(unet, vae, encoders, SD_SCHEDULER, family, out_dir=out_dir, sink=sink, device=device)
