"""Table ``st_regime``: Sup-tickets against its base method, ticket by ticket, outside CIFAR and ImageNet
(docs/measured.md "Sup-tickets in the paper's regime"; ``sweeps/st_fmnist.yaml``).

One block per (data set, model, epochs) with a SET / RigL / GraNet + Sup-tickets run; rows = (sparsity, method,
base or + Sup-tickets at the paper's default, ``<method>+sup``); columns = :data:`COLUMNS` (``Top-1`` = the
run's result, last individual model, mean cheap ticket -- absent unless ``superposer.ticket_eval=val_test`` --,
NLL, ECE), mean ± sample std over seeds with ``(n=k)``. Then the ablation blocks :data:`ABLATIONS` (RigL +
Sup-tickets at every cycle length / cycle LR peak present, on the seeds all its values share). Bold: the better
of base and + Sup-tickets per sparsity and column (higher accuracy, lower NLL / ECE), or the best of a block.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from .anymask import pct
from .labels import SHORT, ds_label, fmt_num, model_label
from .selection import Pred, method_filters, numeric, select
from .table_model import Block, CellSpec, Row, TableSpec

PAPER_DATASETS = ("cifar10", "cifar100", "imagenet")
METHODS = ("set", "rigl", "granet")
#: (column label, summary metric, shown for the base method)
COLUMNS = (("Top-1", "test/acc", True), ("last individual", "last/test/acc", False),
           ("mean cheap ticket", "tickets/mean/test/acc", False), ("NLL", "test/nll", True),
           ("ECE", "test/ece", True))


def _blocks(runs: pd.DataFrame) -> List[Tuple[str, str, int]]:
    """(data set, model, epochs) with a DST + Sup-tickets run outside the paper's data sets."""
    if runs.empty or "superposer" not in runs.columns:
        return []
    sub = runs[(runs["superposer"] == "sup_tickets") & runs["sparsifier"].isin(list(METHODS))
               & ~runs["dataset"].isin(list(PAPER_DATASETS))]
    return sorted({(str(d), str(m), int(e)) for d, m, e in zip(sub["dataset"], sub["model"], numeric(sub["epochs"]))})


def _levels(df: pd.DataFrame) -> List[float]:
    return sorted({round(float(x), 6) for x in numeric(df["sparsity"]).dropna() if x > 0}, reverse=True)


def _row(key: str, labels: List[str], method: str, sup: bool, where: Dict[str, Any], s: float,
         bold_group: str, title: str) -> Row:
    filters = dict(method_filters(method), **where, sparsity=float(s))
    cells: List[Any] = []
    for label, metric, on_base in COLUMNS:
        if not (sup or on_base):
            cells.append("")
            continue
        kind = "acc" if metric.endswith("/acc") else "loss"
        cells.append(CellSpec("st_regime", f"{method}/{metric}", where["dataset"], where["model"], s, metric,
                              kind=kind, paper=False, optional=True, show_n=True,
                              where=f"{title} {pct(s)} {label}", filters=filters))
    return Row(key, labels, cells, bold_group=bold_group, name=f"{title}: {' '.join(labels)}")


def _values(sub: pd.DataFrame, col: str) -> List[float]:
    if col not in sub.columns:
        return []
    return sorted({float(c) for c in numeric(sub[col]).dropna()})


#: the ablation blocks: (block title, config column, method key prefix, row label with {v})
ABLATIONS = (("cycle length", "cfg.superposer.cycle_epochs", "C", "RigL + Sup-tickets, C={v} epochs"),
             ("cycle LR peak", "cfg.superposer.lr_high", "peak", "RigL + Sup-tickets, cycle LR peak {v}"))


def _ablation_rows(at: pd.DataFrame, where: Dict[str, Any], title: str, col: str, prefix: str,
                   label: str) -> List[Row]:
    """RigL + Sup-tickets at every value of ``col`` (each other setting the paper's), per sparsity with at least
    two values, counted on the seeds every value has: the paper's value usually has more seeds, from the main
    grid, and counting them all would compare a 3-seed mean with single runs."""
    rows: List[Row] = []
    rigl_sup = select(at, method_filters("rigl+sup/any"))
    for s in _levels(rigl_sup):
        seeds: Dict[float, set] = {}
        for v in _values(select(rigl_sup, {"sparsity": s}), col):
            runs_v = select(at, dict(method_filters(f"rigl+sup/{prefix}={fmt_num(v)}"), sparsity=s))
            if not runs_v.empty:
                seeds[v] = set(numeric(runs_v["seed"]).dropna().astype(int))
        common = sorted(set.intersection(*seeds.values())) if seeds else []
        if len(seeds) < 2 or not common:
            continue
        on_seeds = Pred(f"seed in {common}", lambda df, k=tuple(common): numeric(df["seed"]).isin(k))
        for v in sorted(seeds):
            key = f"rigl+sup/{prefix}={fmt_num(v)}"
            rows.append(_row(f"{s}/{prefix}={v}", [pct(s), label.format(v=fmt_num(v))], key, True,
                             dict(where, seed=on_seeds), s, f"{s}/{prefix}", title))
    return rows


def st_regime(runs: pd.DataFrame) -> Optional[TableSpec]:
    """The table, or ``None`` without a DST + Sup-tickets run outside CIFAR and ImageNet."""
    groups = _blocks(runs)
    if not groups:
        return None
    header = [(["Sparsity", "Method"], [(label, 1) for label, _, _ in COLUMNS])]
    blocks: List[Block] = []
    for ds, model, epochs in groups:
        where = {"dataset": ds, "model": model, "epochs": epochs}
        title = f"{model_label(model)} on {ds_label(ds)}, {epochs} epochs"
        at = select(runs, where)
        rows: List[Row] = []
        for s in _levels(at):
            for m in METHODS:
                pair = [(m, False, SHORT[m]), (m + "+sup", True, f"{SHORT[m]} + Sup-tickets")]
                if all(select(at, dict(method_filters(k), sparsity=s)).empty for k, _, _ in pair):
                    continue
                rows += [_row(f"{s}/{k}", [pct(s), lab], k, sup, where, s, f"{s}/{m}", title)
                         for k, sup, lab in pair]
        blocks.append(Block(title, rows))
        for name, col, prefix, label in ABLATIONS:
            rows = _ablation_rows(at, where, title, col, prefix, label)
            if rows:
                blocks.append(Block(f"{title}: {name}", rows))
    notes = ["Cells: mean ± std over seeds, (n=k) = seeds counted; Top-1 / last individual / mean cheap ticket: "
             "test accuracy (%); NLL and ECE (15 bins) of the reported model (the base method's final model, or the "
             "ultimate ticket) on the test set; bold: the better of a method and its + Sup-tickets row (higher "
             "accuracy, lower NLL / ECE), or the best cycle length / LR peak; –: no run (or superposer.ticket_eval "
             "without test evaluations)."]
    caption = ("Sup-tickets (Yin et al., UAI 2022) against its base method outside the paper's data sets: the "
               "ultimate ticket, the last individual model and the mean cheap ticket.")
    return TableSpec("st_regime", caption, ["Sparsity", "Method"], header, blocks, notes=notes)
