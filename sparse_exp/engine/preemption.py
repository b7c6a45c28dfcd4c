"""Checkpoint promptly when SLURM (or anyone) asks the run to stop, then let submitit requeue it.

:class:`PreemptionGuard` (made at the start of ``fit()`` in the main thread; ``uninstall()`` in a ``finally``) only
records submitit's requeue signal (``$SUBMITIT_PREEMPT_SIGNAL``, default ``SIGUSR2``: the time limit is near, or a
preemption) and ``SIGTERM`` (cancel, plain preemption, ``kill``). The engine polls ``guard.requested`` after every
optimizer step (DDP: every ``log_every`` steps, all ranks agreeing); if set, it writes ``checkpoint.pt`` (mid-epoch
too) and ``summary.json`` (``"status": "stopped"``) and calls :meth:`PreemptionGuard.finish`, which never returns: it
hands the signal to the handler installed before the guard (submitit's checkpoint-and-requeue) or raises
``SystemExit(128 + signum)`` where that does not end the process (plain runs: exit code 143 on ``SIGTERM``; re-running
resumes). Source: submitit ``submitit/core/job_environment.py``; what it does alone: ``docs/design-notes.md``.
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
