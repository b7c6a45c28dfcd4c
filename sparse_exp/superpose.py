"""Offline superposition: the ultimate ticket of any averaging rule from a run's saved cheap tickets.

    python -m sparse_exp.superpose RUN_DIR --averaging cima --beta 0.5
    python -m sparse_exp.superpose RUN_DIR --averaging caa --reprune layerwise --bn recompute
    python -m sparse_exp.superpose RUN_DIR --averaging cia --count-normal-phase-ticket

RUN_DIR: a run trained with ``superposer=sup_tickets superposer.save_tickets=true`` (finished or stopped).
Options left out take the run's ``superposer.*`` values. Evaluates on validation and test with the training
code, prints one line per split and writes ``RUN_DIR/superposed/<variant>.json`` / ``.pt``
(:mod:`sparse_exp.superposers.tickets`). Refused in one line, exit code 2: not a Sup-tickets run, no saved
tickets, tickets of another model, a variant needing a ticket the run did not save. ``--device`` defaults to
the run's, the device that reproduces its numbers bitwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from sparse_exp.config.errors import UserError
from sparse_exp.config.refusal import refuse
from sparse_exp.superposers.averaging import AVERAGING, REPRUNE
from sparse_exp.superposers.tickets import run_offline


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (module doc); ``--help`` prints it and exits 0, a bad choice exits 2 (argparse)."""
    p = argparse.ArgumentParser(prog="python -m sparse_exp.superpose", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run trained with superposer.save_tickets=true")
    p.add_argument("--averaging", choices=AVERAGING)
    p.add_argument("--beta", type=float, help="CIMA's weight of the previous average, in [0, 1)")
    p.add_argument("--reprune", choices=[r for r in REPRUNE if r != "nm"],  # saved tickets carry no N:M groups
                   help="re-pruning of the superposed average (nm is not available offline)")
    p.add_argument("--count-normal-phase-ticket", action=argparse.BooleanOptionalAction, default=None,
                   help="superpose the end-of-normal-phase model first (the reference code)")
    p.add_argument("--prune-running-average", action=argparse.BooleanOptionalAction, default=None,
                   help="prune the running average after each ticket (Alg. 1 read literally)")
    p.add_argument("--bn", choices=("average", "recompute"))
    p.add_argument("--device", help="where to evaluate (default: the run's device)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (0, or 2 for a refused input)."""
    args = parse(list(sys.argv[1:] if argv is None else argv))
    variant_args = {"averaging": args.averaging, "beta": args.beta, "reprune": args.reprune,
                    "count_normal_phase_ticket": args.count_normal_phase_ticket,
                    "prune_running_average": args.prune_running_average, "bn": args.bn}
    try:
        result = run_offline(args.run_dir, variant_args, args.device)
    except UserError as exc:
        return refuse(str(exc))
    print(f"{result['variant']}: {result['tickets/count']} tickets {result['tickets/indices']}, "
          f"sparsity {result['sparsity/global']:.4f}")
    for split in ("val", "test"):
        print(f"  {split:<5} acc {result[f'{split}/acc']:.2f}%  nll {result[f'{split}/nll']:.4f}  "
              f"ece {result[f'{split}/ece']:.4f}")
    print(json.dumps({k: v for k, v in result.items()}, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
