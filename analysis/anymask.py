"""The any-mask tables, laid out like those of Jaiswal et al., "Training Your Sparse Neural Network Better
with Any Mask" (ICML 2022; reference code VITA-Group/ToST).

* ``anymask`` -- static masks (``superposer=none``): one block per (data set, model); rows = the tweaks
  (:data:`TWEAK_ROWS`, then other combinations present, joined with " + "); columns = mask × sparsity.
* ``anymask_dst`` -- RigL / GraNet / SET (ERK): rows = method × {base, + Sup-tickets, + all four tweaks, both},
  then other tweak combinations; columns = (data set, model) × sparsity.

A table exists only for the (data set, model) pairs with a run the Sup-tickets tables leave out (a tweak or
``report=best_val``, :data:`sparse_exp.analysis.selection.PAPER_PROTOCOL`; for ``anymask`` also an LTH / GraSP /
SynFlow / Random mask); the pair's other runs fill the baseline rows. A cell is ``test/acc``, mean ± sample std
over seeds with ``(n=k)``, never mixing two ``report`` rules; bold: the best row per column of a block
(``anymask``) or per method (``anymask_dst``). Ghost skip parameters are noted per block. No published numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .labels import SHORT, ds_label, model_label
from .labels import pct as _pct_g
from .selection import PAPER_PROTOCOL, choice_is, method_filters, numeric, select
from .table_model import Block, CellSpec, Row, TableResult, TableSpec

MASKS = {"lth": "LTH", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow", "random": "Random"}
DST_METHODS = ("rigl", "granet", "set")
ALL_FOUR = "ghost_skip+label_smoothing+lrsi+soft_neurons"
#: the paper's tweak rows, in its order: (``tweaks`` label, row label)
TWEAK_ROWS = (("none", "baseline"), ("soft_neurons", "+ ghost soft neurons"),
              ("ghost_skip", "+ ghost skip connections"), ("lrsi", "+ LRsI"),
              ("label_smoothing", "+ label smoothing"), (ALL_FOUR, "all four"))
GHOST = "ghost_skip"
PAPER_NOTE = ("paper: not available offline (the paper body is not in ../shared/papers: only its metadata and a "
              "summary are), so no cell is compared with the published numbers of Jaiswal et al. (ICML 2022)")
DST_PAPER_NOTE = ("paper: not available offline, and no reference ran this combination (Yin et al., UAI 2022 ran "
                  "no any-mask tweak; Jaiswal et al., ICML 2022 ran no dynamic sparse training nor Sup-tickets)")
REPORT_PLACEHOLDER = "{report}"


# ---------------------------------------------------------------------------- run columns
def pct(s: float) -> str:
    """A sparsity as the tables print it: ``95%``; levels that are not whole per cents (the IMP levels
    1 - 0.8^k of the ToST code: 0.790285, ...) with one decimal, ``79.0%``."""
    v = 100 * float(s)
    return _pct_g(s) if abs(v - round(v)) < 1e-6 else f"{v:.1f}%"


def tweaks_of(df: pd.DataFrame) -> pd.Series:
    """Each run's ``tweaks`` label (a missing one reads ``none``)."""
    if "tweaks" not in df.columns:
        return pd.Series("none", index=df.index)
    return df["tweaks"].where(df["tweaks"].notna(), "none").astype(str)


def _has_ghost(label: str) -> bool:
    return GHOST in label.split("+")


def _pairs(df: pd.DataFrame) -> List[Tuple[str, str]]:
    return sorted({(str(d), str(m)) for d, m in zip(df["dataset"], df["model"])})


def _family(runs: pd.DataFrame, keep: Callable[[pd.DataFrame], pd.Series],
            own: Sequence[str] = ()) -> Tuple[pd.DataFrame, List]:
    """The runs of a family (``keep``) on the (data set, model) pairs that have one of its own runs:
    outside the Sup-tickets paper's protocol, or of a sparsifier in ``own``."""
    if runs.empty or "sparsifier" not in runs.columns:
        return runs.iloc[0:0], []
    sub = runs[keep(runs).astype(bool)]
    groups = _pairs(sub[~PAPER_PROTOCOL.fn(sub).astype(bool) | sub["sparsifier"].isin(list(own))])
    at = pd.Series([(str(d), str(m)) in groups for d, m in zip(sub["dataset"], sub["model"])], index=sub.index,
                   dtype=bool)
    return sub[at], groups


def _levels(df: pd.DataFrame) -> List[float]:
    s = numeric(df["sparsity"]).dropna()
    return sorted({round(float(x), 6) for x in s if x > 0}, reverse=True)


def _extra_tweaks(labels: Sequence[str], known: Sequence[str]) -> List[str]:
    """Tweak combinations present that are not one of ``known``: fewest tweaks first, then by name."""
    return sorted(set(labels) - set(known), key=lambda t: (len(t.split("+")), t))


def combo_label(tweaks: str) -> str:
    """Row label of a tweak combination outside :data:`TWEAK_ROWS`: its names joined with " + "."""
    return " + ".join(tweaks.split("+"))


