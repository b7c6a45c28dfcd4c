"""Progress of a grid: how many runs are completed / running / interrupted / stopped / failed / unreadable /
not started.

    python -m sparse_exp.status runs/table1                   # the run directories found there
    python -m sparse_exp.status runs/table1 --sweep table1    # ... against the grid of sweeps/table1.yaml
    python -m sparse_exp.status --sweep smoke seed=0          # sweep dir from the config; narrowed grid
    python -m sparse_exp.status runs/table1 --json            # machine-readable

What each state means: :mod:`sparse_exp.run.grid_status`. Without ``--sweep`` only existing directories are
counted; ``--sweep NAME [overrides]`` expands the grid exactly as ``python -m sparse_exp.train +sweep=NAME
[overrides] -m`` would and names each directory as Hydra does, without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from sparse_exp.run.grid_status import collect, expand_sweep, format_report, sweep_names


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparse_exp.status",
                                 description="Count and list the runs of a grid by state.")
    ap.add_argument("sweep_dir", nargs="?", help="the grid's directory (default with --sweep: its hydra.sweep.dir)")
    ap.add_argument("overrides", nargs="*", help="overrides given to the sweep (as on the train command line)")
    ap.add_argument("--sweep", metavar="NAME", help=f"expected runs from sweeps/NAME.yaml ({', '.join(sweep_names())})")
    ap.add_argument("--all", action="store_true", help="list completed runs too")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.sweep_dir is not None and "=" in args.sweep_dir and not Path(args.sweep_dir).exists():
        overrides.insert(0, args.sweep_dir)  # `--sweep smoke seed=0`: an override, not a directory
        args.sweep_dir = None
    if overrides and not args.sweep:
        ap.error("overrides need --sweep NAME")
    plan = None
    if args.sweep:
        if args.sweep not in sweep_names():
            ap.error(f"--sweep {args.sweep!r}: no sweeps/{args.sweep}.yaml; known: {', '.join(sweep_names())}")
        plan = expand_sweep(args.sweep, overrides)
    if args.sweep_dir is None:
        if plan is None:
            ap.error("give SWEEP_DIR, or --sweep NAME to use the sweep's directory")
        args.sweep_dir = plan.sweep_dir
    if plan is None and not Path(args.sweep_dir).is_dir():
        ap.error(f"{args.sweep_dir} is not a directory")
    res = collect(Path(args.sweep_dir), plan)
    if args.json:
        out = dict(res, runs=[asdict(r) for r in res["runs"]])
        print(json.dumps(out, indent=2))
    else:
        print(format_report(res, show_all=args.all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
