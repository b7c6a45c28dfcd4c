"""Does the tickets' mask diversity predict the superposition gain: ``topology_gain_<group>.md`` / ``.png`` / ``.pdf``
(``make tables``).

Completed Sup-tickets runs with a finite ``diversity/mask_iou`` (two cyclic tickets or more), ``test/acc`` and
``tickets/mean/test/acc`` are grouped by (data set, model, sparsity); a group of three such runs or more gives a
Markdown table (one row per run: accuracies in %, gains in percentage points, the tickets' prediction and mask
diversity, :mod:`sparse_exp.superposers.diversity`), the Pearson and Spearman correlation of the gain with the mask
IoU and with the disagreement (``Series.corr``; Spearman = Pearson of average ranks), and a scatter of both. Runs are
labelled ``<sparsifier>+sup_tickets`` (`` lr_high=<v>`` / `` cycle_epochs=<v>`` where the group's runs differ in
them), with the run's name appended where label and seed coincide. Other runs are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd

from .labels import ds_label, model_label, pct
from .selection import numeric

NEEDED = ("test/acc", "tickets/mean/test/acc", "diversity/mask_iou")
VARYING = ("lr_high", "cycle_epochs")  # superposer.<key>: named in the label where a group's runs differ
#: (table column, summary key, format); gains and the ticket-vs-ultimate range are derived
COLUMNS = [("ultimate test acc", "test/acc", ".2f"), ("mean ticket test acc", "tickets/mean/test/acc", ".2f"),
           ("last individual test acc", "last/test/acc", ".2f"), ("gain vs mean ticket (pp)", None, "+.2f"),
           ("gain vs last individual (pp)", None, "+.2f"), ("disagreement", "diversity/disagreement", ".4f"),
           ("KL", "diversity/kl", ".4f"), ("tickets' mask IoU", "diversity/mask_iou", ".3f"),
           ("mask Hamming", "diversity/mask_hamming", ".4f")]
X_AXES = (("tickets' mask IoU", "tickets' mask IoU (mean over pairs)"),
          ("disagreement", "tickets' prediction disagreement"))


def _col(df: pd.DataFrame, key: str) -> pd.Series:
    return numeric(df[key]) if key in df.columns else pd.Series(np.nan, index=df.index)


def _value(v: object) -> str:
    return f"{v:g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)


def _labels(group: pd.DataFrame) -> List[str]:
    labels = [f"{s}+sup_tickets" for s in group["sparsifier"]]
    for key in VARYING:
        col = f"cfg.superposer.{key}"
        if col in group.columns and group[col].map(_value).nunique() > 1:
            labels = [f"{a} {key}={_value(v)}" for a, v in zip(labels, group[col])]
    same = pd.Series(list(zip(labels, group["seed"]))).duplicated(keep=False).tolist()
    names = group["name"] if "name" in group.columns else group.index
    return [f"{a} ({n})" if dup else a for a, n, dup in zip(labels, names, same)]


def gain_tables(runs: pd.DataFrame) -> Dict[Tuple[str, str, float], pd.DataFrame]:
    """``{(data set, model, sparsity): one row per run}`` of every group with three runs or more, sorted by label
    then seed; columns ``label``, ``seed``, :data:`COLUMNS`' names, ``vs ultimate min`` / ``max``."""
    if runs.empty or any(c not in runs.columns for c in NEEDED + ("superposer", "status")):
        return {}
    sel = runs[(runs["status"] == "completed") & (runs["superposer"] == "sup_tickets")]
    sel = sel[np.isfinite(np.column_stack([_col(sel, k) for k in NEEDED])).all(axis=1)]
    vs_ult = sel.filter(regex=r"^tickets/\d+/mask_iou_vs_ultimate$").apply(numeric)
    out = {}
    for (ds, model, sparsity), g in sel.groupby(["dataset", "model", "sparsity"], sort=True):
        if len(g) < 3:
            continue
        t = pd.DataFrame({"label": _labels(g), "seed": g["seed"].astype(int).to_numpy()}, index=g.index)
        for name, key, _ in COLUMNS:
            if key is not None:
                t[name] = _col(g, key)
        t["gain vs mean ticket (pp)"] = t["ultimate test acc"] - t["mean ticket test acc"]
        t["gain vs last individual (pp)"] = t["ultimate test acc"] - t["last individual test acc"]
        t["vs ultimate min"], t["vs ultimate max"] = vs_ult.loc[g.index].min(axis=1), vs_ult.loc[g.index].max(axis=1)
        out[(str(ds), str(model), float(sparsity))] = t.sort_values(["label", "seed"]).reset_index(drop=True)
    return out


