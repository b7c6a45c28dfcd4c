"""A superposer in one file, using only the public protocol (the worked example of docs/architecture.md).

``superposer=lr_tail``: multiply the learning rate by ``factor`` over the last ``epochs`` epochs of the
run (a toy "fine-tune at a lower LR" superposer), count the steps it was active and report them.

    python -m sparse_exp.train superposer=lr_tail superposer.factor=0.5 superposer.epochs=1

The three parts a component needs: a schema, checks, and the implementation registered with both.
In the project the option's YAML would be ``conf/superposer/lr_tail.yaml``; here the test stores the
same node in Hydra's ConfigStore (:func:`register_yaml`), which Hydra searches like ``conf/``.
"""

from dataclasses import dataclass
from typing import Any, Dict, List

from hydra.core.config_store import ConfigStore

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.config.errors import require
from sparse_exp.config.schema import SuperposerConfig
from sparse_exp.registry import SUPERPOSERS


@dataclass
class LRTailConfig(SuperposerConfig):
    """``superposer=lr_tail``: LR x ``factor`` in the last ``epochs`` epochs."""

    name: str = "lr_tail"
    factor: float = 0.5
    epochs: int = 1


def check_lr_tail(cfg: Any) -> None:
    """``factor`` in (0, 1], ``epochs`` in [1, epochs of the run]."""
    sp = cfg.superposer
    require(0 < sp.factor <= 1, "superposer.factor", sp.factor, "must be in (0, 1]")
    require(1 <= sp.epochs <= cfg.epochs, "superposer.epochs", sp.epochs, f"must be in [1, epochs={cfg.epochs}]")


@SUPERPOSERS.register("lr_tail", schema=LRTailConfig, checks=(check_lr_tail,))
class LRTail(BaseCallback):
    """Scales the LR in the run's last epochs; its step count is checkpointed (bitwise resume)."""

    name = "lr_tail"

    def __init__(self, cfg: Any) -> None:
        self.factor, self.epochs = float(cfg.factor), int(cfg.epochs)
        self.active_steps = 0
        self.start = 0

    def setup(self, state: RunState) -> None:
        self.start = state.pre_steps + (state.epochs - self.epochs) * state.steps_per_epoch

    def lr_multiplier(self, step: int) -> float:
        return self.factor if step >= self.start else 1.0

    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        self.active_steps += int(state.step > self.start)

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        row["lr_tail/active_steps"] = self.active_steps

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        return {"lr_tail/active_steps": self.active_steps}

    def summary_lines(self, summary: Dict[str, Any]) -> List[str]:
        return [f"  LR x{self.factor} for the last {summary['lr_tail/active_steps']} steps", ""]

    def state_dict(self) -> Dict[str, Any]:
        return {"active_steps": self.active_steps}

    def load_state_dict(self, state: Dict[str, Any], device: Any) -> None:
        self.active_steps = state["active_steps"]


def register_yaml() -> None:
    """What ``conf/superposer/lr_tail.yaml`` would hold: the schema with its defaults."""
    ConfigStore.instance().store(group="superposer", name="lr_tail", node=LRTailConfig)
