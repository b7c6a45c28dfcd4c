"""Hydra's config search path gets every installed sparse_exp plugin's YAMLs (docs/plugins.md).

    python -m sparse_exp.train sparsifier=<a plugin's option>     # its conf/sparsifier/<option>.yaml composes

Hydra discovers search-path plugins only in the ``hydra_plugins`` namespace package, hence this module's place (it
ships with the ``sparse_exp`` distribution). Each plugin's ``CONFIG_DIR`` (:mod:`sparse_exp.config.plugins`) is
appended after the primary ``conf/``, so a built-in option of the same name wins. Hydra's public API only
(``SearchPathPlugin``, ``ConfigSearchPath.append``).
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SparseExpPluginConfigs(SearchPathPlugin):
    """Appends ``file://<CONFIG_DIR>`` of every loaded ``sparse_exp.plugins`` entry point."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from sparse_exp.config.plugins import config_dirs

        for path in config_dirs():
            search_path.append(provider="sparse_exp-plugin", path=f"file://{path}")
