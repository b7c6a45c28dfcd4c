"""Tables 1-7 of the Sup-tickets paper (Yin et al., UAI 2022), laid out as in the paper.

How runs map to cells
---------------------
A cell is (method, dataset, model, sparsity, metric); its value is the mean ± sample standard
deviation (ddof=1) over the seeds of the counted (completed, deduplicated) runs that match.

* Methods (rows): ``dense`` = ``sparsifier=dense`` (sparsity 0); ``erk`` = ``sparsifier=static
  distribution=erk``; ``set`` / ``rigl`` / ``granet`` = that sparsifier with ``distribution=erk``;
  ``snip`` = ``sparsifier=snip``; all with ``superposer=none``. ``<method>+sup`` is the same with
  ``superposer=sup_tickets`` at the paper's default setting: CIA averaging, the triangle LR,
  ``num_tickets`` unset (4 on ImageNet, as the paper and ``sweeps/table3_method`` set it) and
  the data set's default cycle length (``superposer.cycle_epochs == dataset.sup_cycle_epochs``). Table 5 varies the cycle length (``rigl+sup/C=<epochs>``), Table 7
  the LR schedule (``rigl+sup/lr=<fge|swa|triangle>``). Small-Dense, DSR, SNFS, TreeNet,
  BatchEnsemble and the dense ensemble are not implemented here: their rows are shown (marked †)
  and never counted as missing.
* Columns keep the paper's data sets, models and sparsity levels (95/90/80 %; 80/90 % for
  ImageNet; 90 % for Table 6, whose sparsity the paper does not state). Runs on a data set the paper does not use (e.g. Fashion-MNIST smoke grids) land in
  the same layout: extra column groups (Tables 1, 2) or row blocks (Tables 3-7) per (data set,
  model) present, at the paper's sparsity levels plus any level present. Cells of these extra
  groups are reported apart from the paper's cells.
* Runs in one cell that differ in anything but the seed (e.g. ``epochs``) are not averaged
  together: the variant with the most seeds (then the most recent) is used and the cell is
  reported as ambiguous, naming the config keys that differ.
* Bold: the best mean (at the printed precision) of each method pair (X vs. X+Sup-tickets) in a
  column -- the paper's "in each setting" -- or of a block (Tables 5-7); Table 4 bolds the
  GraNet+Sup-tickets cells above the dense network. "(n=k)" follows a cell with fewer than the
  paper's 3 seeds; "–" is a missing cell.
* The paper's protocol only: runs with an any-mask training tweak (``tweaks`` other than ``none``)
  or reported at the best-validation epoch (``report=best_val``) are never counted in Tables 1-7
  or Figures 3-5 (:data:`sparse_exp.analysis.selection.PAPER_PROTOCOL`, part of every method key); they go to
  the any-mask tables ``anymask`` / ``anymask_dst`` (:mod:`sparse_exp.analysis.anymask`), written as
  ``anymask.md`` / ``.tex`` and ``anymask_dst.md`` / ``.tex`` (cells in ``anymask_cells.csv``) only
  when such runs exist (or LTH / GraSP / SynFlow / Random masks, which no Sup-tickets table has);
  otherwise they are not written (a stale copy from an earlier call is removed).

Modules: :mod:`sparse_exp.analysis.selection` (which runs a cell counts, mean ± std), :mod:`sparse_exp.analysis.table_model`
(the table and cell model), :mod:`sparse_exp.analysis.layouts` (the seven layouts, :data:`BUILDERS`),
:mod:`sparse_exp.analysis.render` (Markdown, LaTeX, bold), :mod:`sparse_exp.analysis.status_report` (``status.md``); this module
builds the tables and writes them (:func:`write_tables`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence, Union

import pandas as pd

from .anymask import ANYMASK_BUILDERS, finish
from .layouts import BUILDERS
from .regime import st_regime
from .render import cell_markdown, mark_bold, to_latex, to_markdown
from .status_report import report
from .table_model import TableResult, evaluate_table


def build_tables(runs: pd.DataFrame, numbers: Sequence[int] = tuple(BUILDERS)) -> List[TableResult]:
    """Tables ``numbers`` filled from ``runs``, best cells in bold."""
    return [mark_bold(evaluate_table(BUILDERS[n](runs), runs)) for n in numbers]


#: the tables outside the Sup-tickets paper's seven, written only when they have runs: the any-mask family
#: (:mod:`sparse_exp.analysis.anymask`) and ``st_regime`` (:mod:`sparse_exp.analysis.regime`)
EXTRA_BUILDERS = {**ANYMASK_BUILDERS, "st_regime": st_regime}


def build_anymask_tables(runs: pd.DataFrame, names: Sequence[str] = tuple(EXTRA_BUILDERS)) -> List[TableResult]:
    """The extra tables ``names`` (:data:`EXTRA_BUILDERS`) that have runs, filled from ``runs``, best cells in bold."""
    specs = [EXTRA_BUILDERS[n](runs) for n in names]
    return [finish(mark_bold(evaluate_table(s, runs)), runs) for s in specs if s is not None]


def cells_frame(results: Sequence[TableResult]) -> pd.DataFrame:
    """Every value cell of every table (the machine-readable form of the tables)."""
    rows = []
    for res in results:
        for c in res.values():
            s = c.spec
            rows.append({"table": s.table, "method": s.method, "dataset": s.dataset, "model": s.model,
                         "sparsity": round(float(s.sparsity), 6), "metric": s.metric, "paper_cell": s.paper,
                         "where": s.where, "status": c.status, "n": c.n, "mean": c.mean, "std": c.std,
                         "bold": c.bold, "markdown": cell_markdown(c) if s.implemented else "–", "note": c.note,
                         "runs": ";".join(c.paths)})
    return pd.DataFrame(rows)


def write_tables(collection: Any, out: str | Path,
                 numbers: Sequence[Union[int, str]] = (*BUILDERS, *EXTRA_BUILDERS)) -> List[TableResult]:
    """Write ``tableN.md`` / ``tableN.tex``, ``cells.csv``, ``runs.csv``, ``excluded.csv``, ``status.md``,
    the any-mask tables named in ``numbers`` that have runs (``anymask.md``, ..., ``anymask_cells.csv``) and
    ``st_regime.md`` / ``.tex`` / ``st_regime_cells.csv`` (:mod:`sparse_exp.analysis.regime`) when it has runs.

    Returns:
        the paper's tables, then the any-mask tables written (``spec.number`` is their name).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in numbers if isinstance(n, str)]
    results = build_tables(collection.runs, [n for n in numbers if not isinstance(n, str)])
    extra = build_anymask_tables(collection.runs, names)
    for res in results + extra:
        (out / f"{res.spec.file_stem}.md").write_text(to_markdown(res))
        (out / f"{res.spec.file_stem}.tex").write_text(to_latex(res))
    for stale in set(names) - {r.spec.file_stem for r in extra}:  # no runs now: no table
        for suffix in (".md", ".tex"):
            (out / f"{stale}{suffix}").unlink(missing_ok=True)
    cells_frame(results).to_csv(out / "cells.csv", index=False)
    # the any-mask family's cells in anymask_cells.csv, every other extra table's in <name>_cells.csv
    families = {"anymask": list(ANYMASK_BUILDERS), **{n: [n] for n in EXTRA_BUILDERS if n not in ANYMASK_BUILDERS}}
    for family, members in families.items():
        mine = [r for r in extra if r.spec.file_stem in members]
        if mine:
            cells_frame(mine).to_csv(out / f"{family}_cells.csv", index=False)
        elif set(names) >= set(members):
            (out / f"{family}_cells.csv").unlink(missing_ok=True)
    collection.runs.to_csv(out / "runs.csv", index=False)
    collection.excluded.to_csv(out / "excluded.csv", index=False)
    (out / "status.md").write_text("\n".join(report(results + extra, collection)) + "\n")
    return results + extra
