"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

CIFAR variant of kuangliu/pytorch-cifar ``models/mobilenetv2.py``: the first conv has stride 1
(instead of 2) and the second stage (24 channels) stride 1 (instead of 2), so a 32x32 input
ends as a 4x4 map. As in that reference: ReLU (not ReLU6), a residual on every stride-1 block
(a 1x1 conv + BN projection when the widths differ), PyTorch default initialisation; a global
average pool (``avg_pool2d(out, 4)`` there) and a linear classifier returning logits.

Depthwise convs are ``nn.Conv2d`` with ``groups = channels`` (weight ``(C, 1, 3, 3)``).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from sparse_exp.registry import MODELS

#: (expansion, out_planes, num_blocks, stride) per stage; stage 2 has stride 1 for CIFAR
CIFAR_CFG: List[Tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # 2 in the ImageNet network
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 (carries the stride) -> linear project (1x1), + shortcut if stride 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        #: conv -> BN -> activation units (ghost skip connections); conv3 -> bn3 is linear (no activation)
        self.ghost_units = (("conv1", "bn1"), ("conv2", "bn2"))
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride == 1 and in_planes != out_planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """conv3x3(32) -> inverted-residual stages -> conv1x1(1280) -> pool -> linear.

    Input ``(N, in_channels, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: List[Tuple[int, int, int, int]] = CIFAR_CFG) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        #: conv -> BN -> activation units of the stem and the last conv (the blocks declare their own)
        self.ghost_units = (("conv1", "bn1"), ("conv2", "bn2"))
        blocks: List[nn.Module] = []
        in_planes = 32
        for expansion, out_planes, num_blocks, stride in cfg:
            for i in range(num_blocks):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, stride if i == 0 else 1))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, 1280, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.linear(self.flatten(self.pool(out)))


@MODELS.register("mobilenet_v2")
def mobilenet_v2(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """MobileNetV2, CIFAR variant (first conv and stage 2 with stride 1).

    Sources: Sandler et al., CVPR 2018; kuangliu/pytorch-cifar ``models/mobilenetv2.py``
    (see the module docstring for the exact differences from the ImageNet network). About
    2.3M parameters for 3x32x32 inputs and 10 classes.

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)``.
        num_classes: number of output logits.
        image_size: input height/width (any size >= 1 works thanks to global pooling).

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    return MobileNetV2(in_channels, num_classes)
