"""Per-run learning curves, ``<run>/curves.png``: :func:`plot_curves` (command: ``python -m sparse_exp.plot``).

Six panels: training loss (and validation NLL), training / validation accuracy, the LR at every optimizer
step with the callbacks' marks (``Callback.plot_marks``), global sparsity, the mask topology (ITOP rate: fraction
of prunable weights ever active; Hamming distance and IoU of the masks vs the initial masks, and the latest mask
update's Hamming distance: :mod:`sparse_exp.callbacks.topology_meter`), and for a Sup-tickets run each ticket's
test accuracy (from ``summary.json``).
Matplotlib's Agg canvas without timestamps: the same run gives the same bytes.
"""


from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sparse_exp.run.run_dir import RunDir, read_summary

CURVES = "curves.png"
PNG_META = {"Software": None}
Marks = Sequence[Tuple[int, str]]


def lr_trace(run: Any) -> Tuple[List[int], List[float]]:
    """``(steps, lrs)``: the learning rate of parameter group 0 at every optimizer step (1-based) of ``run``."""
    total = run.total_epochs * run.state.steps_per_epoch
    factor, base = run.scheduler.lr_lambdas[0], run.scheduler.base_lrs[0]
    return list(range(1, total + 1)), [base * factor(i) for i in range(total)]


def _series(rows: List[Dict[str, Any]], key: str) -> Tuple[List[int], List[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _tickets(summary: Optional[Dict[str, Any]]) -> List[Tuple[str, float]]:
    if not summary or summary.get("status") != "completed":
        return []
    idx = sorted({int(m.group(1)) for k in summary if (m := re.fullmatch(r"tickets/(\d+)/test/acc", k))})
    bars = [(f"ticket {i}" if i else "end of normal phase", summary[f"tickets/{i}/test/acc"]) for i in idx]
    if bars and "last/test/acc" in summary:
        u = "final/" if "final/test/acc" in summary else ""
        bars += [("last individual", summary["last/test/acc"]), ("ultimate ticket", summary[f"{u}test/acc"])]
    return bars


def plot_curves(run_dir: Path, lr: Optional[Tuple[List[int], List[float]]] = None, marks: Marks = (),
                out: Optional[Path] = None) -> Path:
    """Render ``curves.png`` for ``run_dir`` from its ``metrics.jsonl`` and ``summary.json``.

    Args:
        lr: ``(steps, lrs)`` (:func:`lr_trace`); None leaves the LR panel to the epoch-end LRs of the metrics.
        marks: ``(global step, label)`` to mark on the LR curve (:meth:`CallbackList.plot_marks`).
        out: where to write (default ``run_dir/curves.png``).

    Returns:
        the PNG's path.
    """
    rd = RunDir(run_dir)
    rows = rd.metrics()
    summary = read_summary(rd.path / "summary.json")
    # a bare Figure (Agg when saved to PNG), no pyplot: no global backend, no figure manager to close,
    # and matplotlib is imported only when a plot is drawn (pyplot costs ~0.5 s of every command's start-up)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 6.5), dpi=100)
    axes = fig.subplots(2, 3)
    (loss_ax, acc_ax, lr_ax), (sp_ax, itop_ax, t_ax) = axes
    loss_ax.plot(*_series(rows, "train/loss"), label="train loss")
    loss_ax.plot(*_series(rows, "val/nll"), label="validation NLL")
    loss_ax.set(xlabel="epoch", ylabel="nats", title="loss")
    acc_ax.plot(*_series(rows, "train/acc"), label="train")
    acc_ax.plot(*_series(rows, "val/acc"), label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    if lr is not None:
        lr_ax.plot(*lr, lw=0.8, color="C0")
        lr_ax.set_xlabel("optimizer step")
        lookup = dict(zip(*lr))
        for k, (step, label) in enumerate(marks):
            if label.startswith("ticket"):
                lr_ax.plot([step], [lookup.get(step, math.nan)], "o", ms=4, color="C3",
                           label="cheap tickets" if k == next(i for i, m in enumerate(marks)
                                                              if m[1].startswith("ticket")) else None)
            else:
                lr_ax.axvline(step, color="0.5", ls="--", lw=0.8, label=label)
    else:
        lr_ax.plot(*_series(rows, "lr"), marker=".", color="C0")
        lr_ax.set_xlabel("epoch (LR at its end)")
    lr_ax.set(ylabel="learning rate", title="learning rate")
    lr_ax.set_yscale("log")
    sp_ax.plot(*_series(rows, "sparsity/global"), color="C2")
    sp_ax.set(xlabel="epoch", ylabel="fraction of zeros", title="global sparsity")
    itop_ax.plot(*_series(rows, "itop_rate"), color="C4", label="ITOP rate (ever active)")
    for key, label, style in (("topology/iou_vs_init", "IoU vs initial mask", "-"),
                              ("topology/hamming_vs_init", "Hamming vs initial mask", "-"),
                              ("topology/hamming_vs_prev", "Hamming, latest update", ":")):
        if any(key in r for r in rows):
            itop_ax.plot(*_series(rows, key), ls=style, label=label)
    itop_ax.set(xlabel="epoch", ylabel="fraction of positions", title="mask topology")
    bars = _tickets(summary)
    if bars:
        colors = ["C7"] * (len(bars) - 2) + ["C1", "C3"]
        t_ax.bar(range(len(bars)), [b[1] for b in bars], color=colors)
        t_ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
        lo = min(b[1] for b in bars)
        t_ax.set_ylim(max(0.0, lo - 2.0), max(b[1] for b in bars) + 1.0)
        t_ax.set(ylabel="test accuracy (%)", title="cheap tickets and the ultimate ticket")
    else:
        t_ax.axis("off")
        t_ax.text(0.5, 0.5, "no cheap tickets" if summary and summary.get("status") == "completed"
                  else "tickets: once the run has finished", ha="center", va="center", color="0.5")
    for ax in (loss_ax, acc_ax, lr_ax, itop_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=8)
    status = (summary or {}).get("status", "no summary")
    fig.suptitle(f"{rd.path.name}  ({status}, {len(rows)} epochs)", fontsize=10)
    # fixed margins, not tight_layout(): that took 0.3-0.5 s of a tiny run's ~3 s (a test suite runs hundreds)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.9, wspace=0.28, hspace=0.5)
    path = Path(out) if out is not None else rd.path / CURVES
    fig.savefig(path, metadata=PNG_META)
    return path
