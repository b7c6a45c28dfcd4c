"""The SLURM launcher of ``hydra/launcher=slurm``: hydra-submitit-launcher's, plus several runs per GPU.

    python -m sparse_exp.train +sweep=smoke -m hydra/launcher=slurm hydra.launcher.runs_per_gpu=4

``hydra.launcher.runs_per_gpu=1`` (the default) is hydra-submitit-launcher's ``SlurmLauncher`` unchanged:
one SLURM array task per run. With ``runs_per_gpu=N > 1`` the cells of the grid are packed in order, N
per SLURM job (cells ``0..N-1``, ``N..2N-1``, ...; the last job may hold fewer), the jobs form one array
(``array_parallelism`` counts jobs), and each job runs its cells at the same time, one child process per
cell, sharing the job's GPU, CPUs and memory (``mem_gb`` is per job: ask for N runs' worth):

* **The same Hydra job.** Each child runs exactly what the unpacked array task would run: the launcher's
  own ``__call__`` with the cell's overrides, job number and Hydra state -- same config, same run
  directory (``hydra.sweep.dir/hydra.sweep.subdir``), ``hydra.job.id`` = the SLURM job id -- pickled with
  submitit to ``<submitit folder>/<job id>_cell<k>_submitted.pkl`` and run by
  ``python -m hydra_plugins.sparse_exp_launcher._run_cell``, which pickles its ``JobReturn`` back. The
  child's output goes to ``<submitit folder>/<job id>_cell<k>_log.out`` (appended across requeues); the
  job's own log (``<job id>_0_log.out``) says which child runs which cell and how it ended.
* **CPU threads are split.** Every child sees ``OMP_NUM_THREADS = MKL_NUM_THREADS = SLURM_CPUS_PER_TASK =
  max(1, cpus // cells)``: ``cpus`` is the job's ``$SLURM_CPUS_PER_TASK`` (``cpus_per_task``; else
  ``os.cpu_count()``), ``cells`` the number of cells of this job (the trainer sets torch's thread count
  from ``SLURM_CPUS_PER_TASK``). The count does not change when the job is requeued.
* **Requeue and preemption.** The job's process holds a :class:`sparse_exp.engine.preemption.PreemptionGuard`
  over submitit's handlers. On SIGUSR2 (submitit's requeue signal: the time limit's ``--signal``,
  ``scancel --signal=USR2``, preemption) or SIGTERM it forwards the signal to every child still running
  (SLURM signals them too; a child acts on the first one, see ``_run_cell``), waits until all have
  exited -- each trainer writes its checkpoint at the next step -- and then hands the signal to
  submitit's handler, which requeues the job exactly as for one run (``max_num_timeout`` counts per job).
  The requeued job runs the cells that had not finished; their runs resume from their checkpoints, and a
  run that completed in the meantime is skipped by the entrypoint (:func:`sparse_exp.train.run` returns
  the completed summary without training). Cells that had finished (completed or failed) before the
  signal are not run again: their ``JobReturn`` travels in the requeued job's pickle.
* **A failing child fails its cell only.** The task raised: Hydra's own failed ``JobReturn``, from the
  child. The child exited without a result (a refused run directory exits with code 2, a crash, a kill),
  other than while the job was being stopped: a failed ``JobReturn`` whose exception,
  :class:`PackedRunError`, names the cell, the exit code and the last lines of the child's log. The other
  children go on; the sweeper re-raises a failure as it does for any failed job.
* **One** ``JobReturn`` **per cell, in the cells' order**, as the unpacked launcher returns them.

Refused before anything is submitted (one line ``error: hydra.launcher.runs_per_gpu=... is not allowed:
...``, exit code 2): ``runs_per_gpu`` below 1; ``runs_per_gpu > 1`` with ``tasks_per_node > 1`` or
``nodes > 1`` (DDP runs cannot share a GPU) or with ``gpus_per_node > 1`` (a packed job has one GPU).
A value that is not an integer is refused by the typed config (``must be an integer``, ``sparse_exp.config.refusal``).

Hydra loads launchers only from the ``hydra_plugins`` namespace package, hence this module's place (it
ships with the ``sparse_exp`` distribution, see ``pyproject.toml``). ``conf/hydra/launcher/slurm.yaml``
extends this plugin's config, ``hydra/launcher=sparse_exp_slurm`` (:class:`SparseExpSlurmConf`).
"""

