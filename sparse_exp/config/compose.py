"""One way to get a composed config: ``compose(overrides)`` is what ``python -m sparse_exp.train
<overrides>`` runs (the CLIs, the analysis code and the tests all use it).

    from sparse_exp.config.compose import compose
    cfg = compose(["sparsifier=granet", "sparsity=0.95"])

:func:`setup` is idempotent and makes the config tree complete: it imports every registered component
(:func:`sparse_exp.registry.load_components`), stores the top-level schema and every component's schema in Hydra's
ConfigStore (``schema/<group>/<name>``) and registers the ``run_name`` resolver of ``conf/config.yaml`` and the
``--help`` page's (:mod:`sparse_exp.config.help`).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Sequence, Union

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import OmegaConf

from sparse_exp import CONF_DIR
from sparse_exp.config.schema import Config
from sparse_exp.registry import load_components

_HYDRA_LOCK = threading.RLock()


#: the longest run-directory name (bytes of UTF-8): NAME_MAX of ext4, XFS, Btrfs, NFS, Lustre and GPFS
MAX_NAME_BYTES = 255
#: between a long name's readable prefix and its hash
HASH_SEPARATOR = "--"
#: hex digits of SHA-1 kept in a long name (48 bits)
HASH_HEX = 12


def run_name(override_dirname: str) -> str:
    """Run-directory name from Hydra's ``override_dirname`` (``default`` for no overrides).

    A name of at most :data:`MAX_NAME_BYTES` bytes is the overrides with ``/`` made ``_`` (so every directory
    that could be created before keeps its name). A longer one is its first bytes, :data:`HASH_SEPARATOR` and the
    first :data:`HASH_HEX` hex digits of the SHA-1 of the full ``override_dirname``, exactly
    :data:`MAX_NAME_BYTES` bytes: the same command maps to the same directory, and ``config.yaml`` inside keeps
    the full overrides (docs/architecture.md, "Run directories").
    """
    name = override_dirname.replace("/", "_") or "default"
    data = name.encode("utf-8")
    if len(data) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha1(override_dirname.encode("utf-8")).hexdigest()[:HASH_HEX]
    keep = MAX_NAME_BYTES - len(HASH_SEPARATOR) - HASH_HEX
    prefix = data[:keep].decode("utf-8", errors="ignore")  # never half a multi-byte character
    return f"{prefix}{HASH_SEPARATOR}{digest}"


def setup() -> None:
    """Register resolvers, components and schemas (idempotent; see module doc)."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("sparse_exp_help"):
        from sparse_exp.config.help import help_text

        OmegaConf.register_new_resolver("sparse_exp_help", help_text)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, registry in load_components().items():
        for name, schema in registry.schemas().items():
            cs.store(group=f"schema/{group}", name=name, node=schema)


def compose(overrides: Sequence[str] = (), *, return_hydra_config: bool = False,
            config_dir: Union[str, Path] = CONF_DIR) -> Any:
    """The config ``python -m sparse_exp.train <overrides>`` would run.

    Args:
        overrides: Hydra overrides, e.g. ``["sparsifier=rigl", "sparsity=0.95"]``.
        return_hydra_config: keep the ``hydra`` node (run-directory names, sweeper params).
        config_dir: the config tree (default: :data:`sparse_exp.CONF_DIR`, the repository's ``conf/``).

    Raises:
        hydra.errors.HydraException / omegaconf.errors.OmegaConfBaseException: the overrides do not
        compose (unknown option or key, wrong type); values are checked by :mod:`sparse_exp.config.validate`.
    """
    setup()
    with _HYDRA_LOCK:  # Hydra's global state holds one initialisation at a time: serialise threads
        backup = get_gh_backup()  # callable inside a running Hydra app too (the sweeper explains its errors)
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
                return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
        finally:
            restore_gh_from_backup(backup)
