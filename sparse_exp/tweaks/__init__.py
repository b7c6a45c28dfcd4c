"""Any-mask training tweaks (``tweaks=[...]``): Jaiswal et al., "Training Your Sparse Neural Network
Better with Any Mask", ICML 2022 (reference code VITA-Group/ToST).

Any subset, composable with every sparsifier and with ``superposer=sup_tickets``; each is a callback registered in
:data:`sparse_exp.registry.TWEAKS` with its schema and checks: ``ghost_skip`` (dense 1x1 conv + BN paths beside
conv -> BN units, :mod:`.ghost_skip`), ``soft_neurons`` (ReLU -> swish / mish / ..., :mod:`.soft_neurons`), ``lrsi``
(GradInit rescaling of the initial weights, :mod:`.lrsi`, :mod:`.gradinit`), ``label_smoothing`` (alpha 0.1,
:mod:`.label_smoothing`); preset ``tweaks=tost``: all four with the released code's settings. They run in that order
whatever the config's list order: ``priority`` 10, 20, 30, 40
(:attr:`~sparse_exp.callbacks.protocol.BaseCallback.priority`), which
:class:`~sparse_exp.callbacks.protocol.CallbackList` sorts by. Schedules count epochs of the run's own training.
"""

from __future__ import annotations

from typing import Any

from sparse_exp.registry import TWEAKS
from sparse_exp.tweaks.ghost_skip import GhostSkip
from sparse_exp.tweaks.label_smoothing import LabelSmoothing
from sparse_exp.tweaks.lrsi import LRsI
from sparse_exp.tweaks.soft_neurons import SoftNeurons

__all__ = ["TWEAKS", "GhostSkip", "SoftNeurons", "LRsI", "LabelSmoothing", "build_tweaks"]


def build_tweaks(cfg: Any) -> list:
    """The chosen tweaks' callbacks, in their declared order (``priority``, the module table)."""
    chosen = cfg.tweaks or {}
    return sorted((TWEAKS.build(name, chosen[name]) for name in TWEAKS.chosen(cfg)), key=lambda cb: cb.priority)
