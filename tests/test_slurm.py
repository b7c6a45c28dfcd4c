"""Launching, preemption and requeue against a real SLURM started on this machine.

* PreemptionGuard unit tests: signals sent to this very process, submitit's real handler (no SLURM).
* Launchers without SLURM: ``hydra/launcher=submitit_local``; SIGTERM on a plain run checkpoints,
  and the re-run resumes to the uninterrupted result.
* With SLURM (``scripts/slurm_local.sh start``, session fixture): the smoke grid through
  ``hydra/launcher=slurm`` completes; re-launching it submits nothing (and, forced, trains nothing); a job sent
  ``scancel --signal=USR2`` after its first checkpoint is requeued, resumes from the checkpoint
  and ends exactly like the uninterrupted run.
* Several runs per GPU (``hydra.launcher.runs_per_gpu``, ``hydra_plugins/sparse_exp_launcher``): a bad value is
  refused by the real CLI before anything is written; without SLURM, a packed job's failing runs fail alone and
  the results come back in order, and a stop signal sent to the job's process only reaches every run, is handed
  to submitit's real handler after they stopped, and the requeued job runs only the unfinished ones; with SLURM,
  a 2-run grid packed into one job, sent ``scancel --signal=USR2``, is requeued and both runs resume and end
  exactly like their uninterrupted runs.

The SLURM tests skip only where SLURM cannot be started here: not Linux, not root, or (outside CI)
no SLURM and no apt-get to install it. In CI (CI=true) as root they must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, needs_data

from sparse_exp.engine.preemption import PreemptionGuard, requeue_signal
from sparse_exp.run.grid_status import collect, expand_sweep

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
CI = os.environ.get("CI") == "true"
VOLATILE = ("time/epoch_s",)
SUMMARY_KEYS = ("test/", "val/", "last/", "tickets/", "sparsity/", "diversity/", "itop", "flops/", "params/", "steps")

#: one run whose epochs take seconds on a CPU (128 steps each), so a signal lands mid-run
PREEMPT_RUN = ["+sweep=smoke", "seed=0", "sparsifier=rigl", "epochs=5", "dataset.subset_train=8192", "device=cpu"]
STEPS_PER_EPOCH = 8192 // 64
#: PREEMPT_RUN and the same run with seed 1, as one 2-cell grid (cells in this order)
PACKED_GRID = [("seed=0,1" if o == "seed=0" else o) for o in PREEMPT_RUN]
PACKED_CELLS = [PREEMPT_RUN, [("seed=1" if o == "seed=0" else o) for o in PREEMPT_RUN]]


# ================================================================ PreemptionGuard (no SLURM)
@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1, signal.SIGCONT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def fake_job_environment(calls):
    """submitit's ``JobEnvironment`` read from ``FAKE_*`` variables, whose requeue only records its countdown."""
    from submitit.core.job_environment import JobEnvironment

    class FakeEnv(JobEnvironment):
        _env = {k: f"FAKE_{k.upper()}" for k in ("job_id", "num_tasks", "num_nodes", "node", "global_rank",
                                                 "local_rank")}

        def _requeue(self, countdown):
            calls.append(countdown)

    return FakeEnv


def _send(guard, sig):
    os.kill(os.getpid(), sig)
    for _ in range(400):  # the Python-level handler runs at the next bytecode boundary
        if sig in guard.received:
            return
        time.sleep(0.005)
    raise AssertionError(f"{sig!r} was not delivered")


def test_guard_defers_the_previous_handler_until_finish(restore_signals):
    calls = []

    def submitit_like(signum, frame):  # what submitit's checkpoint_and_try_requeue ends with
        calls.append(signum)
        sys.exit(-1)

    signal.signal(signal.SIGUSR2, submitit_like)
    guard = PreemptionGuard()
    assert guard.active and not guard.requested
    _send(guard, signal.SIGUSR2)
    assert guard.requested and calls == [], "the previous handler must wait for the checkpoint"
    assert "SIGUSR2" in guard.reason
    with pytest.raises(SystemExit) as exc:
        guard.finish()
    assert exc.value.code == -1 and calls == [signal.SIGUSR2] and guard.finishing