# ---------------------------------------------------------------------------- notes
def _fmt_ratio(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return f"+{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"+{lo:.2f}x to +{hi:.2f}x"


def ghost_note(runs: pd.DataFrame, where: str) -> Optional[str]:
    """What the ghost skip paths of ``runs`` (rows with ghost skip connections) add, per sparsity:
    their dense parameters relative to the kept (non-zero) weights, whether the final network keeps
    them, and their training FLOPs; ``None`` without such runs."""
    g = runs[[_has_ghost(t) for t in tweaks_of(runs)]] if not runs.empty else runs
    if g.empty:
        return None
    parts = []
    for s in _levels(g):
        at = g[np.isclose(numeric(g["sparsity"]), s, rtol=0, atol=1e-6)]
        ins = numeric(at["ghost/params_inserted"]) if "ghost/params_inserted" in at else pd.Series(dtype=float)
        nz = numeric(at["params/nonzero"]) if "params/nonzero" in at else pd.Series(dtype=float)
        ratio = (ins / nz).replace([np.inf, -np.inf], np.nan).dropna() if len(ins) else ins
        if ratio.empty:
            parts.append(f"at {pct(s)}: ghost/params_inserted or params/nonzero not in the summaries")
            continue
        removed = [bool(x) for x in at.get("ghost/removed", pd.Series(dtype=object)).dropna()]
        if removed and all(removed):
            what = "removed before the end (the final network holds only the mask's weights)"
        elif any(removed):
            what = f"removed before the end in {sum(removed)} of {len(removed)} runs, kept in the others"
        else:
            what = "kept in the final network"
        text = (f"{_fmt_ratio(list(ratio))} the kept weights at {pct(s)} ({int(ins.dropna().mean()):,} dense "
                f"parameters vs {int(nz.dropna().mean()):,} non-zero weights), {what}")
        fl = numeric(at["ghost/flops_train"]).dropna() if "ghost/flops_train" in at else pd.Series(dtype=float)
        if len(fl):
            text += f"; their training FLOPs {fl.mean():.3f}x the dense model's"
        parts.append(text)
    return (f"{where}: ghost paths (rows with ghost skip connections; dense parameters outside the mask, so "
            f"those rows are not at the same parameter count as the baseline): " + "; ".join(parts) + ".")


def report_rule(runs: pd.DataFrame) -> str:
    """Which reporting rule ``runs`` used: ``best_val``, ``last`` or mixed (with the counts)."""
    rep = runs["report"].where(runs["report"].notna(), "last").astype(str) if "report" in runs else \
        pd.Series("last", index=runs.index)
    counts = rep.value_counts()
    if len(counts) == 0:
        return "reporting rule: no runs"
    if len(counts) > 1:
        return "reporting rule mixed (" + ", ".join(f"report={k} in {v} runs" for k, v in sorted(counts.items())) + \
            "; a cell never mixes two)"
    rule = counts.index[0]
    if rule == "best_val":
        return "reported at the best-validation epoch (report=best_val: test accuracy at the epoch of the best " \
               "validation accuracy, report/epoch)"
    return f"reported for the final model (report={rule})"


def finish(res: TableResult, runs: pd.DataFrame) -> TableResult:
    """Fill the caption's reporting rule from the runs the cells count (in place; returns ``res``)."""
    placed = {p for c in res.values() for p in c.paths}
    counted = runs[runs["path"].isin(placed)] if len(runs) else runs
    res.spec.caption = res.spec.caption.replace(REPORT_PLACEHOLDER, report_rule(counted))
    return res


# ---------------------------------------------------------------------------- the two tables
def _cell(table: str, method: str, ds: str, model: str, s: float, filters: Dict[str, Any], where: str) -> CellSpec:
    f = dict(filters, dataset=ds, model=model, sparsity=float(s))
    return CellSpec(table, method, ds, model, s, "test/acc", paper=False, optional=True, show_n=True,
                    where=where, filters=f)


def anymask(runs: pd.DataFrame) -> Optional[TableSpec]:
    """Table ``anymask`` (static masks × tweaks); ``None`` without a static-mask run of its own."""
    sub, groups = _family(runs, lambda r: (r["superposer"] == "none") & r["sparsifier"].isin(list(MASKS)),
                          own=[m for m in MASKS if m != "snip"])
    if not groups:
        return None
    masks = [m for m in MASKS if (sub["sparsifier"] == m).any()]
    cols = [(m, s) for m in masks for s in _levels(sub[sub["sparsifier"] == m])]
    header = [(["Tweak"], [(MASKS[m], sum(1 for mm, _ in cols if mm == m)) for m in masks]),
              (["Sparsity"], [(pct(s), 1) for _, s in cols])]
    blocks, notes = [], [PAPER_NOTE + "."]
    for ds, model in groups:
        at = sub[(sub["dataset"] == ds) & (sub["model"] == model)]
        present = set(tweaks_of(at))
        rows_t = [(t, lab) for t, lab in TWEAK_ROWS if t == "none" or t in present]
        rows_t += [(t, combo_label(t)) for t in _extra_tweaks(list(present), [t for t, _ in TWEAK_ROWS])]
        title = f"{model_label(model)} on {ds_label(ds)}"
        rows = []
        for t, lab in rows_t:
            cells = [_cell("anymask", f"{m}/tweaks={t}", ds, model, s,
                           {"sparsifier": m, "superposer": "none", "tweaks": choice_is("tweaks", t)},
                           f"{title} {MASKS[m]} {pct(s)}") for m, s in cols]
            rows.append(Row(t, [lab], cells, bold_group="block", name=f"{title}: {lab}"))
        blocks.append(Block(title, rows))
        note = ghost_note(at, title)
        if note:
            notes.append(note)
    notes.append("Cells: test accuracy (%), mean ± std over seeds, (n=k) = seeds counted; bold: the best row of "
                 "each column in a block; –: no run.")
    caption = ("Test accuracy (%) of sparse networks trained from static masks (superposer=none) with the "
               "any-mask training tweaks of Jaiswal et al. (ICML 2022), " + REPORT_PLACEHOLDER + ".")
    return TableSpec("anymask", caption, ["Tweak"], header, blocks, notes=notes)


def _dst_variants(method: str, present: Sequence[Tuple[str, str]]) -> List[Tuple[str, bool, str]]:
    """(tweaks, sup, label) rows of one method: the four of the layout, then other combinations."""
    short = SHORT[method]
    rows = [("none", False, short), ("none", True, f"{short} + Sup-tickets"),
            (ALL_FOUR, False, f"{short} + all four tweaks"),
            (ALL_FOUR, True, f"{short} + Sup-tickets + all four tweaks")]
    for t in _extra_tweaks([t for t, _ in present], ["none", ALL_FOUR]):
        rows += [(t, False, f"{short} + {combo_label(t)}"), (t, True, f"{short} + Sup-tickets + {combo_label(t)}")]
    return rows


def dst_filters(method: str, tweaks: str, sup: bool) -> Dict[str, Any]:
    """The runs of one anymask_dst row: the method key's filters with ``tweaks`` for the paper's protocol."""
    f = method_filters(method + ("+sup" if sup else ""))
    del f["protocol"]
    f["tweaks"] = choice_is("tweaks", tweaks)
    return f


def anymask_dst(runs: pd.DataFrame) -> Optional[TableSpec]:
    """Table ``anymask_dst`` (RigL / GraNet / SET × Sup-tickets × tweaks); ``None`` without a DST run
    outside the Sup-tickets paper's protocol."""
    sub, groups = _family(runs, lambda r: r["sparsifier"].isin(list(DST_METHODS)))
    if not groups:
        return None
    cols = [(g, s) for g in groups for s in _levels(sub[(sub["dataset"] == g[0]) & (sub["model"] == g[1])])]
    glabel = {g: f"{ds_label(g[0])} ({model_label(g[1])})" for g in groups}
    header = [(["Method"], [(glabel[g], sum(1 for gg, _ in cols if gg == g)) for g in groups]),
              (["Sparsity"], [(pct(s), 1) for _, s in cols])]
    blocks = []
    for m in DST_METHODS:
        mine = sub[sub["sparsifier"] == m]
        present = [(t, str(x)) for t, x in zip(tweaks_of(mine), mine["superposer"])]
        rows = []
        for t, sup, lab in _dst_variants(m, present):
            f = dst_filters(m, t, sup)
            if select(mine, f).empty:
                continue
            cells = [_cell("anymask_dst", f"{m}{'+sup' if sup else ''}/tweaks={t}", g[0], g[1], s, f,
                           f"{glabel[g]} {pct(s)}") for g, s in cols]
            rows.append(Row(f"{m}/{sup}/{t}", [lab], cells, bold_group=m))
        if rows:
            blocks.append(Block(None, rows))
    notes = [DST_PAPER_NOTE + "."]
    for g in groups:
        at = sub[(sub["dataset"] == g[0]) & (sub["model"] == g[1])]
        note = ghost_note(at, glabel[g])
        if note:
            notes.append(note)
    notes.append("Cells: test accuracy (%), mean ± std over seeds, (n=k) = seeds counted; bold: the best row of "
                 "each method in a column; –: no run. + Sup-tickets: the Sup-tickets paper's default setting "
                 "(CIA, triangle LR, the data set's cycle length); ERK distribution.")
    caption = ("Test accuracy (%) of dynamic sparse training (RigL, GraNet, SET) with Sup-tickets (Yin et al., "
               "UAI 2022) and the four any-mask tweaks (Jaiswal et al., ICML 2022), a combination no reference ran, "
               + REPORT_PLACEHOLDER + ".")
    return TableSpec("anymask_dst", caption, ["Method"], header, blocks, notes=notes)


#: the any-mask family: ``{name: builder(runs) -> TableSpec or None}``
ANYMASK_BUILDERS: Dict[str, Callable[[pd.DataFrame], Optional[TableSpec]]] = {
    "anymask": anymask, "anymask_dst": anymask_dst}
