"""Experiment loggers (``logger`` group): ``wandb`` and ``none``.

W&B runs offline by default (``logger.mode``; the ``WANDB_MODE`` environment variable wins) so
nothing needs an account. The run id is stored in the run directory (``wandb_id.txt``) and
reused with ``resume="allow"``: online, a resumed or requeued run is one W&B run. Offline, wandb ignores
``resume`` (no release honours it): each process start writes its own ``wandb/offline-run-*`` folder, which
``wandb sync`` uploads as a separate run (docs/reliability.md, "W&B offline and resume").
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Dict, Optional

from sparse_exp.config.errors import one_of
from sparse_exp.registry import LOGGERS


@LOGGERS.group_check
def check_logger(cfg: Any) -> None:
    """``logger.mode`` is ``online`` | ``offline`` | ``disabled``."""
    one_of("logger.mode", cfg.logger.mode, {"online", "offline", "disabled"})


@LOGGERS.register("none")
class NullLogger:
    """Logs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        pass

    def summary(self, metrics: Dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


@LOGGERS.register("wandb")
class WandbLogger(NullLogger):
    """Thin wrapper over ``wandb.init`` / ``run.log`` / ``run.summary``."""

    def __init__(self, cfg: Any, run_dir, config: Dict[str, Any], name: str) -> None:
        import wandb

        id_path = run_dir.wandb_id_path
        run_id = id_path.read_text().strip() if id_path.exists() else uuid.uuid4().hex[:12]
        id_path.write_text(run_id + "\n")
        mode = os.environ.get("WANDB_MODE", cfg.mode)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=mode, id=run_id, resume="allow",
                              dir=str(run_dir.path), config=config, name=name, tags=list(cfg.tags))

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: Dict[str, Any]) -> None:
        for k, v in metrics.items():
            self.run.summary[k] = v

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg: Any, run_dir, config: Dict[str, Any], name: str):
    """The logger registered as ``cfg.name`` (``wandb`` or ``none``); W&B disabled by ``WANDB_MODE`` or
    ``logger.mode=disabled`` logs nothing."""
    if os.environ.get("WANDB_MODE", cfg.get("mode", "offline")) == "disabled":
        return NullLogger()
    return LOGGERS.build(cfg.name, cfg, run_dir, config, name)
