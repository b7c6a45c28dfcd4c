"""A sparsifier in one file, using only the public interface (a worked example of docs/architecture.md).

``sparsifier=init_magnitude``: at initialisation keep the largest-magnitude weights of each layer, as many as
the ``distribution`` gives the layer (ERK by default), then never change the mask.

    python -m sparse_exp.train sparsifier=init_magnitude sparsity=0.9 sparsifier.min_layer_density=0.01

Its three parts: a schema, a check, and the :class:`Sparsifier` subclass registered with both. In the project
its YAML is ``conf/sparsifier/init_magnitude.yaml``; here :func:`register_yaml` stores the same node in Hydra's
ConfigStore, which Hydra searches like ``conf/``.
"""

import math
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from sparse_exp.config.errors import require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.engine.context import RunPlan
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.distributions import layer_counts
from sparse_exp.sparse.masking import topk_mask
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target


@dataclass
class InitMagnitudeConfig(SparsifierConfig):
    """``sparsifier=init_magnitude``; the pre-flight refuses a distribution that leaves a layer below
    ``min_layer_density``."""

    name: str = "init_magnitude"
    min_layer_density: float = 0.0


def check_init_magnitude(cfg: Any) -> None:
    """``min_layer_density`` in [0, 1)."""
    v = cfg.sparsifier.min_layer_density
    require(0 <= v < 1, "sparsifier.min_layer_density", v, "must be in [0, 1)")


def preflight_init_magnitude(plan: RunPlan) -> None:
    """Before any data is loaded: every layer keeps at least ``min_layer_density`` under the distribution
    (the plan holds the model's prunable shapes, built on the ``meta`` device)."""
    cfg = plan.cfg
    counts = layer_counts(plan.shapes, 1 - cfg.sparsity, cfg.distribution.name, cfg.distribution.erk_power_scale,
                          plan.dense_layers)
    for layer, k in counts.items():
        n = math.prod(plan.shapes[layer])
        require(k / n >= cfg.sparsifier.min_layer_density, "sparsifier.min_layer_density",
                cfg.sparsifier.min_layer_density, f"layer {layer} would keep {k} of {n} weights")


@SPARSIFIERS.register("init_magnitude", schema=InitMagnitudeConfig, checks=(check_sparse_target, check_init_magnitude),
                      preflight=(preflight_init_magnitude,))
class InitMagnitude(Sparsifier):
    """Top-|w| per layer at initialisation, exact counts from the distribution; a fixed topology after."""

    name = "init_magnitude"

    def init_masks(self) -> None:
        m, counts = self.ctx.masking, self.ctx.target_counts()
        m.set_masks_({layer: topk_mask(m.params[layer].detach().abs(), k) for layer, k in counts.items()})
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)  # weights (and optimizer buffers) off the mask are now exactly zero


def register_yaml() -> None:
    """What ``conf/sparsifier/init_magnitude.yaml`` would hold: the schema with its defaults."""
    ConfigStore.instance().store(group="sparsifier", name="init_magnitude", node=InitMagnitudeConfig)
