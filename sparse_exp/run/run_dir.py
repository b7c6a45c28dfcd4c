"""The run directory: resolved config, git SHA, metrics, summary and checkpoints.

One directory per run, named from its overrides (``conf/config.yaml``): ``config.yaml`` (the resolved config, written
once it is valid), ``git.json`` (``{"sha": ..., "dirty": bool}`` of the code that ran), ``metrics.jsonl`` (one JSON
object per epoch), ``summary.json`` (the result; ``status`` is "completed" only when the run finished),
``checkpoint.pt`` (the latest state, written atomically at the end of every epoch and on preemption:
``{"format": "sparse_exp.checkpoint/v2", "model", "optimizer", "scheduler", "masking", "sparsifier", "callbacks":
{name: state}, "rng", "epoch", "step", "elapsed", "batch_in_epoch", "epoch_accumulators"}``; v1, without "format", is
read through :func:`migrate_checkpoint`), ``masks.pt`` (final masks: ``{"format": "sparse_exp.masks/v1", "masks":
{name: bool tensor}}``), ``model.pt`` (the reported model of a completed run, :mod:`sparse_exp.run.artifact`),
``wandb_id.txt`` (the W&B run id, reused on resume) and ``.lock`` (held with ``flock`` by the process training into the
directory; it says its pid and host).
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import socket
import subprocess
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from sparse_exp.config.errors import UserError

MASKS_FORMAT = "sparse_exp.masks/v1"
CHECKPOINT_FORMAT = "sparse_exp.checkpoint/v2"
#: the ``checkpoint.pt`` formats :func:`migrate_checkpoint` reads; v1 has no ``format`` key
CHECKPOINT_FORMATS = ("sparse_exp.checkpoint/v1", CHECKPOINT_FORMAT)


def git_info() -> Dict[str, Any]:
    """SHA and dirty flag of the repository holding this package ("unknown" outside git), read once per process.

    Once: a process runs the code it imported when it started, so every run of a multirun records the commit it was
    launched from, not a later HEAD committed while the grid ran (SLURM and submitit start one process per job).
    """
    return dict(_git_info_once())


@functools.lru_cache(maxsize=1)
def _git_info_once() -> Dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"sha": "unknown", "dirty": None}
    return {"sha": sha, "dirty": dirty}


def _atomic_write_bytes(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_summary(path: Path) -> Optional[Dict[str, Any]]:
    """The parsed ``summary.json`` at ``path`` (None if absent).

    Raises:
        UserError: the file is not a JSON object; the message names it and says what to do.
    """
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]}): move it aside "
                        f"(mv {path} {path}.bad) to resume from the checkpoint or retrain; nothing was "
                        "changed") from None


def check_checkpoint_file(path: Path) -> None:
    """Refuse a ``checkpoint.pt`` that is not an intact torch zip archive (CRCs checked, nothing unpickled).

    Raises:
        UserError: empty, truncated or not a torch checkpoint; the message names it and says what to do.
    """
    if not path.exists():
        return
    problem = None
    try:
        if path.stat().st_size == 0:
            problem = "empty file"
        elif not zipfile.is_zipfile(path):
            problem = "not a torch checkpoint (no zip archive)"
        else:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    problem = f"corrupt member {bad}"
                elif not any(n.endswith("data.pkl") for n in z.namelist()):
                    problem = "not a torch checkpoint (no data.pkl)"
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise UserError(f"{path} is unreadable ({problem}): move it aside (mv {path} {path}.bad) to retrain this "
                        "run from scratch, or restore it; nothing was changed")


def _checkpoint_globals() -> list:
    """What ``checkpoint.pt`` holds beyond tensors and plain containers: NumPy's RNG state (a ``uint32`` array,
    :mod:`sparse_exp.engine.seeding`), allowed by name for ``torch.load(weights_only=True)``."""
    reconstruct = np.zeros(1, dtype=np.uint32).__reduce__()[0]  # numpy._core.multiarray._reconstruct (any NumPy)
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def migrate_checkpoint(state: Any, path: str | os.PathLike) -> Dict[str, Any]:
    """``state`` (``checkpoint.pt`` at ``path``, as loaded) in :data:`CHECKPOINT_FORMAT`, updated in place.

    v1 -> v2 fills what v1 checkpoints of older engines lack with what those engines meant: no ``callbacks``
    (before the callback protocol): ``{"flops": flops, <superposer>: superposer}``, the superposer named by the
    run's ``config.yaml`` next to ``path``; ``batch_in_epoch`` 0 and ``epoch_accumulators`` (0.0, 0, 0) (before
    mid-epoch checkpoints; under DDP one such triple per rank); ``masking.ever_active`` the masks;
    ``sparsifier.updates`` 0; the ``sup_tickets`` callback's ``ticket_seconds`` [] (before ``ticket_eval``).
    Then adds ``format``.

    Raises:
        UserError: not a dict, an unknown (e.g. newer) format, or a pre-callback checkpoint without a readable
            ``config.yaml``; one line naming ``path``, what was found and the formats this code reads.
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a sparse_exp checkpoint (it holds a {type(state).__name__}, not a dict): "
                        f"move it aside (mv {path} {path}.bad) to retrain this run from scratch; nothing was changed")
    found = state.get("format", CHECKPOINT_FORMATS[0])
    if found not in CHECKPOINT_FORMATS:
        raise UserError(f"{path} has checkpoint format {found!r}, which this code does not read (it reads "
                        f"{', '.join(CHECKPOINT_FORMATS)}; v1 has no format key): resume it with the sparse_exp "
                        f"that wrote it, or move it aside (mv {path} {path}.bad) to retrain from scratch; nothing "
                        "was changed")
    if found == CHECKPOINT_FORMATS[0]:
        if "callbacks" not in state:
            try:
                superposer = str(OmegaConf.load(path.parent / "config.yaml").superposer.name)
            except Exception as exc:  # missing or unreadable config.yaml
                raise UserError(f"{path} is a checkpoint from before the callback protocol; its superposer state "
                                f"is named by {path.parent / 'config.yaml'}, which is unreadable ({type(exc).__name__}"
                                "): restore that file, or move the checkpoint aside to retrain") from None
            state["callbacks"] = {"flops": state.pop("flops"), superposer: state.pop("superposer", {})}
        state.setdefault("batch_in_epoch", 0)
        state.setdefault("epoch_accumulators", (0.0, 0, 0))
        masking = state["masking"]
        masking.setdefault("ever_active", {n: m.clone() for n, m in masking["masks"].items()})
        state["sparsifier"].setdefault("updates", 0)
        if "sup_tickets" in state["callbacks"]:
            state["callbacks"]["sup_tickets"].setdefault("ticket_seconds", [])
    state["format"] = CHECKPOINT_FORMAT
    return state


