"""The sparsifier interface: how a sparse topology is chosen and evolved.

Life cycle (:mod:`sparse_exp.engine.build`, :mod:`sparse_exp.engine.loop`): ``build_sparsifier(cfg.sparsifier, ctx)``;
``init_masks()`` once (may draw ``ctx.batches``; sets ``masking.target_counts`` and the masks); every step
``loss.backward(); optimizer.step(); masking.apply_(optimizer); sparsifier.after_step(step)``, where ``after_step``
sees the dense ``p.grad`` and, if it changes masks, re-applies them and returns ``True``; ``state_dict()`` /
``load_state_dict()`` resume bitwise. Declared, never asked by name: ``growth`` (``"random"`` / ``"gradient"`` / None;
Sup-tickets' ``explore_growth=auto``), :meth:`Sparsifier.dense_gradient_at` (steps costing ``f_D``),
:meth:`Sparsifier.lr_phases` (LTH's IMP rounds), :meth:`Sparsifier.flop_schedule` / :meth:`Sparsifier.flop_allocation`
(``python -m sparse_exp.flops``). A new sparsifier: a :class:`Sparsifier` subclass registered with its schema and
checks (``@SPARSIFIERS.register(name, schema=..., checks=...)``, :mod:`sparse_exp.registry`) + ``conf/sparsifier/``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from sparse_exp.config.errors import require
from sparse_exp.engine.context import RunState
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.density_schedules import ConstantDensity, FlopSchedule
from sparse_exp.sparse.flop_counts import Allocation


@SPARSIFIERS.group_check
def check_no_missing_keys(cfg: Any) -> None:
    """Every key of the chosen sparsifier's schema is set (``???`` keys such as ``mask_file``'s path)."""
    sp = cfg.sparsifier
    for key in sp.keys():
        require(not OmegaConf.is_missing(sp, key), f"sparsifier.{key}", "???", f"is required for sparsifier={sp.name}")


def check_sparse_target(cfg: Any) -> None:
    """``sparsity`` > 0: a sparse method needs a sparse target (dense training is ``sparsifier=dense``)."""
    require(cfg.sparsity > 0, "sparsity", cfg.sparsity,
            "must be > 0 for a sparse method (use sparsifier=dense for dense training)")


class Sparsifier:
    """Base class; subclasses set ``name`` and override what they need."""

    name: str = "base"
    #: regrowth criterion, ``"random"`` | ``"gradient"``, or None (never regrows)
    growth: Optional[str] = None
    #: whether it keeps N:M groups (``distribution=nm``, ``masking.groups``) at init and at every mask update;
    #: ``distribution=nm`` refuses a sparsifier that does not declare it
    supports_nm: bool = False
    #: why ``distribution=nm`` is refused for this method (said in the refusal), where it does not support N:M
    nm_refusal: Optional[str] = None

    def __init__(self, cfg: Any, ctx: RunState) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.generator = torch.Generator().manual_seed(int(ctx.seed) * 7919 + 17)
        #: number of mask updates so far (DST / gradual pruning)
        self.updates = 0
        pattern = getattr(ctx, "nm_pattern", None)  # N:M (n, m) of every layer not kept dense; None: unstructured
        if pattern is not None:
            dense = set(ctx.dense_layers)
            ctx.masking.groups = {n: pattern for n in ctx.masking.names if n not in dense}

    def init_masks(self) -> None:
        """Choose the initial masks, set ``masking.target_counts`` and apply them."""
        raise NotImplementedError

    def after_step(self, step: int) -> bool:
        """Called after ``optimizer.step()`` and mask application; ``step`` counts from 1."""
        return False

    def on_epoch_end(self, epoch: int) -> bool:
        """Called after each epoch (``epoch`` = completed epochs of the whole run); True if masks changed."""
        return False

    def dense_gradient_at(self, step: int) -> bool:
        """Whether a mask update at ``step`` (main-phase step, from 1) reads the dense weight gradient
        (training FLOPs ``2 f_S + f_D`` instead of ``3 f_S``, RigL App. H). Default: never."""
        return False

    def lr_phases(self) -> List[Tuple[str, int]]:
        """``(name, epochs)`` of the phases trained before the run's own ``epochs``, each restarting the LR
        schedule (LTH: one per IMP round). Default: none."""
        return []

    @classmethod
    def flop_schedule(cls, cfg: Any, total_steps: Optional[int], density: float) -> Optional[FlopSchedule]:
        """Training-cost model of a run with sparsifier config ``cfg`` and target global ``density``.

        ``total_steps`` (optimizer steps of the main phase) gives a step-exact schedule; None one for the
        continuous estimate (:func:`sparse_exp.sparse.flop_counts.expected_training_ratio`). Return None when the
        cost cannot be modelled. Default: a fixed topology at ``density``, no dense gradient (``3 f_S``
        every step: static, pruning at init, mask file).
        """
        return FlopSchedule(ConstantDensity(density), None, total_steps)

    @classmethod
    def flop_allocation(cls, cfg: Any, distribution: str, shapes: Dict[str, Tuple[int, ...]]) -> Allocation:
        """How the estimate spreads a global density over the layers (``shapes``: prunable layer -> shape),
        given the configured ``distribution.name``. Default: that distribution, exactly as the masks."""
        return Allocation(distribution)

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.updates = state["updates"]
