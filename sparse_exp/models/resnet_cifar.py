"""Residual networks for CIFAR-sized inputs (32x32; 28x28 and larger also work).

* :func:`resnet18`, :func:`resnet50`: kuangliu/pytorch-cifar ``models/resnet.py`` (3x3 stride-1 stem, no
  max-pool, widths 64/128/256/512), as trained by VITA-Group/GraNet ``CIFAR/sparselearning/resnet_cifar100.py``
  and Sup-tickets.
* :func:`resnet32`: He et al. 2016 Sec. 4.2 (widths 16/32/64, ``6n + 2`` layers, ``n = 5``), written like
  facebookresearch/open_lth ``models/cifar_resnet.py``, with projection shortcuts (1x1 conv + BN, option B).

Post-activation blocks (conv -> BN -> ReLU, add, ReLU), one ``nn.ReLU`` module per use, modules in forward
order (a block's shortcut after its main path); ``AdaptiveAvgPool2d(1)`` (the references' ``avg_pool2d`` on
32x32) then a linear classifier returning logits.
"""

from __future__ import annotations

from typing import List, Sequence, Type, Union

import torch
from torch import nn

from sparse_exp.registry import MODELS


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a 1x1 strided conv + BN projection (option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1
    #: conv -> BN -> activation units (ghost skip connections, :mod:`sparse_exp.tweaks.ghost_skip`)
    ghost_units = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus shortcut, then ReLU."""

    expansion = 4
    #: conv -> BN -> activation units (ghost skip connections, :mod:`sparse_exp.tweaks.ghost_skip`)
    ghost_units = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem (stride 1, no max-pool), one stage per width, global pool, linear.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage.
        widths: ``planes`` per stage (the stage outputs ``planes * block.expansion`` channels);
            the first stage has stride 1, every later one stride 2.
        stem_width: output channels of the stem conv.
        in_channels, num_classes: input channels and number of logits.

    Input ``(N, in_channels, H, W)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, block: Block, num_blocks: Sequence[int], widths: Sequence[int], stem_width: int,
                 in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        in_planes = stem_width
        stages: List[nn.Module] = []
        for i, (n, planes) in enumerate(zip(num_blocks, widths)):
            blocks: List[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(self.flatten(self.pool(out)))


@MODELS.register("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """CIFAR ResNet-18: BasicBlock x [2, 2, 2, 2], widths 64/128/256/512, 3x3 stem, no max-pool.

    Sources: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; CIFAR
    variant of kuangliu/pytorch-cifar ``models/resnet.py`` (``ResNet18``), the same network as
    VITA-Group/GraNet ``CIFAR/sparselearning/resnet_cifar100.py`` (which drops the classifier
    bias; kept here). PyTorch default initialisation, as in both references. About 11.2M
    parameters for 3x32x32 inputs and 10 classes.

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)``.
        num_classes: number of output logits.
        image_size: input height/width (any size >= 1 works thanks to global pooling).

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], 64, in_channels, num_classes)


@MODELS.register("resnet50")
def resnet50(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """CIFAR ResNet-50: Bottleneck x [3, 4, 6, 3], widths 64..512 (x4 expansion), 3x3 stem, no max-pool.

    Sources: He et al., CVPR 2016 (bottleneck design); CIFAR variant of kuangliu/pytorch-cifar
    ``models/resnet.py`` (``ResNet50``) as trained by VITA-Group/GraNet
    ``CIFAR/sparselearning/resnet_cifar100.py`` (``ResNet50(c=num_classes)``) and by
    Sup-tickets (Yin et al., "Superposing Many Tickets into One: A Performance Booster for
    Sparse Neural Network Training", UAI 2022). GraNet's classifier has no bias; this one keeps
    kuangliu's. PyTorch default initialisation, as in the references.
    About 23.5M parameters for 3x32x32 inputs and 10 classes.

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)``.
        num_classes: number of output logits.
        image_size: input height/width (any size >= 1 works thanks to global pooling).

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], 64, in_channels, num_classes)


@MODELS.register("resnet32")
def resnet32(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """ResNet-32 for CIFAR (He et al., CVPR 2016, Sec. 4.2): 3 stages x 5 BasicBlocks, widths 16/32/64.

    ``6n + 2 = 32`` weight layers (stem, 30 block convs, classifier) plus two 1x1 projection
    shortcuts (option B) at the stride-2 stage changes, as in facebookresearch/open_lth
    ``models/cifar_resnet.py`` (``cifar_resnet_32``; GraNet ``CIFAR/models/cifar_resnet.py``).
    Initialisation as open_lth's ``initializers.kaiming_normal`` used by GraNet: Kaiming normal
    (fan_in, ReLU gain) for every conv and linear weight, biases and BN at their defaults.
    About 0.47M parameters for 3x32x32 inputs and 10 classes.

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)``.
        num_classes: number of output logits.
        image_size: input height/width (any size >= 1 works thanks to global pooling).

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    model = ResNet(BasicBlock, [5, 5, 5], [16, 32, 64], 16, in_channels, num_classes)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return model