# No ``from __future__ import annotations`` here: Hydra's plugin scanner executes this module before
# putting it in ``sys.modules``, and dataclasses with string annotations then fail to resolve.
import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

# the module, not its classes: Hydra's scan registers every plugin class found in this module's namespace
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

KEY = "hydra.launcher.runs_per_gpu"
#: seconds between two looks at the children and at the stop flag
POLL_S = 0.2
#: seconds a child's stop-signal exit waits for the same signal to reach this job's process
STOP_GRACE_S = 2.0
#: seconds children get to checkpoint and exit after the job's process fails (then SIGKILL)
KILL_AFTER_S = 60.0
#: lines of a failed child's log quoted in its error
LOG_TAIL_LINES = 20
#: the child's entrypoint (``python -m``)
CELL_MODULE = "hydra_plugins.sparse_exp_launcher._run_cell"


@dataclass
class SparseExpSlurmConf(SlurmQueueConf):
    """``hydra/launcher=sparse_exp_slurm``: hydra-submitit-launcher's ``submitit_slurm`` keys plus ``runs_per_gpu``."""

    _target_: str = "hydra_plugins.sparse_exp_launcher.sparse_exp_launcher.SparseExpSlurmLauncher"
    #: grid cells per SLURM job, run at the same time as child processes sharing its GPU (1: a job per run)
    runs_per_gpu: int = 1


def register_launcher() -> None:
    """Store :class:`SparseExpSlurmConf` as ``hydra/launcher=sparse_exp_slurm`` (idempotent)."""
    ConfigStore.instance().store(group="hydra/launcher", name="sparse_exp_slurm", node=SparseExpSlurmConf,
                                 provider="sparse_exp")


