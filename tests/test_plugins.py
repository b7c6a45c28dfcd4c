"""Models, data sets and methods from the user's own package, without a fork (issue 25, item 2; docs/plugins.md).

A tiny package, ``sxp_demo``, is written under a temporary directory with a ``*.dist-info`` beside it declaring its
``sparse_exp.plugins`` entry point (importlib.metadata finds it on ``sys.path``). It holds a model (``TinyNet``) and
a data set callable (``make``, random tensors) for ``model=external`` / ``dataset=external``, and a plugin module
registering a sparsifier, a model and a data set with schemas, checks and YAMLs. The CLI runs in subprocesses
(``PYTHONPATH`` = the repository and the package), so the plugins never enter this process's registries; the
in-process tests only import ``sxp_demo``'s targets.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from sparse_exp.config.compose import compose
from sparse_exp.config.errors import ConfigError
from sparse_exp.config.preflight import preflight
from sparse_exp.data import build_data
from sparse_exp.models import build_configured
from sparse_exp.registry import load_components

NETS = '''
from torch import nn

WIDTH = 8  # not callable


class TinyNet(nn.Module):
    """conv -> pool -> linear; in_channels / num_classes come from the data set."""

    def __init__(self, in_channels, num_classes, width=WIDTH):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class NoWeights(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def not_a_module(**kwargs):
    return 42
'''

DATA = '''
import torch
from torch.utils.data import TensorDataset

from sparse_exp.data import ExternalData


def _split(n, classes, size, g):
    y = torch.randint(classes, (n,), generator=g)
    x = torch.randn(n, 1, size, size, generator=g) + y.view(-1, 1, 1, 1).float()  # learnable: the mean is the class
    return TensorDataset(x, y)


def make(n_train=240, n_test=60, classes=3, size=8):
    g = torch.Generator().manual_seed(0)
    return ExternalData(train=_split(n_train, classes, size, g), test=_split(n_test, classes, size, g),
                        num_classes=classes, input_shape=(1, size, size))


def unpaired():
    d = make()
    return ExternalData(train=TensorDataset(d.train.tensors[0]), test=d.test, num_classes=3, input_shape=(1, 8, 8))


def not_square():
    d = make()
    return {"train": d.train, "test": d.test, "num_classes": 3, "input_shape": (1, 8, 9)}
'''

PLUGIN = '''
"""sxp_demo's sparse_exp plugin: a sparsifier, a model and a data set, each with its schema, check and YAML."""
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sparse_exp.config.errors import require
from sparse_exp.config.schema import DatasetConfig, ModelConfig, SparsifierConfig
from sparse_exp.data import DATASETS, FactorySource
from sparse_exp.registry import MODELS, SPARSIFIERS
from sparse_exp.sparse.masking import topk_mask
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target
from sxp_demo.data import make

CONFIG_DIR = Path(__file__).parent / "conf"


@dataclass
class KeepLargestConfig(SparsifierConfig):
    name: str = "keep_largest"
    scale: float = 1.0


def check_keep_largest(cfg):
    require(cfg.sparsifier.scale > 0, "sparsifier.scale", cfg.sparsifier.scale, "must be > 0")


@SPARSIFIERS.register("keep_largest", schema=KeepLargestConfig, checks=(check_sparse_target, check_keep_largest))
class KeepLargest(Sparsifier):
    name = "keep_largest"

    def init_masks(self):
        m, counts = self.ctx.masking, self.ctx.target_counts()
        m.set_masks_({n: topk_mask(m.params[n].detach().abs(), k) for n, k in counts.items()})
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)


@dataclass
class DemoMLPConfig(ModelConfig):
    name: str = "demo_mlp"
    hidden: int = 16


def check_demo_mlp(cfg):
    require(cfg.model.hidden >= 1, "model.hidden", cfg.model.hidden, "must be >= 1")


