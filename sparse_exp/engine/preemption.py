"""Checkpoint promptly when SLURM (or anyone) asks the run to stop, then let submitit requeue it.

:class:`PreemptionGuard` (entered as a context manager in the main thread by :func:`sparse_exp.train.run` before the
pre-flight, so it covers every phase; ``Trainer.fit`` makes its own when used as a library) only records submitit's
requeue signal (``$SUBMITIT_PREEMPT_SIGNAL``, default ``SIGUSR2``: the time limit is near, or a preemption),
``SIGTERM`` (cancel, plain preemption, ``kill``) and, for the command line, ``SIGINT`` (Ctrl-C). The step loop polls
``guard.requested`` after every optimizer step (DDP: every ``log_every`` steps, all ranks agreeing); if set, it
writes ``checkpoint.pt`` (mid-epoch too) and ``summary.json`` and calls :meth:`PreemptionGuard.finish`, which never
returns: it hands the signal to the handler installed before the guard (submitit's checkpoint-and-requeue) or raises
``SystemExit(128 + signum)`` where that does not end the process (plain runs: exit code 143 on ``SIGTERM``, 130 on
``SIGINT``; re-running resumes). Long phases outside the step loop (scoring, GradInit, BN pass, ticket and
evaluation passes) call :func:`poll` at their own iteration boundary: it raises :class:`StopRequested` while the
guard of a ``with`` block has seen a signal (a no-op outside one). Which phase saves what: ``docs/reliability.md``.
Source: submitit ``submitit/core/job_environment.py``; what it does alone: ``docs/design-notes.md``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TypeVar, Union

log = logging.getLogger("sparse_exp")

Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]
T = TypeVar("T")

#: environment variable submitit reads the name of its requeue signal from (default ``USR2``)
SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def requeue_signal() -> signal.Signals:
    """The signal submitit binds to checkpoint-and-requeue (``$SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    name = os.environ.get(SUBMITIT_SIGNAL_ENV, "USR2")
    try:
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except KeyError:
        raise ValueError(f"${SUBMITIT_SIGNAL_ENV}={name!r} is not a signal name (e.g. USR2)") from None


def default_signals(interrupt: bool = False) -> List[signal.Signals]:
    """``[requeue_signal(), SIGTERM]`` (deduplicated), plus ``SIGINT`` (Ctrl-C) with ``interrupt`` (the command
    line's guard; a library user's Ctrl-C stays a ``KeyboardInterrupt``)."""
    sigs = [requeue_signal()]
    for extra in [signal.SIGTERM] + ([signal.SIGINT] if interrupt else []):
        if extra not in sigs:
            sigs.append(extra)
    return sigs


class StopRequested(BaseException):
    """A stop signal arrived during ``phase``, a phase that cannot save partial state: the run ends at once.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that a phase's ``except Exception`` does not swallow it.

    Attributes:
        signum: the signal (:attr:`PreemptionGuard.signum`).
        phase: the phase that polled, e.g. ``"GradInit"``.
    """

    def __init__(self, signum: Optional[signal.Signals], phase: str) -> None:
        self.signum, self.phase = signum, phase
        name = signum.name if signum is not None else "a stop request"
        super().__init__(f"{name} during {phase}")


#: the guard of the innermost active ``with PreemptionGuard()`` block (None outside one)
_current: Optional["PreemptionGuard"] = None


def current() -> Optional["PreemptionGuard"]:
    """The guard of the innermost active ``with PreemptionGuard()`` block, or None."""
    return _current


def poll(phase: str) -> None:
    """Raise :class:`StopRequested` if the current guard (:func:`current`) has seen a stop signal.

    Call it at the iteration boundary of a long phase (one attribute read: cheap enough per batch). A no-op
    outside a ``with PreemptionGuard()`` block, so library use outside a run is unaffected.
    """
    guard = _current
    if guard is not None and guard.requested:
        raise StopRequested(guard.signum, phase)


def polled(items: Iterable[T], phase: str) -> Iterator[T]:
    """Yield from ``items``, calling :func:`poll` before each item is fetched (so a stop skips the fetch too)."""
    iterator = iter(items)
    while True:
        poll(phase)
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item


class PreemptionGuard:
    """Turns stop signals into a flag the training loop polls, then replays them after a checkpoint.

    Args:
        signals: the signals to catch (default :func:`default_signals`: USR2 and TERM; the command line adds INT).
        install: install the handlers now (else call :meth:`install`).

    Attributes:
        requested: ``True`` once one of the signals arrived (set inside the signal handler; a plain
            attribute read, cheap enough to poll after every step).
        received: the signals that arrived, in order.

    Handlers can only be installed from the main thread (a Python rule); elsewhere the guard stays
    inactive (``active`` is False, ``requested`` never becomes True) and logs a warning. A signal
    whose previous disposition is ``SIG_IGN`` stays ignored. As a context manager it is also the guard that
    :func:`poll` reads while the block runs. A second ``SIGINT`` goes to the previous handler at once (Ctrl-C twice:
    ``KeyboardInterrupt`` where a phase does not poll).
    """

    def __init__(self, signals: Optional[Iterable[int]] = None, install: bool = True) -> None:
        self.signals: List[signal.Signals] = [signal.Signals(s) for s in (signals or default_signals())]
        self.requested = False
        self.received: List[signal.Signals] = []
        self.finishing = False
        self._previous: Dict[signal.Signals, Handler] = {}
        self._outer: List[Optional[PreemptionGuard]] = []
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
        global _current
        self.install()
        self._outer.append(_current)
        if self.active:
            _current = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _current
        _current = self._outer.pop() if self._outer else None
        self.uninstall()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        # Runs in the main thread between two bytecodes: only record, never log or do I/O here.
        sig = signal.Signals(signum)
        previous = self._previous.get(sig)
        if sig == signal.SIGINT and sig in self.received and callable(previous):
            previous(signum, frame)  # Ctrl-C again: the user insists (default: KeyboardInterrupt at once)
        self.received.append(sig)
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
        if sig == signal.SIGINT:
            return f"{sig.name} (Ctrl-C: checkpoint and exit)"
        return f"{sig.name} (cancelled, preempted or killed: checkpoint and exit)"

    def finish(self, done: str = "checkpoint written") -> None:
        """Hand the request over once the checkpoint is written (or the phase was left); does not return if one
        was made.

        No-op (returns) when no signal arrived. ``SIGINT``: raises ``SystemExit(130)`` (the caller printed
        what to do; no ``KeyboardInterrupt`` traceback). Otherwise calls the handler that was installed
        before the guard for :attr:`signum` -- under submitit for SIGUSR2 this requeues the job and
        raises ``SystemExit(-1)``, or raises ``UncompletedJobError`` when the job may not be
        requeued any more -- and, if that handler returns (or there was none: ``SIG_DFL``),
        raises ``SystemExit(128 + signum)``. ``done`` says in the log line what was saved before.
        """
        sig = self.signum
        if sig is None:
            return
        self.finishing = True
        if sig == signal.SIGINT:
            raise SystemExit(128 + int(sig))
        previous = self._previous.get(sig, signal.SIG_DFL)
        log.info("PreemptionGuard: %s received; %s, handing over to %s", self.reason, done, _describe(previous))
        if callable(previous):
            previous(int(sig), None)  # submitit: requeue + sys.exit(-1), or raise UncompletedJobError
        raise SystemExit(128 + int(sig))


def _describe(handler: Handler) -> str:
    if handler is signal.SIG_DFL or handler is None:
        return "the default action (exit)"
    name = getattr(handler, "__qualname__", None) or repr(handler)
    module = getattr(handler, "__module__", "") or ""
    return f"{module}.{name}" if module else name
