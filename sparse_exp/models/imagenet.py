"""ImageNet-style networks taken from torchvision."""

from __future__ import annotations

from torch import nn

from sparse_exp.registry import MODELS


@MODELS.register("resnet50_imagenet")
def resnet50_imagenet(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """ResNet-50 for ImageNet-sized inputs: torchvision ``resnet50(weights=None)``, randomly initialised.

    Sources: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
    ``torchvision.models.resnet50`` (7x7 stride-2 stem + max-pool, Bottleneck x [3, 4, 6, 3],
    torchvision's Kaiming-normal fan_out init), the network of the ImageNet experiments of
    RigL / GraNet (GraNet ``ImageNet/resnet.py``). When ``in_channels != 3`` the stem conv is
    replaced by a ``Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)`` with the same
    init. About 23.5M parameters for 10 classes (25.6M for 1000).

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)``.
        num_classes: number of output logits.
        image_size: input height/width (224 in the references; any size works, global pooling).

    Returns:
        A module mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    """
    import torchvision  # here, not at module import: torchvision costs ~2 s of every command's start-up

    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    for block in model.modules():  # conv -> BN -> activation units (ghost skip paths), as the CIFAR Bottleneck
        if isinstance(block, torchvision.models.resnet.Bottleneck):
            block.ghost_units = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
