"""ResNet-18 variants used by SeCu (and SCAN) for small images, trained from scratch.

* ``cifar``: 3×3 stride-1 first convolution, no max-pool, global average pool (32×32 inputs → 4×4 maps).
* ``stl``: the same stem followed by MaxPool(2, stride 2, padding 1), and a fixed AvgPool(7) at the end
  (96×96 inputs → 49 → 25 → 13 → 7); as the authors' ``nets/resnet_stl.py``.

Both return the 512-d pooled feature (the authors' ``fc`` is replaced by SeCu's projection MLP, see
:mod:`imgclust.methods.secu.model`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BasicBlock", "SmallResNet", "resnet18_cifar", "resnet18_stl", "RESNETS"]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for 32–96 px images with a 3×3 stride-1 stem.

    Args:
        num_blocks: blocks per stage, ``(2, 2, 2, 2)`` for ResNet-18.
        variant: ``"cifar"`` (no max-pool, adaptive average pool) or ``"stl"`` (max-pool after the stem,
            AvgPool(7)).
        in_channels: input channels.

    ``forward(x (N, C, S, S)) -> (N, 512)``.
    """

    def __init__(self, num_blocks: tuple[int, int, int, int] = (2, 2, 2, 2), variant: str = "cifar",
                 in_channels: int = 3):
        super().__init__()
        if variant not in ("cifar", "stl"):
            raise ValueError(f"variant must be 'cifar' or 'stl', got {variant!r}")
        self.variant = variant
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool: nn.Module = (nn.MaxPool2d(kernel_size=2, stride=2, padding=1) if variant == "stl"
                                   else nn.Identity())
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.avgpool: nn.Module = (nn.AvgPool2d(7, stride=1) if variant == "stl"
                                   else nn.AdaptiveAvgPool2d((1, 1)))
        self.feature_dim = 512
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.avgpool(out), 1)


def resnet18_cifar() -> SmallResNet:
    """ResNet-18, CIFAR stem (32×32 inputs)."""
    return SmallResNet((2, 2, 2, 2), "cifar")


def resnet18_stl() -> SmallResNet:
    """ResNet-18, STL stem (96×96 inputs)."""
    return SmallResNet((2, 2, 2, 2), "stl")


RESNETS = {"resnet18_cifar": resnet18_cifar, "resnet18_stl": resnet18_stl}
