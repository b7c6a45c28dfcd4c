"""User-facing errors: printed as one line, exit code 2, no traceback."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """An error the user can fix (bad config value, missing data, finished run)."""


class ConfigError(UserError):
    """A config value outside its allowed range.

    The message names the key, the value and what is allowed, e.g.
    ``sparsity=1.5 is not allowed: must be in [0, 1) (fraction of zeros)``.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


def require(cond: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` for ``key=value`` unless ``cond``."""
    if not cond:
        raise ConfigError(key, value, allowed)


def one_of(key: str, value: Any, allowed: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is in ``allowed`` (the message lists them, sorted)."""
    require(value in allowed, key, value, f"must be one of {sorted(allowed)}")
