"""``python -m sparse_exp.analysis``: collect runs, write Tables 1-7, the any-mask tables, Figures 2-5 and the status
report.

    python -m sparse_exp.analysis --runs runs [more_runs ...] --out results [--compare-paper]
    python -m sparse_exp.analysis --source wandb --project ENTITY/PROJECT --out results \\
        [--filters '{"config.dataset.name": "cifar100"}']

Writes into ``--out``: ``table1.md`` ... ``table7.md`` and ``.tex``, ``figure2.png`` ... ``figure5.pdf``,
``runs.csv`` (counted runs), ``excluded.csv`` (runs not counted, with the reason), ``cells.csv`` (mean, std, n,
runs per cell), ``status.md`` (what it prints), with ``--compare-paper`` ``compare_paper.md`` / ``.csv``, and
only where their runs exist ``anymask.md`` / ``anymask_dst.md`` (:mod:`sparse_exp.analysis.anymask`) and
``st_regime.md`` (:mod:`sparse_exp.analysis.regime`), each with ``.tex`` (cells in
``anymask_cells.csv`` / ``st_regime_cells.csv``), ``mask_iou_<group>.*`` (:mod:`sparse_exp.analysis.mask_iou`) and
``topology_gain_<group>.*`` (:mod:`sparse_exp.analysis.topology_gain`).
Exit status 0, or 1 with ``--strict`` when a table is incomplete.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .collect import collect
from .layouts import BUILDERS
from .tables import EXTRA_BUILDERS, write_tables


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sparse_exp.analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["runs"], help="run directories, searched recursively (local source)")
    p.add_argument("--out", default="results", help="output directory (default: results)")
    p.add_argument("--source", choices=["local", "wandb"], default="local")
    p.add_argument("--project", default=None, help="W&B ENTITY/PROJECT (with --source wandb)")
    p.add_argument("--filters", default=None, help="W&B run filters as JSON (MongoDB syntax)")
    default_tables = ",".join([*map(str, BUILDERS), *EXTRA_BUILDERS])
    p.add_argument("--tables", default=default_tables, help=f"which tables (default: {default_tables}; the "
                   "any-mask ones and st_regime are written only where their runs exist)")
    p.add_argument("--compare-paper", action="store_true", help="print ours next to the published numbers")
    p.add_argument("--no-figures", action="store_true", help="skip Figures 2-5")
    p.add_argument("--strict", action="store_true", help="exit 1 when a table is incomplete")
    args = p.parse_args(argv)
    if args.source == "wandb" and not args.project:
        p.error("--source wandb needs --project ENTITY/PROJECT")
    keys = [x.strip() for x in args.tables.split(",") if x.strip()]
    unknown = [k for k in keys if not (k.isdigit() and int(k) in BUILDERS) and k not in EXTRA_BUILDERS]
    if unknown:
        p.error(f"--tables: unknown table(s) {', '.join(unknown)}; allowed: {default_tables}")
    args.table_keys = [int(k) if k.isdigit() else k for k in keys]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    filters = json.loads(args.filters) if args.filters else None
    try:
        coll = collect(args.source, runs=args.runs, project=args.project, filters=filters)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = write_tables(coll, args.out, args.table_keys)
    print((open(f"{args.out}/status.md").read()).rstrip("\n"))
    if args.compare_paper:
        from .anymask import ANYMASK_BUILDERS, PAPER_NOTE
        from .paper_numbers import summary_lines, write_comparison
        from .tables import cells_frame

        cmp = write_comparison(cells_frame([r for r in results if isinstance(r.spec.number, int)]), args.out)
        print()
        print("\n".join(summary_lines(cmp)))
        print(f"(all {len(cmp)} published cells: {args.out}/compare_paper.md)")
        anymask = [r.spec.file_stem for r in results if r.spec.number in ANYMASK_BUILDERS]
        if anymask:
            print(f"Any-mask tables ({', '.join(anymask)}): {PAPER_NOTE}")
        if any(r.spec.number == "st_regime" for r in results):
            print("Table st_regime: no published counterpart (the paper runs no data set outside CIFAR and "
                  "ImageNet)")
    if not args.no_figures:
        from .figures import write_figures

        paths = write_figures(coll.runs, args.out)
        print(f"\nFigures: {', '.join(p.name for p in paths)}")
    print(f"Tables: {', '.join(f'{r.spec.file_stem}.md/.tex' for r in results)} in {args.out}/")
    return 1 if args.strict and not all(r.complete for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
