"""Multi-process and multi-node DDP launches (gloo, CPU), as a user starts them.

* The ``env://`` variables of a SLURM task (:func:`sparse_exp.engine.distributed.slurm_torch_env`): the four tasks
  of a 2-node x 2-task job agree on ``MASTER_ADDR`` / ``MASTER_PORT`` and each gets its own rank; nothing is
  exported under ``torchrun`` or outside an ``srun`` step; the device of each rank.
* ``torchrun --nproc_per_node 2``, the real CLI: completes, only rank 0 writes the run directory and prints,
  and ends bitwise equal to the same run started as a 2-node SLURM job starts its tasks (``SLURM_*`` variables
  set by hand, one process per "node", the code's own export).
* On the local single-node SLURM (the ``slurm`` fixture of ``tests/test_slurm.py``): a 2-task job
  (``hydra.launcher.tasks_per_node=2``) is sent ``scancel --signal=USR2`` after its first checkpoint, is
  requeued, resumes, and ends bitwise equal to the uninterrupted ``torchrun`` run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import pytest
import torch
from conftest import ROOT, needs_data
from test_slurm import (
    _assert_same_result,
    _job_ids,
    _metrics,
    _run_dir,
    _submitit_logs,
    _wait_for,
    slurm,  # noqa: F401  (the session fixture that starts the local SLURM)
)

from sparse_exp.config.errors import UserError
from sparse_exp.engine.distributed import (
    TORCH_VARS,
    DistEnv,
    export_slurm_torch_env,
    init_distributed,
    rank_device,
    slurm_step_tasks,
    slurm_torch_env,
)

#: a LeNet-5 run whose 8 epochs of 64 steps per rank take about a second each on this CPU: long enough to
#: signal a SLURM job between its first checkpoint and its end
EPOCHS = 8
NODES_RUN = ["+sweep=smoke", "seed=0", "sparsifier=rigl", f"epochs={EPOCHS}", "dataset.subset_train=8192",
             "device=cpu"]


@pytest.fixture(autouse=True)
def _environ_restored():
    """``os.environ`` as it was before each test: ``export_slurm_torch_env`` writes ``RANK`` / ``WORLD_SIZE`` /
    ``MASTER_ADDR`` itself (not through ``monkeypatch``), and a leaked world would make every later CLI run in this
    pytest process wait for a rendezvous that never comes. (Autouse: set up before ``monkeypatch``, torn down after
    it.)"""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _slurm_task(monkeypatch, **variables):
    """This process as one SLURM task: no ``SLURM_*`` / torch variables but ``variables``."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")) or key in TORCH_VARS:
            monkeypatch.delenv(key)
    for key, value in variables.items():
        monkeypatch.setenv(key, str(value))