def packing_problem(params: Dict[str, Any]) -> Optional[str]:
    """Why the launcher keys ``params`` (``runs_per_gpu``, ``tasks_per_node``, ...) cannot be launched.

    Returns:
        ``None`` if they can, else one line ``hydra.launcher.runs_per_gpu=<v> is not allowed: ...; allowed: ...``.
    """
    n = params.get("runs_per_gpu", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return (f"{KEY}={n} is not allowed: it is the number of grid cells run together in one SLURM job, "
                "sharing its GPU; allowed: an integer >= 1 (1 = one job per run, the default)")
    if n == 1:
        return None
    for key in ("tasks_per_node", "nodes"):
        value = params.get(key)
        if value is not None and value != 1:
            return (f"{KEY}={n} is not allowed with hydra.launcher.{key}={value}: packed runs are single-process "
                    f"runs sharing one GPU (no DDP); allowed: {KEY}=1 for multi-process runs, or "
                    f"hydra.launcher.{key}=1")
    gpus = params.get("gpus_per_node")
    if gpus is not None and gpus > 1:
        return (f"{KEY}={n} is not allowed with hydra.launcher.gpus_per_node={gpus}: the runs of a packed job "
                f"share its one GPU; allowed: hydra.launcher.gpus_per_node=1 (or null for CPU jobs), or {KEY}=1")
    return None


class PackedRunError(RuntimeError):
    """A cell of a packed job whose child process ended without a result (message: cell, exit code, log tail)."""


class SparseExpSlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's ``SlurmLauncher``; with ``runs_per_gpu > 1`` it packs cells (module doc).

    Args:
        runs_per_gpu: grid cells per SLURM job (integer >= 1).
        **params: the ``submitit_slurm`` keys (``hydra.launcher.*``), as ``SlurmLauncher`` takes them.

    A refused combination (:func:`packing_problem`) prints one line and exits with code 2 when Hydra
    instantiates the launcher, before the sweeper checks the grid and before anything is submitted.
    """

    def __init__(self, runs_per_gpu: int = 1, **params: Any) -> None:
        problem = packing_problem({"runs_per_gpu": runs_per_gpu, **params})
        if problem:
            from sparse_exp.config.refusal import refuse  # lazily: the plugin scan imports this module early

            sys.exit(refuse(problem))
        super().__init__(**params)
        self.runs_per_gpu = runs_per_gpu

    def _executor(self) -> Any:
        """The submitit executor, built from ``self.params`` exactly as ``BaseSubmititLauncher.launch`` does."""
        import submitit

        params = self.params
        specific_init_keys = {"max_num_timeout"}
        init_params = {"folder": params["submitit_folder"],
                       **{f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k in specific_init_keys}}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        init_keys = specific_init_keys | {"submitit_folder"}
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items() if k not in init_keys})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the cells (one array task per run, or ``runs_per_gpu`` per job) and wait for them.

        Returns:
            one ``JobReturn`` per cell of ``job_overrides``, in that order.
        """
        if self.runs_per_gpu == 1:
            return super().launch(job_overrides, initial_job_idx)
        assert self.config is not None and len(job_overrides) > 0
        executor = self._executor()
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        state = Singleton.get_state()
        runs = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            label = f"#{idx} ({' '.join(filter_overrides(overrides)) or 'no overrides'})"
            # the arguments BaseSubmititLauncher.launch maps `self` over: the cell's Hydra job
            runs.append(PackedRun.of(self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state,
                                     overrides=list(overrides), label=label))
        n = self.runs_per_gpu
        packs = [CellPack(runs[i:i + n], cpus=self.params.get("cpus_per_task")) for i in range(0, len(runs), n)]
        log.info(f"{len(runs)} runs packed {n} per SLURM job: {len(packs)} job(s)")
        for j, pack in enumerate(packs):
            for run in pack.runs:
                log.info(f"\t{run.label}  (job {j})")
        jobs = executor.submit_array(packs)
        return [ret for job in jobs for ret in job.results()[0]]


@dataclass
class PackedRun:
    """One cell of a packed job: what its child process runs, and how the logs and errors name it."""

    #: the cell's overrides (those of its JobReturn)
    overrides: List[str]
    #: ``#<job num> (<overrides>)``
    label: str
    #: a cloudpickled submitit ``DelayedSubmission`` whose ``result()`` is the cell's ``JobReturn``; kept as
    #: bytes so that the packed job's own process never unpickles the task (nor imports torch)
    payload: bytes

    @classmethod
    def of(cls, fn: Any, *args: Any, overrides: List[str], label: str) -> "PackedRun":
        """The run of ``fn(*args)`` (``fn`` and ``args`` picklable with cloudpickle; ``fn`` returns a JobReturn)."""
        import cloudpickle
        import submitit

        payload = cloudpickle.dumps(submitit.helpers.DelayedSubmission(fn, *args), protocol=pickle.HIGHEST_PROTOCOL)
        return cls(overrides=list(overrides), label=label, payload=payload)


class _Child:
    """One run's child process and its files (``<folder>/<job id>_cell<k>_{submitted.pkl,result.pkl,log.out}``)."""

    def __init__(self, folder: Path, job_id: str, k: int) -> None:
        prefix = f"{job_id}_cell{k}"
        self.submitted = folder / f"{prefix}_submitted.pkl"
        self.result = folder / f"{prefix}_result.pkl"
        self.log = folder / f"{prefix}_log.out"
        self.proc: Optional[subprocess.Popen] = None


class CellPack:
    """Several cells of a grid as one checkpointable submitit job: one child process per cell (module doc).

    Args:
        runs: the cells, in order (:class:`PackedRun`).
        cpus: CPU cores of the job if ``$SLURM_CPUS_PER_TASK`` is unset (default ``os.cpu_count()``).
        folder: where the children's pickles and logs go (default: the running submitit job's folder).

    Calling it runs the cells not finished yet, each as ``python -m hydra_plugins.sparse_exp_launcher._run_cell``,
    and returns one ``JobReturn`` per cell, in order. After a stop signal it does not return: it hands
    the signal to the handler installed before it (submitit's requeue for SIGUSR2, which pickles
    :meth:`checkpoint`'s result for the requeued job).
    """

    def __init__(self, runs: Sequence[PackedRun], cpus: Optional[int] = None,
                 folder: Optional[os.PathLike] = None) -> None:
        assert runs, "a pack holds at least one run"
        self.runs = list(runs)
        self.cpus = cpus
        self.folder = None if folder is None else Path(folder)
        #: cell index -> its JobReturn, for cells that finished (kept across requeues)
        self.finished: Dict[int, JobReturn] = {}

    def checkpoint(self) -> Any:
        """submitit's requeue hook: the same pack, with the cells finished so far, as a ``DelayedSubmission``."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def threads(self) -> int:
        """CPU threads per child: ``max(1, cpus // len(runs))``, ``cpus`` = ``$SLURM_CPUS_PER_TASK``, else
        the ``cpus`` given, else ``os.cpu_count()``."""
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.cpus or os.cpu_count() or 1)
        return max(1, cpus // len(self.runs))

    def _where(self) -> Tuple[Path, str]:
        if self.folder is not None:
            return self.folder, "pack"
        import submitit

        env = submitit.JobEnvironment()
        return env.paths.folder, env.job_id

    def __call__(self) -> List[JobReturn]:
        """Run the unfinished cells as child processes (see the class doc)."""
        from sparse_exp.engine.preemption import PreemptionGuard

        if self.folder is None:
            _log_to_stdout()
        folder, job_id = self._where()
        folder.mkdir(parents=True, exist_ok=True)
        threads = self.threads()
        guard = PreemptionGuard()  # over submitit's handlers: the requeue waits for the children
        running: Dict[int, _Child] = {}
        try:
            todo = [k for k in range(len(self.runs)) if k not in self.finished]
            log.info("packed job %s: %d of %d runs to run, %d CPU thread(s) each", job_id, len(todo),
                     len(self.runs), threads)
            for k in todo:
                if guard.requested:
                    break
                running[k] = self._start(k, folder, job_id, threads)
            forwarded = 0
            while running:
                forwarded = self._forward(guard, running, forwarded)
                for k in [k for k, c in running.items() if c.proc.poll() is not None]:
                    ret = self._outcome(k, running.pop(k), guard)
                    if ret is not None:
                        self.finished[k] = ret
                if running:
                    time.sleep(POLL_S)
            unfinished = [k for k in range(len(self.runs)) if k not in self.finished]
            if unfinished:  # only after a stop signal (see _outcome)
                log.info("packed job %s: %d run(s) stopped by %s; %d finished", job_id, len(unfinished),
                         guard.reason, len(self.finished))
                guard.finish()  # submitit: requeue with checkpoint() and exit; never returns here
                raise RuntimeError("unreachable: PreemptionGuard.finish returned after a signal")
            return [self.finished[k] for k in range(len(self.runs))]
        finally:
            _stop_children(running)
            guard.uninstall()

    def _start(self, k: int, folder: Path, job_id: str, threads: int) -> _Child:
        run, child = self.runs[k], _Child(folder, job_id, k)
        for stale in (child.result, child.result.with_name(child.result.name + ".save_tmp")):
            stale.unlink(missing_ok=True)
        child.submitted.write_bytes(run.payload)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "SLURM_CPUS_PER_TASK": str(threads)}
        with open(child.log, "a") as out:
            out.write(f"===== {datetime.now():%Y-%m-%d %H:%M:%S} job {job_id}, run {run.label}, "
                      f"{threads} thread(s)\n")
            out.flush()
            child.proc = subprocess.Popen([sys.executable, "-u", "-m", CELL_MODULE, str(child.submitted),
                                           str(child.result)], stdout=out, stderr=subprocess.STDOUT, env=env)
        log.info("run %s: pid %d, log %s", run.label, child.proc.pid, child.log)
        return child

    def _forward(self, guard: Any, running: Dict[int, _Child], forwarded: int) -> int:
        """Send every stop signal received since the last call to the children still running."""
        received = list(guard.received)
        for sig in received[forwarded:]:
            alive = [c for c in running.values() if c.proc.poll() is None]
            log.info("%s received: forwarding it to %d running run(s)", sig.name, len(alive))
            for c in alive:
                try:
                    c.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
        return len(received)

    def _outcome(self, k: int, child: _Child, guard: Any) -> Optional[JobReturn]:
        """The cell's JobReturn once its child exited, or None if it was stopped (to run after the requeue)."""
        run, rc = self.runs[k], child.proc.returncode
        outcome = _load(child.result)
        if outcome is not None and outcome[0] == "success":
            ret = outcome[1]
            log.info("run %s: finished (%s)", run.label, ret.status.name)
            return ret
        if outcome is None:
            stop = _stop_signal(rc)
            if stop is not None and not guard.requested:  # SLURM signals the children and us at once
                deadline = time.time() + STOP_GRACE_S
                while not guard.requested and time.time() < deadline:
                    time.sleep(0.05)
            if guard.requested:  # the job is being stopped: whatever ended the child, it runs again after the requeue
                log.info("run %s: stopped (exit code %s)", run.label, rc)
                return None
            why = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            if stop:
                why += f" ({stop} sent to it alone; its checkpoint is kept: re-launch the grid to resume it)"
            detail = f"last lines of {child.log}:\n" + _tail(child.log, LOG_TAIL_LINES)
        else:
            why, detail = "raised outside its Hydra job", str(outcome[1])
        message = f"packed run {run.label} {why}; {detail}"
        log.error("%s", message)
        return JobReturn(overrides=list(run.overrides), status=JobStatus.FAILED,
                         _return_value=PackedRunError(message), working_dir=os.getcwd())


def _load(path: Path) -> Optional[Tuple[str, Any]]:
    """The ``(status, value)`` a child pickled, or None if it wrote none (or an unreadable one)."""
    from submitit.core.utils import pickle_load

    if not path.exists():
        return None
    try:
        return pickle_load(path)
    except Exception as exc:  # a truncated pickle: the child was killed while writing it
        log.warning("unreadable result %s (%s: %s)", path, type(exc).__name__, exc)
        return None


def _stop_signal(rc: Optional[int]) -> Optional[str]:
    """The stop signal's name if exit code ``rc`` is how a child ends on it (``128 + n`` or killed by ``n``)."""
    from sparse_exp.engine.preemption import default_signals

    for sig in default_signals():
        if rc in (128 + int(sig), -int(sig)):
            return sig.name
    return None


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


def _stop_children(running: Dict[int, _Child]) -> None:
    """The job's process is failing with children left: SIGTERM them (they checkpoint), SIGKILL after a while."""
    alive = [c for c in running.values() if c.proc is not None and c.proc.poll() is None]
    if not alive:
        return
    log.warning("stopping %d run(s) left running", len(alive))
    for c in alive:
        c.proc.terminate()
    deadline = time.time() + KILL_AFTER_S
    for c in alive:
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def _log_to_stdout() -> None:
    """INFO logs of this module and of the guard (logger ``sparse_exp``) into the job's log (its stdout).

    Only in a submitit job's own process (which configures the ``submitit`` logger alone); the root
    logger is left alone, so submitit's lines are not doubled."""
    formatter = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for name in (__name__, "sparse_exp"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(formatter)
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


register_launcher()  # Hydra imports every hydra_plugins module when it starts
