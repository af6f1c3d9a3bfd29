"""IResNet (insightface arcface_torch), the face recognizer Celeb Basis and MagiCapture embed faces with.

Parameter names match insightface's ``backbone.pth`` files (e.g. ``glint360k_cosface_r100_fp16_0.1``,
``ms1mv3_arcface_r100_fp16``): ``conv1, bn1, prelu, layer1..4.<i>.{bn1,conv1,bn2,prelu,conv2,bn3,downsample},
bn2, fc, features``. Input 112x112 RGB in [-1, 1]; output 512-d (not normalised).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .weights import load_checked, read_state_dict

DEPTHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
SOURCE = ("insightface's arcface_torch model zoo (github.com/deepinsight/insightface/tree/master/recognition/"
          "arcface_torch), e.g. glint360k_cosface_r100_fp16_0.1/backbone.pth (non-commercial research licence)")


class IBlock(nn.Module):
    """BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, depths=DEPTHS["r100"], num_features: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        widths, cin = (64, 128, 256, 512), 64
        for i, (width, n) in enumerate(zip(widths, depths)):
            blocks = [IBlock(cin, width, 2)] + [IBlock(width, width, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))


def depth_of(state) -> tuple[int, ...]:
    """Blocks per stage, read from the key names (so r50/r100 files both load)."""
    return tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))


def load_iresnet(path: str | Path) -> IResNet:
    state = read_state_dict(path, "IResNet face recognition", SOURCE)
    depths = depth_of(state)
    if 0 in depths:
        depths = DEPTHS["r100"]  # let the strict load name what is missing
    return load_checked(IResNet(depths), state, path, "IResNet face recognition", SOURCE)
