"""Train one sparse network (or a grid of them with ``-m``).

    python -m sparse_exp.train                                   # the default experiment
    python -m sparse_exp.train model=lenet_300_100 sparsity=0.95 distribution=uniform
    python -m sparse_exp.train sparsifier=granet sparsity=0.9,0.95 seed=0,1,2 -m

Contract: trains into Hydra's run directory (:mod:`sparse_exp.run.run_dir`), or returns the summary of a
run already completed there. Exit code 2: a refused command line, config, data or run directory, one line
and nothing written (:mod:`sparse_exp.config.refusal`, :mod:`sparse_exp.config.preflight`); exit code 1: a
single run that failed (non-finite loss; its last good checkpoint is kept); a grid goes on with its other cells.
Stop signals are honoured in every phase (:mod:`sparse_exp.engine.preemption`, ``docs/reliability.md``): Ctrl-C prints
one line saying how to resume and exits with code 130; SIGTERM exits with 143; SIGUSR2 under submitit requeues the job.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sparse_exp import CONF_DIR
from sparse_exp.config.compose import run_name, setup
from sparse_exp.config.errors import UserError
from sparse_exp.config.preflight import preflight
from sparse_exp.config.refusal import one_line, preflight_cli
from sparse_exp.engine.distributed import any_rank
from sparse_exp.engine.loop import Preempted, Trainer
from sparse_exp.engine.preemption import PreemptionGuard, StopRequested, default_signals, poll
from sparse_exp.engine.summary import format_summary
from sparse_exp.run.run_dir import RunDir

log = logging.getLogger("sparse_exp")

_run_name = run_name  # the name tests and scripts know
setup()  # schemas and the run_name resolver, before Hydra composes


def run(cfg: DictConfig, run_path: str) -> dict:
    """Pre-flight-check ``cfg`` and ``run_path``, then train into ``run_path``; returns the summary.

    Stop signals (SIGUSR2, SIGTERM, SIGINT) are caught from the pre-flight on; each phase polls them
    (:mod:`sparse_exp.engine.preemption`). On one, the run records it (``summary.json``: ``stopped`` /
    ``interrupted``, once the run directory is ours) and ends: SIGINT prints one line and raises ``SystemExit(130)``;
    SIGUSR2 / SIGTERM go to the handler installed before (submitit's requeue) or raise ``SystemExit(128 + signum)``.

    Raises:
        UserError: anything :func:`sparse_exp.config.preflight.preflight` refuses (nothing is written then), or
            another process is training into ``run_path`` (see :meth:`RunDir.exclusive`).
    """
    with PreemptionGuard(default_signals(interrupt=True)) as guard:
        try:
            return _run(cfg, run_path, guard)
        except (Preempted, StopRequested) as exc:
            hint = getattr(exc, "hint", "") or _setup_stop_line(exc, RunDir(run_path))
            if guard.signum == signal.SIGINT:
                print(hint, file=sys.stderr, flush=True)
            elif not getattr(exc, "hint", ""):  # stopped before training began: nothing was recorded yet
                log.info("stopped during %s: %s", getattr(exc, "phase", "set-up"), hint)
            guard.finish("checkpoint written" if isinstance(exc, Preempted) else f"{exc.phase} left")
            raise  # finish() does not return while a signal was received


def _setup_stop_line(exc: BaseException, rd: RunDir) -> str:
    """The stop line of a run stopped before :meth:`Trainer.fit` (set-up): resume or start again."""
    where = f"interrupted during {getattr(exc, 'phase', 'set-up')}"
    if rd.has_checkpoint():
        return f"{where}; run the same command to resume from its checkpoint"
    return f"{where}; run the same command to start again; no checkpoint was written yet"


def _run(cfg: DictConfig, run_path: str, guard: PreemptionGuard) -> dict:
    preflight(cfg, run_path)
    poll("pre-flight")
    rd = RunDir(run_path)
    if rd.is_completed():
        summary = rd.summary()
        log.info("run already completed, not retraining: %s (test/acc %.2f%%). Delete the directory or change "
                 "the overrides to train again.", rd.path, summary.get("test/acc", float("nan")))
        return summary

    log.info("set-up: loading the data and building the run")
    trainer = Trainer(cfg, rd)  # loads the data and builds the run (the pre-flight checked what it could)
    poll("set-up")
    trainer.preemption = guard
    dist, device = trainer.run.dist, trainer.run.device
    with contextlib.ExitStack() as stack:
        busy = None
        try:  # refuses a second process training into the same directory (rank 0 holds the lock)
            stack.enter_context(rd.exclusive())
        except UserError as exc:
            busy = exc
        # DDP: every rank takes the same decision, so no rank waits in a collective for one that left
        if any_rank(busy is not None, dist, device):
            raise busy or UserError(f"run directory {rd.path} is in use by another process (refused on rank 0)")
        if any_rank(rd.is_completed(), dist, device):  # finished while this one started
            return rd.summary()
        rd.prepare(cfg, HydraConfig.get().job.override_dirname if HydraConfig.initialized() else None)
        summary = trainer.fit()
    if summary.get("status") == "completed" and dist.is_main:  # once, not once per rank
        print("\n" + format_summary(summary, trainer.summary_lines(summary)), flush=True)
    return summary


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")  # absolute: checkout or wheel
def main(cfg: DictConfig) -> None:
    """Hydra entrypoint: :func:`run` into Hydra's run directory; user errors -> one line, exit 2."""
    try:
        summary = run(cfg, HydraConfig.get().runtime.output_dir)
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        sys.exit(2)
    if summary.get("status") == "failed":  # diverged: the run is recorded as failed, its last good checkpoint kept
        print(f"error: {one_line(summary.get('error', 'the run failed'))}", file=sys.stderr, flush=True)
        if HydraConfig.get().mode != RunMode.MULTIRUN:  # a grid goes on with its other cells
            sys.exit(1)


def _multirun_flag_first(argv: list) -> list:
    """Hydra accepts ``-m`` only before or after all overrides; users type it anywhere
    (``python -m sparse_exp.train +sweep=smoke -m hydra/launcher=slurm``), so move it first."""
    args = list(argv[1:])
    flags = [a for a in args if a in ("-m", "--multirun")]
    if flags:
        args = [flags[0]] + [a for a in args if a not in ("-m", "--multirun")]
    return [argv[0]] + args


if __name__ == "__main__":
    sys.argv = _multirun_flag_first(sys.argv)
    code = preflight_cli(sys.argv[1:])  # one-line refusals before Hydra creates any directory
    if code:
        sys.exit(code)
    main()
