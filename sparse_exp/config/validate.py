"""Whole-config validation, run before any data is loaded or any file is written.

Types and unknown keys are already checked by the structured schemas at composition time. This
module checks the top-level keys, then walks every config group's registry
(:data:`sparse_exp.registry.REGISTRIES`): the chosen option must be registered, and the group's checks
and the option's own checks run (each registered beside its implementation). Every check raises
:class:`sparse_exp.config.errors.ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Tuple

from omegaconf import OmegaConf

from sparse_exp.config.errors import ConfigError, one_of, require
from sparse_exp.config.plugins import check_plugins
from sparse_exp.engine.fast_step import check_fast
from sparse_exp.registry import load_components

__all__ = ["validate", "require", "one_of", "ConfigError"]


def _leaves(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a plain container (lists as ``key[i]``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def validate_finite(cfg: Any) -> None:
    """No number of the config may be NaN or infinite (none of them has a meaning for such a value)."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    plain.pop("hydra", None)
    for key, value in _leaves(plain):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, value, "must be a finite number")


def validate_top_level(cfg: Any) -> None:
    """Ranges of the top-level keys (``sparsity``, ``epochs``, batch sizes, ``seed``, ``device``, ``report``, ...)."""
    require(isinstance(cfg.sparsity, (int, float)) and 0.0 <= cfg.sparsity < 1.0, "sparsity", cfg.sparsity,
            "must be in [0, 1) (fraction of zeros among prunable weights)")
    require(cfg.epochs >= 1, "epochs", cfg.epochs, "must be an integer >= 1")
    require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be an integer >= 1")
    require(cfg.eval_batch_size >= 1, "eval_batch_size", cfg.eval_batch_size, "must be an integer >= 1")
    require(cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0")
    require(cfg.log_every >= 1, "log_every", cfg.log_every, "must be an integer >= 1")
    if cfg.stop_after_epochs is not None:
        require(cfg.stop_after_epochs >= 1, "stop_after_epochs", cfg.stop_after_epochs, "must be >= 1 or null")
    one_of("device", cfg.device.split(":")[0], {"auto", "cpu", "cuda", "mps"})
    one_of("report", cfg.report, {"last", "best_val"})
    if cfg.report == "best_val":
        require(cfg.dataset.val_size >= 1, "report", cfg.report,
                "best_val chooses the epoch on the validation split: needs dataset.val_size >= 1")



def validate(cfg: Any) -> None:
    """Check every value of a composed config; raise :class:`ConfigError` on the first bad one (first: a broken
    installed plugin, :func:`sparse_exp.config.plugins.check_plugins`)."""
    check_plugins()
    validate_finite(cfg)
    validate_top_level(cfg)
    check_fast(cfg)
    for registry in load_components().values():
        registry.check(cfg)
