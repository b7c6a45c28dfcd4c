"""FLOPs of a configured experiment, without training: ``python -m sparse_exp.flops <overrides>``.

    python -m sparse_exp.flops model=resnet50_imagenet dataset=imagenet distribution=erk sparsity=0.9 sparsifier=static
    python -m sparse_exp.flops model=resnet50_imagenet dataset=imagenet sparsifier=rigl sparsity=0.8

Composes the same Hydra config as ``python -m sparse_exp.train`` (same overrides, same
validation), builds the model for the data set's input size, allocates the layer densities
exactly as the sparsifier will (``layer_counts`` with ``distribution.dense_first_layer`` /
``dense_last_layer``) and prints one JSON object:

    {"flops/test": inference FLOPs / dense, "flops/train": training FLOPs / dense training,
     "flops/dense_forward": f_D (FLOPs per sample, multiply + add = 2),
     "density": global density, "layers": {layer: density}, "sparsifier": name, "note": ...}

``flops/train`` follows :func:`sparse_exp.sparse.flops.expected_training_ratio` (RigL Appendix
H formulas; RigL's dense-gradient updates counted until ``sparsifier.stop_fraction``). Where
the layer densities are an outcome of training or scoring (gradual global pruning, SNIP /
GraSP / SynFlow) the configured distribution stands in for them and ``note`` says so. For
``sparsifier=mask_file`` the densities are read from the mask file. A bad key or value prints
one line ``error: ...`` to stderr and exits with code 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

#: sparsifiers whose layer densities come from scores, not from ``distribution``
_SCORED = ("snip", "grasp", "synflow")


def compose_config(overrides: Sequence[str]) -> Any:
    """The config ``python -m sparse_exp.train <overrides>`` would run (no ``hydra`` node)."""
    from hydra import compose, initialize_config_dir

    import sparse_exp.train  # noqa: F401  (registers the schemas and the run_name resolver)

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _input_shape(spec: Any) -> Tuple[int, ...]:
    size = spec.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(spec.in_channels), int(h), int(w))


def _get(node: Any, key: str, default: Any) -> Any:
    """``node.key`` if the sparsifier config has it (and it is set), else ``default``."""
    from omegaconf import OmegaConf

    if key in node and not OmegaConf.is_missing(node, key) and node[key] is not None:
        return node[key]
    return default


def compute(cfg: Any) -> Dict[str, Any]:
    """FLOP report of a composed, validated config (see module doc)."""
    from sparse_exp.data import DATASETS
    from sparse_exp.models import build_model
    from sparse_exp.sparse.flops import (density_allocator, expected_training_ratio, inference_ratio,
                                         layer_forward_profile)
    from sparse_exp.sparse.masking import prunable_parameters

    spec = DATASETS[cfg.dataset.name]
    model = build_model(cfg.model.name, in_channels=spec.in_channels, num_classes=spec.num_classes,
                        image_size=spec.image_size)
    layer_flops = layer_forward_profile(model, _input_shape(spec)).flops
    shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model)}
    names = list(shapes)
    dense_layers: List[str] = []
    if cfg.distribution.dense_first_layer:
        dense_layers.append(names[0])
    if cfg.distribution.dense_last_layer and names[-1] not in dense_layers:
        dense_layers.append(names[-1])

    sp = cfg.sparsifier
    method = sp.name
    density = 1.0 - float(cfg.sparsity)
    dist_name = cfg.distribution.name
    notes: List[str] = []
    if method == "dense":
        density = 1.0
    if method == "random":
        # global random pruning: every non-dense layer has the same density in expectation
        dist_name = "uniform"
    elif method in _SCORED:
        notes.append(f"{method} allocates layer densities by score; the estimate uses distribution={dist_name}")
    elif method in ("gmp", "granet"):
        notes.append(f"{method} prunes globally by magnitude; the estimate uses distribution={dist_name} "
                     "at every density of the cubic schedule")
    if method == "mask_file":
        from sparse_exp.errors import ConfigError
        from sparse_exp.sparse.sparsifiers.mask_file import load_mask_file

        masks = load_mask_file(sp.path)
        missing = [n for n in names if n not in masks]
        if missing:
            raise ConfigError("sparsifier.path", str(sp.path), f"has no mask for layers {missing[:5]}")
        final = {n: float(masks[n].float().mean()) for n in names}
        density = sum(final[n] * math.prod(shapes[n]) for n in names) / sum(math.prod(s) for s in shapes.values())

        def allocate(_density: float) -> Dict[str, float]:
            return final
    else:
        allocate = density_allocator(shapes, dist_name, float(cfg.distribution.erk_power_scale), dense_layers)
        final = allocate(density)

    report: Dict[str, Any] = {
        "flops/test": inference_ratio(layer_flops, final),
        "flops/train": None,
        "flops/dense_forward": float(sum(layer_flops.values())),
        "density": round(density, 12),
        "layers": final,
        "sparsifier": method,
    }
    try:
        report["flops/train"] = expected_training_ratio(
            method, layer_flops, allocate, density,
            delta_t=int(_get(sp, "delta_t", 100)),
            stop_fraction=float(_get(sp, "stop_fraction", 0.75)),
            init_density=_get(sp, "init_density", None),
            prune_start_fraction=float(_get(sp, "prune_start_fraction", 0.0)),
            prune_end_fraction=float(_get(sp, "prune_end_fraction", 1.0)),
        )
    except ValueError as exc:  # a method without a training-FLOP model (e.g. lth)
        notes.append(str(exc))
    if notes:
        report["note"] = "; ".join(notes)
    return report


def _one_line(exc: BaseException) -> str:
    """The error as one line: Hydra's cause first line appended, its search-path dump dropped."""
    text = str(exc).split("Config search path:")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[-1].startswith("To append to your config use"):
        lines = lines[:-1]  # misleading for our structured configs: unknown keys are refused
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return " ".join(" ".join(lines).split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (0, or 2 for a bad key / value)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sparse_exp.errors import UserError

    try:
        cfg = compose_config(args)
        from sparse_exp.validate import validate

        validate(cfg)
        report = compute(cfg)
    except (UserError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except ValueError as exc:  # e.g. a distribution that cannot hold the dense layers
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(report, indent=None), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
