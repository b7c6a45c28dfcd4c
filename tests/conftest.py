"""Shared fixtures: compose the real Hydra config and run tiny trainings in-process."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_exp.config.compose import compose, run_name

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

#: a few seconds per run on 2 CPU cores: real Fashion-MNIST, small subsets
TINY = [
    "dataset.subset_train=1024",
    "dataset.val_size=256",
    "dataset.subset_test=512",
    "batch_size=64",
    "eval_batch_size=512",
    "logger=none",
    "progress=false",
    "device=cpu",
]


def needs_cuda(test):
    """A CUDA-only test: marked ``cuda`` (``pytest -m cuda`` runs them all, as ``make gpu-check`` does) and
    skipped without a CUDA device (CI has none)."""
    reason = "needs a CUDA device (CI has no GPU; make gpu-check runs these on one)"
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason=reason)(test))


def compose_cfg(overrides=(), tiny=True):
    """The config ``python -m sparse_exp.train <overrides>`` would run (without the hydra node).

    With ``tiny``, small Fashion-MNIST subsets, and ``superposer=none`` unless the overrides pick one
    (the default experiment's Sup-tickets phase needs more epochs than most tests run).
    """
    overrides = list(overrides)
    if tiny and not any(o.startswith("superposer=") for o in overrides):
        overrides.insert(0, "superposer=none")
    return compose((TINY if tiny else []) + overrides)


def cli_run_dir(runs_dir, overrides) -> Path:
    """The directory ``python -m sparse_exp.train <overrides>`` trains into under ``runs_dir``, named
    by Hydra's own ``get_overrides_dirname`` with the config's exclude list (as ``hydra.run.dir``)."""
    from sparse_exp.config.hydra_adapter import overrides_dirname

    overrides = list(overrides)
    cfg = compose(overrides, return_hydra_config=True)
    name = overrides_dirname(overrides, cfg.hydra.job.config.override_dirname)
    return Path(runs_dir) / run_name(name)


@pytest.fixture(scope="session", autouse=True)
def _require_data():
    """Real data is required; CI installs it (make install). Skip only outside CI, saying why."""
    if not FMNIST.exists() and not os.environ.get("SPARSE_EXP_DATA"):
        if os.environ.get("CI") == "true":
            pytest.fail("Fashion-MNIST is missing in CI: 'make install' should have installed dataset-fashion-mnist")


needs_data = pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("SPARSE_EXP_DATA")
                                and os.environ.get("CI") != "true",
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def write_fake_cifar10(root: Path, per_batch: int = 16, n_test: int = 24) -> dict:
    """Write a random CIFAR-10 in torchvision's pickle layout under ``root/cifar-10-batches-py``.

    Returns the training images (HWC uint8) and labels, for comparison with loader outputs.
    """
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=per_batch).tolist()
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x, "labels": y}, f)
        out["train_x"].append(x)
        out["train_y"] += y
    x = rng.integers(0, 256, size=(n_test, 3 * 32 * 32), dtype=np.uint8)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": x, "labels": rng.integers(0, 10, size=n_test).tolist()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    out["train_x"] = np.concatenate(out["train_x"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC
    return out


def bypass_cifar_md5(monkeypatch) -> None:
    """torchvision checks the md5 of every CIFAR file through ``torchvision.datasets.cifar.check_integrity``;
    fake files only need to exist."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def fake_cifar_root(tmp_path, monkeypatch):
    """A random CIFAR-10-shaped data set (5 x 32 train, 64 test images) with md5 checks bypassed."""
    root = tmp_path / "cifar"
    write_fake_cifar10(root, per_batch=32, n_test=64)
    bypass_cifar_md5(monkeypatch)
    return root
