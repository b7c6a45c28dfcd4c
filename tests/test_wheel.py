"""The package installed from a wheel (docs/install.md): configs, sweeps and the analysis code travel in it.

Builds the wheel from a copy of the repository (``pip wheel --no-build-isolation``: no index needed), installs it
with ``--no-deps --no-index`` into a fresh interpreter that sees this environment's third-party packages but not
its editable install (:func:`test_source_tree.bare_interpreter`), and runs from an empty working directory:
``--help``, a one-epoch one-cell grid of ``+sweep=smoke`` (package-data configs and sweeps, our sweeper plugin),
``sparse_exp.status`` on that grid and ``python -m sparse_exp.analysis`` on its run (the packaged paper numbers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_source_tree import bare_interpreter, source_copy

pytestmark = pytest.mark.slow  # about 40 s on 2 CPU cores


def test_the_wheel_installs_and_runs_from_another_directory(tmp_path):
    tree = source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(tree)],
                   check=True, capture_output=True, text=True)
    wheel, = (tmp_path / "dist").glob("sparse_exp-*.whl")
    py = bare_interpreter(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", SPARSE_EXP_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="2",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    # --ignore-installed: never touch the editable install of this environment, which pip can see
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                   env=env, check=True, capture_output=True, text=True)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> str:
        res = subprocess.run([py, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{args}: " + res.stdout[-2000:] + res.stderr[-3000:]
        return res.stdout

    where = run("-c", "import sparse_exp, hydra_plugins.sparse_exp_sweeper as s; "
                      "print(sparse_exp.__file__, sparse_exp.CONF_DIR, s.__file__)").split()
    site = (tmp_path / "venv").resolve()
    assert all(Path(p).resolve().is_relative_to(site) for p in where), where
    assert "smoke" in run("-m", "sparse_exp.train", "--help")  # the page lists the packaged sweeps

    run("-m", "sparse_exp.train", "+sweep=smoke", "-m", "sparsifier=set", "seed=0", "epochs=1", "device=cpu")
    summaries = list((tmp_path / "runs" / "smoke").rglob("summary.json"))
    assert len(summaries) == 1, summaries
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1

    status = json.loads(run("-m", "sparse_exp.status", "--sweep", "smoke", "sparsifier=set", "seed=0",
                            "epochs=1", "--json"))
    assert status["total"] == 1 and status["counts"]["completed"] == 1, status

    assert "--compare-paper" in run("-m", "sparse_exp.analysis", "--help")
    run("-m", "sparse_exp.analysis", "--runs", str(tmp_path / "runs"), "--out", "results", "--no-figures",
        "--compare-paper")
    assert (work / "results" / "compare_paper.md").is_file() and (work / "results" / "runs.csv").is_file()
