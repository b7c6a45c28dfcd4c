"""The registries: one :class:`Registry` per config group, and :func:`load_components`.

Each option registers its implementation, its structured-config schema and its checks in the file that implements it
(jaxpruner's ``register_algorithm`` pattern), e.g. ``@SPARSIFIERS.register("rigl", schema=DynamicSparsifierConfig,
checks=(check_dynamic,))``. A check ``check(cfg)`` sees the composed config and raises
:class:`~sparse_exp.config.errors.ConfigError` naming key, value and what is allowed; a pre-flight check ``check(plan)``
also sees the :class:`~sparse_exp.engine.context.RunPlan`. :func:`sparse_exp.config.compose.setup` stores the schemas
in Hydra's ConfigStore as ``schema/<group>/<name>``. A group may declare **queries**, questions others ask before
anything is built (e.g. :data:`SUPERPOSERS`' ``ticket_collection_start``), each with a default answer; an option
registers its own (``queries={name: fn}``) and callers ask :meth:`Registry.query`, never the option by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from sparse_exp.config.errors import ConfigError
from sparse_exp.config.schema import (
    DatasetConfig,
    DistributionConfig,
    LoggerConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
)

Check = Callable[[Any], None]

#: every registry, by group name (filled as registries are created)
REGISTRIES: Dict[str, "Registry"] = {}


@dataclass(frozen=True)
class Entry:
    """One registered option.

    Attributes:
        name: the option's config name (``sparsifier=<name>``).
        impl: what builds it (a class or a factory function).
        schema: its structured-config dataclass, or None to share the group's ``default_schema``.
        checks: functions ``check(cfg)`` run by :func:`sparse_exp.config.validate.validate` when it is chosen.
        preflight: functions ``check(plan)`` run by :func:`sparse_exp.config.preflight.preflight` when it is chosen.
        queries: its own answers to the group's queries, by query name (:meth:`Registry.query`).
    """

    name: str
    impl: Any
    schema: Optional[type]
    checks: Tuple[Check, ...]
    preflight: Tuple[Check, ...] = ()
    queries: Mapping[str, Callable[..., Any]] = field(default_factory=dict)


class Registry(Mapping):
    """Options of one config group (``group``), by name.

    Args:
        group: the config group, e.g. ``"sparsifier"``; the chosen name is read from ``cfg.<group>.name``
            (or ``cfg.<group>`` itself for list-valued groups, see ``key``).
        default_schema: schema of options registered without one (e.g. every model shares
            ``ModelConfig``); stored as ``schema/<group>/<group>``.
        key: where the chosen option's name lives, as a function of the composed config (default
            ``cfg[group].name``).
        checks: group-level checks, run (before the option's own) whichever option is chosen.
        queries: the group's queries, name -> default answer (a function; an option that registers no
            answer of its own answers with it).

    Raises:
        ValueError: a second registry for the same group.
    """

    def __init__(self, group: str, default_schema: Optional[type] = None,
                 key: Optional[Callable[[Any], Sequence[str]]] = None, checks: Sequence[Check] = (),
                 queries: Optional[Mapping[str, Callable[..., Any]]] = None) -> None:
        if group in REGISTRIES:
            raise ValueError(f"a registry for config group {group!r} exists already")
        self.group = group
        self.default_schema = default_schema
        self._key = key
        self.group_checks: Tuple[Check, ...] = tuple(checks)
        self.group_preflights: Tuple[Check, ...] = ()
        self.query_defaults: Dict[str, Callable[..., Any]] = dict(queries or {})
        self._entries: Dict[str, Entry] = {}
        REGISTRIES[group] = self

    # -- registering
    def register(self, name: str, *, schema: Optional[type] = None, checks: Sequence[Check] = (),
                 preflight: Sequence[Check] = (), queries: Optional[Mapping[str, Callable[..., Any]]] = None
                 ) -> Callable:
        """Decorator: record the decorated class / function as option ``name`` (returned unchanged).

        Raises:
            ValueError: ``name`` is registered already; a query the group does not declare.
        """

        def deco(impl: Any) -> Any:
            self.add(name, impl, schema=schema, checks=checks, preflight=preflight, queries=queries)
            return impl

        return deco

    def group_check(self, check: Check) -> Check:
        """Decorator: add a group-level check (run whichever option is chosen); returns it unchanged."""
        self.group_checks += (check,)
        return check

    def group_preflight(self, check: Check) -> Check:
        """Decorator: add a group-level pre-flight check ``check(plan)``; returns it unchanged."""
        self.group_preflights += (check,)
        return check

    def add(self, name: str, impl: Any, *, schema: Optional[type] = None, checks: Sequence[Check] = (),
            preflight: Sequence[Check] = (), queries: Optional[Mapping[str, Callable[..., Any]]] = None) -> None:
        """Record ``impl`` as option ``name`` (the non-decorator form of :meth:`register`)."""
        if name in self._entries:
            raise ValueError(f"{self.group}={name!r} is registered twice")
        unknown = sorted(set(queries or {}) - set(self.query_defaults))
        if unknown:
            raise ValueError(f"{self.group}={name!r} answers {unknown}, which the group does not declare "
                             f"(its queries: {sorted(self.query_defaults)})")
        self._entries[name] = Entry(name=name, impl=impl, schema=schema, checks=tuple(checks),
                                    preflight=tuple(preflight), queries=dict(queries or {}))

    # -- reading. A name not registered yet first imports the built-in components, so that a command which
    # never composed a config (``sparse_exp.plot`` rebuilding a run) still finds every option; iterating
    # never does (component packages iterate their own registry at import time).
    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            load_components()
        return self._entries[name].impl

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``.

        Raises:
            ConfigError: ``name`` is not registered (the message lists the allowed names).
        """
        if name not in self._entries:
            load_components()
        if name not in self._entries:
            raise ConfigError(f"{self.group}.name", name, f"must be one of {sorted(self._entries)}")
        return self._entries[name]

    def query(self, name: str, query: str) -> Callable[..., Any]:
        """Option ``name``'s answer to the group's query ``query`` (its own, else the group's default).

        Raises:
            ConfigError: ``name`` is not registered.
            KeyError: the group declares no query ``query``.
        """
        entry = self.entry(name)
        if query not in self.query_defaults:
            raise KeyError(f"{self.group} declares no query {query!r} (its queries: {sorted(self.query_defaults)})")
        return entry.queries.get(query, self.query_defaults[query])

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``impl(*args, **kwargs)`` of option ``name`` (:class:`ConfigError` for an unknown name)."""
        return self.entry(name).impl(*args, **kwargs)

    def schemas(self) -> Dict[str, type]:
        """ConfigStore name -> schema: the group default (named after the group) and every own schema."""
        out: Dict[str, type] = {}
        if self.default_schema is not None:
            out[self.group] = self.default_schema
        out.update({e.name: e.schema for e in self._entries.values() if e.schema is not None})
        return out

    def chosen(self, cfg: Any) -> List[str]:
        """The option names ``cfg`` selects in this group (one for ordinary groups)."""
        if self._key is not None:
            return list(self._key(cfg))
        return [cfg[self.group].name]

    def check(self, cfg: Any) -> None:
        """Refuse an unknown option, then run the chosen options' checks on ``cfg``.

        Raises:
            ConfigError: the first failing check.
        """
        names = self.chosen(cfg)
        for name in names:
            self.entry(name)
        for check in self.group_checks:
            check(cfg)
        for name in names:
            for check in self.entry(name).checks:
                check(cfg)

    def preflight(self, plan: Any) -> None:
        """Run the group's and the chosen options' pre-flight checks on ``plan`` (a
        :class:`sparse_exp.config.preflight.RunPlan`, whose ``cfg`` has passed :meth:`check`)."""
        names = self.chosen(plan.cfg)
        for check in self.group_preflights:
            check(plan)
        for name in names:
            for check in self.entry(name).preflight:
                check(plan)

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, {sorted(self._entries)})"


# One registry per config group.        implementations:
MODELS = Registry("model", default_schema=ModelConfig)  # fn(in_channels, num_classes, image_size) -> Module
DATASETS = Registry("dataset", default_schema=DatasetConfig)  # data.spec.DataSource (.spec: DatasetSpec)
#: query ``nm_pattern(node) -> Optional[Tuple[int, int]]``: the ``(n, m)`` every group of ``m`` weights of each sparse
#: layer keeps (N:M sparsity, :mod:`sparse_exp.sparse.nm`), or None (the default: no group structure).
#: query ``kept_dense(node, shapes) -> List[str]``: the layers of ``shapes`` (name -> shape, the prunable layers not
#: kept dense otherwise) that the distribution itself keeps dense (N:M's ``misfit=dense``); default none. Asked only
#: through :func:`sparse_exp.sparse.masking.kept_dense`.
#: query ``summary(node, state) -> Dict[str, Any]``: keys the distribution adds to ``summary.json`` (default none)
DISTRIBUTIONS = Registry("distribution", default_schema=DistributionConfig,  # fn(shape, power) -> raw score
                         queries={"nm_pattern": lambda node: None, "kept_dense": lambda node, shapes: [],
                                  "summary": lambda node, state: {}})
SPARSIFIERS = Registry("sparsifier")  # sparse.sparsifiers.sparsifier.Sparsifier subclasses
#: query ``ticket_collection_start(node, epochs, steps_per_epoch) -> Optional[int]``: how many steps of the run's
#: own training (main phase) are done when the superposer starts collecting the tickets it averages, in a run of
#: ``epochs`` x ``steps_per_epoch`` steps with ``superposer`` node ``node``; None (the default) for one that
#: collects none. Asked at pre-flight (a tweak that changes the network settles before it); may raise ConfigError.
SUPERPOSERS = Registry("superposer",  # fn(cfg) -> Callback | None
                       queries={"ticket_collection_start": lambda node, epochs, steps_per_epoch: None})
OPTIMIZERS = Registry("optimizer", default_schema=OptimizerConfig)  # fn(cfg, param_groups) -> Optimizer
SCHEDULES = Registry("schedule", default_schema=ScheduleConfig)  # fn(cfg, total_steps) -> (step -> LR factor)
LOGGERS = Registry("logger", default_schema=LoggerConfig)  # fn(cfg, run_dir, config, name) -> logger
#: list-valued group: ``tweaks=[a,b]`` selects several options, each configured under ``tweaks.<name>``.
#: query ``step_varies(node) -> Optional[str]``: why the tweak's train step changes during training (a ramp, a
#: window, a removal: the fast path cannot capture such a step once as a CUDA graph); None (default) if it never does
TWEAKS = Registry("tweaks", key=lambda cfg: list(cfg.tweaks or {}),  # cls(node) -> Callback
                  queries={"step_varies": lambda node: None})

#: the packages whose import registers the built-in options
COMPONENT_PACKAGES = ("sparse_exp.data", "sparse_exp.run.loggers", "sparse_exp.models",
                      "sparse_exp.training.optimizers", "sparse_exp.training.lr_schedules",
                      "sparse_exp.sparse.distributions", "sparse_exp.sparse.sparsifiers", "sparse_exp.superposers",
                      "sparse_exp.tweaks")


def load_components() -> Dict[str, "Registry"]:
    """Import every component package so that each option registers itself; returns :data:`REGISTRIES`.

    Idempotent (Python caches the imports). A new built-in component module is imported by its package's
    ``__init__``; a new package is added to :data:`COMPONENT_PACKAGES`. Then the installed packages' plugins
    (the ``sparse_exp.plugins`` entry points, :mod:`sparse_exp.config.plugins`) register theirs.
    """
    global _LOADING
    if not _LOADING:  # re-entered while a component package is importing: it registers as it goes
        _LOADING = True
        try:
            for name in COMPONENT_PACKAGES:
                importlib.import_module(name)
            from sparse_exp.config.plugins import load_plugins

            load_plugins()
        finally:
            _LOADING = False
    return REGISTRIES


_LOADING = False
