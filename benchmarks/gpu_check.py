# make gpu-check   (= python benchmarks/gpu_check.py; ARGS='--dry-run' on CPU, ARGS='--out DIR' for a copy)
"""Prove and measure the GPU path in one command: six steps, each a subprocess with its own time cap.

    PYTHONPATH=/tmp/site:. SPARSE_EXP_DATA=$PWD/data/fashion-mnist python benchmarks/gpu_check.py --out $OUT
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc      # every step at tiny sizes on CPU (CI test)
    python benchmarks/gpu_check.py --steps a,d                  # some steps only

Steps (docs/gpu.md has the figures each one writes):

a. environment: Python, torch, CUDA, cuDNN, GPU name / capability / memory, where every dependency was imported from;
b. the CUDA tests: every test marked ``cuda`` (``pytest -m cuda``: graph vs eager, graph resume, compiled step,
   bf16, the device loader on CUDA), with pytest's summary line;
c. ``benchmarks/epoch_time.py --device cuda`` for VGG-16, ResNet-18 and ResNet-50 (CIFAR shapes, synthetic data),
   one subprocess per model: every ``fast.*`` mode and the best one against the reference-style loop, dense /
   static / SET / RigL / the cyclic phase, one mask update, one superposition event, peak GPU memory; then
   VGG-16 again with ``fast.compile`` timed (a cold compile takes about a minute: the first thing the budget cuts);
d. the default experiment (``python -m sparse_exp.train``) on the real Fashion-MNIST, eager fp32 and with
   ``fast.cuda_graphs=true``: wall time, training time, test accuracy, next to the README's CPU run;
e. packed runs: N = 1, 2, 4, 8 short Fashion-MNIST runs (seeds 0..N-1) started together as separate processes:
   wall time against N x one run, images/s summed over the runs;
f. a VGG-16 Sup-tickets run on synthetic CIFAR-shaped data (``fast.cuda_graphs=true fast.dtype=bf16``) killed
   (SIGTERM) mid-cycle and relaunched, against the same run uninterrupted: completed, tickets and superposition
   done, final metrics within the stated tolerance.

Limits: the whole check stops at ``--budget`` seconds (default 470: 8 min with start-up). A step gets
``min(its cap, what is left minus the minimum the later steps keep)``; a step that fails or runs out of time is
recorded with its output's tail and the next one runs. The report (markdown + JSON of every figure) goes to
``--report-dir`` (default ``docs/measured/gpu``; with ``--dry-run`` ``runs/gpu_check``) as
``<date>-<gpu-name>.md`` / ``.json``, and to ``--out`` as well. Data: ``$SPARSE_EXP_DATA`` (the four Fashion-MNIST
files) or the Debian package's directory. Exit code: 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
FMNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
#: the README's CPU run of the default experiment (seed 0, 2-core AVX512 machine)
CPU_DEFAULT = {"test/acc": 89.62, "time/train_s": 114.1, "wall_s": 129.0}

#: sizes per mode; GPU sizes are estimated for one H200 (docs/gpu.md, "Sizing")
SIZES = {
    "gpu": {
        "device": "cuda",
        # (model, synthetic CIFAR images per timed epoch, time fast.compile?, cap s, min s); the compile row runs
        # last, in its own process (a cold inductor compile of VGG-16 takes about a minute): cut first when short
        "models": [("vgg16", 10240, False, 80, 30), ("resnet18", 5120, False, 70, 30),
                   ("resnet50", 2560, False, 80, 30), ("vgg16", 5120, True, 120, 0)],
        "repeats": 2, "quick": False,
        "default_overrides": [], "fast": ["fast.cuda_graphs=true"],
        "packed": [1, 2, 4, 8], "packed_overrides": ["epochs=3", "superposer=none"], "packed_threads": 2,
        "sup": {"model": "vgg16", "delta_t": 20, "per_batch": 2048, "n_test": 2048, "val": 1024, "batch": 128,
                "epochs": 6,
                "fast": ["fast.cuda_graphs=true", "fast.dtype=bf16"]},
    },
    "dry": {
        "device": "cpu",
        "models": [("resnet32", 128, False, 100, 30)],  # the same CIFAR-shaped path, ~7x cheaper than VGG-16
        "repeats": 1, "quick": True,
        "default_overrides": ["epochs=4", "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1",
                              "sparsifier.delta_t=4",
                              "dataset.subset_train=1024", "dataset.val_size=256", "dataset.subset_test=512"],
        "fast": ["fast.dtype=bf16"],
        "packed": [1, 2, 4], "packed_overrides": ["epochs=1", "superposer=none", "sparsifier=static",
                                                     "dataset.subset_train=768", "dataset.val_size=256",
                                                     "dataset.subset_test=256"],
        "packed_threads": 1,
        # LeNet-5 on the same synthetic CIFAR-shaped files: VGG-16 takes minutes on 2 CPU cores
        "sup": {"model": "lenet5", "delta_t": 4, "per_batch": 64, "n_test": 64, "val": 32, "batch": 32, "epochs": 4,
                "fast": ["fast.dtype=bf16"]},
    },
}

#: resumed vs uninterrupted run (step f): the tolerance the check states and applies
TOLERANCE = {"test_acc_points": 1.0, "train_loss_rel": 0.02, "train_loss_abs": 0.02, "mask_overlap": 0.98}


# ================================================================================================ plumbing
@dataclass
class Ctx:
    args: argparse.Namespace
    size: Dict[str, Any]
    work: Path
    data: Optional[Path]
    env: Dict[str, str]
    deadline: float = 0.0  # of the running step

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Result:
    status: str = "ok"  # ok | failed | timeout | skipped
    figures: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    log_tail: str = ""


class StepTimeout(Exception):
    pass


def tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def run_cmd(ctx: Ctx, cmd: List[str], log: Path, env: Optional[Dict[str, str]] = None,
            timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the repository root, output to ``log``; raises :class:`StepTimeout` past the step's cap."""
    limit = ctx.left() if timeout is None else min(timeout, ctx.left())
    if limit <= 1:
        raise StepTimeout(f"no time left for {' '.join(map(str, cmd[:4]))} ...")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env or ctx.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill(proc)
            raise StepTimeout(f"{' '.join(map(str, cmd[:4]))} ... ran past {limit:.0f} s",
                              tail(log.read_text(errors="replace"))) from None
    return subprocess.CompletedProcess(cmd, rc, log.read_text(errors="replace"), "")


