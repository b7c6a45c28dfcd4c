"""Training and inference FLOPs of a run, measured as it trains: a :class:`~sparse_exp.callbacks.protocol.Callback`.

Each optimizer step costs ``3 f_S``, or ``2 f_S + f_D`` at the steps the sparsifier declares to read the dense
weight gradient (:meth:`~sparse_exp.sparse.sparsifiers.sparsifier.Sparsifier.dense_gradient_at`; RigL, Evci et
al. 2020, Sec. 4.1 and App. H; units: :mod:`sparse_exp.sparse.flop_counts`). ``f_S`` is recomputed whenever the
sparsifier changes the per-layer counts and at each epoch start (pruning at an epoch end, e.g. between IMP
rounds, is seen). Epoch rows get ``flops/train`` (so far, relative to dense training); the summary gets
``flops/test`` (the reported model's masks, a callback's ``final_masks`` if one replaces the individual model),
``flops/train`` and ``flops/dense_forward`` (``f_D``, FLOPs per sample).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.sparse.flop_counts import TrainingFlops


class FlopMeter(BaseCallback):
    """Integrates training FLOPs step by step (Python numbers only: no host synchronisation).

    Args:
        layer_flops: dense forward FLOPs per sample of every prunable layer
            (:func:`sparse_exp.sparse.flop_counts.layer_forward_flops`).
    """

    name = "flops"
    priority = 1000  # last: reads no val/* or test/*

    def __init__(self, layer_flops: Mapping[str, int]) -> None:
        self.layer_flops = dict(layer_flops)
        self.flops = TrainingFlops(sum(self.layer_flops.values()))
        self.state: Optional[RunState] = None
        self.f_sparse = 0.0

    def setup(self, state: RunState) -> None:
        self.state = state

    def sparse_forward_flops(self, counts: Optional[Mapping[str, int]] = None) -> float:
        """Forward FLOPs per sample at per-layer densities ``counts / n`` (default: the target counts)."""
        m = self.state.masking
        counts = counts if counts is not None else m.target_counts
        return sum(self.layer_flops[n] * counts[n] / m.sizes[n] for n in m.names)

    def on_epoch_start(self, state: RunState) -> None:
        self.f_sparse = self.sparse_forward_flops()

    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        if mask_changed and state.sparsifier.dense_gradient_at(state.main_step):
            self.flops.add_dense_gradient_steps(1, self.f_sparse)
        else:
            self.flops.add_steps(1, self.f_sparse)
        if mask_changed:
            self.f_sparse = self.sparse_forward_flops()

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        row["flops/train"] = self.flops.ratio()

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        final = state.reported_masks
        m = state.masking
        counts = {n: int(final[n].count_nonzero()) for n in m.names} if final is not None else m.target_counts
        return {"flops/test": self.sparse_forward_flops(counts) / self.flops.f_dense,
                "flops/train": self.flops.ratio(), "flops/dense_forward": self.flops.f_dense}

    def state_dict(self) -> Dict[str, Any]:
        """The accumulated FLOPs and step count (:meth:`TrainingFlops.state_dict`)."""
        return self.flops.state_dict()

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        self.flops.load_state_dict(state)
