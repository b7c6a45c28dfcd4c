"""Running from a source tree, the package not installed (docs/gpu.md "Running from a source tree").

A copy of the repository's files, a fresh interpreter (a ``venv`` with no pip) that sees this environment's
third-party packages through a ``.pth`` file but not its editable install of ``sparse_exp`` (a path in a
``.pth`` file is added to ``sys.path`` without its own ``.pth`` files being read), and ``PYTHONPATH=.`` in the
copy: this is ``pip install --target DIR`` + ``PYTHONPATH=DIR:.`` on an offline node. The test first proves that
``sparse_exp`` and our Hydra plugins do not import there without ``PYTHONPATH``, then runs a one-epoch tiny grid
of one cell (``-m``: Hydra finds our sweeper in ``hydra_plugins/`` from the working directory).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_copy(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files under ``dest`` (links kept as links)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src, dst = ROOT / rel, dest / rel
        if not src.is_symlink() and not src.exists():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def bare_interpreter(where: Path) -> Path:
    """A venv whose only extra path is this environment's site-packages, without their ``.pth`` files."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    py = where / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return py


def test_a_source_tree_runs_without_installing(tmp_path):
    tree = source_copy(tmp_path / "src")
    py = bare_interpreter(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", SPARSE_EXP_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="2")
    probe = ("import importlib.util as u; "
             "print(u.find_spec('sparse_exp'), u.find_spec('hydra_plugins.sparse_exp_sweeper'))")
    out = subprocess.run([py, "-c", "import torch, hydra; " + probe], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["None", "None"], f"the package is importable without PYTHONPATH: {out}"

    env["PYTHONPATH"] = "."
    where = subprocess.run([py, "-c", "import sparse_exp, hydra_plugins.sparse_exp_sweeper as s; "
                                      "print(sparse_exp.__file__); print(s.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).resolve().is_relative_to(tree.resolve()) for p in where), where

    cmd = [py, "-m", "sparse_exp.train", "-m", "epochs=1", "dataset.subset_train=1024", "dataset.val_size=256",
           "dataset.subset_test=512", "sparsifier=static", "superposer=none", "logger=none", "progress=false",
           "device=cpu", "seed=0"]
    res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summaries = list((tmp_path / "runs").rglob("summary.json"))
    assert len(summaries) == 1, summaries
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert 0 <= summary["test/acc"] <= 100


def test_logger_wandb_without_the_package_is_refused_before_training(monkeypatch):
    import importlib.util

    import pytest
    from conftest import compose_cfg

    from sparse_exp.config import preflight
    from sparse_exp.config.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ConfigError, match=r"logger='wandb'.*wandb package is not installed.*logger=none"):
        preflight.preflight(compose_cfg(["logger=wandb"]))
    preflight.preflight(compose_cfg(["logger=none"]))
    preflight.preflight(compose_cfg(["logger=wandb", "logger.mode=disabled"]))
