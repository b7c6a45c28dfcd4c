"""How far a run's sparse topology moves: a :class:`~sparse_exp.callbacks.protocol.Callback`.

At every mask update it compares the masks with those before the update (``vs_prev``) and with the run's
initial masks (``vs_init``, taken at the start of the first epoch, after the sparsifier's ``init_masks``), as
global Hamming distance and IoU (:mod:`sparse_exp.sparse.mask_distance`, pooled over all prunable positions).
A mask update is a step where the sparsifier changed the masks (``mask_changed``), or an epoch end whose masks
differ from the last ones seen (a change made elsewhere: pruning between epochs, a superposer's exploration);
no other step costs anything. Epoch rows get ``topology/hamming_vs_init``, ``topology/iou_vs_init`` (the masks at
the epoch's end), ``topology/hamming_vs_prev``, ``topology/iou_vs_prev`` (the change made by the latest update so
far; 0 and 1 before any) and ``topology/updates`` (updates so far); ``summary.json`` the same keys at the end of
training, of the individual model's masks (a superposer's reported masks are its own business). Checkpointed
(the initial and last masks, as bool): a resumed run gives the same numbers.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.sparse.mask_distance import mask_distance, snapshot


def _moved(masks: Optional[Dict[str, torch.Tensor]], device: Any) -> Optional[Dict[str, torch.Tensor]]:
    return None if masks is None else {k: v.to(device) for k, v in masks.items()}


class TopologyMeter(BaseCallback):
    """Mask topology change at every mask update (see the module docstring); no host synchronisation elsewhere."""

    name = "topology"
    priority = 1000  # with the FLOP meter, last: sees the masks after every other callback's step

    def __init__(self) -> None:
        self.init: Optional[Dict[str, torch.Tensor]] = None
        self.last: Optional[Dict[str, torch.Tensor]] = None
        self.values: Dict[str, float] = {"hamming_vs_init": 0.0, "iou_vs_init": 1.0,
                                         "hamming_vs_prev": 0.0, "iou_vs_prev": 1.0}
        self.updates = 0

    def _masks(self, state: RunState) -> Dict[str, torch.Tensor]:
        m = state.masking
        return {n: m.masks[n] for n in m.names}

    def on_epoch_start(self, state: RunState) -> None:
        if self.init is None:  # a fresh run's first epoch: the masks init_masks chose (a resume loads them)
            self.init = snapshot(self._masks(state))
            self.last = self.init

    def _update(self, masks: Dict[str, torch.Tensor]) -> None:
        prev = mask_distance(masks, self.last, per_layer=False)
        if prev.differ == 0:
            return
        init = mask_distance(masks, self.init, per_layer=False)
        self.values = {"hamming_vs_init": init.hamming, "iou_vs_init": init.iou,
                       "hamming_vs_prev": prev.hamming, "iou_vs_prev": prev.iou}
        self.last = snapshot(masks)
        self.updates += 1

    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        if mask_changed and self.init is not None:
            self._update(self._masks(state))

    def _row(self) -> Dict[str, Any]:
        return {**{f"topology/{k}": v for k, v in self.values.items()}, "topology/updates": self.updates}

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        if self.init is not None:
            self._update(self._masks(state))
        row.update(self._row())

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        return self._row() if self.init is not None else {}

    def state_dict(self) -> Dict[str, Any]:
        """The initial and last masks (bool, CPU), the latest figures and the update count."""
        return {"init": _moved(self.init, "cpu"), "last": _moved(self.last, "cpu"), "values": dict(self.values),
                "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        self.init, self.last = _moved(state["init"], device), _moved(state["last"], device)
        self.values, self.updates = dict(state["values"]), int(state["updates"])
