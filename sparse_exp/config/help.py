"""The project's ``--help`` page (``python -m sparse_exp.train --help``), generated from the config tree.

Hydra prints ``hydra.help.template`` for ``--help``; ``conf/hydra/help/sparse_exp.yaml`` sets it to
``${sparse_exp_help:}``, this module's :func:`help_text` (registered as a resolver by
:func:`sparse_exp.config.compose.setup`), so the page lists exactly the options ``conf/`` holds. Internal groups are
hidden: ``schema/*`` (the structured schemas) and the sweeps' private subgroups (``sweep/fig3_averaging``, ...);
``--hydra-help`` still shows Hydra's own page. Options of installed plugins (:mod:`sparse_exp.config.plugins`) are
listed with the built-in ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List

from sparse_exp import CONF_DIR

#: the config groups a user chooses, in the order of ``conf/config.yaml``'s defaults
USER_GROUPS = ("model", "dataset", "sparsifier", "superposer", "distribution", "optimizer", "schedule", "logger",
               "tweaks")
EXAMPLES = (
    ("the default experiment (LeNet-5, Fashion-MNIST, RigL 90 % + Sup-tickets)", "python -m sparse_exp.train"),
    ("GraNet at two sparsities, one run each", "python -m sparse_exp.train sparsifier=granet sparsity=0.9,0.95 -m"),
    ("a paper grid on SLURM", "python -m sparse_exp.train +sweep=table1 -m hydra/launcher=slurm"),
)


def _options(conf: Path, group: str) -> List[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def _with_plugins(group: str) -> List[str]:
    """The group's options in ``conf/`` and in the installed plugins' config directories."""
    from sparse_exp.config.plugins import group_options

    return group_options(group)


def help_text() -> str:
    """The ``--help`` page: what the entrypoint does, the groups and their options, the top-level keys, three
    example commands and where results go. No ``$`` other than ``$$`` (Hydra passes the page through
    ``string.Template``)."""
    from sparse_exp.config.schema import Config

    lines = ["sparse_exp: sparse neural network training (static masks, pruning at init, lottery tickets, SET, "
             "RigL, GraNet), boosted by Sup-tickets and the any-mask training tweaks.",
             "", "python -m sparse_exp.train [GROUP=OPTION] [KEY=VALUE] ... [-m]",
             "Validates the whole config (and, with -m, every cell of the grid) before any work starts, trains, "
             "and writes one directory per run; re-running a command resumes or skips its run.", "",
             "Config groups (GROUP=OPTION; tweaks take a list: tweaks=[ghost_skip,lrsi]):"]
    width = max(len(g) for g in USER_GROUPS)
    for group in USER_GROUPS:
        lines.append(f"  {group:<{width}}  {', '.join(_with_plugins(group))}")
    sweeps = [s for s in _options(CONF_DIR, "sweep")]
    lines.append(f"  {'+sweep':<{width}}  {', '.join(sweeps)}  (the papers' grids: sweeps/README.md)")
    lines += ["", "Top-level keys (KEY=VALUE; a group's keys as GROUP.KEY=VALUE, e.g. sparsifier.delta_t=100):"]
    keys = [f.name + (".*" if dataclasses.is_dataclass(f.default_factory) else "") if f.default_factory
            is not dataclasses.MISSING else f.name for f in dataclasses.fields(Config) if f.name not in USER_GROUPS]
    lines += [f"  {', '.join(keys[i:i + 8])}" for i in range(0, len(keys), 8)]
    lines += ["", "Examples:"]
    for what, cmd in EXAMPLES:
        lines += [f"  {cmd}", f"      {what}"]
    lines += ["", "Results: runs/<overrides>/ (or $$SPARSE_EXP_RUNS/...): config.yaml + git.json, metrics.jsonl (one "
              "row per epoch), checkpoint.pt, summary.json, masks.pt, curves.png. Progress of a grid: "
              "python -m sparse_exp.status runs/<sweep> --sweep <sweep>; tables and figures: make tables.",
              "The composed config of a command: python -m sparse_exp.train <overrides> --cfg job. "
              "Hydra's own options: --hydra-help.", ""]
    return "\n".join(lines)
