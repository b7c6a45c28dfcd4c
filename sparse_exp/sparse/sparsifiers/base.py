"""The sparsifier interface: how a sparse topology is chosen and evolved.

Life cycle, driven by :mod:`sparse_exp.engine`:

1. ``sparsifier = build_sparsifier(cfg.sparsifier, ctx)``
2. ``sparsifier.init_masks()`` once before the first step (pruning-at-init methods may draw
   batches through ``ctx.batches``); it sets ``masking.target_counts`` and the masks.
3. every step: ``loss.backward(); optimizer.step(); masking.apply_(optimizer);
   sparsifier.after_step(step)``. ``after_step`` sees the step's dense gradients in
   ``p.grad`` (gradients are never masked) and may change masks in place; if it does it must
   re-apply them (weights and optimizer buffers zeroed off the new mask) and return ``True``.
4. ``state_dict()`` / ``load_state_dict()`` hold everything needed to resume bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from sparse_exp.sparse.distributions import layer_counts
from sparse_exp.sparse.masking import Masking, dense_layer_names


@dataclass
class SparseContext:
    """What a sparsifier may use.

    Attributes:
        model: the network (already on ``device``).
        masking: the masks of ``model``.
        optimizer: the optimizer (for zeroing buffers of regrown weights).
        sparsity: target fraction of zeros over prunable weights, in [0, 1).
        distribution: the ``distribution`` config node (name, erk_power_scale, dense_*_layer).
        total_steps: optimizer steps in the whole run.
        steps_per_epoch: optimizer steps per epoch.
        seed: run seed; sparsifiers derive their own ``torch.Generator`` from it.
        device: where the model lives.
        batches: ``batches(n)`` yields ``n`` training batches ``(x, y)`` (for SNIP / GraSP ...).
        loss_fn: the training loss ``loss_fn(logits, y) -> scalar``.
    """

    model: nn.Module
    masking: Masking
    optimizer: Optional[torch.optim.Optimizer]
    sparsity: float
    distribution: Any
    total_steps: int
    steps_per_epoch: int
    seed: int
    device: torch.device
    batches: Optional[Callable[[int], Iterator[Tuple[torch.Tensor, torch.Tensor]]]] = None
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def dense_layers(self):
        """Layers the distribution keeps dense (first / last layer options)."""
        return dense_layer_names(self.masking, self.distribution.dense_first_layer, self.distribution.dense_last_layer)

    def target_counts(self, density: Optional[float] = None) -> Dict[str, int]:
        """Exact ones per layer for ``density`` (default: the target) under the distribution."""
        return layer_counts(
            self.masking.shapes,
            self.density if density is None else density,
            self.distribution.name,
            self.distribution.erk_power_scale,
            self.dense_layers(),
        )


class Sparsifier:
    """Base class; subclasses set ``name`` and override what they need."""

    name: str = "base"
    #: True if masks change during training (DST, gradual pruning); used by FLOP accounting.
    dynamic: bool = False
    #: epochs the engine runs before the ``epochs`` of the final training (LTH's IMP rounds).
    pretrain_epochs: int = 0

    def __init__(self, cfg: Any, ctx: SparseContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.generator = torch.Generator().manual_seed(int(ctx.seed) * 7919 + 17)
        #: number of mask updates so far (DST / gradual pruning)
        self.updates = 0

    def init_masks(self) -> None:
        """Choose the initial masks, set ``masking.target_counts`` and apply them."""
        raise NotImplementedError

    def after_step(self, step: int) -> bool:
        """Called after ``optimizer.step()`` and mask application; ``step`` counts from 1."""
        return False

    def on_epoch_end(self, epoch: int) -> bool:
        """Called after each epoch (``epoch`` = completed epochs); True if masks changed."""
        return False

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.updates = state.get("updates", 0)
