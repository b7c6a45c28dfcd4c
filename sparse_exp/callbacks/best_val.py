"""Which model a run reports: ``report=last`` (the final model; no callback) or ``report=best_val``.

``report=best_val`` (:class:`BestValReport`, built last): the test metrics of the best-validation epoch, the protocol
of VITA-Group/ToST (Jaiswal et al., "Training Your Sparse Neural Network Better with Any Mask", ICML 2022). The choice
reads ``val/acc`` only: an epoch must beat every earlier candidate strictly (ties: the earliest); test is evaluated
only at such epochs. Candidates: every epoch of the run's own training except the sparsifier's earlier LR phases (IMP
rounds) and rows marked ``row["report/eligible"] = False``; the final model is a candidate too. Summary keys:
``report/mode``, ``report/source`` (``epoch`` / ``final``), ``report/epoch`` (1-based over the whole run),
``report/phase``, ``report/total_epochs``, ``report/sparsity``, ``final/test/*`` / ``final/val/*``; ``masks.pt``,
``sparsity/*``, ``params/*`` and ``flops/test`` stay the final model's. Details: ``docs/design-notes.md``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.training.metrics import evaluate

#: row key an earlier callback sets to False when the epoch's network is not a candidate
ELIGIBLE_KEY = "report/eligible"
#: metrics of the final model kept under ``final/`` (``test/*`` / ``val/*`` may be replaced)
FINAL_KEYS = ("test/acc", "test/nll", "test/ece", "val/acc", "val/nll", "val/ece")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class BestValReport(BaseCallback):
    """``report=best_val``: report the test metrics of the best-validation epoch (see the module doc).

    Attributes:
        best: the best candidate epoch so far, or None: ``{"epoch", "phase", "sparsity", "val", "test"}``
            (``val`` / ``test``: ``{"val/acc": ..., ...}`` / ``{"test/acc": ..., ...}``).
    """

    name = "report"
    priority = 900  # after every callback whose rows and final metrics it reads

    def __init__(self) -> None:
        self.best: Optional[Dict[str, Any]] = None

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

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        """``report/*`` keys, the final model's metrics under ``final/``, and the best epoch's ``test/*`` /
        ``val/*`` if its validation accuracy is strictly better than the final model's."""
        out: Dict[str, Any] = {f"final/{k}": individual[k] for k in FINAL_KEYS if k in individual}
        final_val = individual.get("val/acc")
        best = self.best
        epoch_wins = best is not None and (not _finite(final_val) or best["val"]["val/acc"] > final_val)
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
        """The best-so-far record (plain Python numbers)."""
        return {"best": None if self.best is None else {**self.best, "val": dict(self.best["val"]),
                                                          "test": dict(self.best["test"])}}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        best = state["best"]
        self.best = None if best is None else {**best, "val": dict(best["val"]), "test": dict(best["test"])}
