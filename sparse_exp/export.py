"""Export a completed run's model for inference with its sparse weights.

    python -m sparse_exp.export runs/default --to dense            # -> runs/default/model.dense.ts
    python -m sparse_exp.export runs/default --to csr              # -> runs/default/model.csr.ts (Linear as CSR)
    python -m sparse_exp.export runs/x --to semi_structured        # 2:4 runs, CUDA sm80+ (-> model.semi_structured.pt)
    python -m sparse_exp.export runs/default --to csr --out m.ts --force

``.ts`` files load with ``torch.jit.load(path)`` alone; ``semi_structured`` files with
``sparse_exp.run.export_model.load_exported(path, device="cuda")``. What each target does:
:mod:`sparse_exp.run.export_model`; tolerances and measured speed: ``docs/export.md``. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

from sparse_exp.config.errors import UserError


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparse_exp.export",
                                 description="Write a run's reported model with its sparse weights for inference.")
    ap.add_argument("run_dir", help="a completed run directory (with model.pt)")
    ap.add_argument("--to", required=True, help="dense, csr or semi_structured")
    ap.add_argument("--out", help="the file to write (default: RUN_DIR/model.<to>.ts, .pt for semi_structured)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    from sparse_exp.run.export_model import export

    try:
        path, info = export(args.run_dir, args.to, args.out, force=args.force)
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    sparse = ", ".join(info["sparse_layers"]) or "none"
    print(f"wrote {path} ({info['to']}, the run's {info['which']!r} model): sparse Linear layers: {sparse}; "
          f"max |logit difference| vs the run's model {info['max_abs_diff']:.2g} (tolerance {info['tolerance']:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