def _strict_json(value: Any) -> Any:
    """Replace non-finite floats by ``None`` recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _flock_with_retry(f: Any, tries: int = 5, wait_s: float = 0.1) -> None:
    """Exclusive non-blocking ``flock``, retried briefly: ``sparse_exp.status`` probes locks with a shared
    lock for a moment, which must not make a starting run fail."""
    for i in range(tries):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if i == tries - 1:
                raise
            time.sleep(wait_s)


def lock_is_held(path: Path) -> bool:
    """Whether a process holds the run lock ``path`` (``<run>/.lock``), probed with a shared lock."""
    if not path.exists():
        return False
    with open(path, "r") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


class RunDir:
    """Reads and writes one run directory (``path``).

    ``writable=False`` (every DDP rank but 0) turns every write into a no-op, so only one
    process writes files.
    """

    def __init__(self, path: str | os.PathLike, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable

    config_path = property(lambda self: self.path / "config.yaml")
    summary_path = property(lambda self: self.path / "summary.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    masks_path = property(lambda self: self.path / "masks.pt")
    model_path = property(lambda self: self.path / "model.pt")
    wandb_id_path = property(lambda self: self.path / "wandb_id.txt")

    # -------------------------------------------------------------- state of the run
    def summary(self) -> Optional[Dict[str, Any]]:
        """The parsed ``summary.json`` or ``None``.

        Raises:
            UserError: the file is unreadable (:func:`read_summary`).
        """
        return read_summary(self.summary_path)

    def is_completed(self) -> bool:
        """Whether ``summary.json`` exists and says ``status: completed``."""
        s = self.summary()
        return bool(s) and s.get("status") == "completed"

    def has_checkpoint(self) -> bool:
        """Whether ``checkpoint.pt`` exists (the run resumes from it)."""
        return self.checkpoint_path.exists()

    # -------------------------------------------------------------- one writer at a time
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold an exclusive, non-blocking ``flock`` on ``<run>/.lock`` for the duration of the block.

        Two processes training into one directory would interleave checkpoints and metrics (two SLURM
        launches of one grid, or a local re-run while a job still runs). The second one is refused.
        The lock is released when the process ends, however it ends (also on SIGKILL), so a
        preempted or requeued job never blocks its successor. On NFS, Linux maps ``flock`` onto
        NFS byte-range locks, which work across nodes. A no-op when the directory is not writable
        (DDP ranks other than 0).

        Raises:
            UserError: another process holds the lock (its pid, host and start time are named).
        """
        if not self.writable:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "a+")
        try:
            try:
                _flock_with_retry(f)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown process"
                raise UserError(f"run directory {self.path} is in use by another process ({holder}); two jobs "
                                "must not train into one directory. Wait for it to finish, or stop it and "
                                "re-run this command to resume from its checkpoint") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}\n")
            f.flush()
            self.remove_stale_temporaries()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        finally:
            f.close()

    # -------------------------------------------------------------- writing
    def prepare(self, cfg: Any, overrides: Optional[str] = None) -> None:
        """Create the directory and write the resolved config and git SHA.

        Args:
            overrides: Hydra's ``override_dirname`` the directory is named from, kept in full as the first
                line of ``config.yaml`` (a YAML comment, ``# overrides: ...``), also where the name was shortened.
        """
        if not self.writable:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(cfg, resolve=True)
        if overrides:
            text = f"# overrides: {overrides.replace(chr(10), ' ')}\n{text}"
        _atomic_write_bytes(self.config_path, lambda f: f.write(text.encode()))
        info = json.dumps(git_info(), indent=2)
        _atomic_write_bytes(self.path / "git.json", lambda f: f.write(info.encode()))

    def write_summary(self, summary: Dict[str, Any]) -> None:
        """Write ``summary.json`` atomically; NaN / inf become ``null`` (strict JSON)."""
        if not self.writable:
            return
        text = json.dumps(_strict_json(summary), indent=2, sort_keys=True, default=float, allow_nan=False)
        _atomic_write_bytes(self.summary_path, lambda f: f.write(text.encode()))

    def append_metrics(self, row: Dict[str, Any]) -> None:
        """Append one JSON line (one epoch) to ``metrics.jsonl``; NaN becomes ``null``."""
        if not self.writable:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_strict_json(row), sort_keys=True, allow_nan=False) + "\n")

    def truncate_metrics(self, before_epoch: int) -> None:
        """Keep only metric rows of epochs ``< before_epoch`` (rows of an interrupted epoch go)."""
        if not self.writable:
            return
        if not self.metrics_path.exists():
            return
        rows = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if json.loads(r).get("epoch", -1) < before_epoch]
        _atomic_write_bytes(self.metrics_path, lambda f: f.write("".join(r + "\n" for r in kept).encode()))

    def metrics(self):
        """All metric rows as a list of dicts."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(r) for r in self.metrics_path.read_text().splitlines() if r.strip()]

    def save_checkpoint(self, state: Dict[str, Any]) -> None:
        """``torch.save`` ``state`` plus ``format`` (:data:`CHECKPOINT_FORMAT`) to a temp file in the run
        directory, then rename over the old one."""
        if not self.writable:
            return
        payload = {"format": CHECKPOINT_FORMAT, **state}
        _atomic_write_bytes(self.checkpoint_path, lambda f: torch.save(payload, f))

    def load_checkpoint(self, map_location: Any = "cpu") -> Dict[str, Any]:
        """The state written by :meth:`save_checkpoint`, tensors mapped to ``map_location``, in the current
        format (:func:`migrate_checkpoint`).

        Raises:
            UserError: the file is not an intact checkpoint, or has a format this code does not read (named,
                with what to do; nothing is changed).
        """
        check_checkpoint_file(self.checkpoint_path)
        try:
            # weights_only with an allow-list: a checkpoint copied from elsewhere cannot run code when resumed
            with torch.serialization.safe_globals(_checkpoint_globals()):
                state = torch.load(self.checkpoint_path, map_location=map_location, weights_only=True)
        except Exception as exc:  # unpickling can fail in many ways
            raise UserError(f"{self.checkpoint_path} is unreadable ({type(exc).__name__}: "
                            f"{(str(exc).splitlines() or [''])[0][:160]}): move it aside (mv {self.checkpoint_path} "
                            f"{self.checkpoint_path}.bad) to retrain this run from scratch, or restore it") from None
        return migrate_checkpoint(state, self.checkpoint_path)

    def remove_stale_temporaries(self) -> None:
        """Delete ``.<file>.*.tmp`` left by a process killed while writing (only under the run's lock)."""
        for tmp in self.path.glob(".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    def save_masks(self, masks: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        """Final masks in the documented format (see module docstring); ``mask_file`` reads it."""
        if not self.writable:
            return
        payload = {"format": MASKS_FORMAT, "masks": {k: v.detach().to("cpu", torch.bool) for k, v in masks.items()},
                   "meta": meta}
        _atomic_write_bytes(self.masks_path, lambda f: torch.save(payload, f))

    def save_model(self, payload: Dict[str, Any]) -> None:
        """``model.pt``: ``payload`` (:func:`sparse_exp.run.artifact.model_payload`), written atomically."""
        if not self.writable:
            return
        _atomic_write_bytes(self.model_path, lambda f: torch.save(payload, f))
