"""What state each run of a grid is in, and the grid a sweep expands to (``python -m sparse_exp.status``).

A run's state is the ``status`` of its ``summary.json`` (:mod:`sparse_exp.run.run_dir`): ``completed``,
``running`` (a process holds ``<run>/.lock``), ``interrupted`` (Ctrl-C, or says running with the lock free:
killed; resumable), ``stopped`` (preempted / time limit / ``stop_after_epochs``; resumable), ``failed`` (error listed),
``unreadable`` (corrupt ``summary.json``), or ``not started`` (expected by the sweep, no summary yet).
:func:`expand_sweep` lists the jobs ``python -m sparse_exp.train +sweep=NAME [overrides] -m`` would launch,
with the directory names Hydra gives them.
"""


from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import open_dict, read_write

from sparse_exp import CONF_DIR  # its ``sweep`` group is ``sweeps/`` (``conf/sweep`` links to it)
from sparse_exp.config.compose import compose
from sparse_exp.config.errors import UserError
from sparse_exp.config.hydra_adapter import overrides_dirname, parse_overrides, split_sweep
from sparse_exp.run.run_dir import lock_is_held, read_summary

#: ``interrupted``: stopped by Ctrl-C, or the summary says running but no process holds the run's lock (killed);
#: resumable either way;
#: ``unreadable``: ``summary.json`` is corrupt (move it aside to resume)
STATES = ("completed", "running", "interrupted", "stopped", "failed", "unreadable", "not started")
RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl", "checkpoint.pt")


# ---------------------------------------------------------------------------- expanding a sweep
@dataclass
class SweepJob:
    """One run of a grid: its overrides (as Hydra passes them to the job) and run directory name."""

    overrides: List[str]
    subdir: str


@dataclass
class SweepPlan:
    """The expanded grid of ``sweeps/<name>.yaml`` (+ extra overrides)."""

    name: str
    sweep_dir: str
    params: Dict[str, str]
    jobs: List[SweepJob] = field(default_factory=list)


def sweep_names(config_dir: Path = CONF_DIR) -> List[str]:
    """The sweeps ``+sweep=NAME`` can select: the top-level ``*.yaml`` of the ``sweep`` group directory,
    ``<config_dir>/sweep`` (for ``conf/``: the link to ``sweeps/``)."""
    return sorted(p.stem for p in (Path(config_dir) / "sweep").glob("*.yaml"))


def expand_sweep(name: str, overrides: Sequence[str] = (), config_dir: Path = CONF_DIR) -> SweepPlan:
    """The job list ``python -m sparse_exp.train +sweep=<name> <overrides> -m`` would launch.

    Composes the config once, splits ``hydra.sweeper.params`` + the overrides with Hydra's own
    :meth:`BasicSweeper.split_arguments` (a later override of a key replaces the sweep's list, as
    on the command line), and names each job's directory with Hydra's ``get_overrides_dirname``
    and the config's ``hydra.sweep.subdir``. Overrides of ``hydra.*`` apply to the composition only.
    """

    cli = [f"+sweep={name}", *overrides]
    parsed_cli = parse_overrides(cli)
    is_hydra = [o.key_or_group.startswith(("hydra.", "hydra/")) or o.key_or_group == "hydra" for o in parsed_cli]
    fixed = [o.input_line for o in parsed_cli if not o.is_sweep_override()]
    task_args = [o.input_line for o, h in zip(parsed_cli, is_hydra) if not h]

    cfg = compose(fixed, return_hydra_config=True, config_dir=config_dir)
    params = {str(k): str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}
    arguments = [f"{k}={v}" for k, v in params.items()] + task_args
    od = cfg.hydra.job.config.override_dirname
    plan = SweepPlan(name=name, sweep_dir=str(cfg.hydra.sweep.dir), params=params)
    for job in split_sweep(arguments):
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.job.override_dirname = overrides_dirname(job, od)
        plan.jobs.append(SweepJob(overrides=job, subdir=str(cfg.hydra.sweep.subdir)))
    return plan


# ---------------------------------------------------------------------------- reading run directories
@dataclass
class RunState:
    """What a run directory says about its run."""

    name: str  # path relative to the sweep directory
    status: str  # one of STATES
    epoch: Optional[int] = None  # last epoch in metrics.jsonl
    epochs: Optional[int] = None  # planned epochs (from summary.json)
    checkpoint: bool = False
    updated: Optional[float] = None  # newest mtime of the run's files (epoch seconds)
    error: Optional[str] = None
    reason: Optional[str] = None
    exists: bool = True


