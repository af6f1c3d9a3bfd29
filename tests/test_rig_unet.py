"""DiffusionRig network (methods/diffusion_rig.md §10, §12; acceptance checks 15 and 16).

The official-size model is only ever built on the ``meta`` device (shapes, no memory, no compute); everything
that runs uses :data:`TINY`.
"""
import math

import pytest
import torch

from anybody.rig.resnet import resnet18, resnet50_trunk
from anybody.rig.unet import (OFFICIAL, TINY, AttentionBlock, DiffusionRig, ResBlock, from_state_dict, infer_config,
                              parameter_counts, timestep_embedding)

ZERO_INIT = ("out_layers.3", "proj_out")


def _meta(config):
    with torch.device("meta"):
        return DiffusionRig(config)


@pytest.fixture(scope="module")
def official():
    return _meta(OFFICIAL)


def _zero_init_modules(model):
    return [m for name, m in model.named_modules()
            if name.endswith(ZERO_INIT) or name == "denoisingUNet.out.2"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DiffusionRig(TINY).eval()


def _inputs(config, seed=1, batch=2):
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    return (torch.randn(batch, 3, s, s, generator=g), torch.tensor([0, 950][:batch]),
            torch.randn(batch, 9, s, s, generator=g), torch.randn(batch, config.latent_dim, generator=g))


# --- check 16: state dict and parameter counts of the official architecture --------------------------------------

def test_official_parameter_counts(official):
    assert parameter_counts(official) == (133_400_835, 11_209_344)


def test_official_state_dict_keys(official):
    sd = official.state_dict()
    assert sum(k.startswith("denoisingUNet.") for k in sd) == 590
    assert all(k.startswith(("denoisingUNet.", "encoder.")) for k in sd)
    expected = {
        "denoisingUNet.input_blocks.0.0.weight": (128, 12, 3, 3),
        "denoisingUNet.input_blocks.1.0.emb_layers.1.weight": (256, 512),
        "denoisingUNet.input_blocks.1.0.cond_emb_layers.1.weight": (256, 64),
        "denoisingUNet.input_blocks.13.1.qkv.weight": (1536, 512, 1),
        "denoisingUNet.out.2.weight": (3, 128, 3, 3),
        "encoder.fc.weight": (64, 512),
        "denoisingUNet.time_embed.0.weight": (512, 128),
        "denoisingUNet.time_embed.2.weight": (512, 512),
        "encoder.bn1.running_mean": (64,),
        "encoder.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # attention only at 16 px (encoder blocks 13, 14; decoder blocks 3, 4, 5) and in the middle block
    qkv = sorted(k for k in sd if k.endswith("qkv.weight"))
    assert qkv == sorted(["denoisingUNet.input_blocks.13.1.qkv.weight", "denoisingUNet.input_blocks.14.1.qkv.weight",
                          "denoisingUNet.middle_block.1.qkv.weight"]
                         + [f"denoisingUNet.output_blocks.{i}.1.qkv.weight" for i in (3, 4, 5)])
    assert max(int(k.split(".")[2]) for k in sd if ".input_blocks." in k) == 17
    assert max(int(k.split(".")[2]) for k in sd if ".output_blocks." in k) == 17


def test_official_forward_shapes_on_meta(official):
    with torch.device("meta"):
        x, photo, buffers = torch.randn(2, 3, 256, 256), torch.randn(2, 3, 256, 256), torch.randn(2, 9, 256, 256)
        z = official.eval().encode(photo)
        eps = official.denoise(x, torch.tensor([0, 950]), buffers, z)
    assert z.shape == (2, 64) and eps.shape == (2, 3, 256, 256)


def test_infer_official_config(official):
    assert infer_config(official.state_dict()) == OFFICIAL


def test_resnet50_trunk_matches_torchvision_count():
    with torch.device("meta"):
        trunk, r18 = resnet50_trunk(), resnet18(1000)
    assert sum(p.numel() for p in trunk.parameters()) == 23_508_032  # torchvision resnet50 minus its fc
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512  # torchvision resnet18
    assert "fc.weight" not in trunk.state_dict() and "layer4.2.conv3.weight" in trunk.state_dict()


# --- check 15: behaviour (tiny config, CPU) -----------------------------------------------------------------------

def test_timestep_embedding_raw_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0, 50]), 128)
    assert emb.shape == (2, 128)
    assert torch.equal(emb[0], torch.cat([torch.ones(64), torch.zeros(64)]))
    f1 = math.exp(-math.log(1e4) / 64)
    assert emb[1, 0].item() == pytest.approx(math.cos(50.0)) and emb[1, 64].item() == pytest.approx(math.sin(50.0))
    assert emb[1, 1].item() == pytest.approx(math.cos(50.0 * f1), abs=1e-5)


def test_zero_output_at_init(tiny):
    x, t, buffers, z = _inputs(TINY)
    with torch.no_grad():
        out = tiny.denoise(x, t, buffers, z)
        assert tiny.encode(x).shape == (2, TINY.latent_dim)
    assert out.shape == (2, 3, TINY.image_size, TINY.image_size)
    assert torch.count_nonzero(out) == 0


@pytest.fixture(scope="module")
def live():
    """A tiny model whose zero-initialised layers (out_layers.3, proj_out, out.2) have been randomised."""
    torch.manual_seed(0)
    model = DiffusionRig(TINY).eval()
    zeroed = _zero_init_modules(model)
    assert len(zeroed) == 1 + sum(isinstance(m, (ResBlock, AttentionBlock)) for m in model.modules())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in zeroed:
            assert all(torch.count_nonzero(p) == 0 for p in m.parameters())
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_conditioning_paths_are_live(live):
    model = live
    with torch.no_grad():
        # one batch: [reference, z moved, t moved, buffer channel 0 moved, ..., channel 8 moved]
        x, t, buffers, z = _inputs(TINY, batch=1)
        n = 3 + 9
        xs, ts, bs, zs = x.repeat(n, 1, 1, 1), t.repeat(n), buffers.repeat(n, 1, 1, 1), z.repeat(n, 1)
        zs[1] += 1.0
        ts[2] = 500
        for c in range(9):
            bs[3 + c, c] += 1.0
        out = model.denoise(xs, ts, bs, zs)
        single = model.denoise(x, t, buffers, z)[0]
    assert out[0].abs().max() > 0
    assert torch.allclose(single, out[0], atol=1e-5)  # samples in a batch do not interact
    assert not torch.allclose(out[1], out[0]), "the latent z does not reach the output (FiLM path dead)"
    assert not torch.allclose(out[2], out[0]), "the timestep does not reach the output"
    for c in range(9):
        assert not torch.allclose(out[3 + c], out[0]), f"buffer channel {c} is ignored"


def test_tiny_config_inferred_and_safetensors_round_trip(tmp_path, live):
    from safetensors.torch import load_file, save_file

    sd = live.state_dict()
    assert infer_config(sd, image_size=TINY.image_size, dropout=TINY.dropout, groups=TINY.groups) == TINY
    path = tmp_path / "rig.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    torch.manual_seed(123)
    fresh = from_state_dict(load_file(str(path)), image_size=TINY.image_size)
    assert fresh.config == TINY
    x, t, buffers, _ = _inputs(TINY)
    photo = torch.rand(2, 3, TINY.image_size, TINY.image_size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fresh(x, t, buffers, photo), live(x, t, buffers, photo))
