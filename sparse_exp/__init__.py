"""sparse_exp: a research framework for sparse neural network training.

Entry point: ``python -m sparse_exp.train`` (see README.md); ``sparse_exp.load(run_dir)`` gives a run's reported model
(docs/artifacts.md); in one's own loop: ``sparse_exp.sparsify`` (docs/api.md).
"""

from pathlib import Path

__version__ = "0.1.0"

#: The config tree of ``python -m sparse_exp.train`` (Hydra's config directory). ``sparse_exp/conf`` is a link to
#: the repository's ``conf/`` in a checkout (source tree or editable install) and a copy, package data, in a wheel
#: (docs/install.md); resolved, so a checkout's runs name ``<repo>/conf`` as before.
CONF_DIR = (Path(__file__).resolve().parent / "conf").resolve()


def __getattr__(name: str):
    """``sparse_exp.load`` (:func:`sparse_exp.run.artifact.load`) and ``sparse_exp.sparsify``
    (:func:`sparse_exp.engine.api.sparsify`), imported on first use so ``import sparse_exp`` stays light (the CLI's
    start-up)."""
    if name == "load":
        from sparse_exp.run.artifact import load

        return load
    if name == "sparsify":
        from sparse_exp.engine.api import sparsify

        return sparsify
    raise AttributeError(f"module 'sparse_exp' has no attribute {name!r}")
