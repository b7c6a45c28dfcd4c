"""``sparse_exp.config.hydra_adapter``, the one module that touches Hydra's private API, against Hydra's own
results: the run-directory name Hydra gives a job, the jobs a ``-m`` grid expands to, and the import-order
invariant the sweeper plugin relies on. A Hydra upgrade that changes these fails here first (pyproject.toml
bounds hydra-core to ``>=1.3.2,<1.4``)."""

import subprocess
import sys

import pytest
from conftest import ROOT
from hydra.errors import OverrideParseException

from sparse_exp.config.compose import compose
from sparse_exp.config.hydra_adapter import overrides_dirname, parse_overrides, split_sweep


@pytest.mark.parametrize("overrides", [
    [],
    ["sparsity=0.9", "sparsifier=rigl"],
    ["sparsifier=granet", "sparsity=0.95", "device=cpu", "progress=false"],  # excluded keys leave the name
    ["tweaks=[lrsi,label_smoothing]", "tweaks.label_smoothing.alpha=0.2", "seed=3"],
    ["superposer=sup_tickets", "superposer.cycle_epochs=1.5", "hydra.verbose=true"],  # hydra.* leaves it too
])
def test_the_run_directory_name_is_hydras(overrides):
    cfg = compose(overrides, return_hydra_config=True)
    assert overrides_dirname(overrides, cfg.hydra.job.config.override_dirname) == cfg.hydra.job.override_dirname


def test_a_grid_expands_to_hydras_jobs_in_order():
    jobs = split_sweep(["sparsifier=set,rigl", "sparsity=0.8,0.9", "seed=0"])
    assert jobs == [["sparsifier=set", "sparsity=0.8", "seed=0"], ["sparsifier=set", "sparsity=0.9", "seed=0"],
                    ["sparsifier=rigl", "sparsity=0.8", "seed=0"], ["sparsifier=rigl", "sparsity=0.9", "seed=0"]]
    assert split_sweep(["sparsity=0.8,0.9", "sparsity=0.5"]) == [["sparsity=0.5"]], "a later override wins"


def test_bad_override_syntax_raises_hydras_exception():
    assert [o.key_or_group for o in parse_overrides(["a=1", "+b.c=2"])] == ["a", "b.c"]
    with pytest.raises(OverrideParseException):
        parse_overrides(["sparsity=[0.9"])


def test_importing_the_adapter_imports_no_private_hydra_module():
    code = ("import sys, sparse_exp.config.hydra_adapter as a\n"
            "assert not [m for m in sys.modules if m.startswith('hydra._internal.core_plugins')], 'eager import'\n"
            "from hydra._internal.core_plugins.basic_sweeper import BasicSweeper\n"
            "assert a.BasicSweeper is BasicSweeper\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
