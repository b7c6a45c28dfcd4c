"""Draw a run's learning curves, ``<run>/curves.png`` (:mod:`sparse_exp.run.curves`).

    python -m sparse_exp.plot RUN_DIR            # any time: a finished, running or stopped run
    python -m sparse_exp.plot RUN_DIR --out x.png

Rebuilds the run from its ``config.yaml`` (and loads its data) to draw the per-step LR of its own schedule.
Exit code 2 for a directory that is not a run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from sparse_exp.config.errors import UserError
from sparse_exp.run.curves import lr_trace, plot_curves


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (0, or 2 for a directory that is not a run)."""
    from omegaconf import OmegaConf

    from sparse_exp.config.refusal import refuse
    from sparse_exp.engine.build import build_run

    p = argparse.ArgumentParser(prog="python -m sparse_exp.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="output PNG (default RUN_DIR/curves.png)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = args.run_dir / "config.yaml"
        if not config.exists() or not (args.run_dir / "metrics.jsonl").exists():
            raise UserError(f"{args.run_dir} is not a run directory with metrics (config.yaml, metrics.jsonl)")
        cfg = OmegaConf.load(config)
        run = build_run(cfg)
        path = plot_curves(args.run_dir, lr_trace(run), run.callbacks.plot_marks(run.state), args.out)
    except UserError as exc:
        return refuse(str(exc))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
