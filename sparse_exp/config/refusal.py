"""One refusal path for the command line: every user error is one line, exit code 2, nothing written.

    error: <key>=<value> is not allowed: <why>; allowed: <...>

:func:`preflight_cli` checks the training command line before Hydra runs (Hydra reports composition errors in
several lines with exit code 1, and creates the run directory before the task function): the overrides
(:func:`check_overrides`: a key given twice, a ``+key`` no schema has), the composition (Hydra's errors
translated by :func:`explain` from the exceptions' fields, their messages only as a fallback), then for a single
run the whole :func:`sparse_exp.config.preflight.preflight`.
With ``-m`` the fixed overrides are checked here and every cell by the sweeper (``hydra_plugins/sparse_exp_sweeper``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from sparse_exp import CONF_DIR
from sparse_exp.config.compose import compose
from sparse_exp.config.errors import UserError
from sparse_exp.config.hydra_adapter import overrides_dirname
from sparse_exp.config.identity import MOVED_KEYS
from sparse_exp.config.plugins import check_plugins, group_options
from sparse_exp.config.preflight import preflight

#: flags that make Hydra print something instead of running (left to Hydra)
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
              "--version", "--resolve", "--package", "-p")

_TYPES = [
    (re.compile(r"could not be converted to Float"), "must be a number"),
    (re.compile(r"could not be converted to Integer"), "must be an integer"),
    (re.compile(r"is not a valid bool"), "must be true or false"),
    (re.compile(r"is not Optional"), "must not be null"),
    (re.compile(r"could not be converted to String"), "must be a string"),
]


def one_line(text: str) -> str:
    """``text`` with its whitespace (newlines included) collapsed: one printable line."""
    return " ".join(str(text).split())


def _is_group(key: str) -> bool:
    """Whether ``key`` names a config group (``sweep``, ``sweep/fig3_averaging``, ``hydra/launcher``, ...)."""
    return key.startswith("hydra/") or (CONF_DIR / key).is_dir()


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse what Hydra would accept silently or explain in many lines.

    Raises:
        UserError: an override that does not parse; a key given twice (Hydra keeps the last one and the
            run directory is named after both); ``+key`` / ``++key`` for a key no config group or schema
            has (Hydra adds it, nothing reads it); ``~key`` (deleting a key the schema has). First, a broken
            installed plugin (:func:`sparse_exp.config.plugins.check_plugins`): its options would be "no such option".
    """
    check_plugins()
    parser = OverridesParser.create()
    for text in overrides:
        try:
            parser.parse_override(text)
        except OverrideParseException as exc:
            raise UserError(_parse_refusal(exc.override or text, exc.message)) from None
        except HydraException as exc:
            raise UserError(_parse_refusal(text, str(exc))) from None
    parsed = parser.parse_overrides(list(overrides))
    seen = {}
    for o in parsed:
        key = o.key_or_group
        if key in seen:
            raise UserError(f"{o.input_line} is not allowed: {key} is given twice ({seen[key]} and {o.input_line}); "
                            "allowed: each key once")
        seen[key] = o.input_line
        if o.is_delete() and not key.startswith("hydra"):
            raise UserError(f"{o.input_line} is not allowed: a key or group of the schema cannot be deleted; "
                            "allowed: key=value, group=option")
        if (o.is_add() or o.is_force_add()) and not _is_group(key):
            raise UserError(f"{o.input_line} is not allowed: '+' adds a key that no schema has, so nothing would "
                            f"read it; allowed: key=value for an existing key, +group=option for a config group "
                            f"(--help lists them)")


def _parse_refusal(override: str, message: str) -> str:
    """The refusal of an override that does not parse (Hydra's ``OverrideParseException``)."""
    why = one_line(str(message).split("See https")[0])
    return (f"{override} is not allowed: it does not parse ({why}); allowed: key=value, group=option, key=[a,b] "
            "for a list, 'quoted' strings")


def _option_list(text: str) -> List[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("\t") and "provider=" not in line]


def _node_keys(overrides: Sequence[str], path: str) -> Tuple[str, Optional[List[str]]]:
    """``(label, keys)`` of the node ``path`` composed with the group overrides of ``overrides``: the label
    names the chosen option (``sparsifier=rigl``) where the node is a group's; keys is None if unknown."""
    groups = [o for o in overrides if "=" in o and _is_group(o.split("=", 1)[0].lstrip("+~"))]
    try:
        node = OmegaConf.select(compose(groups), path) if path else compose(groups)
    except (HydraException, OmegaConfBaseException):
        return path, None
    if not OmegaConf.is_dict(node):
        return path, None
    label = f"{path}={node.name}" if path and "name" in node and isinstance(node.name, str) else path
    return label, sorted(str(k) for k in node.keys())


def _chain(exc: BaseException) -> List[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, else ``__context__``), outermost first."""
    out: List[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _override_for(key: str, overrides: Sequence[str]) -> str:
    """The override (as typed) that sets ``key`` (``+key=``, ``++key=`` and ``~key`` included); ``key`` if none."""
    return next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)


def _type_why(msg: str) -> Optional[str]:
    """What a value of the key must be, from an OmegaConf ``ValidationError.msg`` (its first line)."""
    return next((why for pat, why in _TYPES if pat.search(msg)), None)


def _unknown_key(key: str, overrides: Sequence[str]) -> str:
    """The refusal of an override of ``key``, a key the composed config does not have: its node's keys allowed."""
    override = _override_for(key, overrides)
    parent, _, leaf = key.rpartition(".")
    label, keys = _node_keys(overrides, parent)
    where = f"{label} has no key {leaf!r}" if parent else f"there is no top-level key {leaf!r}"
    if key in MOVED_KEYS:
        moved = MOVED_KEYS[key]
        also = f" (or superposer.{moved.rsplit('.', 1)[1]})" if moved.startswith("superposer.") else ""
        return f"{override} is not allowed: {where}; it moved to {moved}{also}"
    return f"{override} is not allowed: {where}" + (f"; allowed: {', '.join(keys)}" if keys else "")


