"""``model=external``: any ``nn.Module`` of the user's own package, built through Hydra's instantiate.

    python -m sparse_exp.train model=external model.target=mypkg.nets.MyNet 'model.kwargs={width:64}'

Contract (docs/plugins.md): ``model.target`` names a class or function (importable: on ``PYTHONPATH`` or installed)
that returns an ``nn.Module`` mapping float ``(N, C, H, W)`` to logits ``(N, num_classes)``; ``model.kwargs`` are its
keyword arguments. Where the callable has a parameter named ``in_channels``, ``num_classes`` or ``image_size`` that
``model.kwargs`` does not set, it receives the data set's value. Its convolution / ``nn.Linear`` weights are
prunable by the zoo's rule (:func:`sparse_exp.sparse.masking.prunable_parameters`: all of them, in registration
order, except modules marked ``sparse_exempt = True``); the pre-flight builds it on the ``meta`` device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from sparse_exp.config.errors import ConfigError
from sparse_exp.config.schema import ModelConfig
from sparse_exp.config.targets import call_target, check_kwargs, parameter_names, resolve_target
from sparse_exp.registry import MODELS
from sparse_exp.sparse.masking import PRUNABLE_TYPES, prunable_parameters

EXAMPLE = "mypkg.nets.MyNet"
#: the data set's facts an external model receives where its signature names them and ``model.kwargs`` does not
FILLED = ("in_channels", "num_classes", "image_size")


@dataclass
class ExternalModelConfig(ModelConfig):
    """``model=external``: ``target``, the dotted path of a class / function returning an ``nn.Module``;
    ``kwargs``, its keyword arguments, a mapping or null (typed ``Any`` so that ``model.kwargs={...}`` on the command
    line replaces it; ``in_channels`` / ``num_classes`` / ``image_size`` filled in where it
    takes them and they are not given)."""

    name: str = "external"
    target: Optional[str] = None
    kwargs: Any = None


def check_external_model(cfg: Any) -> None:
    """``model.target`` is set, importable and callable (the build checks what it returns); ``model.kwargs`` is a
    mapping."""
    resolve_target("model.target", cfg.model.target, EXAMPLE)
    check_kwargs("model.kwargs", cfg.model.kwargs, "{width:64}")


def preflight_external_model(plan: Any) -> None:
    """The model built on ``meta`` maps a ``(2, C, H, W)`` batch to ``(2, num_classes)`` logits (a forward pass that
    cannot run on ``meta``, e.g. one reading tensor values, is not judged here)."""
    spec, node = plan.spec, plan.cfg.model
    with torch.device("meta"):
        model = external(spec.in_channels, spec.num_classes, spec.image_size, node.target, node.kwargs)
        try:
            with torch.no_grad():
                out = model(torch.empty(2, spec.in_channels, spec.image_size, spec.image_size))
        except Exception:  # noqa: BLE001 -- not every forward runs without values; training will tell
            return
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, spec.num_classes):
        raise ConfigError("model.target", node.target, f"maps a batch of shape (2, {spec.in_channels}, "
                          f"{spec.image_size}, {spec.image_size}) to {shape}; expected logits of shape "
                          f"(2, {spec.num_classes}) for {spec.name}'s {spec.num_classes} classes")


@MODELS.register("external", schema=ExternalModelConfig, checks=(check_external_model,),
                 preflight=(preflight_external_model,))
def external(in_channels: int, num_classes: int, image_size: int, target: Optional[str] = None,
             kwargs: Any = None) -> nn.Module:
    """The user's ``nn.Module``: ``target(**kwargs)`` plus the data set's ``in_channels`` / ``num_classes`` /
    ``image_size`` where ``target`` takes them and ``kwargs`` does not set them (module doc; the user's own source).

    Raises:
        ConfigError: ``target`` unset, not importable or not callable; the call fails; it returns no
            ``nn.Module``, or one without a prunable layer.
    """
    fn = resolve_target("model.target", target, EXAMPLE)
    given = dict(kwargs or {})
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    accepted = parameter_names(fn)
    fills = {k: v for k, v in sizes.items() if k in accepted and k not in given}
    model = call_target("model.target", str(target), {**given, **fills}, "model.kwargs")
    if not isinstance(model, nn.Module):
        raise ConfigError("model.target", target, f"returned a {type(model).__name__}; expected a torch.nn.Module")
    if not prunable_parameters(model):
        kinds = " / ".join(f"nn.{t.__name__}" for t in PRUNABLE_TYPES)
        raise ConfigError("model.target", target, f"builds a {type(model).__name__} without a prunable layer; "
                          f"expected at least one {kinds} (not marked sparse_exempt)")
    return model