@MODELS.register("demo_mlp", schema=DemoMLPConfig, checks=(check_demo_mlp,))
def demo_mlp(in_channels, num_classes, image_size, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@dataclass
class BlobsConfig(DatasetConfig):
    name: str = "blobs"
    classes: int = 3


def check_blobs(cfg):
    require(cfg.dataset.classes >= 2, "dataset.classes", cfg.dataset.classes, "must be >= 2")


DATASETS.add("blobs", FactorySource("blobs", lambda classes: make(classes=classes)), schema=BlobsConfig,
             checks=(check_blobs,))
'''

YAMLS = {
    "sparsifier/keep_largest.yaml": "defaults:\n  - /schema/sparsifier@_here_: keep_largest\n  - _self_\n\n"
                                    "name: keep_largest\n",
    "model/demo_mlp.yaml": "defaults:\n  - /schema/model@_here_: demo_mlp\n  - _self_\n\nname: demo_mlp\nhidden: 16\n",
    "dataset/blobs.yaml": "defaults:\n  - /schema/dataset@_here_: blobs\n  - _self_\n\nname: blobs\nval_size: 40\n",
}


def _dist(base: Path, name: str, entry_points: str) -> None:
    info = base / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sparse_exp.plugins]\n{entry_points}\n")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """``(demo, broken)``: directories for ``PYTHONPATH``; ``broken`` declares a plugin whose import fails."""
    demo = tmp_path_factory.mktemp("demo")
    pkg = demo / "sxp_demo"
    pkg.mkdir()
    for name, text in {"__init__.py": "", "nets.py": NETS, "data.py": DATA, "plugin.py": PLUGIN}.items():
        (pkg / name).write_text(textwrap.dedent(text))
    for rel, text in YAMLS.items():
        (pkg / "conf" / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / "conf" / rel).write_text(text)
    _dist(demo, "sxp_demo", "demo = sxp_demo.plugin")
    broken = tmp_path_factory.mktemp("broken")
    (broken / "sxp_broken").mkdir()
    (broken / "sxp_broken" / "__init__.py").write_text("import sxp_missing_dependency  # noqa\n")
    _dist(broken, "sxp_broken", "broken = sxp_broken")
    return demo, broken


@pytest.fixture(scope="module")
def on_path(packages):
    """``sxp_demo`` importable here, for its targets only: this process's plugins were loaded before (never again)."""
    load_components()
    sys.path.insert(0, str(packages[0]))
    yield packages[0]
    sys.path.remove(str(packages[0]))
    for name in [m for m in sys.modules if m.startswith("sxp_demo")]:
        del sys.modules[name]


def cli(args, paths, runs, module=("-m", "sparse_exp.train")):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths)]),
           "SPARSE_EXP_RUNS": str(runs), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


RUN = ["superposer=none", "epochs=1", "batch_size=32", "eval_batch_size=128", "logger=none", "device=cpu",
       "progress=false", "sparsity=0.8"]
EXT_MODEL = ["model=external", "model.target=sxp_demo.nets.TinyNet"]
EXT_DATA = ["dataset=external", "dataset.target=sxp_demo.data.make", "dataset.val_size=40"]
#: in-process configs: a fixed mask and no Sup-tickets phase (RigL's updates and its cycles need more steps than
#: these tiny data sets give), nothing logged
HERE = ["superposer=none", "sparsifier=static", "logger=none", "device=cpu"]


# ------------------------------------------------------------------------------------------- the CLI
def test_help_lists_the_plugins_options_and_a_broken_plugin_is_one_line(packages, tmp_path):
    demo, broken = packages
    page = cli(["--help"], [demo, broken], tmp_path / "runs")
    assert page.returncode == 0, page.stderr[-2000:]
    lines = {line.split()[0]: line.split(None, 1)[1] for line in page.stdout.splitlines()
             if line.startswith("  ") and len(line.split()) > 1}
    assert "keep_largest" in lines["sparsifier"] and "rigl" in lines["sparsifier"]
    assert "demo_mlp" in lines["model"] and "external" in lines["model"]
    assert "blobs" in lines["dataset"] and "external" in lines["dataset"]
    out = cli(RUN, [demo, broken], tmp_path / "runs")
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: plugin entry point sparse_exp.plugins: broken = sxp_broken (from sxp_broken 0.1) "
                          "cannot be loaded: ModuleNotFoundError"), err
    assert "sxp_missing_dependency" in err and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_plugin_and_external_components_train_from_the_cli(packages, tmp_path):
    """Two runs cover the five: an external model on a plugin data set with a plugin sparsifier, and a plugin
    model on an external data set with RigL."""
    demo = packages[0]
    runs = [EXT_MODEL + ["model.kwargs={width:6}", "dataset=blobs", "dataset.classes=4", "sparsifier=keep_largest"],
            ["model=demo_mlp", "model.hidden=12", *EXT_DATA, "dataset.subset_train=160", "sparsifier=rigl",
             "sparsifier.delta_t=2"]]
    for i, args in enumerate(runs):
        out = cli(RUN + args + [f"hydra.run.dir={tmp_path / str(i)}"], [demo], tmp_path / "runs")
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads((tmp_path / str(i) / "summary.json").read_text())
        assert summary["status"] == "completed" and 0 <= summary["test/acc"] <= 100
        masks = torch.load(tmp_path / str(i) / "masks.pt", weights_only=True)
        masks = masks.get("masks", masks)
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        assert kept == pytest.approx(0.2, abs=0.01), (args, kept)
    first = torch.load(tmp_path / "0" / "checkpoint.pt", weights_only=False)["model"]
    assert first["conv.weight"].shape == (6, 1, 3, 3) and first["fc.weight"].shape == (4, 24)  # 4 classes filled in
    split = [json.loads(line) for line in (tmp_path / "1" / "metrics.jsonl").read_text().splitlines()]
    assert split and "val/acc" in split[-1]


REFUSALS = [  # (overrides, the start of the one-line refusal)
    (["sparsifier=keep_largest", "sparsifier.scale=0"], "sparsifier.scale=0.0 is not allowed: must be > 0"),
    (["model=demo_mlp", "model.hidden=0"], "model.hidden=0 is not allowed: must be >= 1"),
    (["dataset=blobs", "dataset.classes=1"], "dataset.classes=1 is not allowed: must be >= 2"),
    (["dataset=blobs", "dataset.val_size=500"], "dataset.val_size=500 is not allowed: must be smaller than the 240"),
    (["sparsifier=keep_largest", "sparsifier.bogus=1"], "sparsifier.bogus=1 is not allowed"),
]


def test_plugin_options_are_refused_by_their_checks_in_one_line(packages, tmp_path):
    """The CLI's refusal path (:func:`preflight_cli`, what ``python -m sparse_exp.train`` runs first), one process
    for all cases."""
    script = ("import contextlib, io, json, sys\nfrom sparse_exp.config.refusal import preflight_cli\nout = []\n"
              f"for args in {[RUN + a for a, _ in REFUSALS]!r}:\n    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err):\n        code = preflight_cli(args)\n"
              "    out.append([code, err.getvalue()])\nprint(json.dumps(out))\n")
    res = cli([], [packages[0]], tmp_path / "runs", module=("-c", script))
    assert res.returncode == 0, res.stderr[-3000:]
    for (code, err), (args, start) in zip(json.loads(res.stdout.splitlines()[-1]), REFUSALS):
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert err.startswith(f"error: {start}"), (args, err)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------- model=external in-process
def test_external_model_gets_the_data_sets_sizes_and_prunes_like_the_zoo(on_path):
    cfg = compose([*HERE, *EXT_MODEL, *EXT_DATA, "model.kwargs={width:5}", "dataset.kwargs={classes:7}"])
    plan = preflight(cfg, local=True)
    assert plan.spec.num_classes == 7 and plan.spec.in_channels == 1 and plan.spec.image_size == 8
    assert plan.shapes == {"conv.weight": (5, 1, 3, 3), "fc.weight": (7, 20)}  # Conv2d and Linear, forward order
    with torch.device("meta"):
        assert build_configured(cfg.model, plan.spec).fc.weight.is_meta
    cfg = compose([*HERE, *EXT_MODEL, *EXT_DATA, "model.kwargs={num_classes:5}"])  # a value given wins, and is checked
    with pytest.raises(ConfigError, match=r"model.target='sxp_demo.nets.TinyNet'.*to \(2, 5\); expected logits of "
                                          r"shape \(2, 3\)"):
        preflight(cfg, local=True)


@pytest.mark.parametrize("override, message", [
    ("model.target=null", r"model.target=None is not allowed: must name an importable callable"),
    ("model.target=sxp_demo.nets.Missing", r"model.target='sxp_demo.nets.Missing' is not allowed: cannot be imported"),
    ("model.target=nowhere_pkg.Net", r"model.target='nowhere_pkg.Net' is not allowed: cannot be imported"),
    ("model.target=sxp_demo.nets.WIDTH", r"model.target='sxp_demo.nets.WIDTH' is not allowed: names a int, which is "
                                         r"not callable"),
    ("model.target=sxp_demo.nets.not_a_module", r"is not allowed: returned a int; expected a torch.nn.Module"),
    ("model.target=sxp_demo.nets.NoWeights", r"builds a NoWeights without a prunable layer; expected at least one"),
    ("model.kwargs={depth:3}", r"model.kwargs=.*calling model.target=sxp_demo.nets.TinyNet with them failed "
                               r"\(TypeError: .*depth"),
    ("model.kwargs=3", r"model.kwargs=3 is not allowed: must be a mapping of keyword arguments"),
    ("dataset.target=null", r"dataset.target=None is not allowed: must name an importable callable"),
    ("dataset.target=sxp_demo.data.not_square", r"dataset.target='sxp_demo.data.not_square' is not allowed: returned "
                                                r"input_shape=\(1, 8, 9\); expected \(C, H, W\)"),
    ("dataset.target=sxp_demo.data.unpaired", r"returned a train set whose item 0 is not an \(x, y\) pair"),
    ("dataset.target=sxp_demo.nets.TinyNet", r"dataset.kwargs=.*calling dataset.target=sxp_demo.nets.TinyNet"),
    ("dataset.target=sxp_demo.nets.not_a_module", r"returned a int; expected sparse_exp.data.ExternalData"),
    ("dataset.val_size=240", r"dataset.val_size=240 is not allowed: must be smaller than the 240 training images"),
    ("dataset.subset_train=500", r"dataset.subset_train=500 is not allowed: must be at most 200"),
])
def test_external_misconfiguration_is_refused_before_any_work(on_path, override, message):
    cfg = compose([*HERE, *EXT_MODEL, *EXT_DATA, override])
    with pytest.raises(ConfigError, match=message) as info:
        preflight(cfg, local=True)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- dataset=external in-process
def test_external_data_holds_out_validation_and_keeps_the_loader_contract(on_path):
    cfg = compose([*HERE, *EXT_DATA, "dataset.subset_train=100", "dataset.subset_test=30"]).dataset
    a = build_data(cfg, seed=3, batch_size=32, eval_batch_size=64, device=torch.device("cpu"))
    assert (a.num_train, a.num_val, a.num_test) == (100, 40, 30)
    assert (a.spec.num_classes, a.spec.in_channels, a.spec.image_size, a.spec.train_size) == (3, 1, 8, 240)
    train, val = set(a.train.epoch_indices(0).tolist()), set(a.val.epoch_indices(0).tolist())
    assert len(train) == 100 and len(val) == 40 and not train & val  # validation is held out of train
    x, y = next(iter(a.train.iterate(0)))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    b = build_data(cfg, seed=3, batch_size=32, eval_batch_size=64, device=torch.device("cpu"))
    assert torch.equal(a.train.epoch_indices(1), b.train.epoch_indices(1))  # the order is a function of (seed, epoch)
    assert not torch.equal(a.train.epoch_indices(0), a.train.epoch_indices(1))
    halves = [torch.cat([x for x, _ in a.train.iterate(0, rank=r, world=2)]) for r in (0, 1)]
    assert sum(h.shape[0] for h in halves) == 100  # sharded like every loader
