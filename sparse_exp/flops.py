"""FLOPs of a configured experiment, without training: ``python -m sparse_exp.flops <overrides>``.

    python -m sparse_exp.flops model=resnet50_imagenet dataset=imagenet sparsifier=rigl sparsity=0.8

Takes the overrides and validation of ``python -m sparse_exp.train``, allocates the layer densities as the sparsifier
will and prints one JSON object: ``flops/test`` (inference FLOPs / dense), ``flops/train`` (training FLOPs / dense
training: :func:`sparse_exp.sparse.flop_counts.expected_training_ratio`, RigL, Evci et al. 2020, App. H, of the
sparsifier's ``flop_schedule`` / ``flop_allocation``; ``null`` without them), ``flops/dense_forward`` (f_D per sample,
multiply + add = 2), ``density``, ``layers`` ({layer: density}), ``sparsifier``, ``note``. Densities that training or
scoring decides (gradual pruning, SNIP / GraSP / SynFlow, global random) are the configured distribution's (``note``
says so); ``mask_file`` reads the file. A bad key or value: one line ``error: ...`` on stderr, exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from sparse_exp.config.compose import compose
from sparse_exp.config.errors import UserError
from sparse_exp.config.preflight import preflight
from sparse_exp.config.refusal import check_overrides, explain, refuse
from sparse_exp.data import dataset_spec
from sparse_exp.models import build_configured
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.flop_counts import expected_training_ratio, inference_ratio, layer_forward_profile
from sparse_exp.sparse.masking import declared_dense, kept_dense, prunable_parameters


def _input_shape(spec: Any) -> Tuple[int, ...]:
    size = spec.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(spec.in_channels), int(h), int(w))


def compute(cfg: Any) -> Dict[str, Any]:
    """FLOP report of a composed, validated config (see module doc)."""
    spec = dataset_spec(cfg.dataset)
    model = build_configured(cfg.model, spec)
    layer_flops = layer_forward_profile(model, _input_shape(spec)).flops
    shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model)}
    dense_layers = kept_dense(shapes, declared_dense(model), cfg.distribution)

    sp = cfg.sparsifier
    sparsifier = SPARSIFIERS.entry(sp.name).impl
    allocation = sparsifier.flop_allocation(sp, cfg.distribution.name, shapes)
    allocate = allocation.allocator(shapes, float(cfg.distribution.erk_power_scale), dense_layers)
    density = allocation.density(shapes, 1.0 - float(cfg.sparsity))
    schedule = sparsifier.flop_schedule(sp, None, density)
    notes: List[str] = [allocation.note] if allocation.note else []
    if schedule is None:
        notes.append(f"sparsifier {sp.name!r} declares no training-FLOP model (Sparsifier.flop_schedule)")
    else:
        density = schedule.density.final
    final = allocate(density)
    report: Dict[str, Any] = {
        "flops/test": inference_ratio(layer_flops, final),
        "flops/train": None if schedule is None else expected_training_ratio(schedule, layer_flops, allocate),
        "flops/dense_forward": float(sum(layer_flops.values())),
        "density": round(density, 12),
        "layers": final,
        "sparsifier": sp.name,
    }
    if notes:
        report["note"] = "; ".join(notes)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (0, or 2 for a bad key / value)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    try:  # the training CLI's pre-flight, without the data (FLOPs need only the data set's shape)
        check_overrides(args)
        cfg = compose(args)
        preflight(cfg, local=False)
        report = compute(cfg)
    except UserError as exc:
        return refuse(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        return refuse(explain(exc, args))
    print(json.dumps(report, indent=None), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
