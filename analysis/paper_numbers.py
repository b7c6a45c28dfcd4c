"""The published numbers (``paper_numbers.csv``) and ours next to them.

``paper_numbers.csv`` holds Tables 1-7 of Yin et al. (UAI 2022) (Table 6 at 90 % sparsity, which
the paper does not state; sweeps/table6.yaml runs 90 %), one row per cell, keyed
like :class:`sparse_exp.analysis.table_model.CellSpec` -- ``(table, method, dataset, model, sparsity, metric)`` --
and citing the paper's own row and column labels (``paper_row``, ``paper_column``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence

import pandas as pd

PAPER_CSV = Path(__file__).resolve().parent / "paper_numbers.csv"
KEY = ["table", "method", "dataset", "model", "sparsity", "metric"]


def load_paper_numbers(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    df = pd.read_csv(path, comment="#")
    df["sparsity"] = df["sparsity"].astype(float).round(6)
    return df


def compare(cells: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every published number with ours (``ours_mean``, ``ours_std``, ``n``) and ``diff`` = ours - paper.

    ``cells`` is :func:`sparse_exp.analysis.tables.cells_frame`; a paper cell that several of our cells share
    (e.g. Table 3's dense row, printed in both sparsity groups) is matched once."""
    paper = load_paper_numbers() if paper is None else paper
    ours = cells[cells["paper_cell"]].copy() if len(cells) else pd.DataFrame(columns=KEY + ["n", "mean", "std"])
    ours["sparsity"] = ours["sparsity"].astype(float).round(6)
    ours = ours.drop_duplicates(KEY)[KEY + ["n", "mean", "std"]].rename(
        columns={"mean": "ours_mean", "std": "ours_std"})
    out = paper.merge(ours, on=KEY, how="left")
    out["n"] = out["n"].fillna(0).astype(int)
    out["diff"] = out["ours_mean"] - out["mean"]
    return out


def _f(x: float, d: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def to_markdown(cmp: pd.DataFrame, only_ours: bool = False) -> str:
    """Markdown: table, the paper's row and column, paper mean ± std, ours, difference."""
    rows = cmp[cmp["n"] > 0] if only_ours else cmp
    lines = ["| Table | Paper row | Paper column | Paper | Ours | Ours − paper | Seeds |",
             "|:--|:--|:--|--:|--:|--:|--:|"]
    for _, r in rows.iterrows():
        paper = _f(r["mean"]) + ("" if pd.isna(r["std"]) else f" ± {_f(r['std'])}")
        ours = "–" if r["n"] == 0 else _f(r["ours_mean"]) + (
            "" if pd.isna(r["ours_std"]) else f" ± {_f(r['ours_std'])}")
        diff = "–" if r["n"] == 0 else f"{r['diff']:+.2f}"
        lines.append(f"| {r['table']} | {r['paper_row']} | {r['paper_column']} | {paper} | {ours} | {diff} | "
                     f"{r['n']} |")
    return "\n".join(lines) + "\n"


def write_comparison(cells: pd.DataFrame, out: str | Path) -> pd.DataFrame:
    """``compare_paper.md`` and ``compare_paper.csv`` in ``out``; returns the comparison."""
    out = Path(out)
    cmp = compare(cells)
    cmp.to_csv(out / "compare_paper.csv", index=False)
    head = ["# Ours vs. the published numbers (Yin et al., UAI 2022)", "",
            f"{int((cmp['n'] > 0).sum())} of {len(cmp)} published cells have runs here.", ""]
    (out / "compare_paper.md").write_text("\n".join(head) + to_markdown(cmp))
    return cmp


def summary_lines(cmp: pd.DataFrame) -> List[str]:
    """Lines to print: the cells we have, next to the paper's, and how many we lack."""
    have = cmp[cmp["n"] > 0]
    lines = [f"Paper comparison: {len(have)} of {len(cmp)} published cells have runs here"]
    if len(have):
        lines += to_markdown(have).rstrip("\n").split("\n")
    return lines


__all__: Sequence[str] = ["PAPER_CSV", "load_paper_numbers", "compare", "to_markdown", "write_comparison",
                          "summary_lines"]
