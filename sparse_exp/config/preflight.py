"""The pre-flight check: everything that can be known about a run without training it, checked before
Hydra or the project creates any file or directory.

Every entry point runs it (the training CLI before Hydra starts, the sweeper for each cell of a ``-m`` grid before
anything is launched, ``python -m sparse_exp.flops``). In order: (1) the config: types, unknown keys and options (at
composition), then :func:`sparse_exp.config.validate.validate`; (2) this machine: the device, the data present and
readable (:func:`sparse_exp.data.check_data_available`, file names only), the split sizes against the official ones;
(3) the run from metadata (:class:`~sparse_exp.engine.context.RunPlan`: steps, prunable weight shapes of a model built
on the ``meta`` device, dense layers), seen by each group's registered pre-flight checks (ΔT, pruning windows,
Sup-tickets cycles, distribution feasibility, mask files); (4) the run directory (:func:`check_run_dir`): a path the
file system can hold (:func:`check_path_fits`), writable, its ``summary.json`` / ``checkpoint.pt`` readable. A
failure is a one-line :class:`sparse_exp.config.errors.UserError`.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from sparse_exp.config.errors import ConfigError, UserError, require
from sparse_exp.config.validate import validate
from sparse_exp.data import check_data_available
from sparse_exp.engine.context import RunPlan, plan_run
from sparse_exp.engine.fast_step import preflight_fast
from sparse_exp.registry import load_components
from sparse_exp.run.run_dir import check_checkpoint_file, read_summary

#: bytes of path kept free below ``PATH_MAX`` for what a run writes inside its directory (``tickets/ticket_000.pt``,
#: ``superposed/<variant>.json``, ``wandb/offline-run-<time>-<id>/files/...``, temporaries)
RUN_FILES_MARGIN = 200


def _fs_limit(path: Path, name: str, default: int) -> int:
    """``os.pathconf(path, name)``, or ``default`` where the system does not say (``-1``, unsupported)."""
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError, AttributeError):
        return default
    return value if value and value > 0 else default


def _shorten(text: str, head: int = 60, tail: int = 40) -> str:
    """``text`` with its middle elided where it is long (a refusal stays readable)."""
    return text if len(text) <= head + tail + 3 else f"{text[:head]}...{text[-tail:]}"


def check_path_fits(path: Path) -> None:
    """Refuse a run directory the file system cannot hold: a component over ``NAME_MAX`` bytes, or a path that
    leaves fewer than :data:`RUN_FILES_MARGIN` bytes below ``PATH_MAX`` (both from ``os.pathconf`` of the nearest
    existing ancestor; 255 and 4096 where it does not say).

    Raises:
        UserError: one line naming the too-long component or the path's length, and the limit.
    """
    path = Path(os.path.abspath(path))
    existing = next((p for p in (path, *path.parents) if os.path.exists(p)), Path("/"))  # False on ENAMETOOLONG
    name_max = _fs_limit(existing, "PC_NAME_MAX", 255)
    path_max = _fs_limit(existing, "PC_PATH_MAX", 4096)
    for part in path.relative_to(existing).parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise UserError(f"run directory cannot be created: its component {_shorten(part)!r} is {size} bytes, "
                            f"over this file system's NAME_MAX of {name_max} (at {existing}); choose a shorter "
                            "$SPARSE_EXP_RUNS or hydra.sweep.dir")
    size = len(os.fsencode(str(path)))
    if size + RUN_FILES_MARGIN > path_max:
        raise UserError(f"run directory {_shorten(str(path))} cannot be created: its path is {size} bytes, and with "
                        f"{RUN_FILES_MARGIN} for the run's files over this file system's PATH_MAX of {path_max}; "
                        "choose a shorter $SPARSE_EXP_RUNS or hydra.sweep.dir")


def _probe_writable(path: Path) -> None:
    """Refuse a run directory that could not be created or written (nothing is left behind)."""
    target = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    if not target.is_dir():
        raise UserError(f"run directory {path} cannot be created: {target} is not a directory")
    try:
        probe = tempfile.mkdtemp(dir=target, prefix=".sparse_exp-probe-")
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(f"run directory {path} cannot be written ({exc.strerror or exc}): choose another "
                        "$SPARSE_EXP_RUNS or fix the permissions") from None


def check_run_dir(path: Path) -> Optional[Dict[str, Any]]:
    """Refuse a run directory that cannot be written or holds unreadable run files; returns its summary.

    Raises:
        UserError: see :func:`sparse_exp.run.run_dir.read_summary`,
            :func:`sparse_exp.run.run_dir.check_checkpoint_file`, :func:`check_path_fits`, and unwritable paths.
    """
    path = Path(path)
    check_path_fits(path)
    _probe_writable(path)
    summary = read_summary(path / "summary.json")
    if summary is None or summary.get("status") != "completed":
        check_checkpoint_file(path / "checkpoint.pt")
    return summary


def check_logger_available(cfg: Any) -> None:
    """``logger=wandb`` (not disabled) needs the ``wandb`` package on this machine (an offline node may lack it)."""
    mode = os.environ.get("WANDB_MODE", cfg.logger.get("mode", "offline"))
    if cfg.logger.name == "wandb" and mode != "disabled" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger", "wandb", "the wandb package is not installed here; allowed here: logger=none "
                          "(or install wandb, e.g. from `make wheelhouse WHEELHOUSE_ARGS=--wandb`)")


def check_device(cfg: Any) -> None:
    """The configured device exists on this machine (``auto`` always does).

    Raises:
        ConfigError: ``device=cuda`` / ``cuda:N`` without (that many) CUDA devices, ``device=mps`` without MPS,
            ``dist.sync_bn=true`` on a device that is not CUDA.
    """
    device = str(cfg.device)
    if device.startswith("cuda"):
        require(torch.cuda.is_available(), "device", device, "no CUDA device is available on this machine; "
                "allowed here: auto, cpu")
        index = device.partition(":")[2]
        if index:
            require(index.isdigit() and int(index) < torch.cuda.device_count(), "device", device,
                    f"must name one of the {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    if device == "mps":
        require(torch.backends.mps.is_available(), "device", device, "MPS is not available on this machine; "
                "allowed here: auto, cpu")
    if bool(cfg.dist.sync_bn):  # SyncBatchNorm's forward raises on CPU tensors (engine/build.py refuses it too)
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        require(on_cuda, "dist.sync_bn", True, f"SyncBatchNorm needs CUDA (NCCL), but device={device} trains on "
                f"{'MPS' if device == 'mps' else 'the CPU'} here; allowed on this device: false")


def preflight(cfg: Any, run_dir: Optional[Path] = None, local: bool = True, plan: Optional[RunPlan] = None) -> RunPlan:
    """Check everything about a composed config that can be known without training (module doc).

    Args:
        cfg: the composed config (no ``hydra`` node needed).
        run_dir: the run's directory, if it has one yet (the training CLI and the sweeper pass it).
        local: check what this machine must provide: the data set's files and the device (the
            sweeper's ``check_local=false`` skips both, for jobs that run on other machines, e.g. SLURM
            nodes with data and GPUs the launching machine does not have).
        plan: the run's plan where it is not the config's (the Python API: the caller's model and step counts);
            default :func:`~sparse_exp.engine.context.plan_run` of ``cfg``.

    Returns:
        the run's :class:`RunPlan`.

    Raises:
        UserError: the first problem found (a :class:`ConfigError` names the key).
    """
    validate(cfg)
    if local:
        check_device(cfg)
        check_logger_available(cfg)
        check_data_available(cfg.dataset)
    plan = plan_run(cfg) if plan is None else plan
    for registry in load_components().values():
        registry.preflight(plan)
    preflight_fast(cfg)
    if run_dir is not None:
        check_run_dir(Path(run_dir))
    return plan