def _last_epoch(metrics: Path) -> Optional[int]:
    if not metrics.exists():
        return None
    last = None
    with open(metrics, "rb") as f:
        for line in f:
            if line.strip():
                last = line
    if last is None:
        return None
    try:
        return int(json.loads(last).get("epoch"))
    except (ValueError, TypeError):
        return None


def read_run(path: Path, name: str) -> RunState:
    """The state of the run directory ``path`` (``not started`` when it is missing or has no summary)."""
    if not path.is_dir():
        return RunState(name=name, status="not started", exists=False)
    files = [path / f for f in RUN_FILES if (path / f).exists()]
    st = RunState(name=name, status="not started", checkpoint=(path / "checkpoint.pt").exists(),
                  epoch=_last_epoch(path / "metrics.jsonl"),
                  updated=max((f.stat().st_mtime for f in files), default=None))
    summary_path = path / "summary.json"
    if summary_path.exists():
        try:  # writes are atomic (rename), so a file that does not parse is corrupt, not half-written
            summary = read_summary(summary_path)
        except UserError as exc:
            st.status, st.error = "unreadable", str(exc)
            return st
        status = summary.get("status", "running")
        st.status = status if status in STATES else "running"
        if st.status == "running" and not lock_is_held(path / ".lock"):
            st.status = "interrupted"
        st.epochs = summary.get("epochs")
        st.error = summary.get("error")
        st.reason = summary.get("reason")
        if st.status == "completed" and st.epochs is not None:
            st.epoch = st.epoch if st.epoch is not None else st.epochs
    return st


def find_run_dirs(root: Path) -> List[Path]:
    """Run directories below ``root``: those holding a run file, or empty ones (created by Hydra,
    training not reached yet). Hidden directories (``.submitit``) are skipped; a run directory's
    own subdirectories are not searched."""
    out: List[Path] = []

    def walk(d: Path) -> None:
        try:
            children = sorted(d.iterdir())
        except OSError:
            return
        if d != root and (any((d / f).exists() for f in RUN_FILES) or not children):
            out.append(d)
            return
        for c in children:
            if c.is_dir() and not c.name.startswith("."):
                walk(c)

    walk(root)
    return out


def collect(sweep_dir: Path, plan: Optional[SweepPlan] = None) -> Dict[str, Any]:
    """States of the runs in ``sweep_dir`` (all expected by ``plan`` when given) and their counts."""
    sweep_dir = Path(sweep_dir)
    found = {str(p.relative_to(sweep_dir)): p for p in find_run_dirs(sweep_dir)} if sweep_dir.is_dir() else {}
    runs: List[RunState] = []
    extra: List[str] = []
    if plan is not None:
        expected = [j.subdir for j in plan.jobs]
        runs = [read_run(sweep_dir / name, name) for name in expected]
        extra = sorted(set(found) - set(expected))
    else:
        runs = [read_run(p, name) for name, p in sorted(found.items())]
    counts = {s: sum(r.status == s for r in runs) for s in STATES}
    return {"sweep_dir": str(sweep_dir), "sweep": plan.name if plan else None, "total": len(runs),
            "counts": counts, "runs": runs, "extra": extra}


# ---------------------------------------------------------------------------- report
def _ago(t: Optional[float]) -> str:
    if t is None:
        return ""
    s = max(0.0, time.time() - t)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def format_report(res: Dict[str, Any], show_all: bool = False) -> str:
    head = f"{res['sweep_dir']}: {res['total']} run{'' if res['total'] == 1 else 's'}"
    head += f" expected by sweep {res['sweep']}" if res["sweep"] else " found"
    lines = [head]
    lines += [f"  {s:<12} {res['counts'][s]:>5}" for s in STATES]
    listed = [r for r in res["runs"] if show_all or r.status != "completed"]
    if listed:
        lines.append("all runs:" if show_all else "not completed:")
        for r in listed:
            info = []
            if r.epoch is not None or r.epochs is not None:
                info.append(f"epoch {r.epoch if r.epoch is not None else 0}/"
                            f"{r.epochs if r.epochs is not None else '?'}")
            if r.status != "not started" and r.checkpoint:
                info.append("checkpoint")
            if r.status == "not started":
                info.append("directory exists, no summary.json yet" if r.exists else "no directory")
            if r.updated is not None and r.status != "completed":
                info.append(f"updated {_ago(r.updated)}")
            if r.reason:
                info.append(str(r.reason))
            if r.error:
                info.append(f"error: {r.error}")
            lines.append(f"  {r.status:<12} {r.name}" + (f"  ({', '.join(info)})" if info else ""))
    if res["extra"]:
        lines.append(f"other run directories (not in this grid): {len(res['extra'])}")
        lines += [f"  {name}" for name in res["extra"]]
    return "\n".join(lines)
