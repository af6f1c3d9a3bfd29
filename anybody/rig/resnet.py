"""ResNet-18 / ResNet-50 in plain torch, laid out exactly like torchvision's so released state dicts load as-is.

Why not ``torchvision.models``: torchvision is not importable in every host environment (some ComfyUI / A1111
installs ship torch without it, or with a build that does not match torch), and these two networks are small.
Why torchvision's layout: the files we load were written from torchvision modules, so the parameter and buffer
names must match them key for key — ``conv1, bn1, layer1..4.<i>.{conv1,bn1,conv2,bn2[,conv3,bn3]},
layer<k>.0.downsample.{0,1}`` and an optional ``fc``:

- DiffusionRig's global-latent encoder is torchvision's ResNet-18 with ``fc`` replaced by ``Linear(512, 64)``
  (keys ``encoder.*`` of the stage-1/stage-2 checkpoints);
- DECA's coarse encoder ``E_flame`` has a ResNet-50 trunk (keys ``encoder.*`` of ``deca_model.tar``) without ``fc``,
  whose 7x7 map (224 input) is average-pooled to 2048 features.

Stride sits on the 3x3 convolution of a Bottleneck (torchvision's "v1.5"), as in DECA's copy.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; the input is added back (through a 1x1 projection when needed)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand by 4, each with batch norm, plus the input."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages, global average pool, optional ``fc``.

    ``forward`` returns ``fc(pooled)`` when ``out_features`` is given, else the pooled feature itself.
    Pooling is adaptive to 1x1; for a 224 input that is the same as DECA's ``AvgPool2d(7)`` on the 7x7 map.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, int, int, int],
                 out_features: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes * block.expansion))
            blocks = [block(cin, planes, stride, downsample)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin
        self.fc = nn.Linear(cin, out_features) if out_features is not None else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector, (B, 512) for ResNet-18 or (B, 2048) for ResNet-50."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return x if self.fc is None else self.fc(x)


def resnet18(out_features: int) -> ResNet:
    """torchvision's ResNet-18 with ``fc = Linear(512, out_features)`` (DiffusionRig's encoder uses 64)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), out_features)


def resnet50_trunk() -> ResNet:
    """torchvision's ResNet-50 without ``fc``: ``forward`` returns the 2048-d pooled feature (DECA's E_flame trunk)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), None)