def _two_by_two(procid, job_id="123456"):
    """The variables ``srun`` gives task ``procid`` of a 2-node x 2-task job step."""
    return dict(SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_NUM_NODES=2, SLURM_NTASKS=4,
                SLURM_STEP_NUM_TASKS=4, SLURM_PROCID=procid, SLURM_NODEID=procid // 2, SLURM_LOCALID=procid % 2)


# ================================================================ the env:// variables of a SLURM task
def test_every_task_of_a_two_node_job_agrees_on_the_master(monkeypatch):
    seen = []
    for procid in range(4):
        _slurm_task(monkeypatch, **_two_by_two(procid))
        seen.append(slurm_torch_env())
    port = random.Random("123456").randint(20000, 60000)  # submitit's rule: drawn from the job id
    assert seen == [{"MASTER_ADDR": "gpu07", "MASTER_PORT": str(port), "RANK": str(p), "WORLD_SIZE": "4",
                     "LOCAL_RANK": str(p % 2), "LOCAL_WORLD_SIZE": "2"} for p in range(4)]
    assert "SUBMITIT_EXECUTOR" not in os.environ, "read under srun without submitit, and left as it was"


def test_array_tasks_draw_their_own_port(monkeypatch):
    ports = []
    for task in ("3", "4"):
        _slurm_task(monkeypatch, **_two_by_two(0, job_id="900"), SLURM_ARRAY_JOB_ID="900", SLURM_ARRAY_TASK_ID=task)
        ports.append(slurm_torch_env()["MASTER_PORT"])
    assert ports == [str(random.Random(f"900_{t}").randint(20000, 60000)) for t in ("3", "4")]
    assert ports[0] != ports[1], "two cells of a grid on one node must not share a rendezvous port"


def test_export_fills_the_world_of_an_srun_step_only(monkeypatch):
    _slurm_task(monkeypatch, **_two_by_two(3))
    assert export_slurm_torch_env()
    assert {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07"}

    # a MASTER_PORT chosen by the user (the same on every task) is kept
    _slurm_task(monkeypatch, **_two_by_two(1), MASTER_PORT=29400)
    assert export_slurm_torch_env() and os.environ["MASTER_PORT"] == "29400" and os.environ["RANK"] == "1"

    # torchrun (here inside a SLURM job) described the world already: left alone
    _slurm_task(monkeypatch, **_two_by_two(1), WORLD_SIZE=8, RANK=5, LOCAL_RANK=5)
    assert not export_slurm_torch_env() and (os.environ["WORLD_SIZE"], os.environ["RANK"]) == ("8", "5")

    # the batch script of `sbatch -n 4` (or a shell in `salloc -n 4`) is one process, not a step of 4 tasks
    batch = {k: v for k, v in _two_by_two(0).items() if k != "SLURM_STEP_NUM_TASKS"}
    _slurm_task(monkeypatch, **batch)
    assert slurm_step_tasks() == 1 and not export_slurm_torch_env() and "WORLD_SIZE" not in os.environ
    assert init_distributed("cpu") == DistEnv(), "plain single-process training"

    _slurm_task(monkeypatch, **{**_two_by_two(0), "SLURM_STEP_NUM_TASKS": 1})  # a one-task srun step
    assert not export_slurm_torch_env()
    _slurm_task(monkeypatch)
    assert slurm_step_tasks() == 1 and not export_slurm_torch_env()


def test_world_size_one_is_single_process(monkeypatch):
    """``torchrun --nproc_per_node 1`` (or a 1-GPU NCCL launch): no process group, no DDP wrapper."""
    _slurm_task(monkeypatch, WORLD_SIZE=1, RANK=0, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=29500)
    env = init_distributed("cuda")
    assert env == DistEnv() and not env.enabled and not torch.distributed.is_initialized()
    assert rank_device(env, torch.device("cuda")) == torch.device("cuda")


def test_each_rank_trains_on_its_local_gpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert rank_device(DistEnv(3, 4, 1), cpu) == cpu
    assert rank_device(DistEnv(3, 4, 1), cuda, cuda_count=2) == torch.device("cuda", 1)
    assert rank_device(DistEnv(13, 16, 5), cuda, cuda_count=8) == torch.device("cuda", 5)
    assert rank_device(DistEnv(3, 4, 1), cuda, cuda_count=1) == torch.device("cuda", 0), "one GPU bound per task"
    with pytest.raises(UserError) as exc:
        rank_device(DistEnv(3, 4, 3), cuda, cuda_count=2)
    assert str(exc.value).startswith("rank 3 has LOCAL_RANK=3 but sees 2 GPU(s) (CUDA_VISIBLE_DEVICES=")
    assert "allowed: one GPU per task on a node (hydra.launcher.gpus_per_node = hydra.launcher.tasks_per_node)" \
        in str(exc.value)


# ================================================================ real launches of the CLI
def _clean_env(runs, **extra):
    """This environment without SLURM / torch.distributed variables, for a run into ``runs``. One intra-op
    thread per process: the same numerics in every launch, no OpenMP spinning on shared cores."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in TORCH_VARS}
    env.update(SPARSE_EXP_RUNS=str(runs), WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", **extra)
    return env


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _launch_torchrun(runs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "sparse_exp.train", *NODES_RUN]
    return subprocess.run(cmd, cwd=ROOT, env=_clean_env(runs), capture_output=True, text=True, timeout=300)


def _launch_as_slurm_tasks(runs):
    """NODES_RUN as the 2 tasks of a 2-node x 1-task SLURM step: the variables srun sets, nothing else."""
    job = 4242
    while True:  # a job id whose port (submitit's, drawn from the id) is free here
        with mock.patch.dict(os.environ, {"SLURM_JOB_ID": str(job), "SUBMITIT_EXECUTOR": "slurm"}):
            os.environ.pop("MASTER_PORT", None)
            if _free(int(slurm_torch_env()["MASTER_PORT"])):
                break
        job += 1
    procs = []
    for rank in range(2):
        env = _clean_env(runs, SLURM_JOB_ID=str(job), SLURM_JOB_NODELIST="localhost,127.0.0.1",
                         SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_PROCID=str(rank),
                         SLURM_NODEID=str(rank), SLURM_LOCALID="0")
        procs.append(subprocess.Popen([sys.executable, "-m", "sparse_exp.train", *NODES_RUN], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """NODES_RUN under ``torchrun --nproc_per_node 2``: (result, run directory, seconds)."""
    runs = tmp_path_factory.mktemp("torchrun")
    t0 = time.time()
    res = _launch_torchrun(runs)
    return res, _run_dir(runs, NODES_RUN), time.time() - t0


@pytest.fixture(scope="module")
def slurm_style_run(tmp_path_factory):
    """NODES_RUN as two SLURM tasks on two "nodes": (exit codes, outputs, run directory, seconds)."""
    runs = tmp_path_factory.mktemp("slurm_style")
    t0 = time.time()
    rcs, outs = _launch_as_slurm_tasks(runs)
    return rcs, outs, _run_dir(runs, NODES_RUN), time.time() - t0


def _weights_and_masks(run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    masks = torch.load(run_dir / "masks.pt", map_location="cpu", weights_only=False)["masks"]
    return ckpt["model"], masks, ckpt["step"]


def _assert_bitwise_equal(a, b):
    _assert_same_result(a, b)  # metrics of every epoch and the summary, exactly
    (wa, ma, sa), (wb, mb, sb) = _weights_and_masks(a), _weights_and_masks(b)
    assert sa == sb == EPOCHS * 8192 // 64
    assert wa.keys() == wb.keys() and ma.keys() == mb.keys() and ma
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


@pytest.mark.slow
@needs_data
def test_torchrun_two_processes(torchrun_run):
    res, run_dir, elapsed = torchrun_run
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    # rank 0 alone writes: one metrics line per epoch (two writers would append two)
    assert [r["epoch"] for r in _metrics(run_dir)] == list(range(1, EPOCHS + 1))
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoint.pt", "config.yaml", "curves.png",
                                                         "git.json", "masks.pt", "metrics.jsonl", "model.pt",
                                                         "summary.json"]
    # and alone prints: each epoch line and the summary once
    assert len(re.findall(r"^epoch \d+/\d+ ", out, re.M)) == EPOCHS, out[-4000:]
    assert out.count("test accuracy") == 1, out[-4000:]
    print(f"\ntorchrun, 2 processes, {EPOCHS} epochs: {elapsed:.1f} s", file=sys.stderr)


@pytest.mark.slow
@needs_data
def test_slurm_style_tasks_equal_torchrun(torchrun_run, slurm_style_run):
    """Two processes that know only their SLURM_* variables (2 nodes, 1 task each, as srun starts them) find
    each other through the code's export and train exactly what torchrun trains."""
    rcs, outs, run_dir, elapsed = slurm_style_run
    assert rcs == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert len(re.findall(r"^epoch \d+/\d+ ", outs[0], re.M)) == EPOCHS and not re.search(r"^epoch ", outs[1], re.M)
    res, reference, _ = torchrun_run
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    _assert_bitwise_equal(run_dir, reference)
    print(f"\nSLURM-style 2 tasks, {EPOCHS} epochs: {elapsed:.1f} s", file=sys.stderr)


# ================================================================ a 2-task job on the local SLURM
@pytest.mark.slow
@needs_data
def test_two_task_slurm_job_is_preempted_requeued_and_ends_equal(slurm, tmp_path, torchrun_run):  # noqa: F811
    """``hydra.launcher.tasks_per_node=2``: one SLURM job of 2 tasks (= 2 DDP ranks, MASTER_ADDR/PORT from the
    job); ``scancel --signal=USR2`` after its first checkpoint; every rank stops at the same step, rank 0
    checkpoints and submitit requeues the job; the requeued job resumes mid-run and ends bitwise equal to the
    uninterrupted torchrun run."""
    res, reference, _ = torchrun_run
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    name = "sx_2tasks"
    env = _clean_env(tmp_path, **slurm)
    sweep_dir = tmp_path / "smoke"
    run_dir = _run_dir(tmp_path, NODES_RUN)
    cmd = [sys.executable, "-m", "sparse_exp.train", "-m", *NODES_RUN, "hydra/launcher=slurm",
           f"hydra.launcher.name={name}", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.gpus_per_node=null"]
    launcher_log = tmp_path / "launcher.log"

    def logs():
        return launcher_log.read_text()[-3000:] + _submitit_logs(sweep_dir)[-8000:]

    t0 = time.time()
    with open(launcher_log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(run_dir / "checkpoint.pt", proc, 300, "2-task SLURM job", logs)
            ids = _job_ids(name, env)
            assert len(ids) == 1, f"one SLURM job; squeue: {ids!r}\n{logs()}"
            subprocess.run(["scancel", "--signal=USR2", ids[0]], env=env, check=True)
            signalled_at = len(_metrics(run_dir))
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the signalled 2-task job did not finish in time\n{logs()}")
        finally:
            if proc.poll() is None:
                proc.kill()
                subprocess.run(["scancel", "--name", name], env=env)
    elapsed = time.time() - t0
    job_id = ids[0]
    assert rc == 0, logs()
    assert signalled_at < EPOCHS, "the run finished before the signal: make its epochs longer"
    script = next((sweep_dir / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script, script
    task_logs = [(sweep_dir / ".submitit" / job_id / f"{job_id}_{t}_log.out").read_text() for t in (0, 1)]
    # both tasks trained as ranks of one world; rank 0 printed the epochs, the other rank stayed quiet
    assert re.search(r"^epoch 1/", task_logs[0], re.M) and not re.search(r"^epoch \d", task_logs[1], re.M), logs()
    # rank 0 checkpointed at the step after the signal and submitit requeued the job
    assert "PreemptionGuard: SIGUSR2" in task_logs[0] and "Requeued job" in task_logs[0], logs()
    show = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    assert re.search(r"Restarts=1\b", show), show
    m = re.search(r"resumed from \S*checkpoint\.pt at epoch (\d+).*?\(step (\d+)\)", task_logs[0])
    assert m and int(m.group(2)) > 0, logs()
    assert [r["epoch"] for r in _metrics(run_dir)] == list(range(1, EPOCHS + 1)), "the epoch counter continued"
    _assert_bitwise_equal(run_dir, reference)
    print(f"\n2-task SLURM job, preempted at step {m.group(2)} and requeued: {elapsed:.0f} s "
          f"(signal {signal.SIGUSR2.name})", file=sys.stderr)