def test_guard_exits_like_the_signal_when_nothing_ends_the_process(restore_signals):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    guard = PreemptionGuard()
    _send(guard, signal.SIGTERM)  # would kill the process without the guard
    with pytest.raises(SystemExit) as exc:
        guard.finish()
    assert exc.value.code == 128 + signal.SIGTERM

    logged = []
    signal.signal(signal.SIGTERM, lambda s, f: logged.append(s))  # like submitit's `bypass`
    guard = PreemptionGuard()
    _send(guard, signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        guard.finish()
    assert exc.value.code == 128 + signal.SIGTERM and logged == [signal.SIGTERM]


def test_guard_prefers_the_requeue_signal_and_respects_ignored_signals(restore_signals):
    order = []
    signal.signal(signal.SIGTERM, lambda s, f: order.append("term"))
    signal.signal(signal.SIGUSR2, lambda s, f: order.append("usr2"))
    guard = PreemptionGuard()
    _send(guard, signal.SIGTERM)
    _send(guard, signal.SIGUSR2)
    assert guard.signum == requeue_signal() == signal.SIGUSR2
    with pytest.raises(SystemExit):
        guard.finish()
    assert order == ["usr2"]
    guard.uninstall()

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    guard = PreemptionGuard(signals=[signal.SIGUSR1])
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.05)
    assert not guard.requested and signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN


def test_guard_without_signal_is_a_no_op_and_uninstalls(restore_signals):
    def previous(s, f):
        pass

    signal.signal(signal.SIGUSR2, previous)
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGUSR2) == guard._handle
        guard.finish()  # returns: nothing was requested
        assert not guard.finishing
    assert signal.getsignal(signal.SIGUSR2) is previous


def test_guard_outside_the_main_thread_stays_inactive(restore_signals):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("g", PreemptionGuard()))
    t.start()
    t.join()
    assert not out["g"].active


class _Job:
    """Stands for hydra-submitit-launcher's launcher: callable, with a ``checkpoint`` method."""

    def __call__(self):
        return "done"

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@pytest.mark.parametrize("timeout_min,max_num_timeout,requeued", [(60, 3, True), (5, 0, False)],
                         ids=["requeue", "timed-out-too-often"])
def test_guard_hands_over_to_submitits_real_handler(restore_signals, tmp_path, monkeypatch,
                                                    timeout_min, max_num_timeout, requeued):
    """submitit's own `_handle_signals` installs its handlers; the guard goes on top. The requeue
    (checkpoint pickle + `scontrol requeue`, mocked) happens only at `finish()`. With a limit of
    <= 10 min every signal is a time-out, so `max_num_timeout=0` means no requeue but an error."""
    from submitit.core.utils import DelayedSubmission, JobPaths, UncompletedJobError

    calls = []

    FakeEnv = fake_job_environment(calls)

    monkeypatch.setenv("FAKE_JOB_ID", "42")
    paths = JobPaths(tmp_path, job_id="42", task_id=0)
    delayed = DelayedSubmission(_Job())
    delayed.set_timeout(timeout_min, max_num_timeout)
    FakeEnv()._handle_signals(paths, delayed)
    guard = PreemptionGuard()
    _send(guard, signal.SIGUSR2)
    assert calls == [] and not paths.submitted_pickle.exists()
    if requeued:
        with pytest.raises(SystemExit):
            guard.finish()
        assert calls == [max_num_timeout], "requeued, not counted as a time-out"
        again = DelayedSubmission.load(paths.submitted_pickle)
        assert isinstance(again.function, _Job), "the same job is resubmitted"
    else:
        with pytest.raises(UncompletedJobError, match="timed-out too many times"):
            guard.finish()
        assert calls == []


# ================================================================ helpers for real runs
def _env(runs, extra=None):
    # One intra-op thread: the same numerics in every process (the thread count changes results),
    # and no OpenMP spin-waiting when the 2 cores are shared (10x slower epochs otherwise).
    # sbatch exports this environment to the jobs.
    return {**os.environ, "SPARSE_EXP_RUNS": str(runs), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra or {})}


def _train_cmd(*overrides):
    # `-m` first: Hydra's argparse rejects overrides on both sides of `-m`
    return [sys.executable, "-m", "sparse_exp.train", "-m", *overrides]


