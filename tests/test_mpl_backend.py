"""Importing the analysis package switches no matplotlib backend (issue 24): a user's ``MPLBACKEND`` (or an
interactive session's backend) is left as it was, and the figures still render through matplotlib's object API."""

import json
import os
import subprocess
import sys

from conftest import ROOT

PROBE = r"""
import hashlib, importlib, json, pkgutil, sys
from pathlib import Path
import matplotlib
before = matplotlib.get_backend()
import analysis, sparse_exp.analysis
mods = sorted(m.name for m in pkgutil.iter_modules(analysis.__path__, "analysis.") if m.name != "analysis.__main__")
for name in mods:
    importlib.import_module(name)
import sparse_exp.plot  # noqa: F401 (the learning-curve CLI)
after = matplotlib.get_backend()
from analysis import figures
out = Path(sys.argv[1])
with matplotlib.rc_context():
    matplotlib.rcdefaults()
    matplotlib.rcParams.update(figures.RC)
    paths = figures.figure2(out)
print(json.dumps({"before": before, "after": after, "modules": mods, "pyplot": "matplotlib.pyplot" in sys.modules,
                  "files": {p.name: p.read_bytes()[:4].hex() for p in paths}, "backend_end": matplotlib.get_backend()}))
"""


def test_importing_analysis_keeps_the_users_backend_and_figures_render(tmp_path):
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["before"] == "svg" and got["after"] == "svg" and got["backend_end"] == "svg", got
    assert "analysis.figures" in got["modules"] and "analysis.collect" in got["modules"]
    assert not got["pyplot"], "pyplot imported: the analysis code must use matplotlib.figure.Figure"
    assert got["files"] == {"figure2.png": b"\x89PNG".hex(), "figure2.pdf": b"%PDF".hex()}
