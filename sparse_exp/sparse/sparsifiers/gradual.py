"""Gradual magnitude pruning: GMP (Zhu & Gupta 2017) and GraNet (Liu et al., NeurIPS 2021).

Density schedule (Zhu & Gupta 2017, Eq. 1; GraNet Eq. 1 / ``sparselearning/core.py::pruning``):
every ``delta_t`` steps between ``prune_start_fraction`` and ``prune_end_fraction`` of training,

    d_t = d_f + (d_i - d_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3

counted in update iterations ``t = step // delta_t``, with ``d_i`` = ``init_density``, ``d_f`` =
``1 - sparsity``. Each pruning step keeps exactly ``round(d_t * N)`` weights by GLOBAL magnitude
(layer densities emerge; the ``distribution`` only shapes GraNet's initial mask).

* ``gmp``: dense start (``init_density = 1``), pruning only.
* ``granet``: sparse start (random ERK mask at ``init_density`` 0.5), gradual pruning, plus
  neuroregeneration at every update: per layer drop the ``prune_rate`` smallest active weights
  and regrow as many by dense-gradient magnitude (Sec. 3.2); ``prune_rate`` 0.5, cosine-decayed
  to 0.005 over the run (reference ``CosineDecay``). Defaults as the reference CIFAR README:
  ΔT = 1000 steps, pruning from 0 to 110/160 of training.

The reference's masks are Bernoulli draws and its pruning compares against a threshold;
here all counts are exact.
"""

from __future__ import annotations

from typing import Any

from sparse_exp.sparse.masking import masks_from_counts
from sparse_exp.sparse.sparsifiers.base import Sparsifier
from sparse_exp.sparse.topology import cosine_fraction, drop_and_grow, global_magnitude_prune


class GradualMagnitudeSparsifier(Sparsifier):
    """GMP: dense start, cubic global magnitude pruning to the target density."""

    name = "gmp"
    dynamic = True
    regenerate = False

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        dt = cfg.delta_t
        self.first_iter = int(cfg.prune_start_fraction * ctx.total_steps) // dt
        self.final_iter = max(self.first_iter + 1, int(cfg.prune_end_fraction * ctx.total_steps) // dt)
        self.init_density = max(float(cfg.init_density), ctx.density)
        if self.final_iter * dt > ctx.total_steps:
            from sparse_exp.errors import ConfigError

            raise ConfigError("sparsifier.delta_t", dt, f"must be at most prune_end_fraction x total steps "
                              f"({int(cfg.prune_end_fraction * ctx.total_steps)}), or the target sparsity is never reached")

    def density_at(self, step: int) -> float:
        """Scheduled global density after the update at ``step`` (cubic, Zhu & Gupta Eq. 1)."""
        it = step // self.cfg.delta_t
        progress = min(1.0, max(0.0, (it - self.first_iter) / (self.final_iter - self.first_iter)))
        df = self.ctx.density
        return df + (self.init_density - df) * (1.0 - progress) ** 3

    def init_masks(self) -> None:
        m = self.ctx.masking
        if self.init_density >= 1.0:
            counts = dict(m.sizes)
            m.set_masks_({n: m.masks[n].new_ones(m.shapes[n]) for n in m.names})
        else:
            counts = self.ctx.target_counts(self.init_density)
            m.set_masks_(masks_from_counts(m.shapes, counts, self.generator))
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)

    def after_step(self, step: int) -> bool:
        if step % self.cfg.delta_t != 0:
            return False
        it = step // self.cfg.delta_t
        m = self.ctx.masking
        changed = False
        if self.first_iter <= it <= self.final_iter:
            keep = int(round(self.density_at(step) * m.total))
            if keep < sum(m.target_counts.values()):
                global_magnitude_prune(m, self.ctx.optimizer, keep, self.ctx.dense_layers())
                changed = True
        if self.regenerate and step <= self.cfg.stop_fraction * self.ctx.total_steps:
            rate = cosine_fraction(self.cfg.prune_rate, step, self.ctx.total_steps, self.cfg.prune_rate_min) \
                if self.cfg.prune_rate_decay == "cosine" else self.cfg.prune_rate
            layers = [n for n in m.names if n not in set(self.ctx.dense_layers())]
            drop_and_grow(m, self.ctx.optimizer, rate, "gradient", self.generator, layers)
            changed = True
        self.updates += int(changed)
        return changed



class GraNetSparsifier(GradualMagnitudeSparsifier):
    """GraNet: sparse start, gradual global magnitude pruning and gradient neuroregeneration."""

    name = "granet"
    regenerate = True
    growth = "gradient"