def _run_dir(runs, overrides):
    plan = expand_sweep(overrides[0].split("=", 1)[1], overrides[1:])
    assert len(plan.jobs) == 1
    return Path(runs) / overrides[0].split("=", 1)[1] / plan.jobs[0].subdir


def _metrics(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def _assert_same_result(a, b):
    assert _metrics(a) == _metrics(b)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["status"] == sb["status"] == "completed"
    keys = [k for k in sa if k.startswith(SUMMARY_KEYS)]
    assert keys and {k: sa[k] for k in keys} == {k: sb.get(k) for k in keys}


def _wait_for(path, proc, timeout, what, logs=lambda: ""):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process ended (rc {proc.returncode}) before {path.name} appeared\n{logs()}")
        if time.time() - t0 > timeout:
            pytest.fail(f"{what}: no {path} after {timeout} s\n{logs()}")
        time.sleep(0.1)


def _engine_integrated():
    src = "".join((ROOT / "sparse_exp" / f).read_text() for f in ("engine/loop.py", "train.py"))
    return "PreemptionGuard" in src


def _reference(tmp_path_factory, overrides):
    runs = tmp_path_factory.mktemp("reference")
    res = subprocess.run(_train_cmd(*overrides), cwd=ROOT, env=_env(runs), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return _run_dir(runs, overrides)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """PREEMPT_RUN uninterrupted, with Hydra's basic launcher (no SLURM)."""
    return _reference(tmp_path_factory, PREEMPT_RUN)


@pytest.fixture(scope="module")
def reference_run_seed1(tmp_path_factory):
    """PREEMPT_RUN with seed 1 (the packed grid's second cell) uninterrupted, without SLURM."""
    return _reference(tmp_path_factory, PACKED_CELLS[1])


# ================================================================ launchers without SLURM
@needs_data
def test_submitit_local_launcher(tmp_path):
    res = subprocess.run(_train_cmd("+sweep=smoke", "seed=0", "sparsifier=set", "device=cpu",
                                    "hydra/launcher=submitit_local"),
                         cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = _run_dir(tmp_path, ["+sweep=smoke", "seed=0", "sparsifier=set", "device=cpu"])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert any((tmp_path / "smoke" / ".submitit").rglob("*_result.pkl"))


@needs_data
def test_sigterm_checkpoints_and_the_rerun_resumes(tmp_path, reference_run):
    """`kill` on a plain run: checkpoint at the next step, exit 143, summary `stopped`; the same
    command again resumes and ends exactly like the uninterrupted run."""
    assert _engine_integrated(), "the engine does not use sparse_exp.engine.preemption.PreemptionGuard yet"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_train_cmd(*PREEMPT_RUN), cwd=ROOT, env=_env(tmp_path), stdout=out,
                                stderr=subprocess.STDOUT)
        run_dir = _run_dir(tmp_path, PREEMPT_RUN)
        try:
            _wait_for(run_dir / "checkpoint.pt", proc, 300, "plain run", log.read_text)
            done = len(_metrics(run_dir))
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "PreemptionGuard: SIGTERM" in text, text[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped", summary
    assert len(_metrics(run_dir)) < 5 or done == 5
    res = subprocess.run(_train_cmd(*PREEMPT_RUN), cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    assert [r["epoch"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5]
    _assert_same_result(run_dir, reference_run)


# ================================================================ several runs per GPU, without SLURM
def test_bad_runs_per_gpu_is_refused_before_anything(tmp_path):
    """The real CLI: one line naming the key, exit code 2, nothing written (no SLURM needed: the launcher
    refuses when Hydra builds it, before the grid is checked or anything submitted)."""
    cmd = _train_cmd("+sweep=smoke", "device=cpu", "hydra/launcher=slurm", "hydra.launcher.runs_per_gpu=0")
    res = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stderr.strip().splitlines() == [
        "error: hydra.launcher.runs_per_gpu=0 is not allowed: it is the number of grid cells run together in one "
        "SLURM job, sharing its GPU; allowed: an integer >= 1 (1 = one job per run, the default)"], res.stderr
    assert list(tmp_path.iterdir()) == [], "something was written"


def test_packing_refuses_what_cannot_share_a_gpu():
    from hydra_plugins.sparse_exp_launcher.sparse_exp_launcher import packing_problem

    assert packing_problem({"runs_per_gpu": 1, "tasks_per_node": 4, "gpus_per_node": 4}) is None  # DDP, unpacked
    assert packing_problem({"runs_per_gpu": 4, "tasks_per_node": 1, "nodes": 1, "gpus_per_node": 1}) is None
    assert packing_problem({"runs_per_gpu": 4, "tasks_per_node": 1, "nodes": 1, "gpus_per_node": None}) is None
    for params, says in [({"runs_per_gpu": -1}, "runs_per_gpu=-1 is not allowed: "),
                         ({"runs_per_gpu": True}, "runs_per_gpu=True is not allowed: "),
                         ({"runs_per_gpu": 2, "tasks_per_node": 2}, "with hydra.launcher.tasks_per_node=2"),
                         ({"runs_per_gpu": 2, "nodes": 2}, "with hydra.launcher.nodes=2"),
                         ({"runs_per_gpu": 2, "gpus_per_node": 2}, "with hydra.launcher.gpus_per_node=2")]:
        problem = packing_problem(params)
        assert problem and problem.startswith("hydra.launcher.runs_per_gpu=") and says in problem, (params, problem)
        assert "\n" not in problem and "allowed: " in problem


def test_packed_runs_fail_alone_and_come_back_in_order(restore_signals, tmp_path, monkeypatch):
    """Four child processes in one pack: one completes (while the others have already failed), one exits
    with code 2 (a refused run directory), one raises before its Hydra job, one is Hydra's failed job.
    Each cell gets its own JobReturn, in order, with its error; CPU threads are split between the runs."""
    from hydra.core.utils import JobStatus

    from hydra_plugins.sparse_exp_launcher.sparse_exp_launcher import CellPack, PackedRun, PackedRunError

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)

    def cell(k):  # local, so that cloudpickle sends it to the child by value
        import os
        import sys
        import time

        from hydra.core.utils import JobReturn, JobStatus

        if k == 1:
            print("error: run directory runs/x is in use by another process", file=sys.stderr, flush=True)
            sys.exit(2)
        if k == 2:
            raise ValueError("the cell could not even start")
        if k == 3:
            return JobReturn(overrides=["k=3"], status=JobStatus.FAILED, _return_value=KeyError("from the task"))
        time.sleep(2)  # the others have ended by now
        return JobReturn(overrides=["k=0"], status=JobStatus.COMPLETED,
                         _return_value=(os.environ["OMP_NUM_THREADS"], os.environ["SLURM_CPUS_PER_TASK"]))

    pack = CellPack([PackedRun.of(cell, k, overrides=[f"k={k}"], label=f"#{k} (k={k})") for k in range(4)],
                    cpus=8, folder=tmp_path)
    rets = pack()
    assert [r.status for r in rets] == [JobStatus.COMPLETED] + [JobStatus.FAILED] * 3
    assert rets[0].return_value == ("2", "2"), "8 CPUs split between 4 runs"
    assert rets[1].overrides == ["k=1"]
    with pytest.raises(PackedRunError, match=r"(?s)run #1 \(k=1\) exited with code 2; last lines of "
                                             r"\S+pack_cell1_log\.out:.*error: run directory runs/x is in use"):
        rets[1].return_value
    with pytest.raises(PackedRunError, match=r"(?s)#2 \(k=2\) raised.*ValueError: the cell could not even start"):
        rets[2].return_value
    with pytest.raises(KeyError, match="from the task"):
        rets[3].return_value


def test_packed_job_stops_every_run_then_requeues_the_unfinished(restore_signals, tmp_path, monkeypatch):
    """SIGUSR2 to the packed job's process only: it is forwarded to the two runs still going, both stop
    through their own PreemptionGuard, then submitit's real handler (the `scontrol requeue` mocked)
    pickles the pack with the run that had completed; the requeued pack runs only the other two."""
    from hydra.core.utils import JobStatus
    from submitit.core.utils import DelayedSubmission, JobPaths

    from hydra_plugins.sparse_exp_launcher.sparse_exp_launcher import CellPack, PackedRun

    def cell(k, d):  # local, so that cloudpickle sends it to the child by value
        import time
        from pathlib import Path

        from hydra.core.utils import JobReturn, JobStatus

        from sparse_exp.engine.preemption import PreemptionGuard

        d = Path(d)
        with open(d / f"ran{k}", "a") as f:
            f.write("x\n")
        if k == 0 or (d / f"stopped{k}").exists():  # done at once, or resumed after the requeue
            return JobReturn(overrides=[f"k={k}"], status=JobStatus.COMPLETED, _return_value=k)
        guard = PreemptionGuard()  # as the trainer does
        (d / f"ready{k}").touch()
        t0 = time.time()
        while not guard.requested and time.time() - t0 < 60:
            time.sleep(0.02)
        (d / f"stopped{k}").write_text(guard.signum.name if guard.requested else "no signal")
        guard.finish()  # "checkpoint written": hands over, exits
        return JobReturn(overrides=[f"k={k}"], status=JobStatus.FAILED, _return_value=RuntimeError("no signal"))

    calls = []

    FakeEnv = fake_job_environment(calls)

    monkeypatch.setenv("FAKE_JOB_ID", "42")
    d, folder = tmp_path / "cells", tmp_path / "pack"
    d.mkdir()
    pack = CellPack([PackedRun.of(cell, k, str(d), overrides=[f"k={k}"], label=f"#{k}") for k in range(3)],
                    folder=folder)
    paths = JobPaths(tmp_path, job_id="42", task_id=0)
    delayed = DelayedSubmission(pack)
    delayed.set_timeout(60, 3)
    FakeEnv()._handle_signals(paths, delayed)

    def signal_when_ready():  # to this process only: the children get it from the pack
        t0 = time.time()
        while time.time() - t0 < 120:
            if all(p.exists() for p in (d / "ready1", d / "ready2", folder / "pack_cell0_result.pkl")):
                os.kill(os.getpid(), signal.SIGUSR2)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=signal_when_ready, daemon=True)
    sender.start()
    with pytest.raises(SystemExit) as exc:
        delayed.result()
    sender.join(timeout=5)
    assert exc.value.code == -1 and calls == [3], "requeued by submitit's handler after the runs stopped"
    assert [(d / f"stopped{k}").read_text() for k in (1, 2)] == ["SIGUSR2", "SIGUSR2"]
    again = DelayedSubmission.load(paths.submitted_pickle)
    assert sorted(again.function.finished) == [0], "the completed run travels with the requeued job"
    rets = again.result()  # the requeued job (same process, submitit's handlers still installed)
    assert [(r.status, r.return_value) for r in rets] == [(JobStatus.COMPLETED, k) for k in range(3)]
    assert [len((d / f"ran{k}").read_text().split()) for k in range(3)] == [1, 2, 2]


# ================================================================ a real SLURM on this machine
def _slurm_startable():
    """None if SLURM can be started here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"a local SLURM needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "starting a local SLURM needs root (scripts/slurm_local.sh start runs slurmctld/slurmd as root)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "slurm-wlm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def slurm():
    """Start the single-node SLURM (installing it if needed); yields the environment for jobs.
    Stops it afterwards only if it was not running before."""
    why = _slurm_startable()
    if why:
        if CI and os.geteuid() == 0 and sys.platform.startswith("linux"):
            pytest.fail(f"CI as root must run the SLURM tests, but: {why}")
        pytest.skip(why)
    was_running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    t0 = time.time()
    res = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"scripts/slurm_local.sh start failed (rc {res.returncode}):\n{res.stdout}\n{res.stderr}")
    print(f"\nlocal SLURM up in {time.time() - t0:.0f} s", file=sys.stderr)
    out = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(line[len("export "):].split("=", 1) for line in out.splitlines() if line.startswith("export "))
    assert "SLURM_CONF" in env
    yield env
    if not was_running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=300)


def _submitit_logs(sweep_dir, only=None):
    parts = []
    for f in sorted((Path(sweep_dir) / ".submitit").glob("*/*_log.*")):
        if only is None or f.parent.name in only:
            parts.append(f"----- {f.parent.name}/{f.name}\n{f.read_text(errors='replace')}")
    return "\n".join(parts)


def _job_ids(name, env):
    """The ids of the SLURM jobs named ``name`` (polled briefly: squeue lags sbatch by a moment)."""
    out = ""
    for _ in range(100):
        out = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i"], env=env, capture_output=True,
                             text=True).stdout.strip()
        if out:
            break
        time.sleep(0.1)
    return out.split()


def _launch_slurm(overrides, runs, slurm_env, name, timeout):
    env = _env(runs, slurm_env)
    cmd = _train_cmd(*overrides, "hydra/launcher=slurm", f"hydra.launcher.name={name}")
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        subprocess.run(["scancel", "--name", name], env=env)
        sweep = Path(runs) / overrides[0].split("=", 1)[1]
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s\n{exc.stdout!s:.3000}\n"
                    f"{_submitit_logs(sweep)[-6000:]}")


@pytest.fixture(scope="module")
def smoke_grid(slurm, tmp_path_factory):
    runs = tmp_path_factory.mktemp("slurm_smoke")
    t0 = time.time()
    res = _launch_slurm(["+sweep=smoke", "device=cpu"], runs, slurm, "sx_smoke", timeout=600)
    return runs, res, time.time() - t0


@needs_data
def test_smoke_grid_completes_through_slurm(smoke_grid):
    runs, res, elapsed = smoke_grid
    sweep_dir = runs / "smoke"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + _submitit_logs(sweep_dir)[-5000:]
    plan = expand_sweep("smoke", ["device=cpu"])
    assert len(plan.jobs) >= 4
    for job in plan.jobs:
        summary = json.loads((sweep_dir / job.subdir / "summary.json").read_text())
        assert summary["status"] == "completed", (job.subdir, summary)
        assert [r["epoch"] for r in _metrics(sweep_dir / job.subdir)] == [1, 2]
    script = next((sweep_dir / ".submitit").glob("*/*_submission.sh")).read_text()
    assert f"#SBATCH --array=0-{len(plan.jobs) - 1}" in script, "one SLURM job array for the grid"
    assert "#SBATCH --signal=USR2@" in script
    assert collect(sweep_dir, plan)["counts"]["completed"] == len(plan.jobs)
    print(f"\nsmoke grid through SLURM: {elapsed:.0f} s", file=sys.stderr)


@needs_data
def test_relaunching_a_finished_grid_trains_nothing(smoke_grid, slurm):
    runs, res, _ = smoke_grid
    sweep_dir = runs / "smoke"
    if res.returncode != 0:
        pytest.fail("the smoke grid did not complete (test_smoke_grid_completes_through_slurm)")
    run_dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    stamps = {f: f.stat().st_mtime_ns for d in run_dirs for f in d.iterdir()}
    before = {p.name for p in (sweep_dir / ".submitit").iterdir()}
    # the sweeper skips completed cells: nothing is submitted
    res = _launch_slurm(["+sweep=smoke", "device=cpu"], runs, slurm, "sx_smoke", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{len(run_dirs)} already completed (not launched), 0 to launch" in res.stdout + res.stderr
    assert {p.name for p in (sweep_dir / ".submitit").iterdir()} == before, "a job was submitted"
    # forced through SLURM anyway, every job finds its run completed and exits
    res = _launch_slurm(["+sweep=smoke", "device=cpu", "hydra.sweeper.skip_completed=false"], runs, slurm,
                        "sx_smoke", timeout=600)
    new = {p.name for p in (sweep_dir / ".submitit").iterdir()} - before
    logs = _submitit_logs(sweep_dir, only=new)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + logs[-5000:]
    assert new, "the grid was not submitted with hydra.sweeper.skip_completed=false"
    assert {f: f.stat().st_mtime_ns for d in run_dirs for f in d.iterdir()} == stamps, "a finished run was touched"
    assert logs.count("run already completed") == len(run_dirs), logs[-5000:]
    assert not re.search(r"^epoch \d+/", logs, re.M), "training ran again"


def _signal_after_first_checkpoints(cmd, env, name, tmp_path, run_dirs, what):
    """Launch ``cmd`` (a grid through ``hydra/launcher=slurm``, job name ``name``), wait until every run of
    ``run_dirs`` wrote a checkpoint, check that they train in one SLURM job, send it ``scancel --signal=USR2``
    and wait for the launching command.

    Returns:
        ``(exit code, job id, epochs each run had finished when signalled, logs())``: ``logs()`` reads the
        launcher's and submitit's logs.
    """
    sweep_dir = tmp_path / "smoke"
    launcher_log = tmp_path / "launcher.log"

    def logs():
        return launcher_log.read_text()[-3000:] + _submitit_logs(sweep_dir)[-6000:]

    with open(launcher_log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            for run_dir in run_dirs:
                _wait_for(run_dir / "checkpoint.pt", proc, 300, what, logs)
            ids = _job_ids(name, env)
            assert len(ids) == 1, f"the runs must train in one SLURM job; squeue: {ids!r}\n{logs()}"
            done = [len(_metrics(d)) for d in run_dirs]
            assert max(done) < 5, "a run finished before it could be signalled: make its epochs longer"
            subprocess.run(["scancel", "--signal=USR2", ids[0]], env=env, check=True)
            rc = proc.wait(timeout=420)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the signalled {what} did not finish in time\n{logs()}")
        finally:
            if proc.poll() is None:
                proc.kill()
                subprocess.run(["scancel", "--name", name], env=env)
    return rc, ids[0], done, logs


@needs_data
def test_preempted_job_is_requeued_and_resumes(slurm, tmp_path, reference_run):
    """`scancel --signal=USR2` after the first checkpoint: the run checkpoints at the next step,
    submitit requeues the job, the requeued job resumes in the same directory (epochs continue)
    and ends with exactly the metrics of the uninterrupted run."""
    assert _engine_integrated(), ("the engine does not use sparse_exp.engine.preemption.PreemptionGuard yet: "
                                  "see the module docstring for the contract")
    name = "sx_preempt"
    env = _env(tmp_path, slurm)
    sweep_dir = tmp_path / "smoke"
    run_dir = _run_dir(tmp_path, PREEMPT_RUN)
    cmd = _train_cmd(*PREEMPT_RUN, "hydra/launcher=slurm", f"hydra.launcher.name={name}")
    rc, job_id, (done,), logs = _signal_after_first_checkpoints(cmd, env, name, tmp_path, [run_dir], "SLURM job")
    text = logs()
    assert rc == 0, text
    job_log = _submitit_logs(sweep_dir)
    # requeued: submitit's handler ran after our checkpoint, and SLURM counts a restart
    assert "PreemptionGuard: SIGUSR2" in job_log, text
    assert "Requeued job" in job_log, text
    show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    assert re.search(r"Restarts=1\b", show), show
    # resumed from the preemption checkpoint, not from scratch nor from the last epoch end
    m = re.search(r"resumed from \S*checkpoint\.pt at epoch (\d+).*?\(step (\d+)\)", job_log)
    assert m, text
    assert int(m.group(2)) > done * STEPS_PER_EPOCH, (m.group(0), done)
    assert [r["epoch"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5], "the epoch counter continued"
    _assert_same_result(run_dir, reference_run)


@needs_data
def test_packed_grid_shares_one_job_is_requeued_and_resumes(slurm, tmp_path, reference_run, reference_run_seed1):
    """`hydra.launcher.runs_per_gpu=2`: both cells of a 2-run grid train in one SLURM job (one job id) at the
    same time; `scancel --signal=USR2` after both wrote a checkpoint stops both at their next step, submitit
    requeues the job, and both runs resume and end exactly like their uninterrupted runs."""
    name = "sx_packed"
    env = _env(tmp_path, slurm)
    sweep_dir = tmp_path / "smoke"
    run_dirs = [_run_dir(tmp_path, cell) for cell in PACKED_CELLS]
    cmd = _train_cmd(*PACKED_GRID, "hydra/launcher=slurm", f"hydra.launcher.name={name}",
                     "hydra.launcher.runs_per_gpu=2", "hydra.launcher.cpus_per_task=2")
    t0 = time.time()
    rc, job_id, done, logs = _signal_after_first_checkpoints(cmd, env, name, tmp_path, run_dirs, "packed SLURM job")
    elapsed = time.time() - t0
    text = logs()
    assert rc == 0, text
    jobs = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir())
    assert jobs == [job_id], f"one SLURM job for the grid, not {jobs}"
    job_log = (sweep_dir / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    # the job's process got the signal, passed it on, and once the runs had stopped handed it to submitit
    assert "SIGUSR2 received: forwarding it to" in job_log, job_log
    assert "PreemptionGuard: SIGUSR2" in job_log and "Requeued job" in job_log, job_log
    show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    assert re.search(r"Restarts=1\b", show), show
    resumed = {}
    for k in range(2):
        cell_log = (sweep_dir / ".submitit" / job_id / f"{job_id}_cell{k}_log.out").read_text()
        assert "PreemptionGuard: SIGUSR2" in cell_log, cell_log  # checkpointed at its next step
        m = re.search(r"resumed from (\S+)/checkpoint\.pt at epoch \d+.*?\(step (\d+)\)", cell_log)
        assert m, cell_log
        resumed[Path(m.group(1))] = int(m.group(2))
    assert sorted(resumed) == sorted(run_dirs), resumed
    for run_dir, ref, n_done in zip(run_dirs, (reference_run, reference_run_seed1), done):
        # from the preemption checkpoint, not from scratch nor from the last epoch end
        assert resumed[run_dir] > n_done * STEPS_PER_EPOCH, (run_dir.name, resumed[run_dir], n_done)
        assert [r["epoch"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5], "the epoch counter continued"
        _assert_same_result(run_dir, ref)
    print(f"\npacked 2-run grid through SLURM, preempted and requeued: {elapsed:.0f} s", file=sys.stderr)


#: one run whose GradInit (LRsI, before the first step and the first checkpoint) lasts several seconds on a CPU
SETUP_RUN = ["+sweep=smoke", "seed=0", "sparsifier=rigl", "tweaks=[lrsi]", "tweaks.lrsi.iterations=800", "epochs=1",
             "device=cpu"]


@needs_data
@pytest.mark.slow
def test_job_signalled_during_set_up_is_requeued_and_completes(slurm, tmp_path):
    """`scancel --signal=USR2` while GradInit runs (no checkpoint yet): GradInit is left at its next iteration and the
    signal handed to submitit within 10 s, submitit requeues the job, and the requeued job starts the run again
    and completes (before issue 24 the signal waited for GradInit's end and the first step)."""
    name = "sx_setup"
    env = _env(tmp_path, slurm)
    sweep_dir = tmp_path / "smoke"
    run_dir = _run_dir(tmp_path, SETUP_RUN)
    launcher_log = tmp_path / "launcher.log"

    def logs():
        return launcher_log.read_text()[-3000:] + _submitit_logs(sweep_dir)[-6000:]

    cmd = _train_cmd(*SETUP_RUN, "hydra/launcher=slurm", f"hydra.launcher.name={name}")
    t0 = time.time()
    with open(launcher_log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while "LRsI: GradInit" not in _submitit_logs(sweep_dir):
                if proc.poll() is not None or time.time() - t0 > 300:
                    pytest.fail(f"the job did not reach GradInit (rc {proc.poll()})\n{logs()}")
                time.sleep(0.1)
            (job_id,) = _job_ids(name, env)
            assert not (run_dir / "checkpoint.pt").exists()
            subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
            t_signal = time.time()
            while "PreemptionGuard: SIGUSR2" not in _submitit_logs(sweep_dir):
                if time.time() - t_signal > 60:
                    pytest.fail(f"no hand-over 60 s after the signal\n{logs()}")
                time.sleep(0.1)
            handover = time.time() - t_signal
            rc = proc.wait(timeout=420)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the signalled job did not finish in time\n{logs()}")
        finally:
            if proc.poll() is None:
                proc.kill()
                subprocess.run(["scancel", "--name", name], env=env)
    text = logs()
    assert rc == 0, text
    assert handover < 10, f"{handover:.1f} s from the signal to the hand-over"
    job_log = _submitit_logs(sweep_dir)
    assert "GradInit left, handing over to" in job_log and "Requeued job" in job_log, text
    show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    assert re.search(r"Restarts=1\b", show), show
    assert "resumed from" not in job_log, "there was no checkpoint to resume from"
    assert job_log.count("LRsI: GradInit") == 2, "the requeued job runs GradInit again"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    assert [r["epoch"] for r in _metrics(run_dir)] == [1]
    print(f"\nSLURM job signalled during GradInit: hand-over {handover:.1f} s, requeued and completed in "
          f"{time.time() - t0:.0f} s", file=sys.stderr)
