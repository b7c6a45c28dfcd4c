"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Written after xternalz/WideResNet-pytorch ``wideresnet.py``, the implementation copied into
TimDettmers/sparse_learning ``sparselearning/models.py`` (``WideResNet``) and used for WRN
results in the sparse-training literature: pre-activation blocks (BN -> ReLU -> conv), a 1x1
projection shortcut where the width or stride changes (taken from the *activated* input, as in
the reference), global average pooling and a linear classifier returning logits.

Initialisation as in the reference: conv weights ``N(0, 2 / (k * k * out_channels))`` (Kaiming
normal, fan_out, ReLU gain), BN weight 1 / bias 0, linear bias 0 (linear weight at PyTorch's
default).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from sparse_exp.registry import MODELS


class WideBasicBlock(nn.Module):
    """Pre-activation block: ``conv2(drop(relu(bn2(conv1(relu(bn1(x))))))) + shortcut``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        #: the block's conv -> BN -> activation unit (pre-activation: conv1 -> bn2 -> relu2); ghost skip paths
        self.ghost_units = (("conv1", "bn2"),)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = (nn.Identity() if self.equal_in_out else
                         nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # identity shortcut adds the raw input; the projection sees the activated one (reference)
        return out + (x if self.equal_in_out else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: conv3x3(16) -> 3 groups of ``(depth - 4) / 6`` blocks -> BN-ReLU -> pool -> fc.

    Group widths ``16k, 32k, 64k`` with ``k = widen``, strides 1, 2, 2.
    Input ``(N, in_channels, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth={depth!r} must be 6n + 4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        groups: List[nn.Module] = []
        in_planes = widths[0]
        for out_planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                                     drop_rate) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
            in_planes = out_planes
        self.blocks = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(x))
        out = self.relu(self.bn(out))
        return self.fc(self.flatten(self.pool(out)))


@MODELS.register("wrn28_10")
def wrn28_10(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """WRN-28-10 (Zagoruyko & Komodakis, BMVC 2016): depth 28 (4 blocks per group), widen factor 10, no dropout.

    Reference code: xternalz/WideResNet-pytorch, as copied into TimDettmers/sparse_learning
    ``sparselearning/models.py`` (``WideResNet(28, 10)``). Dropout is 0 here (the paper's
    best CIFAR results use 0.3; sparse-training setups usually train without). About 36.5M
    parameters for 3x32x32 inputs and 10 classes.

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)``.
        num_classes: number of output logits.
        image_size: input height/width (any size >= 1 works thanks to global pooling).

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    return WideResNet(28, 10, in_channels, num_classes, drop_rate=0.0)
