"""``status.md``: which tables are complete, which cells are missing (and which runs they need),
cell notes, runs not counted and counted runs that no cell shows."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .selection import describe_filters
from .table_model import PAPER_SEEDS, CellValue, TableResult


def _placed_paths(results: Sequence[TableResult]) -> set:
    return {p for res in results for c in res.values() for p in c.paths}


def report(results: Sequence[TableResult], collection: Any) -> List[str]:
    """Human-readable status: complete tables, missing cells, excluded and unplaced runs."""
    lines = ["# Status of the tables", ""]
    methods: Dict[str, str] = {}
    for res in results:
        req, extra = res.required(True), res.required(False)
        filled = [c for c in req if c.values]
        few = [c for c in req + extra if c.values and c.few_seeds]
        state = "complete" if res.complete else "incomplete"
        line = f"Table {res.spec.number}: {state} -- paper cells {len(filled)}/{len(req)} filled"
        if isinstance(res.spec.number, str):  # the any-mask family: only rows / columns with runs, no paper cells
            vals = res.values()
            few = [c for c in vals if c.values and c.few_seeds]
            line = (f"Table {res.spec.number} ({res.spec.file_stem}.md): {sum(1 for c in vals if c.values)}/"
                    f"{len(vals)} cells filled; published numbers not available offline")
        elif extra:
            line += f"; extra data sets {sum(1 for c in extra if c.values)}/{len(extra)} filled"
        if few:
            line += f"; {len(few)} cell(s) with fewer than {PAPER_SEEDS} seeds"
        lines.append(line)
        missing: Dict[str, List[str]] = {}
        for block, rows in zip(res.spec.blocks, res.cells):
            for row, vals in zip(block.rows, rows):
                for v in vals:
                    if isinstance(v, CellValue) and v.spec.required and not v.values:
                        name = row.name or " ".join(x for x in row.labels if x)
                        key = f"{block.title}: {name}" if block.title else name
                        missing.setdefault(key, []).append(v.spec.where)
                        methods.setdefault(v.spec.method, describe_filters(
                            {k: f for k, f in v.spec.filters.items() if k not in ("dataset", "model", "sparsity")}))
        for key, wheres in missing.items():
            lines.append(f"  missing  {key}: {', '.join(dict.fromkeys(wheres))}")
        for c in res.values():
            if c.note:
                lines.append(f"  note     {c.spec.method} @ {c.spec.where}: {c.note}")
    if methods:
        lines += ["", "Runs a missing cell needs (plus its data set, model and sparsity):"]
        lines += [f"  {m}: {d}" for m, d in sorted(methods.items())]
    lines.append("")
    runs = collection.runs
    lines.append(f"Counted runs: {len(runs)} (completed, one per run identity)")
    exc = collection.excluded
    if len(exc):
        lines.append(f"Not counted: {len(exc)}")
        for _, r in exc.iterrows():
            lines.append(f"  {r['path']}: {r['reason']}")
    placed = _placed_paths(results)
    unplaced = [p for p in runs["path"]] if not runs.empty else []
    unplaced = [p for p in unplaced if p not in placed]
    if unplaced:
        lines.append(f"Counted but in no table cell: {len(unplaced)} (not in the paper's layout, e.g. another "
                     f"distribution, sparsity or Sup-tickets setting; they are in runs.csv)")
        for p in unplaced:
            lines.append(f"  {p}")
    return lines

