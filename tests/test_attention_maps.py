"""Cross-attention capture by UNet level (MagiCapture spec §7, acceptance check 4)."""
import pytest
import torch

from anybody.train.attention_maps import level_of


@pytest.fixture(scope="module")
def sd15_shaped_host(tmp_path_factory):
    """SD1.5's block layout (4 levels, 2 layers per block, attention on the top three, 8 heads, 768 context) at
    narrow widths: the same 16 transformer blocks and the same five 16x16 layers at a 64x64 latent."""
    from diffusers import UNet2DConditionModel

    from anybody.host.diffusers import DiffusersHost, DiffusersTextEncoder
    from anybody.host.tiny import SD_SCHEDULER, tiny_sd1_modules

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
        attention_head_dim=8, norm_num_groups=32)
    _, vae, text_encoder, tokenizer = tiny_sd1_modules(seed=0)
    return DiffusersHost(unet, vae, [DiffusersTextEncoder("clip_l", text_encoder, tokenizer)], SD_SCHEDULER, "sd1",
                         out_dir=tmp_path_factory.mktemp("attn"), device="cpu")


def test_level_of_names_the_same_layers_in_both_layouts():
    assert level_of("down_blocks.2.attentions.1.transformer_blocks.0.attn2") == 2
    assert level_of("up_blocks.1.attentions.2.transformer_blocks.0.attn2") == 2
    assert level_of("diffusion_model.input_blocks.7.1.transformer_blocks.0.attn2") == 2
    assert level_of("diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2") == 2
    assert level_of("output_blocks.6.1.transformer_blocks.0.attn2") == 1 and level_of("middle_block.1.x") is None


def test_capture_gives_40_maps_of_16x16_that_sum_to_one_and_changes_nothing(sd15_shaped_host):
    host = sd15_shaped_host
    x, t = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([500, 20])
    vec = torch.randn(2, 768, requires_grad=True)
    cond = host.encode_prompts(["a photo of <x> person", "a photo of <x> person"], {"<x>": {"clip_l": vec}})
    with torch.no_grad():
        plain = host.predict(x, t, cond)
    with host.cross_attention_maps(level=2) as store:
        captured = host.predict(x, t, cond)
        maps = store.stacked()
    assert maps.shape == (2, 40, 16, 16, 77)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 40, 16, 16), atol=1e-4)
    assert torch.allclose(captured, plain, atol=1e-5)  # the same attention, computed explicitly
    maps[..., 4].sum().backward()  # the maps keep their graph back to the injected vectors
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    with torch.no_grad(), host.cross_attention_maps(level=2) as store:
        store.active = False
        host.predict(x, t, cond)
        assert store.maps == []
    assert all(type(m.processor).__name__ != "_CapturingProcessor" for n, m in host.unet.named_modules()
               if n.endswith("attn2"))  # restored
    with pytest.raises(ValueError, match="no cross-attention layers at level 3"):
        with host.cross_attention_maps(level=3):
            pass


def test_the_default_level_is_the_deepest_with_cross_attention(sd15_shaped_host, host):
    x, t = torch.randn(1, 4, 64, 64), torch.tensor([10])
    with torch.no_grad():
        cond = sd15_shaped_host.encode_prompts(["a photo"])
        with sd15_shaped_host.cross_attention_maps() as store:
            sd15_shaped_host.predict(x, t, cond)
        assert store.stacked().shape[1:4] == (40, 16, 16)  # SD1.5's level 2
        with host.cross_attention_maps() as store:  # the tiny test UNet: attention on its top level only
            host.predict(torch.randn(1, 4, 8, 8), t, host.encode_prompts(["a photo"]))
        assert store.stacked().shape[2:4] == (8, 8)
