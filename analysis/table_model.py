"""The model of a table: its layout (:class:`TableSpec` of :class:`Block` s of :class:`Row` s of
:class:`CellSpec` s), and the layout filled from runs (:class:`TableResult` of :class:`CellValue` s).

A cell is ``(table, method, dataset, model, sparsity, metric)`` -- the key shared with
``paper_numbers.csv`` -- and its value is the mean ± sample standard deviation (ddof=1) over the
seeds of the counted runs that match (:mod:`sparse_exp.analysis.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import pandas as pd

from .selection import finite_values, mean_std, method_filters, pick_variant, select

#: seeds per cell in the paper; a cell with fewer says so ("(n=k)")
PAPER_SEEDS = 3


@dataclass
class CellSpec:
    """One value cell: which runs (``filters``) and which summary ``metric``.

    ``(table, method, dataset, model, sparsity, metric)`` is the cell's key, shared with
    ``paper_numbers.csv``. ``paper`` marks the cells of the paper's own layout (they decide
    whether a table is complete); ``where`` names the column for messages."""

    table: Union[int, str]  # 1-7: the Sup-tickets paper's; a name (``anymask``) for the other families
    method: str
    dataset: str
    model: str
    sparsity: float
    metric: str
    kind: str = "acc"  # acc | flops | div | loss (NLL, ECE: lower is better, bold on the lowest)
    paper: bool = True
    where: str = ""
    filters: Optional[Dict[str, Any]] = None
    optional: bool = False  # filled when runs exist, never reported missing (rows the paper quotes)
    show_n: bool = False  # always print the seed count "(n=k)", not only below the paper's seeds

    def __post_init__(self) -> None:
        if self.filters is None:
            f = method_filters(self.method)
            if f is not None:
                f.update({"dataset": self.dataset, "model": self.model, "sparsity": float(self.sparsity)})
            self.filters = f

    @property
    def implemented(self) -> bool:
        return self.filters is not None

    @property
    def required(self) -> bool:
        return self.implemented and not self.optional

    @property
    def key(self) -> Tuple[Union[int, str], str, str, str, float, str]:
        return (self.table, self.method, self.dataset, self.model, round(float(self.sparsity), 6), self.metric)


@dataclass
class Row:
    key: str
    labels: List[str]
    cells: List[Any]  # CellSpec, or literal text ("": not applicable, where the paper prints "-")
    bold_group: Optional[str] = None
    name: Optional[str] = None  # for messages, where the labels alone are ambiguous


@dataclass
class Block:
    title: Optional[str]
    rows: List[Row]


@dataclass
class TableSpec:
    number: Union[int, str]  # 1-7: Table N of the Sup-tickets paper (tableN.md); a name: <name>.md
    caption: str
    label_headers: List[str]
    header_rows: List[Tuple[List[str], List[Tuple[str, int]]]]
    blocks: List[Block]
    bold: str = "pairs"  # pairs | vs_dense
    notes: List[str] = field(default_factory=list)

    @property
    def file_stem(self) -> str:
        """The output file name without suffix: ``table1`` ... ``table7``, or the table's name."""
        return f"table{self.number}" if isinstance(self.number, int) else str(self.number)

    @property
    def title(self) -> str:
        """The bold lead of the caption: ``Table 1``, ``Table anymask``."""
        return f"Table {self.number}"

    @property
    def ncols(self) -> int:
        return sum(span for _, span in self.header_rows[0][1])


@dataclass
class CellValue:
    """A cell's counted values (finite values of the metric, one per seed)."""

    spec: CellSpec
    values: List[float] = field(default_factory=list)
    paths: List[str] = field(default_factory=list)
    note: str = ""
    bold: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]

    @property
    def few_seeds(self) -> bool:
        return self.n < PAPER_SEEDS

    @property
    def shows_n(self) -> bool:
        """Whether the cell prints its seed count: fewer than the paper's seeds, or always (``show_n``)."""
        return self.few_seeds or self.spec.show_n

    @property
    def status(self) -> str:
        if not self.spec.implemented:
            return "not implemented"
        return "ok" if self.values else "missing"

    @property
    def digits(self) -> int:
        return {"div": 3, "loss": 4}.get(self.spec.kind, 2)

    def rounded(self) -> float:
        return round(self.mean, self.digits)


@dataclass
class TableResult:
    spec: TableSpec
    cells: List[List[List[Any]]]  # [block][row][col] -> CellValue or literal text

    def values(self) -> List[CellValue]:
        return [c for b in self.cells for r in b for c in r if isinstance(c, CellValue)]

    def required(self, paper: Optional[bool] = True) -> List[CellValue]:
        return [c for c in self.values() if c.spec.required and (paper is None or c.spec.paper == paper)]

    @property
    def complete(self) -> bool:
        return all(c.values for c in self.required(True))


def evaluate_cell(runs: pd.DataFrame, spec: CellSpec) -> CellValue:
    """The counted runs of one cell; several config variants -> the one with the most seeds."""
    cell = CellValue(spec)
    if not spec.implemented or runs.empty:
        return cell
    sub = select(runs, spec.filters)
    if sub.empty:
        return cell
    chosen, variants = pick_variant(sub)
    if variants > 1:
        cfg_cols = [c for c in sub.columns if c.startswith("cfg.") or c == "epochs"]
        differ = [c.removeprefix("cfg.") for c in cfg_cols
                  if c != "cfg.seed" and sub[c].astype(str).nunique() > 1]
        cell.note = (f"{variants} config variants in one cell (differ in: {', '.join(differ) or '?'}); "
                     f"counted the one with the most seeds ({len(chosen)})")
        sub = chosen
    if spec.metric not in sub.columns:
        cell.note = (cell.note + "; " if cell.note else "") + f"metric {spec.metric!r} not in the summaries"
        return cell
    vals, ok = finite_values(sub, spec.metric)
    if not ok.all():
        cell.note = ((cell.note + "; " if cell.note else "")
                     + f"{int((~ok).sum())} run(s) with a non-finite {spec.metric}")
    cell.values = [float(v) for v in vals[ok]]
    cell.paths = [str(p) for p in sub["path"][ok]]
    return cell


def evaluate_table(spec: TableSpec, runs: pd.DataFrame) -> TableResult:
    """Every cell of ``spec`` filled from ``runs`` (not yet marked bold:
    :func:`sparse_exp.analysis.render.mark_bold`)."""
    cells = [[[evaluate_cell(runs, c) if isinstance(c, CellSpec) else c for c in row.cells] for row in b.rows]
             for b in spec.blocks]
    return TableResult(spec, cells)
