"""Checkpoint promptly when SLURM (or anyone) asks the run to stop, then let submitit requeue it.

The signals
-----------
* ``SIGUSR2`` -- the signal submitit asks SLURM for (``sbatch --signal=USR2@<signal_delay_s>``):
  sent ``signal_delay_s`` seconds before the time limit, on ``scancel --signal=USR2 <jobid>``, and
  on preemption where the cluster sets ``PreemptParameters=send_user_signal``. submitit reads
  another name from ``$SUBMITIT_PREEMPT_SIGNAL``; so does this module.
* ``SIGTERM`` -- what SLURM sends at the time limit itself, on ``scancel`` and on a plain
  preemption (``GraceTime`` seconds before ``SIGKILL``); also what ``kill`` sends.

What submitit does on its own (``submitit/core/job_environment.py``)
--------------------------------------------------------------------
Before running the job, ``JobEnvironment._handle_signals`` installs ``SignalHandler.bypass`` (log
and ignore) for ``SIGTERM``/``SIGCONT`` and ``SignalHandler.checkpoint_and_try_requeue`` for
``SIGUSR2``. The latter, *right inside the signal handler*, i.e. wherever training happens to be:

1. decides "timed-out" vs "preempted" from the wall time: timed out when the job ran for at least
   ``min(0.8 * T, T - 10 min)`` of its limit ``T`` -- so with ``T <= 10 min`` every signal counts as
   a timeout -- and computes ``countdown = remaining timeouts - timed_out``;
2. on global rank 0 only, calls the submitted callable's ``checkpoint()`` method. For
   hydra-submitit-launcher that is ``BaseSubmititLauncher.checkpoint``, which returns
   ``DelayedSubmission(self, *same args)``: the *same* Hydra job (same overrides -> same run
   directory, see ``conf/config.yaml``) -- it carries no training state, the run directory does;
   submitit pickles it over the job's ``submitted.pkl``;
3. runs ``scontrol requeue <jobid>`` and ``sys.exit(-1)``. If the job may not be requeued
   (``countdown < 0``: more than ``max_num_timeout`` timeouts) it raises
   ``submitit.core.utils.UncompletedJobError`` instead, which submitit stores as the job's result so
   that the launching process stops waiting.

SLURM later starts the requeued job (same job id; after ``cred_expire + 1`` s at the earliest),
submitit loads the new pickle and calls the launcher again, Hydra runs the same job in the same
run directory, and :class:`sparse_exp.engine.Trainer` resumes from ``checkpoint.pt``.

What this module adds
---------------------
Left alone, submitit exits in the middle of a step and everything since the last end-of-epoch
checkpoint is lost (an ImageNet epoch is an hour). :class:`PreemptionGuard` replaces the handlers
of ``SIGUSR2`` and ``SIGTERM`` by one that only records the request (``guard.requested``). The
engine polls the flag after every optimizer step; when it is set the engine writes
``checkpoint.pt`` (mid-epoch is fine) and calls :meth:`PreemptionGuard.finish`, which hands the
signal to the handler that was installed before -- submitit's ``checkpoint_and_try_requeue`` for
``SIGUSR2`` -- so the requeue happens exactly as above, only *after* the checkpoint. Where the
previous handler does not end the process (``SIG_DFL`` outside submitit, submitit's ``bypass`` for
``SIGTERM``, ranks other than 0), :meth:`finish` raises ``SystemExit(128 + signum)``: the process
ends as if killed by the signal but ``finally`` blocks still run (W&B is flushed). A ``SIGTERM``
from SLURM means "cancelled" or "preempted with PreemptMode=REQUEUE": SLURM requeues in the latter
case by itself, and a re-launch of the grid resumes the former.

Engine contract (what :meth:`sparse_exp.engine.Trainer.fit` does)::

    guard = PreemptionGuard()                 # start of fit(), in the main thread
    try:
        ... after every optimizer step (and the step's bookkeeping):
        if guard.requested:
            rd.save_checkpoint(self.state_dict())          # includes the position in the epoch
            rd.write_summary({"status": "stopped", ...})
            guard.finish()                    # requeues + exits; never returns if a signal arrived
    finally:
        guard.uninstall()

Plain runs (no SLURM) get the same behaviour for ``kill`` / ``SIGTERM``: a checkpoint at the next
step and exit code 143; re-running the command resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

log = logging.getLogger("sparse_exp")

Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]

#: environment variable submitit reads the name of its requeue signal from (default ``USR2``)
SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def requeue_signal() -> signal.Signals:
    """The signal submitit binds to checkpoint-and-requeue (``$SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    name = os.environ.get(SUBMITIT_SIGNAL_ENV, "USR2")
    try:
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except KeyError:
        raise ValueError(f"${SUBMITIT_SIGNAL_ENV}={name!r} is not a signal name (e.g. USR2)") from None


def default_signals() -> List[signal.Signals]:
    """``[requeue_signal(), SIGTERM]`` (deduplicated)."""
    sigs = [requeue_signal()]
    if signal.SIGTERM not in sigs:
        sigs.append(signal.SIGTERM)
    return sigs


class PreemptionGuard:
    """Turns stop signals into a flag the training loop polls, then replays them after a checkpoint.

    Args:
        signals: the signals to catch (default :func:`default_signals`: USR2 and TERM).
        install: install the handlers now (else call :meth:`install`).

    Attributes:
        requested: ``True`` once one of the signals arrived (set inside the signal handler; a plain
            attribute read, cheap enough to poll after every step).
        received: the signals that arrived, in order.

    Handlers can only be installed from the main thread (a Python rule); elsewhere the guard stays
    inactive (``active`` is False, ``requested`` never becomes True) and logs a warning. A signal
    whose previous disposition is ``SIG_IGN`` stays ignored. Usable as a context manager.
    """

    def __init__(self, signals: Optional[Iterable[int]] = None, install: bool = True) -> None:
        self.signals: List[signal.Signals] = [signal.Signals(s) for s in (signals or default_signals())]
        self.requested = False
        self.received: List[signal.Signals] = []
        self.finishing = False
        self._previous: Dict[signal.Signals, Handler] = {}
        if install:
            self.install()

    # ------------------------------------------------------------------ installation
    @property
    def active(self) -> bool:
        """Whether our handlers are installed."""
        return bool(self._previous)

    def install(self) -> "PreemptionGuard":
        """Install the handlers, remembering the previous ones (idempotent)."""
        if self._previous:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionGuard: not in the main thread, stop signals are not intercepted")
            return self
        for sig in self.signals:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Put the previous handlers back (where ours is still the installed one)."""
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "PreemptionGuard":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        # Runs in the main thread between two bytecodes: only record, never log or do I/O here.
        self.received.append(signal.Signals(signum))
        self.requested = True

    # ------------------------------------------------------------------ after the checkpoint
    @property
    def signum(self) -> Optional[signal.Signals]:
        """The signal :meth:`finish` acts on: submitit's requeue signal if it arrived, else the first one."""
        if not self.received:
            return None
        req = requeue_signal()
        return req if req in self.received else self.received[0]

    @property
    def reason(self) -> str:
        """A short human-readable description of the request (for logs and ``summary.json``)."""
        sig = self.signum
        if sig is None:
            return ""
        if sig == requeue_signal():
            return f"{sig.name} (time limit or preemption: checkpoint and requeue)"
        return f"{sig.name} (cancelled, preempted or killed: checkpoint and exit)"

    def finish(self) -> None:
        """Hand the request over once the checkpoint is written; does not return if one was made.

        No-op (returns) when no signal arrived. Otherwise calls the handler that was installed
        before the guard for :attr:`signum` -- under submitit for SIGUSR2 this requeues the job and
        raises ``SystemExit(-1)``, or raises ``UncompletedJobError`` when the job may not be
        requeued any more -- and, if that handler returns (or there was none: ``SIG_DFL``),
        raises ``SystemExit(128 + signum)``.
        """
        sig = self.signum
        if sig is None:
            return
        self.finishing = True
        previous = self._previous.get(sig, signal.SIG_DFL)
        log.info("PreemptionGuard: %s received; checkpoint written, handing over to %s", self.reason,
                 _describe(previous))
        if callable(previous):
            previous(int(sig), None)  # submitit: requeue + sys.exit(-1), or raise UncompletedJobError
        raise SystemExit(128 + int(sig))


def _describe(handler: Handler) -> str:
    if handler is signal.SIG_DFL or handler is None:
        return "the default action (exit)"
    name = getattr(handler, "__qualname__", None) or repr(handler)
    module = getattr(handler, "__module__", "") or ""
    return f"{module}.{name}" if module else name
