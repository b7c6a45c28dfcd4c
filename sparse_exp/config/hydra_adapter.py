"""The only door to Hydra's private API (``hydra._internal``): run-directory names and sweep expansion.

Hydra names a run directory with ``get_overrides_dirname`` and expands ``-m`` grids with
``BasicSweeper.split_arguments``; neither is public. They are wrapped here so a Hydra upgrade breaks one
module and its test (``tests/test_hydra_adapter.py``). Checked against hydra-core 1.3.8
(``pyproject.toml`` bounds it to ``>=1.3.2,<1.4``).
"""

from __future__ import annotations

from typing import Any, List, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser

__all__ = ["BasicSweeper", "overrides_dirname", "split_sweep", "parse_overrides"]  # noqa: F822 (module __getattr__)

# Invariant: nothing from ``hydra._internal`` is imported when this module is. Hydra's plugin scan re-executes
# ``hydra._internal.core_plugins``; a ``BasicSweeper`` imported before the scan is a different class from the
# one the scan registers, and the sweeper plugin subclassing it then fails in ``super()``.


def __getattr__(name: str) -> Any:
    """``BasicSweeper``, imported on first use (the sweeper plugin subclasses it, during the plugin scan)."""
    if name == "BasicSweeper":
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        return BasicSweeper
    raise AttributeError(name)


def parse_overrides(overrides: Sequence[str]) -> list:
    """Hydra's parsed ``Override`` objects of command-line ``overrides`` (public parser; raises Hydra's
    ``OverrideParseException`` on bad syntax)."""
    return OverridesParser.create().parse_overrides(list(overrides))


def overrides_dirname(overrides: Sequence[str], override_dirname_cfg: Any) -> str:
    """The ``hydra.job.override_dirname`` Hydra gives a job with these ``overrides`` (strings as typed);
    ``hydra.*`` overrides are left out, as Hydra leaves them out of the task's overrides.

    Args:
        override_dirname_cfg: the config's ``hydra.job.config.override_dirname`` node (``exclude_keys``,
            ``item_sep``, ``kv_sep``).
    """
    od = override_dirname_cfg
    from hydra._internal.config_loader_impl import get_overrides_dirname

    task = [o for o in parse_overrides(overrides) if not o.is_hydra_override()]
    return get_overrides_dirname(task, list(od.exclude_keys), od.item_sep, od.kv_sep)


def split_sweep(arguments: Sequence[str]) -> List[List[str]]:
    """The jobs ``-m`` launches for ``arguments`` (sweep and fixed overrides), each a list of override
    strings, in Hydra's order (a later override of a key replaces an earlier sweep list)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(parse_overrides(arguments), None)
    return [list(job) for batch in batches for job in batch]
