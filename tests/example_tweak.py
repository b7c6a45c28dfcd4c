"""A training tweak in one file, using only the public protocol (a worked example of docs/architecture.md).

``tweaks=[logit_temperature]``: train on ``cross_entropy(logits / t, y)`` for the first ``epochs`` epochs of the
run's own training, then on the plain loss (evaluation always uses the plain logits).

    python -m sparse_exp.train "tweaks=[logit_temperature]" tweaks.logit_temperature.t=2 \\
        tweaks.logit_temperature.epochs=1

Its three parts: a schema, a check, and a callback registered with both in ``TWEAKS``. In the project its YAML
is ``conf/tweaks/logit_temperature.yaml`` (``# @package tweaks.logit_temperature``); here
:func:`register_yaml` stores the same node in Hydra's ConfigStore.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from hydra.core.config_store import ConfigStore

from sparse_exp.callbacks.protocol import BaseCallback, LossFn
from sparse_exp.config.errors import require
from sparse_exp.engine.context import RunState
from sparse_exp.registry import TWEAKS


@dataclass
class LogitTemperatureConfig:
    """``tweaks.logit_temperature``: temperature ``t`` > 0 for the first ``epochs`` epochs."""

    t: float = 2.0
    epochs: int = 1


def check_logit_temperature(cfg: Any) -> None:
    """``t`` > 0; ``epochs`` in [0, epochs of the run]."""
    node = cfg.tweaks.logit_temperature
    require(node.t > 0, "tweaks.logit_temperature.t", node.t, "must be > 0")
    require(0 <= node.epochs <= cfg.epochs, "tweaks.logit_temperature.epochs", node.epochs,
            f"must be in [0, epochs={cfg.epochs}]")


def logit_temperature_step_varies(cfg: Any) -> Optional[str]:
    """Why the loss changes during training (the fast path cannot capture such a step once), else None."""
    return "the temperature switches off after its epochs" if cfg.epochs > 0 else None


@TWEAKS.register("logit_temperature", schema=LogitTemperatureConfig, checks=(check_logit_temperature,),
                 queries={"step_varies": logit_temperature_step_varies})
class LogitTemperature(BaseCallback):
    """Wraps the training loss; on while the main phase's epoch is below ``epochs`` (set per epoch, so a resumed
    run recomputes it from the state and needs no checkpoint entry)."""

    name = "logit_temperature"

    def __init__(self, cfg: Any) -> None:
        self.t, self.epochs = float(cfg.t), int(cfg.epochs)
        self.active = self.epochs > 0

    def wrap_loss(self, loss: LossFn) -> LossFn:
        def tempered(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss(logits / self.t if self.active else logits, y)

        return tempered

    def on_epoch_start(self, state: RunState) -> None:
        main_epoch = state.epoch - state.pre_steps // state.steps_per_epoch
        self.active = main_epoch < self.epochs

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        row["tweaks/logit_temperature/active"] = self.active


def register_yaml() -> None:
    """What ``conf/tweaks/logit_temperature.yaml`` would hold: the schema with its defaults."""
    ConfigStore.instance().store(group="tweaks", name="logit_temperature", node=LogitTemperatureConfig,
                                 package="tweaks.logit_temperature")
