"""LeNet-5 and LeNet-300-100 for small grey-scale / colour images (MNIST, Fashion-MNIST, CIFAR).

Both networks use PyTorch's default initialisation, as the sparse-training reference code does
(TimDettmers/sparse_learning ``sparselearning/models.py``: ``LeNet_5_Caffe``, ``LeNet_300_100``).
They return logits (no ``log_softmax``).
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_exp.registry import MODELS


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be an integer >= 1")


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: conv 6@5x5 (pad 2) -> pool -> conv 16@5x5 -> pool -> 120 -> 84 -> C.

    Input ``(N, in_channels, image_size, image_size)``, output logits ``(N, num_classes)``.
    The flattened size is ``16 * s * s`` with ``s = (image_size // 2 - 4) // 2``: 5 for
    28x28 inputs (400 features), 6 for 32x32 inputs (576 features).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        side = (image_size // 2 - 4) // 2
        if image_size // 2 < 5 or side < 1:
            raise ValueError(f"image_size={image_size!r} is too small for lenet5: must be >= 12")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class LeNet300100(nn.Module):
    """Fully connected LeNet-300-100: flatten -> 300 -> ReLU -> 100 -> ReLU -> C.

    Input ``(N, in_channels, image_size, image_size)`` (flattened to
    ``in_channels * image_size**2`` features), output logits ``(N, num_classes)``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * image_size * image_size, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(x))


@MODELS.register("lenet5")
def lenet5(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """LeNet-5 (LeCun et al., "Gradient-based learning applied to document recognition", 1998).

    Modernised as in the sparse-training literature (ReLU instead of tanh, max-pooling instead
    of sub-sampling; cf. TimDettmers/sparse_learning ``LeNet_5_Caffe``) but with the original
    6/16 feature maps and 120/84 hidden units. The first conv is padded by 2, so a 28x28 input
    behaves like the original 32x32 one; works for any ``image_size >= 12``.

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)`` with ``H = W = image_size``.
        num_classes: number of output logits.
        image_size: input height/width; sets the size of the first fully connected layer.

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    return LeNet5(in_channels, num_classes, image_size)


@MODELS.register("lenet_300_100")
def lenet_300_100(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """LeNet-300-100 MLP (LeCun et al. 1998; the pruning benchmark of Han et al. 2015 and of
    TimDettmers/sparse_learning ``LeNet_300_100``).

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)`` with ``H = W = image_size``.
        num_classes: number of output logits.
        image_size: input height/width; the first layer has ``C * image_size**2`` inputs.

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    return LeNet300100(in_channels, num_classes, image_size)
