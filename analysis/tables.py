"""Tables 1-7 of the Sup-tickets paper (Yin et al., UAI 2022), laid out as in the paper; :func:`write_tables`.

A cell (method, dataset, model, sparsity, metric) is mean ± sample std (ddof=1) over the seeds of the counted runs
that match (:mod:`sparse_exp.analysis.selection`). Rows: ``dense``, ``erk`` (static ERK), ``set`` / ``rigl`` /
``granet`` (ERK), ``snip``, all ``superposer=none``; ``<method>+sup`` adds ``superposer=sup_tickets`` at the paper's
default (CIA, triangle LR, ``num_tickets`` unset, the data set's cycle length); Table 5 varies the cycle length
(``rigl+sup/C=<epochs>``), Table 7 the LR (``rigl+sup/lr=<fge|swa|triangle>``); rows not implemented here are marked
† and never missing. Columns: the paper's data sets, models and sparsities; other data sets are reported apart. Runs
of a cell differing in more than the seed: the variant with the most seeds (then the latest), flagged ambiguous.
Bold: the best printed mean of X / X + Sup-tickets (Tables 5-7: of a block; Table 4: GraNet + Sup-tickets above
dense); "(n=k)": fewer than 3 seeds; "–": missing. Runs outside the protocol: :mod:`sparse_exp.analysis.anymask`.
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
