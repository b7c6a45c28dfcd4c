"""Dynamic sparse training with a fixed density: SET and RigL.

Both start from a random exact-count mask with the ``distribution``'s layer densities (ERK by
default) and, every ``delta_t`` optimizer steps until ``stop_fraction`` of training, drop the
``drop_fraction`` smallest-magnitude active weights of each layer and regrow as many:

* ``set`` -- at random inactive positions (Mocanu et al., Nature Communications 2018, Sec.
  "SET"). The original drops the smallest positive and largest negative weights separately;
  like RigL's reimplementation (Evci et al. 2020, Sec. 4) we drop by |w|.
* ``rigl`` -- at the inactive positions with the largest dense-gradient magnitude (Evci et
  al., ICML 2020, Alg. 1; google-research/rigl ``sparse_optimizers.py``). Defaults: ΔT = 100,
  drop fraction 0.3 with cosine decay to 0 at the stop step, updates stop at 75% of training.
  The dense gradient is the step's ``p.grad`` (gradients are never masked), so it costs nothing
  between updates. Deviation: the TF reference skips the weight update on mask-update steps;
  here the SGD step happens and the mask update follows it (as in the PyTorch ports).

Per-layer counts are preserved (no redistribution); regrown weights and their momentum start
at zero.
"""

from __future__ import annotations

from typing import Any

from sparse_exp.sparse.sparsifiers.static import StaticSparsifier
from sparse_exp.sparse.topology import cosine_fraction, drop_and_grow


class DynamicSparsifier(StaticSparsifier):
    """Fixed-density prune-and-regrow every ``cfg.delta_t`` steps (base of SET and RigL); the
    initial mask is :class:`StaticSparsifier`'s random exact-count mask."""

    dynamic = True
    growth = "random"

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        self.stop_step = int(cfg.stop_fraction * ctx.total_steps)

    def drop_fraction_at(self, step: int) -> float:
        """Drop fraction at ``step``: ``cosine`` (RigL Eq. 1) or ``constant``."""
        if self.cfg.drop_decay == "constant":
            return self.cfg.drop_fraction
        return cosine_fraction(self.cfg.drop_fraction, step, self.stop_step)

    def is_update_step(self, step: int) -> bool:
        """Every ``delta_t`` steps, up to ``stop_fraction`` of training (``step`` counts from 1)."""
        return step % self.cfg.delta_t == 0 and step <= self.stop_step

    def after_step(self, step: int) -> bool:
        if not self.is_update_step(step):
            return False
        layers = [n for n in self.ctx.masking.names if n not in set(self.ctx.dense_layers())]
        drop_and_grow(self.ctx.masking, self.ctx.optimizer, self.drop_fraction_at(step), self.growth,
                      self.generator, layers)
        self.updates += 1
        return True



class SETSparsifier(DynamicSparsifier):
    """SET: magnitude drop, random regrowth."""

    name = "set"
    growth = "random"


class RigLSparsifier(DynamicSparsifier):
    """RigL: magnitude drop, dense-gradient regrowth."""

    name = "rigl"
    growth = "gradient"
