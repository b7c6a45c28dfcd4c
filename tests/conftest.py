"""Shared fixtures: compose the real Hydra config and run tiny trainings in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import sparse_exp.train  # noqa: F401  (registers schemas and the run_name resolver)

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


def compose_cfg(overrides=(), tiny=True):
    """The config ``python -m sparse_exp.train <overrides>`` would run (without the hydra node)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=(TINY if tiny else []) + list(overrides))


@pytest.fixture(scope="session", autouse=True)
def _require_data():
    """Real data is required; CI installs it (make install). Skip only outside CI, saying why."""
    if not FMNIST.exists() and not os.environ.get("SPARSE_EXP_DATA"):
        if os.environ.get("CI") == "true":
            pytest.fail("Fashion-MNIST is missing in CI: 'make install' should have installed dataset-fashion-mnist")


needs_data = pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("SPARSE_EXP_DATA")
                                and os.environ.get("CI") != "true",
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
