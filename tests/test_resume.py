"""A run interrupted after epoch k and resumed ends exactly like the uninterrupted run (CPU, bitwise)."""


import pytest
import torch
from conftest import compose_cfg, needs_data

from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`

VOLATILE = ("time/epoch_s",)


def metrics(rd):
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rd.metrics()]


def finished_state(rd):
    return rd.load_checkpoint()


def assert_same_run(a: RunDir, b: RunDir):
    sa, sb = finished_state(a), finished_state(b)
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    for key, value in sa["masking"]["masks"].items():
        assert torch.equal(value, sb["masking"]["masks"][key]), key
    assert metrics(a) == metrics(b)
    ja, jb = a.summary(), b.summary()
    for key in ja:
        if key.startswith(("test/", "val/", "last/", "tickets/", "sparsity/", "diversity/", "itop", "topology/")):
            assert ja[key] == jb[key] or (ja[key] != ja[key] and jb[key] != jb[key]), key  # NaN == NaN


@needs_data
@pytest.mark.parametrize("overrides", [
    ["sparsifier=rigl", "sparsifier.delta_t=10", "epochs=3"],
    ["sparsifier=set", "sparsifier.delta_t=10", "epochs=3", "model=lenet_300_100", "optimizer=adam"],
    # Sup-tickets: 4 normal epochs, then two 2-epoch cycles; interrupted after epoch 5 = mid-cycle
    ["sparsifier=rigl", "sparsifier.delta_t=10", "epochs=8", "superposer=sup_tickets",
     "superposer.phase_fraction=0.5", "superposer.cycle_epochs=2"],
], ids=["rigl", "set-adam", "sup_tickets-mid-cycle"])
def test_resume_equals_uninterrupted(tmp_path, overrides):
    full = RunDir(tmp_path / "full")
    run(compose_cfg(overrides), full.path)
    cut_epoch = 5 if "superposer=sup_tickets" in overrides else 1
    part = RunDir(tmp_path / "part")
    out = run(compose_cfg(overrides + [f"stop_after_epochs={cut_epoch}"]), part.path)
    assert out["status"] == "stopped" and part.summary()["status"] == "stopped"
    assert len(part.metrics()) == cut_epoch
    summary = run(compose_cfg(overrides), part.path)
    assert summary["status"] == "completed"
    assert_same_run(full, part)
    epochs = [row["epoch"] for row in part.metrics()]
    assert epochs == list(range(1, len(epochs) + 1)), "the epoch counter continued, it did not start over"


class StepGuard:
    """Stands in for the SLURM preemption guard: requests a stop after ``after`` steps."""

    def __init__(self, trainer, after):
        self.trainer, self.after = trainer, after

    @property
    def requested(self):
        return self.trainer.step >= self.after


@needs_data
def test_preemption_mid_epoch_resumes_bitwise(tmp_path):
    from sparse_exp.engine.loop import Preempted, Trainer

    overrides = ["sparsifier=rigl", "sparsifier.delta_t=5", "epochs=3", "superposer=sup_tickets",
                 "superposer.phase_fraction=0.67", "superposer.cycle_epochs=1"]
    full = RunDir(tmp_path / "full")
    run(compose_cfg(overrides), full.path)
    part = RunDir(tmp_path / "part")
    cfg = compose_cfg(overrides)
    part.prepare(cfg)
    trainer = Trainer(cfg, part)
    trainer.preemption = StepGuard(trainer, after=23)  # 16 steps per epoch: mid second epoch = first cycle
    with pytest.raises(Preempted):
        trainer.fit()
    state = part.load_checkpoint()
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 7, 23)
    assert part.summary()["status"] == "stopped"
    summary = run(compose_cfg(overrides), part.path)
    assert summary["status"] == "completed"
    assert_same_run(full, part)


@needs_data
def test_sigusr2_checkpoints_promptly_and_the_rerun_resumes(tmp_path):
    """The real signal path without SLURM: USR2 -> checkpoint at the next step -> exit 128 + 12."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, TINY

    env = {**os.environ, "SPARSE_EXP_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"}
    epochs = 40
    args = [sys.executable, "-m", "sparse_exp.train", *TINY, "superposer=none", f"epochs={epochs}",
            "model=lenet_300_100"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "runs").glob("*/checkpoint.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/checkpoint.pt")]
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, out
    rd = RunDir(run_dir)
    assert rd.summary()["status"] == "stopped" and rd.summary()["reason"] == "preempted"
    stopped_at = rd.load_checkpoint()["step"]
    assert stopped_at < epochs * 16, "stopped long before the end"
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resumed from" in res.stdout + res.stderr
    assert rd.summary()["status"] == "completed" and rd.summary()["steps"] == epochs * 16


def _write_imagefolder(root, classes=("n01", "n02", "n03"), per_class=16, size=64):
    """Random PNGs in ``train/<class>`` and ``val/<class>`` (2 per class)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", per_class), ("val", 2)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(d / f"{c}_{i}.png")


@pytest.mark.parametrize("loader", ["device", "torchvision-0", "torchvision-2", "imagefolder-0", "imagefolder-2"])
def test_mid_epoch_preemption_resumes_bitwise_on_every_loader(tmp_path, fake_cifar_root, loader):
    """Every loader (the in-memory one: test_preemption_mid_epoch_resumes_bitwise), augmented, with and without
    DataLoader workers: stopped mid-epoch, resumed (the loader starts at the checkpoint's batch: nothing before it
    is loaded), it ends bitwise equal to the uninterrupted run."""
    from sparse_exp.engine.loop import Preempted, Trainer

    kind, _, workers = loader.partition("-")
    if kind == "imagefolder":
        _write_imagefolder(tmp_path / "tiny")
        ov = ["dataset=tiny_imagenet", f"dataset.root={tmp_path / 'tiny'}", "dataset.val_size=8", "batch_size=8"]
        steps, stop = 5, 7
    else:
        ov = ["dataset=cifar10", f"dataset.root={fake_cifar_root}", "dataset.val_size=32", "dataset.subset_test=64",
              "batch_size=16", f"dataset.loader={'device' if kind == 'device' else 'torchvision'}"]
        steps, stop = 8, 11
    ov += ["eval_batch_size=64", "model=lenet5", "sparsifier=rigl", "sparsifier.delta_t=2", "epochs=2",
           "dataset.augment=true", f"dataset.num_workers={workers or 0}"]
    full = RunDir(tmp_path / "full")
    run(compose_cfg(ov), full.path)
    part = RunDir(tmp_path / "part")
    cfg = compose_cfg(ov)
    part.prepare(cfg)
    trainer = Trainer(cfg, part)
    trainer.preemption = StepGuard(trainer, after=stop)
    with pytest.raises(Preempted):
        trainer.fit()
    state = part.load_checkpoint()
    assert (state["epoch"], state["batch_in_epoch"]) == (1, stop - steps)
    assert run(compose_cfg(ov), part.path)["status"] == "completed"
    assert_same_run(full, part)