def correlations(t: pd.DataFrame) -> List[Tuple[str, float, float, int]]:
    """``(x column, Pearson r, Spearman rho, n)`` of the gain vs mean ticket against each of :data:`X_AXES`, over
    the runs where both are finite (NaN: fewer than two runs, or a constant)."""
    out = []
    for x, _ in X_AXES:
        pair = t[["gain vs mean ticket (pp)", x]].dropna()
        y, v = pair.iloc[:, 0], pair.iloc[:, 1]
        out.append((x, y.corr(v), y.rank().corr(v.rank()), len(pair)))
    return out


def _f(v: float, fmt: str, missing: str = "–") -> str:
    return f"{v:{fmt}}" if np.isfinite(v) else missing


def _markdown(title: str, t: pd.DataFrame) -> str:
    names = [n for n, _, _ in COLUMNS]
    lines = [f"# Superposition gain vs the tickets' diversity: {title}", "",
             "Accuracies in %, gains in percentage points (pp); diversity among the cyclic tickets.", "",
             "| run | seed | " + " | ".join(names) + " | ticket vs ultimate IoU (min-max) |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for _, r in t.iterrows():
        lo, hi = r["vs ultimate min"], r["vs ultimate max"]
        cells = [_f(r[n], f, "") for n, _, f in COLUMNS] + [_f(lo, ".3f", "") + ("-" if np.isfinite(lo) else "")
                                                          + _f(hi, ".3f", "")]
        lines.append(f"| {r['label']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "Correlation of the gain vs mean ticket (pp) across the runs:", "",
              "| with | Pearson r | Spearman ρ | n |", "|---|---|---|---|"]
    lines += [f"| {x} | {_f(p, '.3f')} | {_f(s, '.3f')} | {n} |" for x, p, s, n in correlations(t)]
    lines += ["", f"These correlations are descriptive over the {len(t)} runs at hand (settings and seeds pooled), "
              "not a test: they give no p-value and say nothing beyond these runs."]
    return "\n".join(lines) + "\n"


def write_topology_gain(runs: pd.DataFrame, out: Path) -> List[Path]:
    """The scatter (PNG, PDF) and table (Markdown) of every group of three runs or more; returns their paths."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from .figures import _empty, save

    paths: List[Path] = []
    for (ds, model, sparsity), t in gain_tables(runs).items():
        stem = f"topology_gain_{ds}_{model}_{round(sparsity * 100)}"
        title = f"{model_label(model)}, {ds_label(ds)}, {pct(sparsity)} sparsity"
        fig = Figure(figsize=(10, 3.6))
        axes = fig.subplots(1, 2, sharey=True)
        base = t["label"].str.replace(r" \(.*\)$", "", regex=True)
        for ax, (x, xlabel), (_, p, rho, n) in zip(axes, X_AXES, correlations(t)):
            if n == 0:
                _empty(ax, f"no run with a finite {x}")
                continue
            for k, lab in enumerate(sorted(base.unique())):
                sub = t[base == lab]
                ax.scatter(sub[x], sub["gain vs mean ticket (pp)"], s=24, color=f"C{k}", label=lab)
            ax.axhline(0.0, color="0.6", lw=0.8)
            ax.set_xlabel(xlabel)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.set_title(f"Pearson r = {_f(p, '.2f')}, Spearman ρ = {_f(rho, '.2f')}, n = {n}", fontsize=9)
        axes[0].set_ylabel("gain: ultimate - mean ticket (pp)")
        axes[1].legend(*axes[0].get_legend_handles_labels(), frameon=False, loc="upper left",
                       bbox_to_anchor=(1.02, 1.0))
        paths += save(fig, out, stem, f"Superposition gain vs the tickets' diversity\n{title}")
        md = out / f"{stem}.md"
        md.write_text(_markdown(title, t))
        paths.append(md)
    return paths
