"""docs/architecture.md's three worked examples, each one file plus its config, plugged in from outside the
package: a sparsifier (``tests/example_sparsifier.py``), a superposer (``tests/example_superposer.py``) and a
training tweak (``tests/example_tweak.py``). Each is refused by its own check, passes the contract its group's
built-in options pass, and resumes bitwise."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, needs_data

from sparse_exp.config.errors import ConfigError
from sparse_exp.config.preflight import preflight
from sparse_exp.config.validate import validate
from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run


@pytest.fixture(scope="module")
def examples():
    sys.path.insert(0, str(Path(__file__).parent))
    modules = {name: importlib.import_module(f"example_{name}") for name in ("sparsifier", "superposer", "tweak")}
    for module in modules.values():
        module.register_yaml()
    return modules


def same_weights(dir_a: Path, dir_b: Path) -> bool:
    a, b = (RunDir(d).load_checkpoint()["model"] for d in (dir_a, dir_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- a sparsifier
MAG = ["sparsifier=init_magnitude", "sparsity=0.9", "epochs=2", "check_invariants=true"]


def test_example_sparsifier_is_refused_by_its_check_and_its_preflight(examples):
    with pytest.raises(ConfigError, match="sparsifier.min_layer_density"):
        validate(compose_cfg(MAG + ["sparsifier.min_layer_density=1.5"]))
    with pytest.raises(ConfigError, match=r"sparsifier.min_layer_density.*would keep"):
        preflight(compose_cfg(MAG + ["sparsifier.min_layer_density=0.5"]), local=False)


@needs_data
@pytest.mark.slow
def test_example_sparsifier_passes_the_contract_and_keeps_its_topology(examples, tmp_path):
    from test_sparsifier_contract import test_sparsifier_reaches_target_sparsity

    test_sparsifier_reaches_target_sparsity(tmp_path / "contract", "init_magnitude", 0.9)
    summary = run(compose_cfg(MAG), tmp_path / "full")
    assert summary["itop_rate"] == pytest.approx(0.1, abs=1e-3), "a fixed topology explores nothing"
    run(compose_cfg(MAG + ["stop_after_epochs=1"]), tmp_path / "part")
    run(compose_cfg(MAG), tmp_path / "part")
    assert same_weights(tmp_path / "full", tmp_path / "part")


# --------------------------------------------------------------------------- a superposer
TAIL = ["superposer=lr_tail", "superposer.factor=0.25", "superposer.epochs=1", "epochs=3", "schedule=constant",
        "sparsifier=set", "sparsifier.delta_t=4"]


def test_example_superposer_is_refused_with_its_own_check(examples):
    with pytest.raises(ConfigError, match="superposer.epochs"):
        validate(compose_cfg(TAIL + ["superposer.epochs=4"]))


@needs_data
@pytest.mark.slow
def test_example_superposer_plugs_in_and_resumes_bitwise(examples, tmp_path):
    full = run(compose_cfg(TAIL), tmp_path / "full")
    rows = RunDir(tmp_path / "full").metrics()
    # a row's "lr" is the LR after the epoch's last step, i.e. what the next epoch starts with
    base_lr = rows[0]["lr"]
    assert base_lr == pytest.approx(0.1), "epoch 2 runs at the base LR (after the 1-epoch warm-up)"
    assert rows[1]["lr"] == rows[2]["lr"] == pytest.approx(0.25 * base_lr), "the last epoch runs at factor x LR"
    assert full["lr_tail/active_steps"] == 16 and rows[-1]["lr_tail/active_steps"] == 16
    run(compose_cfg(TAIL + ["stop_after_epochs=2"]), tmp_path / "part")
    part = run(compose_cfg(TAIL), tmp_path / "part")
    assert part["lr_tail/active_steps"] == 16
    assert same_weights(tmp_path / "full", tmp_path / "part")
    a, b = (RunDir(tmp_path / d).load_checkpoint() for d in ("full", "part"))
    assert a["callbacks"]["lr_tail"] == b["callbacks"]["lr_tail"] == {"active_steps": 16}


# --------------------------------------------------------------------------- a training tweak
TEMP = ["tweaks=[logit_temperature]", "tweaks.logit_temperature.t=4", "tweaks.logit_temperature.epochs=1",
        "sparsifier=static", "sparsity=0.9", "epochs=2"]


def test_example_tweak_is_refused_with_its_own_check(examples):
    with pytest.raises(ConfigError, match="tweaks.logit_temperature.t"):
        validate(compose_cfg(TEMP + ["tweaks.logit_temperature.t=0"]))
    with pytest.raises(ConfigError, match="tweaks.logit_temperature.epochs"):
        validate(compose_cfg(TEMP + ["tweaks.logit_temperature.epochs=3"]))


@needs_data
@pytest.mark.slow
def test_example_tweak_changes_the_loss_in_its_window_and_resumes_bitwise(examples, tmp_path):
    run(compose_cfg(TEMP), tmp_path / "full")
    rows = RunDir(tmp_path / "full").metrics()
    assert [r["tweaks/logit_temperature/active"] for r in rows] == [True, False]
    run(compose_cfg([o for o in TEMP if not o.startswith("tweaks")]), tmp_path / "plain")
    plain = RunDir(tmp_path / "plain").metrics()
    assert rows[0]["train/loss"] != plain[0]["train/loss"], "the tempered loss trains differently"
    run(compose_cfg(TEMP + ["stop_after_epochs=1"]), tmp_path / "part")
    run(compose_cfg(TEMP), tmp_path / "part")
    assert same_weights(tmp_path / "full", tmp_path / "part")