def _no_such_option(missing_cfg_file: str, options: Optional[Sequence[str]]) -> str:
    """The refusal of ``group=option`` for a config file Hydra did not find; ``options`` from Hydra, else listed
    from ``conf/<group>/`` and the plugins' (Hydra gives none for an option of a list-valued group, ``tweaks=[x]``)."""
    group, _, option = missing_cfg_file.rpartition("/")
    if options is None:
        options = group_options(group) if group else []
    return f"{group}={option} is not allowed: no such option" + (
        f"; allowed: {', '.join(options)}" if options else "")


def _explain_fields(exc: BaseException, overrides: Sequence[str]) -> Optional[str]:
    """One line from the exceptions' own fields (module doc); None where no exception of the chain carries them."""
    for e in _chain(exc):
        if isinstance(e, MissingConfigException) and e.missing_cfg_file:
            return _no_such_option(str(e.missing_cfg_file), None if e.options is None else list(e.options))
        if isinstance(e, OverrideParseException) and e.override:
            return _parse_refusal(str(e.override), str(e.message))
        if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and e.full_key:
            return _unknown_key(str(e.full_key), overrides)
        if isinstance(e, ValidationError) and e.full_key:
            msg = str(e.msg or "").splitlines()[0] if e.msg else ""
            why = _type_why(msg) or one_line(msg) or "has the wrong type"
            override = _override_for(str(e.full_key), overrides)
            return f"{override if '=' in override else f'{override} (set in a config file)'} is not allowed: {why}"
    return None


def explain(exc: BaseException, overrides: Sequence[str]) -> str:
    """One line for a Hydra / OmegaConf composition error, naming the override and what is allowed.

    Reads the exceptions' fields, walking ``__cause__`` / ``__context__``: Hydra's ``MissingConfigException``
    (``missing_cfg_file``, ``options``), ``OverrideParseException`` (``override``, ``message``), OmegaConf's
    ``ConfigKeyError`` / ``ConfigAttributeError`` / ``ValidationError`` (``full_key``, ``msg``). Hydra's message
    text is parsed only where no exception carries them (an ambiguous sweep value without ``-m``, or an exception
    built from a bare message).
    """
    return _explain_fields(exc, overrides) or explain_message(exc, overrides)


def explain_message(exc: BaseException, overrides: Sequence[str]) -> str:
    """The fallback of :func:`explain`: one line from the text of ``exc`` (and of its ``__cause__``)."""
    text = str(exc)
    head = one_line(text.split("Config search path")[0])
    m = re.match(r"Error merging override (.+)", text)
    if m:
        override = m.group(1).strip()
        cause = str(exc.__cause__ or "")
        why = next((msg for pat, msg in _TYPES if pat.search(cause)), one_line(cause.split("full_key")[0]) or head)
        return f"{override} is not allowed: {why}"
    m = re.match(r"Could not override '([^']+)'", text)
    if m:
        return _unknown_key(m.group(1), overrides)
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        return _no_such_option(m.group(1), _option_list(text) or None)
    m = re.search(r"Could not load '([^']+)'", text)  # an unknown option of a list-valued group (tweaks=[x])
    if m:
        return _no_such_option(m.group(1), None)
    m = re.match(r"Ambiguous value for argument '([^']+)'", text)
    if m:
        return (f"{m.group(1)} is not allowed without -m: a comma-separated value is a sweep; allowed: add -m to run "
                "the grid, or [a,b] for a list")
    return head or type(exc).__name__


def run_dir_for(cfg: Any, overrides: Sequence[str]) -> Path:
    """The directory ``python -m sparse_exp.train <overrides>`` runs in (as Hydra names it), from a config
    composed with ``return_hydra_config=True``."""
    od = cfg.hydra.job.config.override_dirname
    name = overrides_dirname(overrides, od)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.override_dirname = name
        return Path(str(cfg.hydra.run.dir))


def refuse(message: str) -> int:
    """Print ``error: <message>`` as one line on stderr; returns the exit code 2."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


def preflight_cli(args: Sequence[str]) -> int:
    """Check a ``python -m sparse_exp.train`` command line before Hydra starts (module doc).

    Returns:
        0 to go on, or 2 after printing the one-line refusal.
    """
    args = list(args)
    if any(a in INFO_FLAGS or a.split("=", 1)[0] in INFO_FLAGS for a in args):
        return 0
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    try:
        check_overrides(overrides)
        if multirun:  # the sweeper checks every cell; here what Hydra composes first (the fixed overrides)
            parsed = OverridesParser.create().parse_overrides(overrides)
            compose([o.input_line for o in parsed if not o.is_sweep_override()], return_hydra_config=True)
            return 0
        cfg = compose(overrides, return_hydra_config=True)
        preflight(cfg, run_dir_for(cfg, overrides))
    except UserError as exc:
        return refuse(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        return refuse(explain(exc, overrides))
    return 0
