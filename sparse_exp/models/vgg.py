"""VGG-16 with batch normalisation for CIFAR-sized inputs (the sparse-training "VGG-D").

Source: ``VGG16(config='D')`` of TimDettmers/sparse_learning ``sparselearning/models.py`` (Dettmers &
Zettlemoyer 2019), the CIFAR VGG-D of SNIP (Lee et al. 2019): the 13 convs of VGG-16 (Simonyan & Zisserman
2015) as conv3x3 + BN + ReLU, five 2x2 max-pools, classifier ``Linear(512, 512) -> ReLU -> BatchNorm1d ->
Linear(512, 512) -> ReLU -> BatchNorm1d -> Linear(512, C)``; PyTorch's default initialisation.

Departures, none of which changes the network on 32x32 inputs: a max-pool that would shrink a 1x1 map is
left out (28x28 inputs drop the fifth); ``AdaptiveAvgPool2d((1, 1))`` before the classifier; logits, not
``log_softmax``. The classifier's ``BatchNorm1d`` needs more than one example per batch in train mode.
"""

from __future__ import annotations

from typing import List, Union

import torch
from torch import nn

from sparse_exp.registry import MODELS

#: VGG-16 ("D") layer plan: numbers are conv3x3 output channels, "M" a 2x2 max-pool
VGG16_CFG: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with BatchNorm: ``features`` (conv/BN/ReLU/pool), global average pool, ``classifier``.

    Input ``(N, in_channels, image_size, image_size)``, output logits ``(N, num_classes)``.
    """

    def __init__(self, cfg: List[Union[int, str]], in_channels: int, num_classes: int, image_size: int,
                 hidden: int = 512) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        channels, side = in_channels, image_size
        for v in cfg:
            if v == "M":
                if side >= 2:  # a pool on a 1x1 map would give 0x0
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    side //= 2
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1),
                           nn.BatchNorm2d(int(v)),
                           nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        #: conv -> BN -> activation units (ghost skip connections, :mod:`sparse_exp.tweaks.ghost_skip`)
        self.ghost_units = tuple((f"features.{i}", f"features.{i + 1}") for i, m in enumerate(layers)
                                 if isinstance(m, nn.Conv2d))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(),
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


@MODELS.register("vgg16")
def vgg16(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """VGG-16 with BatchNorm for CIFAR ("VGG-D" of SNIP / sparse_learning).

    Sources: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition", ICLR 2015 (configuration D); CIFAR variant as ``VGG16('D')`` in
    TimDettmers/sparse_learning ``sparselearning/models.py`` (Dettmers & Zettlemoyer 2019;
    ``--model vgg-d``). VITA-Group/GraNet's CIFAR code has no VGG-16 (it trains a VGG-19 with a
    single ``Linear(512, C)`` after a 2x2 average pool), so the sparse_learning classifier is
    the one followed here. See the module docstring for the exact layers and the changes that
    let 28x28 inputs through. About 15.3M parameters for 3x32x32 inputs and 10 classes.

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)`` with ``H = W = image_size``.
        num_classes: number of output logits.
        image_size: input height/width; decides which max-pools are kept.

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    return VGG(VGG16_CFG, in_channels, num_classes, image_size)
