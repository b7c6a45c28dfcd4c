"""The user's own callables, named by a dotted path in the config (``model.target``, ``dataset.target``).

Resolved and called through Hydra's public API (``hydra.utils.get_object``, ``hydra.utils.instantiate``), so a
``kwargs`` value may itself be a ``{_target_: ...}`` node. Every failure is a one-line
:class:`~sparse_exp.config.errors.ConfigError` naming the key, the value and what is expected (docs/plugins.md).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, FrozenSet, Optional

from sparse_exp.config.errors import ConfigError


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve_target(key: str, target: Optional[str], example: str) -> Callable[..., Any]:
    """The callable the dotted path ``target`` names (a class or a function, importable from ``sys.path``).

    Args:
        key: the config key, for the message (``model.target``).
        target: ``package.module.name`` (a nested attribute ``module.Class.method`` works too).
        example: an example value for the message (``mypkg.nets.MyNet``).

    Raises:
        ConfigError: ``target`` is unset, cannot be imported, or is not callable.
    """
    if target is None or not str(target).strip():
        raise ConfigError(key, target, f"must name an importable callable as a dotted path, e.g. {key}={example} "
                          "(its package on PYTHONPATH or installed)")
    from hydra.utils import get_object

    try:
        obj = get_object(str(target))
    except Exception as exc:  # noqa: BLE001 -- a failing import of user code is reported in one line
        raise ConfigError(key, target, f"cannot be imported ({_first_line(exc)}); expected a dotted path "
                          f"package.module.name importable here, e.g. {example}") from None
    if not callable(obj):
        raise ConfigError(key, target, f"names a {type(obj).__name__}, which is not callable; expected a class or "
                          f"function, e.g. {example}")
    return obj


def check_kwargs(key: str, kwargs: Any, example: str) -> None:
    """``kwargs`` is null or a mapping of keyword arguments (``model.kwargs={width:64}`` on the command line).

    Raises:
        ConfigError: anything else.
    """
    from omegaconf import DictConfig

    if kwargs is not None and not isinstance(kwargs, (dict, DictConfig)):
        raise ConfigError(key, kwargs, f"must be a mapping of keyword arguments (or null), e.g. {key}={example}")


def parameter_names(fn: Callable[..., Any]) -> FrozenSet[str]:
    """The names of ``fn``'s explicit parameters (a class: its constructor's); empty where Python cannot tell."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def call_target(key: str, target: str, kwargs: Dict[str, Any], kwargs_key: str) -> Any:
    """``target(**kwargs)`` through ``hydra.utils.instantiate`` (nested ``_target_`` nodes are built too; containers
    reach the callable as plain ``dict`` / ``list``).

    Raises:
        ConfigError: the call raised (``kwargs_key``: the key holding the keyword arguments, for the message).
    """
    from hydra.utils import instantiate

    try:
        return instantiate({"_target_": str(target), **kwargs}, _convert_="all")
    except Exception as exc:  # noqa: BLE001 -- whatever user code raises is one line naming the config
        cause = exc.__cause__ or exc
        raise ConfigError(kwargs_key, kwargs, f"calling {key}={target} with them failed ({_first_line(cause)}); "
                          "they must be the keyword arguments it accepts") from None
