"""One cell of a packed SLURM job (``hydra.launcher.runs_per_gpu > 1``), run by the job's process:

    python -m hydra_plugins.sparse_exp_launcher._run_cell SUBMITTED RESULT

``SUBMITTED`` is a submitit ``DelayedSubmission`` pickle: the launcher and one cell's arguments (its
``__call__`` runs the cell's Hydra job). ``RESULT`` receives what submitit would pickle for the job:
``("success", JobReturn)``, or ``("error", traceback text)`` if the call raised. Exit code 0 or 1
accordingly; ``128 + signum`` when a stop signal ended it.

Stop signals (``SIGUSR2`` / ``SIGTERM``, :func:`sparse_exp.engine.preemption.default_signals`): SLURM signals every
process of the job step and the job's process forwards the signal too, so a child usually gets it twice.
:func:`exit_on_first_signal`, installed before the job runs, exits gracefully (``SystemExit(128 + signum)``, so
``finally`` blocks and the run lock's release still run) on the first one and ignores the others. During
training the trainer's own :class:`~sparse_exp.engine.preemption.PreemptionGuard` sits on top of it: the guard
records the signal, the trainer writes its checkpoint at the next step and ``guard.finish()`` hands the
signal to :func:`exit_on_first_signal`, which exits; a repeated signal during the exit that follows is
ignored (until the interpreter's last moments, when Python restores the default handlers: a signal
then ends the process by the signal, after everything, ``atexit`` included, has run).

(The leading underscore keeps Hydra's plugin scan from importing this module.)
"""

import signal
import sys
import traceback
from types import FrameType
from typing import List, Optional

_stopping: List[int] = []


def exit_on_first_signal(signum: int, frame: Optional[FrameType]) -> None:
    """Signal handler: ``SystemExit(128 + signum)`` on the first stop signal, nothing on later ones."""
    if not _stopping:
        _stopping.append(signum)
        raise SystemExit(128 + signum)


def main(argv: List[str]) -> int:
    """Run the pickled cell ``argv[0]``, pickle its outcome to ``argv[1]``; returns the exit code."""
    from sparse_exp.engine.preemption import default_signals

    for sig in default_signals():
        signal.signal(sig, exit_on_first_signal)
    submitted, result = argv
    from submitit.core import utils

    try:
        outcome = ("success", utils.DelayedSubmission.load(submitted).result())
    except Exception:  # as submitit's own job process does: the traceback becomes the result
        outcome = ("error", traceback.format_exc())
    with utils.temporary_save_path(result) as tmp:
        try:
            utils.cloudpickle_dump(outcome, tmp)
        except Exception:  # e.g. an exception that does not pickle
            utils.cloudpickle_dump(("error", f"{outcome[1]!r}\n(its result could not be pickled: "
                                             f"{traceback.format_exc()})"), tmp)
    return 0 if outcome[0] == "success" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
