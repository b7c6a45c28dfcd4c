"""The end of a run: the ``summary.json`` body and the table printed after training.

``summary.json`` holds the individual model's test / validation metrics and sparsity, the distribution's own keys
(its ``summary`` query, e.g. ``nm/dense_misfits``), then whatever
the callbacks report (:meth:`~sparse_exp.callbacks.protocol.Callback.final_metrics`): a booster that reports
another model replaces ``test/*`` / ``val/*`` with that model's (and keeps the individual model's under
its own keys), the FLOP meter adds ``flops/*``. The masks written to ``masks.pt`` are those of the
reported model (a callback's ``final_masks``, else the individual model's). ``model.pt`` holds the reported model
(:func:`write_model`; a callback's ``reported_model``, else the individual model).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from sparse_exp.callbacks.protocol import BaseCallback
from sparse_exp.registry import DISTRIBUTIONS
from sparse_exp.run.artifact import model_payload
from sparse_exp.run.run_dir import RunDir, git_info
from sparse_exp.training.metrics import evaluate


def final_summary(run: Any, ident: Dict[str, Any],
                  run_dir: Path) -> Tuple[Dict[str, Any], str, Dict[str, torch.Tensor]]:
    """Evaluate the final model(s) of a trained :class:`~sparse_exp.engine.build.Run`.

    Args:
        run: the run after its last epoch.
        ident: its identity (:func:`sparse_exp.config.identity.identity`).
        run_dir: its directory (recorded as ``run_dir``).

    Returns:
        ``(summary, label, masks)``: the ``summary.json`` body (``status: completed``), the reported
        model's label for ``masks.pt`` (``"final"``, or the label of a callback's ``final_masks``) and its
        masks ``{param name: bool tensor}``.
    """
    m, s, model = run.masking, run.state, run.model
    reported = run.callbacks.final_masks(s)
    label, masks = reported if reported is not None else ("final", m.masks)
    s.reported_masks = reported[1] if reported is not None else None
    out: Dict[str, Any] = {"status": "completed", **ident}
    out.update(evaluate(model, run.data.test, s.num_classes, prefix="test"))
    out.update(evaluate(model, run.data.val, s.num_classes, prefix="val"))
    counts = m.counts()
    out["sparsity/global"] = 1.0 - sum(counts.values()) / m.total
    out["sparsity/layers"] = {n: 1.0 - counts[n] / m.sizes[n] for n in m.names}
    out.update(DISTRIBUTIONS.query(s.distribution.name, "summary")(s.distribution, s))  # e.g. nm/dense_misfits
    out["params/prunable"] = m.total
    out["params/nonzero"] = sum(m.nonzero_weights().values())
    out["itop_rate"] = m.itop_rate()
    out.update(run.callbacks.final_metrics(s, dict(out)))
    out["params/total"] = sum(p.numel() for p in model.parameters())
    out["params/total_nonzero"] = sum(int(p.count_nonzero()) for p in model.parameters())
    out["steps"] = s.step
    out["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out["time/train_s"] = s.elapsed
    out["run_dir"] = str(run_dir)
    out["git"] = git_info()["sha"]
    return out, label, masks


def write_model(run: Any, rd: RunDir, masks: Dict[str, torch.Tensor]) -> None:
    """Write ``model.pt`` (:mod:`sparse_exp.run.artifact`) of a run after :func:`final_summary` (whose
    ``final_metrics`` evaluated the model written here): the callbacks' ``reported_model`` (with its own masks if
    it gives them), else the individual model labelled ``"final"``; ``masks``: :func:`final_summary`'s."""
    if not rd.writable:
        return
    answer = run.callbacks.reported_model(run.state)
    which, model, *own = answer if answer is not None else ("final", run.model)
    changers = [cb.name for cb in run.callbacks if type(cb).transform_model is not BaseCallback.transform_model]
    rd.save_model(model_payload(which, model, own[0] if own else masks, run.cfg, run.data.spec, changers))


def format_summary(summary: Dict[str, Any], lines: Sequence[str] = ()) -> str:
    """The short table printed at the end of a run.

    Args:
        summary: a completed run's ``summary.json`` body.
        lines: lines to print above the table (the callbacks' ``summary_lines``).
    """
    rows = [
        ("test accuracy", f"{summary['test/acc']:.2f} %"),
        ("test NLL", f"{summary['test/nll']:.4f}"),
        ("test ECE (15 bins)", f"{summary['test/ece']:.4f}"),
        ("sparsity (prunable)", f"{summary['sparsity/global']:.4f}"),
        ("non-zero weights", f"{summary['params/nonzero']:,} of {summary['params/prunable']:,} prunable"),
        ("ITOP rate", f"{summary['itop_rate']:.4f}"),
        ("training time", f"{summary['time/train_s']:.1f} s"),
        ("run directory", summary["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    table: List[str] = list(lines) + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(table)
