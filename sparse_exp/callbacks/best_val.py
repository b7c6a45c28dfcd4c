"""Which model a run reports: ``report=last`` (the final model; no callback) or ``report=best_val``.

``report=best_val`` (:class:`BestValReport`, built last): the test metrics of the best-validation epoch, the protocol
of VITA-Group/ToST (Jaiswal et al., "Training Your Sparse Neural Network Better with Any Mask", ICML 2022). The choice
reads ``val/acc`` only: an epoch must beat every earlier candidate strictly (ties: the earliest); test is evaluated
only at such epochs. Candidates: every epoch of the run's own training except the sparsifier's earlier LR phases (IMP
rounds) and rows marked ``row["report/eligible"] = False``; the final model is a candidate too. Summary keys:
``report/mode``, ``report/source`` (``epoch`` / ``final``), ``report/epoch`` (1-based over the whole run),
``report/phase``, ``report/total_epochs``, ``report/sparsity``, ``final/test/*`` / ``final/val/*``; ``masks.pt``,
``sparsity/*``, ``params/*`` and ``flops/test`` stay the final model's. Details: ``docs/design-notes.md``.

``model.pt`` (:mod:`sparse_exp.run.artifact`) holds the reported model: each new best epoch keeps a CPU copy of the
model's state and masks (also in the checkpoint, so a resumed run has it); when an epoch wins, :meth:`reported_model`
answers ``("best_val", that model, its masks)``; when the final model wins it answers None and the file holds the
final model (or a superposer's) under that model's own label (``docs/artifacts.md``).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.training.metrics import evaluate

#: row key an earlier callback sets to False when the epoch's network is not a candidate
ELIGIBLE_KEY = "report/eligible"
log = logging.getLogger("sparse_exp")
#: metrics of the final model kept under ``final/`` (``test/*`` / ``val/*`` may be replaced)
FINAL_KEYS = ("test/acc", "test/nll", "test/ece", "val/acc", "val/nll", "val/ece")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class BestValReport(BaseCallback):
    """``report=best_val``: report the test metrics of the best-validation epoch (see the module doc).

    Attributes:
        best: the best candidate epoch so far, or None: ``{"epoch", "phase", "sparsity", "val", "test"}``
            (``val`` / ``test``: ``{"val/acc": ..., ...}`` / ``{"test/acc": ..., ...}``).
        snapshot: that epoch's model as CPU tensors, ``{"state": state_dict, "masks": {param: bool tensor}}``
            (None before the first candidate, or after resuming a checkpoint written before snapshots were kept).
        epoch_wins: set by :meth:`final_metrics`: whether the best epoch beat the final model.
    """

    name = "report"
    priority = 900  # after every callback whose rows and final metrics it reads

    def __init__(self) -> None:
        self.best: Optional[Dict[str, Any]] = None
        self.snapshot: Optional[Dict[str, Dict[str, torch.Tensor]]] = None
        self.epoch_wins = False

    @staticmethod
    def is_candidate(state: RunState, row: Dict[str, Any]) -> bool:
        """Whether the epoch that just ended may be reported: in the run's own training (not a
        sparsifier LR phase before it), not marked ineligible, with a finite ``val/acc``."""
        if state.step <= state.pre_steps:
            return False
        if not row.get(ELIGIBLE_KEY, True):
            return False
        return _finite(row.get("val/acc"))

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        """Record the epoch if it is a candidate with a strictly better ``val/acc`` than the best so far;
        only then is the test split evaluated (it never influences the choice)."""
        if not self.is_candidate(state, row):
            return
        acc = float(row["val/acc"])
        if self.best is not None and not acc > self.best["val"]["val/acc"]:
            return
        test = evaluate(state.model, state.data.test, state.num_classes, prefix="test")
        self.best = {"epoch": int(state.epoch), "phase": row.get("phase"),
                     "sparsity": row.get("sparsity/global"),
                     "val": {k: float(v) for k, v in row.items() if k.startswith("val/") and _finite(v)},
                     "test": {k: float(v) for k, v in test.items()}}
        self.snapshot = {"state": {k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()},
                         "masks": {n: state.masking.masks[n].detach().to("cpu", torch.bool, copy=True)
                                   for n in state.masking.names}}

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        """``report/*`` keys, the final model's metrics under ``final/``, and the best epoch's ``test/*`` /
        ``val/*`` if its validation accuracy is strictly better than the final model's."""
        out: Dict[str, Any] = {f"final/{k}": individual[k] for k in FINAL_KEYS if k in individual}
        final_val = individual.get("val/acc")
        best = self.best
        epoch_wins = best is not None and (not _finite(final_val) or best["val"]["val/acc"] > final_val)
        self.epoch_wins = epoch_wins
        out["report/mode"] = "best_val"
        out["report/total_epochs"] = int(state.epoch)
        if epoch_wins:
            out.update(best["test"])
            out.update(best["val"])
            out.update({"report/source": "epoch", "report/epoch": best["epoch"], "report/phase": best["phase"],
                        "report/sparsity": best["sparsity"]})
        else:
            out.update({"report/source": "final", "report/epoch": int(state.epoch),
                        "report/sparsity": individual.get("sparsity/global")})
        return out

    def reported_model(self, state: RunState) -> Optional[Tuple[str, nn.Module, Dict[str, torch.Tensor]]]:
        """``("best_val", model, masks)``: the best epoch's model (a copy of ``state.model`` holding the snapshot,
        on the run's device) when it beat the final model in :meth:`final_metrics` (called before); else None (the
        final model, or an earlier callback's, is the reported one)."""
        if not self.epoch_wins:
            return None
        if self.snapshot is None:  # resumed from a checkpoint of an older version, which kept no snapshot
            log.warning("report=best_val: the best epoch's weights were not kept (the run resumed from a checkpoint "
                        "written before they were); model.pt holds the final model")
            return None
        model = copy.deepcopy(state.model)
        model.load_state_dict(self.snapshot["state"])
        return "best_val", model, dict(self.snapshot["masks"])

    def summary_lines(self, summary: Dict[str, Any]) -> List[str]:
        """One line: which model the run reports and its validation accuracy."""
        if summary.get("report/mode") != "best_val":
            return []
        total, val = summary.get("report/total_epochs"), summary.get("val/acc", math.nan)
        if summary.get("report/source") == "epoch":
            line = (f"reported: best-validation epoch {summary['report/epoch']} of {total} (val {val:.2f} %; "
                    f"final model: test {summary.get('final/test/acc', math.nan):.2f} %, "
                    f"val {summary.get('final/val/acc', math.nan):.2f} %)")
        else:
            line = (f"reported: the final model, after epoch {summary['report/epoch']} of {total} (val {val:.2f} %; "
                    "no epoch had a better validation accuracy)")
        return [line, ""]

    def state_dict(self) -> Dict[str, Any]:
        """The best-so-far record (plain Python numbers) and its model's snapshot (CPU tensors)."""
        return {"best": None if self.best is None else {**self.best, "val": dict(self.best["val"]),
                                                          "test": dict(self.best["test"])},
                "snapshot": self.snapshot}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output; a checkpoint without ``snapshot`` (older versions) leaves it None."""
        best = state["best"]
        self.best = None if best is None else {**best, "val": dict(best["val"]), "test": dict(best["test"])}
        self.snapshot = state.get("snapshot")
