"""One registry per config group: each option registers its implementation, its structured-config
schema and its config checks side by side, in the file that implements it.

    from sparse_exp.sparse.sparsifiers.registry import SPARSIFIERS

    @SPARSIFIERS.register("rigl", schema=DynamicSparsifierConfig, checks=(check_dynamic,))
    class RigLSparsifier(DynamicSparsifier):
        ...

A :class:`Registry` is a read-only mapping ``name -> implementation`` (``sorted(SPARSIFIERS)``,
``SPARSIFIERS["rigl"]``, ``"rigl" in SPARSIFIERS``). :func:`sparse_exp.compose.setup` stores every
schema in Hydra's ConfigStore as ``schema/<group>/<name>`` (the group YAMLs pull it in with
``- /schema/<group>@_here_: <name>``), and :func:`sparse_exp.validate.validate` runs the checks of the
chosen option of every group. A check is ``check(cfg) -> None`` on the whole composed config and raises
:class:`sparse_exp.errors.ConfigError` naming the key, the value and what is allowed. A *pre-flight*
check, ``check(plan) -> None``, also sees what the run will be (:class:`sparse_exp.preflight.RunPlan`:
steps per epoch, the model's prunable shapes, split sizes), still before any data is loaded; the
pre-flight (:func:`sparse_exp.preflight.preflight`) runs them after the config checks.

Pattern: jaxpruner's ``register_algorithm``; lightning-hydra-template's one config group per concern.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from sparse_exp.errors import ConfigError

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
        checks: functions ``check(cfg)`` run by :func:`sparse_exp.validate.validate` when it is chosen.
        preflight: functions ``check(plan)`` run by :func:`sparse_exp.preflight.preflight` when it is chosen.
    """

    name: str
    impl: Any
    schema: Optional[type]
    checks: Tuple[Check, ...]
    preflight: Tuple[Check, ...] = ()


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

    Raises:
        ValueError: a second registry for the same group.
    """

    def __init__(self, group: str, default_schema: Optional[type] = None,
                 key: Optional[Callable[[Any], Sequence[str]]] = None, checks: Sequence[Check] = ()) -> None:
        if group in REGISTRIES:
            raise ValueError(f"a registry for config group {group!r} exists already")
        self.group = group
        self.default_schema = default_schema
        self._key = key
        self.group_checks: Tuple[Check, ...] = tuple(checks)
        self.group_preflights: Tuple[Check, ...] = ()
        self._entries: Dict[str, Entry] = {}
        REGISTRIES[group] = self

    # -- registering
    def register(self, name: str, *, schema: Optional[type] = None, checks: Sequence[Check] = (),
                 preflight: Sequence[Check] = ()) -> Callable:
        """Decorator: record the decorated class / function as option ``name`` (returned unchanged).

        Raises:
            ValueError: ``name`` is registered already.
        """

        def deco(impl: Any) -> Any:
            self.add(name, impl, schema=schema, checks=checks, preflight=preflight)
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
            preflight: Sequence[Check] = ()) -> None:
        """Record ``impl`` as option ``name`` (the non-decorator form of :meth:`register`)."""
        if name in self._entries:
            raise ValueError(f"{self.group}={name!r} is registered twice")
        self._entries[name] = Entry(name=name, impl=impl, schema=schema, checks=tuple(checks),
                                    preflight=tuple(preflight))

    # -- reading
    def __getitem__(self, name: str) -> Any:
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
            raise ConfigError(f"{self.group}.name", name, f"must be one of {sorted(self._entries)}")
        return self._entries[name]

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
        :class:`sparse_exp.preflight.RunPlan`, whose ``cfg`` has passed :meth:`check`)."""
        names = self.chosen(plan.cfg)
        for check in self.group_preflights:
            check(plan)
        for name in names:
            for check in self.entry(name).preflight:
                check(plan)

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, {sorted(self._entries)})"
