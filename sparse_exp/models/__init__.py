"""Model zoo: every architecture the experiments use, by config name (``model.name``).

Constructors: ``fn(in_channels, num_classes, image_size) -> nn.Module`` (keyword-callable), float ``(N, in_channels,
image_size, image_size)`` -> logits ``(N, num_classes)``. For :mod:`sparse_exp.sparse.masking` and the tweaks: weight
layers only ``nn.Conv2d`` / ``nn.Linear``, normalisation only ``nn.BatchNorm2d`` / ``1d``, modules in forward order
(first Conv2d/Linear = input layer, last = classifier), each activation its own ``nn.ReLU``, optional ``ghost_units``
(``(conv, bn)`` child paths). Models (sources: each constructor): ``lenet5``, ``lenet_300_100`` (LeCun et al. 1998;
Han et al. 2015), ``vgg16`` ("VGG-D" with BN, Simonyan & Zisserman 2015; TimDettmers/sparse_learning), ``resnet18`` /
``resnet50`` (He et al. 2016; kuangliu/pytorch-cifar, GraNet, Sup-tickets), ``resnet32`` (He et al. 2016 Sec. 4.2;
open_lth ``cifar_resnet_32``), ``wrn28_10`` (Zagoruyko & Komodakis 2016; xternalz/WideResNet-pytorch),
``mobilenet_v2`` (Sandler et al. 2018; kuangliu/pytorch-cifar), ``resnet50_imagenet`` (He et al. 2016; torchvision),
``vit`` (Dosovitskiy et al. 2021; timm's ``VisionTransformer``: ``nn.LayerNorm``, ``nn.GELU``, no ReLU; layers a
model keeps dense carry ``sparse_keep_dense = True``, see :func:`sparse_exp.sparse.masking.declared_dense`);
``external``: the user's own module (``model.target``, :mod:`sparse_exp.models.external_net`).
"""

from __future__ import annotations

import numbers
from dataclasses import fields
from typing import Any, Dict

from torch import nn

from sparse_exp.config.errors import one_of
from sparse_exp.config.schema import ModelConfig
from sparse_exp.models.external_net import external
from sparse_exp.models.imagenet import resnet50_imagenet
from sparse_exp.models.lenet import lenet5, lenet_300_100
from sparse_exp.models.mobilenet_v2 import mobilenet_v2
from sparse_exp.models.resnet_cifar import resnet18, resnet32, resnet50
from sparse_exp.models.vgg import vgg16
from sparse_exp.models.vit import vit
from sparse_exp.models.wrn import wrn28_10
from sparse_exp.registry import MODELS

#: config name -> constructor ``fn(in_channels, num_classes, image_size, **options) -> nn.Module``; each model
#: module registers its constructors (``@MODELS.register(name)``, with ``schema=`` when it has own keys: the
#: ``options``), imported above
__all__ = ["MODELS", "build_configured", "build_model", "external", "lenet5", "lenet_300_100", "mobilenet_v2",
           "model_options", "resnet18", "resnet32", "resnet50", "resnet50_imagenet", "vgg16", "vit", "wrn28_10"]


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
    """Build the model registered as ``name`` in :data:`MODELS` (randomly initialised, on CPU).

    Args:
        name: a key of :data:`MODELS` (the config's ``model.name``).
        in_channels: channels ``C`` of the input batch ``(N, C, H, W)``.
        num_classes: number of output logits.
        image_size: input height = width ``H = W``.
        options: the model's own keys (those its registered schema adds to ``ModelConfig``), passed on.

    Returns:
        A module mapping ``(N, in_channels, image_size, image_size)`` to logits
        ``(N, num_classes)``.

    Raises:
        ValueError: ``name`` is not in :data:`MODELS` (the message lists the allowed names), or
            a size is not a positive integer.
    """
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not a known model; allowed: {sorted(MODELS)}")
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{key}={value!r} must be an integer >= 1")
    return MODELS[name](**{key: int(value) for key, value in sizes.items()}, **options)


def model_options(node: Any) -> Dict[str, Any]:
    """The keys of a ``model`` config node beyond :class:`~sparse_exp.config.schema.ModelConfig`'s (``name``,
    ``init``), as plain data: what a model registered with its own schema receives as keyword arguments."""
    from omegaconf import OmegaConf

    base = {f.name for f in fields(ModelConfig)}
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return {k: v for k, v in plain.items() if k not in base}


def build_configured(node: Any, spec: Any) -> nn.Module:
    """:func:`build_model` for a ``model`` config node and a data set's spec (``in_channels``, ``num_classes``,
    ``image_size``): every caller that builds the configured network (training, pre-flight on ``meta``, FLOPs, the
    tweaks' checks) goes through here, so a model's own keys reach its constructor. Not re-initialised."""
    return build_model(node.name, in_channels=spec.in_channels, num_classes=spec.num_classes,
                       image_size=spec.image_size, **model_options(node))


INITS = ("default", "kaiming_normal")


@MODELS.group_check
def _check_model(cfg: Any) -> None:
    """``model.init`` is a known scheme (group-level check of every model)."""
    one_of("model.init", cfg.model.init, set(INITS))


def reinitialize_(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every conv / linear weight of ``model`` in place; returns ``model``.

    Args:
        scheme: ``default`` -- keep the architecture's own initialisation (PyTorch's default
            for the LeNets, Kaiming for the ResNets/VGG as their references do); ``kaiming_normal``
            -- He et al. 2015 normal init, ``std = sqrt(2 / fan_in)``, biases zero.

    Raises:
        ValueError: unknown scheme.

    Why it matters: PyTorch's default (``kaiming_uniform_(a=sqrt(5))``, std ``1/sqrt(3 fan_in)``)
    shrinks activations layer by layer; with 90% of the weights masked a network without batch
    normalisation (LeNet-5) starts with a tiny signal and at lr 0.1 can diverge and die once
    learning begins (seen here on Fashion-MNIST). The LeNet configs use ``kaiming_normal``.
    """
    if scheme not in INITS:
        raise ValueError(f"model.init={scheme!r} is not known; allowed: {list(INITS)}")
    if scheme == "default":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