def kill(proc: subprocess.Popen) -> None:
    """End ``proc`` and its children (its own session), TERM then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def train_cmd(*overrides: str) -> List[str]:
    return [sys.executable, "-m", "sparse_exp.train", *overrides]


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def summaries(runs: Path) -> List[Dict[str, Any]]:
    return [read_json(p) for p in sorted(runs.rglob("summary.json"))]


# ================================================================================================ a: environment
ENV_PROBE = r"""
import importlib, json, os, platform, shutil, subprocess, sys
import torch
out = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
       "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, gpus=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
               memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    x = torch.randn(1024, 1024, device="cuda")
    out["matmul_ok"] = bool(torch.isfinite(x @ x).all())
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        out["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
mods = {}
for m in ["sparse_exp", "hydra", "omegaconf", "antlr4", "submitit", "hydra_plugins.hydra_submitit_launcher",
          "hydra_plugins.sparse_exp_sweeper", "torchvision", "torchmetrics", "numpy", "pandas", "matplotlib",
          "tqdm", "yaml", "pytest", "wandb"]:
    try:
        mod = importlib.import_module(m)
        mods[m] = {"version": getattr(mod, "__version__", None), "from": os.path.dirname(mod.__file__ or "")}
    except Exception as exc:
        mods[m] = {"version": None, "error": f"{type(exc).__name__}: {exc}"}
out["modules"] = mods
print("GPU_CHECK_JSON " + json.dumps(out))
"""


def step_env(ctx: Ctx) -> Result:
    res = run_cmd(ctx, [sys.executable, "-c", ENV_PROBE], ctx.work / "a.log")
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("GPU_CHECK_JSON ")), None)
    if res.returncode or line is None:
        return Result("failed", log_tail=tail(res.stdout))
    fig = json.loads(line.split(" ", 1)[1])
    r = Result(figures=fig)
    missing = [m for m in ("sparse_exp", "hydra", "omegaconf", "submitit", "hydra_plugins.sparse_exp_sweeper")
               if fig["modules"][m].get("version") is None and "error" in fig["modules"][m]]
    if missing:
        r.status, r.notes = "failed", [f"cannot import {', '.join(missing)}: install the wheelhouse (docs/gpu.md)"]
    if ctx.size["device"] == "cuda" and not fig["cuda_available"]:
        r.status = "failed"
        r.notes.append("torch.cuda.is_available() is False")
    if fig["modules"]["wandb"].get("version") is None:
        r.notes.append("wandb is not installed: every run here uses logger=none")
    return r


# ================================================================================================ b: CUDA tests
def step_cuda_tests(ctx: Ctx) -> Result:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "needs_cuda" in p.read_text())
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rs", *files]
    res = run_cmd(ctx, cmd, ctx.work / "b.log")
    lines = [ln for ln in res.stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    summary = lines[-1].strip("= ") if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    fig = {"files": files, "summary": summary, "counts": counts, "exit_code": res.returncode}
    r = Result(figures=fig, log_tail=tail(res.stdout, 4000) if res.returncode else "")
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("skipped", 0)
    if res.returncode or ran == 0:
        r.status = "failed"
    elif ctx.size["device"] == "cuda" and counts.get("skipped", 0):
        r.status, r.notes = "failed", ["CUDA tests skipped on a GPU machine"]
    elif ctx.size["device"] != "cuda":
        r.notes.append("dry run on CPU: the CUDA tests are collected and skip (their real run needs a GPU)")
    return r


# ================================================================================================ c: epoch times
def step_epoch_time(ctx: Ctx) -> Result:
    r = Result()
    size = ctx.size
    n_models = len(size["models"])
    for i, (model, images, compile_, cap, _) in enumerate(size["models"]):
        key = model + ("_compile" if compile_ else "")
        out = ctx.work / f"c_{key}.json"
        cmd = [sys.executable, "benchmarks/epoch_time.py", "--device", size["device"], "--models", model,
               "--part", "training", "--cifar-images", str(images),
               "--repeats", str(1 if compile_ else size["repeats"]),
               "--compile", model if compile_ else "none", "--json", out, "--tmp", ctx.work / "epoch_time"]
        if size["quick"]:
            cmd.append("--quick")
        reserve = sum(m[4] for m in size["models"][i + 1:])  # the later models' minimum
        try:
            res = run_cmd(ctx, cmd, ctx.work / f"c_{key}.log", timeout=min(cap, ctx.left() - reserve))
        except StepTimeout as exc:
            r.status = "timeout" if r.status == "ok" else r.status
            r.notes.append(f"{key}: {exc.args[0]}")
            r.figures[key] = {"error": str(exc.args[0])}
            continue
        if res.returncode or not out.exists():
            r.status = "failed"
            r.figures[key] = {"error": f"exit code {res.returncode}"}
            r.log_tail += f"--- {key}\n" + tail(res.stdout, 2500)
            continue
        m = read_json(out)["models"][0]
        table = res.stdout[res.stdout.find("== summary"):].strip()
        r.figures[key] = m | {"summary_table": table, "model": model, "timed_compile": compile_}
    done = [k for k, v in r.figures.items() if "error" not in v]
    r.notes.append(f"{len(done)} of {n_models} models measured")
    return r


# ================================================================================================ d: default experiment
def step_default(ctx: Ctx) -> Result:
    r = Result()
    base = ["logger=none", "progress=false", f"device={ctx.size['device']}", *ctx.size["default_overrides"]]
    for name, extra, reserve in (("eager", [], 30), ("fast", ctx.size["fast"], 0)):
        runs = ctx.work / f"d_{name}"
        env = dict(ctx.env, SPARSE_EXP_RUNS=str(runs))
        t0 = time.perf_counter()
        try:
            res = run_cmd(ctx, train_cmd(*base, *extra), ctx.work / f"d_{name}.log", env=env,
                          timeout=ctx.left() - reserve)
        except StepTimeout as exc:
            r.status, r.figures[name] = "timeout", {"error": str(exc.args[0]), "overrides": extra}
            r.notes.append(f"{name}: {exc.args[0]}")
            continue
        wall = time.perf_counter() - t0
        s = summaries(runs)
        if res.returncode or not s or s[0].get("status") != "completed":
            r.status = "failed"
            r.figures[name] = {"error": f"exit code {res.returncode}", "overrides": extra}
            r.log_tail += f"--- {name}\n" + tail(res.stdout, 2500)
            continue
        s = s[0]
        r.figures[name] = {"overrides": extra, "wall_s": wall, "train_s": s.get("time/train_s"),
                           "test/acc": s.get("test/acc"), "last/test/acc": s.get("last/test/acc"),
                           "test/nll": s.get("test/nll"), "epochs": s.get("epochs"), "steps": s.get("steps")}
    r.figures["cpu_readme"] = CPU_DEFAULT
    return r


# ================================================================================================ e: packed runs
def step_packed(ctx: Ctx) -> Result:
    r = Result()
    size = ctx.size
    rows = {}
    for n in size["packed"]:
        runs = ctx.work / f"e_{n}"
        env = dict(ctx.env, SPARSE_EXP_RUNS=str(runs), OMP_NUM_THREADS=str(size["packed_threads"]))
        procs = []
        t0 = time.perf_counter()
        limit = ctx.left() - 5 * (len(size["packed"]) - len(rows) - 1)  # keep a little for the larger N
        try:
            for seed in range(n):
                log = open(ctx.work / f"e_{n}_{seed}.log", "w")
                cmd = train_cmd("logger=none", "progress=false", f"device={size['device']}", f"seed={seed}",
                                *size["packed_overrides"])
                procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True), log))
            codes = [p.wait(timeout=max(1.0, limit - (time.perf_counter() - t0))) for p, _ in procs]
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                kill(p)
            r.status = "timeout"
            r.notes.append(f"N={n}: ran past {limit:.0f} s")
            break
        finally:
            for _, log in procs:
                log.close()
        wall = time.perf_counter() - t0
        s = [x for x in summaries(runs) if x.get("status") == "completed"]
        if any(codes) or len(s) != n:
            r.status = "failed"
            r.notes.append(f"N={n}: exit codes {codes}, {len(s)} completed")
            r.log_tail += tail((ctx.work / f"e_{n}_0.log").read_text(errors="replace"), 2000)
            break
        rows[n] = {"wall_s": wall, "train_s": [x["time/train_s"] for x in s], "test/acc": [x["test/acc"] for x in s]}
        rows[n]["steps"] = [x["steps"] for x in s]
    if rows:
        one = rows.get(1)
        for n, row in rows.items():
            # images/s of a run = its optimizer steps x batch / its training time (the last batch is short:
            # within 0.3 %); summed over the N runs that shared the GPU
            batch = 128
            row["images_per_s_sum"] = sum(st * batch / t for st, t in zip(row["steps"], row["train_s"]))
            if one:
                row["wall_vs_n_times_one"] = row["wall_s"] / (n * one["wall_s"])
                row["throughput_vs_one"] = row["images_per_s_sum"] / one["images_per_s_sum"]
        r.figures["runs"] = {str(k): v for k, v in rows.items()}
        r.figures["overrides"] = size["packed_overrides"]
    return r


# ================================================================================================ f: kill + resume
def write_synthetic_cifar10(root: Path, per_batch: int, n_test: int, seed: int = 0) -> None:
    """A learnable CIFAR-10-shaped data set in torchvision's pickle layout: each class a random template, each
    image its class's template plus noise (uint8)."""
    import numpy as np

    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 3 * 32 * 32)).astype(np.float32)

    def batch(n: int) -> Dict[str, Any]:
        y = rng.integers(0, 10, size=n)
        x = 0.5 * templates[y] + 0.5 * rng.integers(0, 256, size=(n, 3 * 32 * 32))
        return {"data": x.clip(0, 255).astype(np.uint8), "labels": y.tolist()}

    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (d / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


#: runs the training CLI on the synthetic files: torchvision's md5 check is the only thing replaced
SYNTHETIC_TRAIN = ("import os, runpy, sys; import torchvision.datasets.cifar as c; "
                   "c.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath); "
                   "sys.argv = ['sparse_exp.train'] + sys.argv[1:]; "
                   "runpy.run_module('sparse_exp.train', run_name='__main__', alter_sys=True)")


def step_kill_resume(ctx: Ctx) -> Result:
    import numpy as np
    import torch

    sup = ctx.size["sup"]
    root = ctx.work / "f_cifar"
    write_synthetic_cifar10(root, sup["per_batch"], sup["n_test"])
    over = ["dataset=cifar10", f"dataset.root={root}", f"dataset.val_size={sup['val']}", f"model={sup['model']}",
            "logger=none", "progress=false", f"device={ctx.size['device']}", f"batch_size={sup['batch']}",
            f"epochs={sup['epochs']}", "sparsifier=rigl", f"sparsifier.delta_t={sup['delta_t']}",
            "superposer=sup_tickets",
            "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1", *sup["fast"]]
    cmd = [sys.executable, "-c", SYNTHETIC_TRAIN, *over]
    envs = {k: dict(ctx.env, SPARSE_EXP_RUNS=str(ctx.work / f"f_{k}")) for k in ("full", "part")}
    logs = {k: open(ctx.work / f"f_{k}.log", "w") for k in ("full", "part")}
    kill_after = sup["epochs"] - 2  # killed in epoch kill_after + 1: inside the cyclic phase
    shown = [o if not o.startswith("dataset.root=") else "dataset.root=<synthetic CIFAR-10 files>" for o in over]
    r = Result(figures={"overrides": shown, "killed_in_epoch": kill_after + 1, "tolerance": TOLERANCE})
    procs = {k: subprocess.Popen(cmd, cwd=ROOT, env=envs[k], stdout=logs[k], stderr=subprocess.STDOUT,
                                 start_new_session=True) for k in ("full", "part")}  # side by side
    try:
        killed = None
        while ctx.left() > 0 and procs["part"].poll() is None:
            m = list((ctx.work / "f_part").rglob("metrics.jsonl"))
            rows = [json.loads(x) for x in m[0].read_text().splitlines() if x.strip()] if m else []
            if len(rows) >= kill_after and killed is None:
                # at once: the run stops after the next optimizer step, early in the next epoch (a sleep sized by
                # earlier epochs' times missed the run's end when one epoch had been slow)
                procs["part"].send_signal(signal.SIGTERM)  # the preemption signal: checkpoint mid-epoch, exit
                killed = time.perf_counter()
            time.sleep(0.01)
        codes = {k: p.wait(timeout=max(1.0, ctx.left())) for k, p in procs.items()}
    except subprocess.TimeoutExpired:
        for p in procs.values():
            kill(p)
        raise StepTimeout("the full / interrupted runs ran past the cap") from None
    finally:
        for f in logs.values():
            f.close()
    part_summary = summaries(ctx.work / "f_part")
    r.figures["interrupted"] = {"exit_code": codes["part"],
                                "status": part_summary[0].get("status") if part_summary else None}
    r.figures["stopped_at_step"] = part_summary[0].get("step") if part_summary else None  # global step
    if killed is None or codes["part"] != 128 + signal.SIGTERM or r.figures["interrupted"]["status"] != "stopped":
        r.status = "failed"
        r.notes.append("the run was not interrupted mid-run (finished first, or did not stop on SIGTERM)")
        r.log_tail = tail((ctx.work / "f_part.log").read_text(errors="replace"))
        return r
    res = run_cmd(ctx, cmd, ctx.work / "f_resume.log", env=envs["part"])
    full, part = summaries(ctx.work / "f_full"), summaries(ctx.work / "f_part")
    if codes["full"] or res.returncode or not full or not part:
        r.status = "failed"
        r.log_tail = tail(res.stdout) + tail((ctx.work / "f_full.log").read_text(errors="replace"))
        return r
    a, b = full[0], part[0]
    da, db = Path(a["run_dir"]), Path(b["run_dir"])
    tickets = lambda s: sorted(k for k in s if re.fullmatch(r"tickets/\d+/test/acc", k))  # noqa: E731
    fig = {"status": [a["status"], b["status"]], "tickets": [len(tickets(a)), len(tickets(b))],
           "superposed": ["superpose/epoch_fraction" in a, "superpose/epoch_fraction" in b]}
    for key in ("test/acc", "last/test/acc", "val/acc", "test/nll"):
        fig[key] = [a.get(key), b.get(key)]
    rows_a = [json.loads(x) for x in (da / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows_b = [json.loads(x) for x in (db / "metrics.jsonl").read_text().splitlines() if x.strip()]
    la, lb = np.array([x["train/loss"] for x in rows_a]), np.array([x["train/loss"] for x in rows_b])
    fig["train_loss"] = [la.tolist(), lb.tolist()]
    from sparse_exp.run.run_dir import RunDir  # the project's loaders: weights_only=True (+ the checkpoint allow-list)
    from sparse_exp.sparse.sparsifiers.mask_file import load_mask_file

    ma, mb = load_mask_file(da / "masks.pt"), load_mask_file(db / "masks.pt")
    kept = sum(int(v.sum()) for v in ma.values())
    fig["mask_overlap"] = sum(int((ma[k] & mb[k]).sum()) for k in ma) / max(kept, 1)
    wa = RunDir(da, writable=False).load_checkpoint()["model"]
    wb = RunDir(db, writable=False).load_checkpoint()["model"]
    fig["max_abs_weight_diff"] = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa
                                     if wa[k].is_floating_point())
    fig["bitwise_equal"] = all(torch.equal(wa[k], wb[k]) for k in wa) and fig["mask_overlap"] == 1.0
    r.figures.update(fig)
    t = TOLERANCE
    checks = {
        "both completed": a["status"] == b["status"] == "completed",
        "tickets collected": len(tickets(a)) == len(tickets(b)) >= 1,
        "superposition done": all(fig["superposed"]),
        "same epochs": len(la) == len(lb),
        f"test acc within {t['test_acc_points']} points": all(
            abs(x - y) <= t["test_acc_points"] for x, y in (fig["test/acc"], fig["last/test/acc"])),
        f"train loss within {t['train_loss_rel']:.0%} / {t['train_loss_abs']}": len(la) == len(lb) and bool(
            np.all(np.abs(la - lb) <= t["train_loss_abs"] + t["train_loss_rel"] * np.abs(la))),
        f"mask overlap >= {t['mask_overlap']}": fig["mask_overlap"] >= t["mask_overlap"],
    }
    r.figures["checks"] = checks
    if not all(checks.values()):
        r.status = "failed"
        r.notes.append("outside the tolerance: " + ", ".join(k for k, v in checks.items() if not v))
    return r


# ================================================================================================ report
STEPS: List[tuple] = [  # key, title, cap s, minimum s kept for it, function
    ("a", "environment", 40, 10, step_env),
    ("b", "CUDA tests (pytest -m cuda)", 120, 30, step_cuda_tests),
    ("c", "epoch time: VGG-16 / ResNet-18 / ResNet-50, CIFAR-shaped synthetic data", 300, 100, step_epoch_time),
    ("d", "default experiment on the real Fashion-MNIST", 150, 40, step_default),
    ("e", "packed runs N = 1, 2, 4, 8", 120, 30, step_packed),
    ("f", "VGG-16 Sup-tickets run killed and resumed (dry run: LeNet-5)", 100, 30, step_kill_resume),
]


def fmt(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    return format(x, spec) if isinstance(x, float) else str(x)


def markdown(report: Dict[str, Any]) -> str:
    meta, steps = report["meta"], report["steps"]
    env = steps.get("a", {}).get("figures", {})
    out = [f"# GPU check {meta['date']}: {meta['gpu']}", "",
           f"`{meta['command']}` "
           f"({'dry run on CPU: tiny sizes, numbers not to quote' if meta['dry_run'] else 'GPU sizes'}); "
           f"commit `{meta['commit']}`; total {meta['seconds']:.0f} s of a {meta['budget_s']} s budget. "
           f"JSON with every figure: `{meta['json_name']}`.", "",
           "| step | status | s | cap s | |", "|---|---|---|---|---|"]
    for key, title, *_ in STEPS:
        s = steps.get(key)
        if s:
            out.append(f"| {key} | **{s['status']}** | {s['seconds']:.0f} | {s['cap_s']:.0f} | {title} |")
    out.append("")
    if env:
        out += ["## a. Environment", "",
                f"Python {env.get('python')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
                f"cuDNN {env.get('cudnn')}, "
                f"GPU {env.get('gpu', 'none')} (capability {env.get('capability', '-')}, "
                f"{env.get('memory_gib', '-')} GiB, "
                f"driver {env.get('driver', '-')}), {env.get('cpus')} CPUs.", "",
                "| module | version | from |", "|---|---|---|"]
        for m, v in env.get("modules", {}).items():
            out.append(f"| {m} | {v.get('version') or v.get('error', '-')} | {v.get('from', '')} |")
        out.append("")
    b = steps.get("b", {}).get("figures", {})
    if b:
        out += ["## b. CUDA tests", "", f"`pytest -m cuda {' '.join(b['files'])}`: **{b['summary']}**", ""]
    c = steps.get("c", {}).get("figures", {})
    if c:
        out += ["## c. Epoch time (benchmarks/epoch_time.py)", "",
                "| model | images/epoch | eager img/s | ours/ref | compile | graphs | bf16+cl | graphs+bf16+cl | best "
                "| best/ref | static/dense | SET/dense | RigL/dense | cyclic/dense | update % | superposition % "
                "(alone / with evals) | peak GiB (all rows' runs at once) |", "|" + "---|" * 17]
        for model, m in c.items():
            if "error" in m:
                out.append(f"| {model} | {m['error']} |" + " |" * 15)
                continue
            if m.get("timed_compile"):
                out.append(f"| {m.get('model', model)} (compile run) | {m['images_per_epoch']} | "
                           f"{fmt(m['ips'], '.0f')} | "
                           f"{fmt(m['ours/ref'])} | **{fmt(m['compile'])}** | {fmt(m['graphs'])} | {fmt(m['bf16'])} | "
                           f"{fmt(m['graphs_bf16'])} | {m['best_mode']} | {fmt(m['best/ref'])} |" + " |" * 7)
                continue
            sup = m.get("superpose") or (None, None)
            out.append(f"| {model} | {m['images_per_epoch']} | {fmt(m['ips'], '.0f')} | {fmt(m['ours/ref'])} | "
                       f"{fmt(m['compile'])} | {fmt(m['graphs'])} | {fmt(m['bf16'])} | {fmt(m['graphs_bf16'])} | "
                       f"{m['best_mode']} | {fmt(m['best/ref'])} | {fmt(m['static'], '.3f')} | "
                       f"{fmt(m['set'], '.3f')} | "
                       f"{fmt(m['rigl'], '.3f')} | {fmt(m['cyclic'], '.3f')} | {fmt(m['update'], '.3f')} | "
                       f"{fmt(sup[0], '.3f')} / {fmt(sup[1])} | {fmt(m['peak_mem_gib'])} |")
        out += ["", "The compile run is a second process timing every mode again with fast.compile added (its warm-up, "
                "the compilation, is in its full table). Ratios of images/s: compile / graphs / bf16 against "
                "our eager fp32 loop; static ... cyclic against "
                "dense; update: one RigL drop-and-grow amortised over ΔT = 100 as % of training time; superposition: "
                "one event as % of a full-size 45k-image epoch. Each model's full table:", ""]
        for model, m in c.items():
            if "summary_table" in m:
                rows = {k: v for k, v in m["rows"].items()}
                out += [f"<details><summary>{model}</summary>", "", "```",
                        *[f"{v['label']:<42} " + (v['skip'] or f"{v['s_per_epoch']:.3f} s/epoch "
                          f"{v['images_per_s']:.0f} img/s  warm-up {fmt(v['warm_up_s'], '.1f')} s  {v['events']}")
                          for v in rows.values()],
                        "```", "", "</details>", ""]
    d = steps.get("d", {}).get("figures", {})
    if d:
        out += ["## d. The default experiment", "",
                "| run | overrides | wall s | training s | test acc % | last model % |",
                "|---|---|---|---|---|---|"]
        for name in ("eager", "fast"):
            x = d.get(name)
            if x and "error" not in x:
                out.append(f"| {name} | `{' '.join(x['overrides']) or '-'}` | {fmt(x['wall_s'], '.1f')} | "
                           f"{fmt(x['train_s'], '.1f')} | {fmt(x['test/acc'])} | {fmt(x['last/test/acc'])} |")
            elif x:
                out.append(f"| {name} | `{' '.join(x['overrides'])}` | {x['error']} | | | |")
        cpu = d["cpu_readme"]
        out += [f"| README, CPU (2 cores) | - | {cpu['wall_s']:.0f} | {cpu['time/train_s']:.1f} | "
                f"{cpu['test/acc']:.2f} | |",
                ""]
    e = steps.get("e", {}).get("figures", {})
    if e.get("runs"):
        out += ["## e. Packed runs", "", f"`{' '.join(e['overrides'])}`, seeds 0..N-1, started together.", "",
                "| N | wall s | wall / (N x one) | images/s summed | throughput / one run | test acc % |",
                "|---|---|---|---|---|---|"]
        for n, x in e["runs"].items():
            out.append(f"| {n} | {x['wall_s']:.1f} | {fmt(x.get('wall_vs_n_times_one'))} | "
                       f"{x['images_per_s_sum']:.0f} | {fmt(x.get('throughput_vs_one'))} | "
                       f"{', '.join(f'{a:.2f}' for a in x['test/acc'])} |")
        out.append("")
    f = steps.get("f", {}).get("figures", {})
    if f.get("checks"):
        out += ["## f. Sup-tickets run killed and resumed", "",
                f"`{' '.join(f['overrides'])}`; SIGTERM as epoch {f['killed_in_epoch']} (the cyclic phase) began: "
                f"exit code {f['interrupted']['exit_code']}, status `{f['interrupted']['status']}` "
                f"at step {f['stopped_at_step']}; relaunched with the same "
                "command; the same run uninterrupted beside it. Data: each class a random template plus noise "
                "(learnable), 5 training files of `per_batch` images.", "",
                "| | uninterrupted | killed + resumed |", "|---|---|---|"]
        for key in ("status", "tickets", "superposed", "test/acc", "last/test/acc", "val/acc", "test/nll"):
            out.append(f"| {key} | {fmt(f[key][0], '.4f')} | {fmt(f[key][1], '.4f')} |")
        out += ["", f"Mask overlap {f['mask_overlap']:.4f}, largest weight difference {f['max_abs_weight_diff']:.3g}, "
                f"bitwise equal: {f['bitwise_equal']}. Checks: "
                + "; ".join(f"{k}: {'yes' if v else '**no**'}" for k, v in f["checks"].items()), ""]
    problems = [(k, s) for k, s in steps.items() if s["status"] != "ok" or s["notes"]]
    if problems:
        out += ["## Notes and failures", ""]
        for k, s in problems:
            out += [f"- **{k}** ({s['status']}): " + "; ".join(s["notes"])]
            if s.get("log_tail"):
                out += ["", "```", s["log_tail"], "```"]
        out.append("")
    return "\n".join(out) + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def find_data() -> Optional[Path]:
    for d in (os.environ.get("SPARSE_EXP_DATA"), FMNIST_DEFAULT):
        if d and Path(d).expanduser().is_dir():
            p = Path(d).expanduser()
            if list(p.rglob("train-images-idx3-ubyte*")):
                return p
    return None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU (CI; < 3 min)")
    p.add_argument("--steps", default="a,b,c,d,e,f", help="comma-separated subset of a,b,c,d,e,f")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for the whole check (default 470)")
    p.add_argument("--report-dir", default=None,
                   help="where <date>-<gpu>.md/.json go (default docs/measured/gpu; --dry-run: runs/gpu_check)")
    p.add_argument("--out", action="append", default=[], help="also copy the report here (repeatable)")
    p.add_argument("--work", default=None, help="scratch directory (default: a new temporary one, removed)")
    p.add_argument("--fast", default=None,
                   help="step d's second run, space-separated overrides (default 'fast.cuda_graphs=true': LeNet-5's "
                        "step is launch-bound on a GPU, which graphs remove; dry run 'fast.dtype=bf16')")
    args = p.parse_args(argv)
    t_start = time.monotonic()
    size = dict(SIZES["dry" if args.dry_run else "gpu"])
    if args.fast:
        size["fast"] = args.fast.split()
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in wanted if s not in {k for k, *_ in STEPS}]
    if bad:
        p.error(f"unknown step(s) {bad}; choose from a,b,c,d,e,f")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    data = find_data()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    env["SPARSE_EXP_RUNS"] = str(work / "runs")
    env.setdefault("WANDB_MODE", "disabled")
    if data:
        env["SPARSE_EXP_DATA"] = str(data)
    ctx = Ctx(args, size, work, data, env)
    print(f"gpu_check: {'dry run on CPU' if args.dry_run else 'GPU'}; budget {args.budget:.0f} s; data {data}; "
          f"scratch {work}", flush=True)
    report: Dict[str, Any] = {"steps": {}}
    todo = [s for s in STEPS if s[0] in wanted]
    for i, (key, title, cap, _, fn) in enumerate(todo):
        reserve = sum(s[3] for s in todo[i + 1:])
        left = args.budget - (time.monotonic() - t_start)
        allowed = min(cap, left - reserve)
        t0 = time.monotonic()
        ctx.deadline = t0 + allowed
        print(f"[{key}] {title}: cap {allowed:.0f} s ...", flush=True)
        if allowed < 5:
            res = Result("skipped", notes=[f"no time left in the {args.budget:.0f} s budget"])
        elif key in "de" and data is None:
            res = Result("failed", notes=["Fashion-MNIST not found: set SPARSE_EXP_DATA to the four files' directory"])
        else:
            try:
                res = fn(ctx)
            except StepTimeout as exc:
                res = Result("timeout", notes=[str(exc.args[0])], log_tail=exc.args[1] if len(exc.args) > 1 else "")
            except Exception as exc:  # a broken step is recorded; the next one runs
                import traceback

                res = Result("failed", notes=[f"{type(exc).__name__}: {exc}"], log_tail=tail(traceback.format_exc()))
        secs = time.monotonic() - t0
        report["steps"][key] = {"title": title, "status": res.status, "seconds": secs, "cap_s": allowed,
                                "figures": res.figures, "notes": res.notes, "log_tail": res.log_tail}
        print(f"[{key}] {res.status} in {secs:.0f} s" + (f": {'; '.join(res.notes)}" if res.notes else ""), flush=True)
    env_fig = report["steps"].get("a", {}).get("figures", {})
    gpu = env_fig.get("gpu") or ("cpu-dry-run" if args.dry_run else "unknown-gpu")
    date = dt.date.today().isoformat()
    name = f"{date}-{slug(gpu)}" + ("-dry-run" if args.dry_run and "dry" not in slug(gpu) else "")
    report["meta"] = {"date": date, "gpu": gpu, "dry_run": args.dry_run, "commit": git_commit(),
                      "command": "python benchmarks/gpu_check.py "
                                 + " ".join(argv if argv is not None else sys.argv[1:]),
                      "budget_s": args.budget, "seconds": time.monotonic() - t_start, "json_name": name + ".json",
                      "sizes": size, "tolerance": TOLERANCE}
    md = markdown(report)
    report_dir = Path(args.report_dir or (ROOT / ("runs/gpu_check" if args.dry_run else "docs/measured/gpu")))
    for d in [report_dir] + [Path(o) for o in args.out]:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.md").write_text(md)
        (d / f"{name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"report: {d / name}.md (+ .json)")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    failed = [k for k, s in report["steps"].items() if s["status"] != "ok"]
    print(f"gpu_check: {len(report['steps']) - len(failed)} of {len(report['steps'])} steps ok"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; {report['meta']['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
