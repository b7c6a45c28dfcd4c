"""Label smoothing (LS) as a training tweak: the training loss against smoothed labels.

    python -m sparse_exp.train sparsifier=snip sparsity=0.95 tweaks=[label_smoothing]

Source: Jaiswal et al., ICML 2022; reference code VITA-Group/ToST: ``alpha = 0.1`` for the whole run, the true class
gets ``1 - alpha`` and each other class ``alpha / (C - 1)`` (``convention=code``, the default); ``convention=pytorch``
is ``F.cross_entropy(label_smoothing=alpha)`` (``alpha / C`` to every class). ``start_epoch`` / ``end_epoch``
(main-phase epochs, ``end_epoch: null`` = to the end) optionally limit it to a window, plain cross-entropy outside.
Evaluation (NLL, ECE) always uses the plain labels; pruning-at-init scores (SNIP, GraSP, SynFlow) too, unless
``in_pruning_scores=true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from sparse_exp.callbacks.protocol import BaseCallback, LossFn, RunState
from sparse_exp.config.errors import one_of, require
from sparse_exp.registry import TWEAKS
from sparse_exp.tweaks.tweak import check_window, schedule_epoch


@dataclass
class LabelSmoothingConfig:
    """``tweaks.label_smoothing``: ``alpha`` in [0, 1), ``convention``: ``code`` | ``pytorch``, an optional
    epoch window, ``in_pruning_scores``."""

    alpha: float = 0.1
    convention: str = "code"
    start_epoch: float = 0.0
    end_epoch: Optional[float] = None
    in_pruning_scores: bool = False


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, alpha: float, convention: str = "code"
                           ) -> torch.Tensor:
    """Mean cross-entropy of logits ``(N, C)`` against labels ``(N,)`` smoothed by ``alpha``, in nats.

    ``code``: target ``1 - alpha`` on the true class, ``alpha / (C - 1)`` elsewhere (ToST); ``pytorch``:
    ``F.cross_entropy(..., label_smoothing=alpha)`` (``alpha / C`` added to every class).
    """
    if convention == "code":
        c = logits.shape[1]
        alpha = alpha * c / (c - 1)
    return F.cross_entropy(logits, y, label_smoothing=alpha)


def check_label_smoothing(cfg: Any) -> None:
    """``alpha`` in [0, 1), the convention, the window."""
    node = cfg.tweaks.label_smoothing
    require(0 <= node.alpha < 1, "tweaks.label_smoothing.alpha", node.alpha, "must be in [0, 1) (the code uses 0.1)")
    one_of("tweaks.label_smoothing.convention", node.convention, {"code", "pytorch"})
    check_window("tweaks.label_smoothing", node.start_epoch, node.end_epoch, int(cfg.epochs), end_required=False)


def label_smoothing_step_varies(cfg: Any) -> Optional[str]:
    """Why the loss changes during training with this config (an epoch window), else None."""
    if cfg.start_epoch != 0 or cfg.end_epoch is not None:
        return "the smoothing is switched on / off by its epoch window"
    return None


@TWEAKS.register("label_smoothing", schema=LabelSmoothingConfig, checks=(check_label_smoothing,),
                 queries={"step_varies": label_smoothing_step_varies})
class LabelSmoothing(BaseCallback):
    """The LS tweak as a callback: wraps the training loss; active inside its window (checked per epoch)."""

    name = "label_smoothing"
    priority = 40  # last of the tweaks

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.active = cfg.start_epoch == 0

    def wrap_loss(self, loss: LossFn) -> LossFn:
        alpha, convention = float(self.cfg.alpha), self.cfg.convention

        def smoothed(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if not self.active:
                return loss(logits, y)
            return smoothed_cross_entropy(logits, y, alpha, convention)

        return smoothed

    def wrap_score_loss(self, loss: LossFn) -> LossFn:
        if not self.cfg.in_pruning_scores:
            return loss
        alpha, convention = float(self.cfg.alpha), self.cfg.convention
        return lambda logits, y: smoothed_cross_entropy(logits, y, alpha, convention)

    def on_epoch_start(self, state: RunState) -> None:
        t, c = schedule_epoch(state), self.cfg
        self.active = t >= c.start_epoch and (c.end_epoch is None or t < c.end_epoch)

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        row["tweaks/label_smoothing/active"] = self.active
