"""Torch face networks: official weight-file layouts load (random values), wrong files fail clearly; parsing masks."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from anybody.errors import BadInputError, ModelFileError
from anybody.face.parse import parse_classes, region_mask
from anybody.nets.bisenet import BiSeNet, load_bisenet
from anybody.nets.iresnet import DEPTHS, IResNet, load_iresnet

# keys and shapes as they appear in the official files (insightface arcface_torch backbone.pth, 79999_iter.pth)
IRESNET100_KEYS = {"conv1.weight": (64, 3, 3, 3), "prelu.weight": (64,), "layer1.0.bn1.running_var": (64,),
                   "layer1.0.downsample.0.weight": (64, 64, 1, 1), "layer2.12.conv2.weight": (128, 128, 3, 3),
                   "layer3.29.prelu.weight": (256,), "layer4.2.bn3.num_batches_tracked": (),
                   "bn2.weight": (512,), "fc.weight": (512, 25088), "features.running_mean": (512,)}
BISENET_KEYS = {"cp.resnet.conv1.weight": (64, 3, 7, 7), "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
                "cp.arm16.conv.conv.weight": (128, 256, 3, 3), "cp.arm32.bn_atten.running_mean": (128,),
                "cp.conv_avg.conv.weight": (128, 512, 1, 1), "cp.conv_head16.bn.weight": (128,),
                "ffm.convblk.conv.weight": (256, 256, 1, 1), "ffm.conv1.weight": (64, 256, 1, 1),
                "conv_out.conv_out.weight": (19, 256, 1, 1), "conv_out16.conv.conv.weight": (64, 128, 3, 3),
                "conv_out32.conv_out.weight": (19, 64, 1, 1)}


def _randomised(model: nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.05 if v.is_floating_point() else v.clone())
            for k, v in model.state_dict().items()}


def test_iresnet100_official_layout_loads_and_embeds(tmp_path):
    state = _randomised(IResNet(DEPTHS["r100"]), 0)
    for key, shape in IRESNET100_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    for k in [k for k in state if k.endswith("running_var")]:
        state[k] = state[k].abs() + 1.0
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel prefix, as some releases have
    net = load_iresnet(path)
    assert torch.equal(net.state_dict()["layer3.29.conv2.weight"], state["layer3.29.conv2.weight"])
    out = net(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert out.shape == (2, 512) and torch.isfinite(out).all()


def test_iresnet_depth_is_read_from_the_file(tmp_path):
    path = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file(_randomised(IResNet(DEPTHS["r18"]), 1), str(path))
    assert len(load_iresnet(path).layer3) == 2


def test_bisenet_official_layout_loads_and_parses(tmp_path):
    state = _randomised(BiSeNet(), 2)
    for key, shape in BISENET_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("sp.") for k in state), "the official file has no spatial path"
    for k in [k for k in state if k.endswith("running_var")]:
        state[k] = state[k].abs() + 1.0
    path = tmp_path / "79999_iter.pth"
    torch.save(state, path)
    net = load_bisenet(path)
    logits = net(torch.randn(1, 3, 128, 128))
    assert logits.shape == (1, 19, 128, 128)


def test_wrong_or_unsafe_files_are_clear_errors(tmp_path):
    bisenet = tmp_path / "parsing.pth"
    torch.save(_randomised(BiSeNet(), 3), bisenet)
    with pytest.raises(ModelFileError, match="parsing.pth is not IResNet.*missing.*unexpected"):
        load_iresnet(bisenet)
    with pytest.raises(ModelFileError, match="not found.*arcface_torch"):
        load_iresnet(tmp_path / "nothere.pth")
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:  # a pickle that would run code: weights_only must refuse it
        pickle.dump(type("Boom", (), {"__reduce__": lambda self: (print, ("pwned",))})(), f)
    with pytest.raises(ModelFileError, match="could not be read"):
        load_bisenet(evil)
    broken = tmp_path / "79999_iter.pth"
    broken.write_bytes(b"PK\x03\x04truncated")
    with pytest.raises(ModelFileError, match="damaged"):
        load_bisenet(broken)


class RedIsSkin(nn.Module):
    """Stands in for BiSeNet: class 1 (skin) where red dominates, 17 (hair) where blue does, else background."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        r, b = x[:, 0], x[:, 2]
        logits = torch.zeros(x.shape[0], 19, *x.shape[2:])
        logits[:, 1] = (r - b) * 10
        logits[:, 17] = (b - r) * 10
        return logits


def test_region_mask_keeps_chosen_classes_inside_the_box():
    image = np.zeros((100, 120, 3), np.uint8)
    image[:, :60] = (250, 0, 0)  # "skin" on the left
    image[:, 60:] = (0, 0, 250)  # "hair" on the right
    net = RedIsSkin()
    full = region_mask(net, image, parse_classes("1-13"))
    assert full[:, :58].min() == 1 and full[:, 62:].max() == 0
    boxed = region_mask(net, image, parse_classes("skin"), box=(20, 10, 80, 90))
    assert boxed[10:90, 22:58].min() == 1 and boxed[:8].max() == 0 and boxed[:, :18].max() == 0
    assert region_mask(net, image, parse_classes("hair"))[:, 62:].min() == 1


def test_parse_classes_reads_numbers_ranges_and_names():
    assert parse_classes("1-13") == tuple(range(1, 14))
    assert parse_classes("skin, hair 18") == (1, 17, 18)
    with pytest.raises(BadInputError, match="Unknown parsing class"):
        parse_classes("beard")
    with pytest.raises(BadInputError, match="0-18"):
        parse_classes("25")
