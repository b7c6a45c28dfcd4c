"""Optimizers (``optimizer=<name>``): SGD (momentum, optional Nesterov) and Adam, with the parameter
groups of the model and of the callbacks (:func:`build_optimizer`)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from sparse_exp.config.errors import require
from sparse_exp.registry import OPTIMIZERS


@OPTIMIZERS.group_check
def check_optimizer(cfg: Any) -> None:
    """``lr`` > 0, ``momentum`` in [0, 1), ``weight_decay`` >= 0 (every optimizer)."""
    opt = cfg.optimizer
    require(opt.lr > 0, "optimizer.lr", opt.lr, "must be > 0")
    require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "must be in [0, 1)")
    require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be >= 0")


@OPTIMIZERS.register("sgd")
def sgd(cfg: Any, groups: Any) -> torch.optim.Optimizer:
    """SGD with ``momentum``, ``weight_decay`` and ``nesterov`` (the papers' CIFAR protocol: 0.1 / 0.9 / 5e-4)."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


@OPTIMIZERS.register("adam")
def adam(cfg: Any, groups: Any) -> torch.optim.Optimizer:
    """Adam with ``betas`` and (coupled, L2) ``weight_decay``."""
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_optimizer(cfg: Any, model: nn.Module, extra_groups: Sequence[Dict[str, Any]] = ()) -> torch.optim.Optimizer:
    """The ``optimizer`` group's optimizer over ``model``.

    Args:
        cfg: the ``optimizer`` config node.
        model: its trainable parameters not claimed by ``extra_groups`` form the first group.
        extra_groups: further parameter groups (``{"params": [...], **options}``) from callbacks.

    Raises:
        sparse_exp.config.errors.ConfigError: unknown ``cfg.name``.
    """
    claimed = {id(p) for g in extra_groups for p in g["params"]}
    params: List[nn.Parameter] = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    groups: Any = params if not extra_groups else [{"params": params}, *extra_groups]
    return OPTIMIZERS.build(cfg.name, cfg, groups)
