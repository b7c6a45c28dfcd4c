"""Components from installed packages: the ``sparse_exp.plugins`` entry-point group (docs/plugins.md).

A package declares, in its ``pyproject.toml``::

    [project.entry-points."sparse_exp.plugins"]
    mypkg = "mypkg.sparse_exp_plugin"

Importing that module registers its components in :mod:`sparse_exp.registry` exactly as a built-in module does
(``@SPARSIFIERS.register(...)``, ``MODELS.add(...)``, ``DATASETS.add(...)``, with schemas, checks and pre-flight
checks). Its optional ``CONFIG_DIR`` (a directory, ``str`` or ``Path``) holds its YAMLs as
``<group>/<option>.yaml``; ``hydra_plugins/sparse_exp_plugins`` puts every such directory on Hydra's config search
path after ``conf/``, so the options compose, appear in ``--help`` and pass pre-flight like built-ins.

:func:`load_plugins` is called by :func:`sparse_exp.registry.load_components` after the built-in packages; it never
raises: a plugin that cannot be loaded is recorded, and :func:`check_plugins` (the first step of
:func:`sparse_exp.config.validate.validate`) refuses every run with one line naming its entry point.
"""

from __future__ import annotations

import types
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Dict, List

from sparse_exp import CONF_DIR
from sparse_exp.config.errors import UserError

#: the entry-point group an installed package declares its plugin module in
GROUP = "sparse_exp.plugins"

_LOADED: Dict[str, types.ModuleType] = {}  # entry-point name -> its module
_CONFIG_DIRS: List[Path] = []  # each loaded plugin's CONFIG_DIR, in entry-point name order
_ERRORS: List[str] = []  # one line per plugin that could not be loaded
_DONE = False


class PluginError(UserError):
    """An installed plugin cannot be loaded; the message names its entry point (one line, exit code 2)."""


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    source = f" (from {dist.metadata['Name']} {dist.version})" if dist is not None else ""
    return f"plugin entry point {GROUP}: {ep.name} = {ep.value}{source}"


def _load_one(ep: EntryPoint) -> None:
    try:
        module = ep.load()
    except Exception as exc:  # noqa: BLE001 -- any failure of a third-party import is reported, never raised here
        _ERRORS.append(f"{_describe(ep)} cannot be loaded: {type(exc).__name__}: {exc}")
        return
    if not isinstance(module, types.ModuleType):
        _ERRORS.append(f"{_describe(ep)} names {type(module).__name__} {module!r}; it must name a module "
                       "(mypkg.sparse_exp_plugin), whose import registers the components")
        return
    _LOADED[ep.name] = module
    config_dir = getattr(module, "CONFIG_DIR", None)
    if config_dir is None:
        return
    path = Path(config_dir)
    if not path.is_dir():
        _ERRORS.append(f"{_describe(ep)}: its CONFIG_DIR={str(config_dir)!r} is not a directory; it must hold "
                       "the plugin's YAMLs as <group>/<option>.yaml")
        return
    _CONFIG_DIRS.append(path.resolve())


def load_plugins() -> Dict[str, types.ModuleType]:
    """Import every ``sparse_exp.plugins`` entry point once per process (by name order); returns the modules by
    entry-point name. Failures are recorded for :func:`check_plugins`, never raised."""
    global _DONE
    if not _DONE:
        _DONE = True
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            _load_one(ep)
    return dict(_LOADED)


def check_plugins() -> None:
    """Refuse a run while an installed plugin is broken (an import error, a name registered twice, ...).

    Raises:
        PluginError: one line naming the first broken plugin's entry point and what went wrong.
    """
    load_plugins()
    if _ERRORS:
        more = f" ({len(_ERRORS) - 1} more broken plugin(s))" if len(_ERRORS) > 1 else ""
        raise PluginError(f"{_ERRORS[0]}{more}; fix or uninstall that package")


def config_dirs() -> List[Path]:
    """The loaded plugins' config directories (Hydra's search path after ``conf/``); loads the plugins first."""
    from sparse_exp.registry import load_components

    load_components()
    return list(_CONFIG_DIRS)


def group_options(group: str) -> List[str]:
    """The options of config group ``group``: ``conf/<group>/*.yaml`` and every plugin's ``<group>/*.yaml``."""
    names = set()
    for base in (CONF_DIR, *config_dirs()):
        names.update(p.stem for p in (base / group).glob("*.yaml"))
    return sorted(names)
