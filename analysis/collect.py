"""Collect runs into one pandas DataFrame, from local run directories or a W&B project.

One row per run: its status, the identifying choices (``model``, ``dataset``, ``sparsifier``, ``superposer``,
``distribution``, ``sparsity``, ``seed``, ``epochs``), every scalar summary metric and every resolved config
leaf as ``cfg.<dotted key>``. Run identity = the resolved config minus :data:`VOLATILE_KEYS` (the keys left out
of run-directory names, :func:`sparse_exp.config.identity.result_neutral_keys`); of records with one identity
(requeued or re-run copies) only the latest completed one counts. Records not ``completed`` and superseded
copies are returned apart with the reason (:class:`Collection`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import yaml

# IDENTITY: the identifying choices as written into ``summary.json`` (IDENTITY_GROUPS are read from
# ``<group>.name``); the single source of these and of the result-neutral keys is sparse_exp.config.identity
from sparse_exp.config.identity import IDENTITY, IDENTITY_DEFAULTS, IDENTITY_GROUPS, MOVED_KEYS, result_neutral_keys

COMPLETED = "completed"

#: config keys (and their children) that do not change a run's result: ``conf/config.yaml``'s
#: ``override_dirname.exclude_keys`` + ``hydra`` + ``run_dir``
VOLATILE_KEYS = result_neutral_keys()

#: leading columns of the DataFrame (then metrics, then ``cfg.*``)
LEAD_COLUMNS = ("run_id", "status", *IDENTITY, "source", "path", "name", "time", "cell_id")

#: W&B run states -> our status, used only when the summary carries no ``status``
WANDB_STATES = {"finished": "finished without summary", "running": "running", "crashed": "failed",
                "failed": "failed", "killed": "failed", "preempted": "stopped", "pending": "running"}


@dataclass
class Collection:
    """The result of collecting runs.

    Attributes:
        runs: counted runs: completed, one row per run identity (the latest completed copy).
        excluded: records that are not counted, with a ``reason`` column: incomplete or failed
            runs and superseded duplicates.
        records: every record found (``runs`` and ``excluded`` together).
    """

    runs: pd.DataFrame
    excluded: pd.DataFrame
    records: pd.DataFrame


# ---------------------------------------------------------------------------- helpers
def flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": leaf}``; lists become JSON strings."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v), sort_keys=True, default=str)
        else:
            out[key] = v
    return out


def _is_volatile(key: str, volatile: Sequence[str] = VOLATILE_KEYS) -> bool:
    return any(key == v or key.startswith(v + ".") for v in volatile)


def _canon(v: Any) -> Any:
    """Numbers compared by value (1 == 1.0), everything else by its JSON form."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return str(v)


def identity_hash(items: Mapping[str, Any]) -> str:
    text = json.dumps({k: _canon(v) for k, v in sorted(items.items())}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _num(v: Any) -> Any:
    """W&B may store non-finite numbers as strings."""
    if isinstance(v, str) and v in ("NaN", "nan", "Infinity", "-Infinity", "inf", "-inf"):
        return float(v)
    return v


def make_record(config: Optional[Mapping[str, Any]], summary: Optional[Mapping[str, Any]], *, source: str,
                path: str, name: str, time: float, status: Optional[str] = None) -> Dict[str, Any]:
    """One DataFrame row from a resolved config and a summary (either may be missing)."""
    flat = {MOVED_KEYS.get(k, k): v for k, v in flatten(config or {}).items()}
    summary = dict(summary or {})
    rec: Dict[str, Any] = {"source": source, "path": path, "name": name, "time": float(time)}
    rec["status"] = status or summary.get("status") or "no summary"
    for k in IDENTITY:  # the resolved config first: a W&B summary's "sparsity" may be a logged metric
        v = flat.get(f"{k}.name") if k in IDENTITY_GROUPS else flat.get(k)
        rec[k] = summary.get(k, IDENTITY_DEFAULTS.get(k)) if v is None else v  # no report key: "last"
    if rec["sparsity"] is not None:
        rec["sparsity"] = round(float(rec["sparsity"]), 6)
    for k in ("seed", "epochs"):
        if rec[k] is not None:
            rec[k] = int(rec[k])
    ident = {k: v for k, v in flat.items() if not _is_volatile(k)}
    if not ident:  # no config: the summary's identifying choices are all we know
        ident = {k: rec[k] for k in IDENTITY}
    # a key at its default identifies as the key's absence (runs from before it existed: same run / cell)
    ident = {k: v for k, v in ident.items() if not (k in IDENTITY_DEFAULTS and v == IDENTITY_DEFAULTS[k])}
    rec["run_id"] = identity_hash(ident)
    rec["cell_id"] = identity_hash({k: v for k, v in ident.items() if k != "seed"})
    for k, v in summary.items():
        v = _num(v)
        if k in IDENTITY or k == "status" or k.startswith("_") or k == "run_dir" or not _scalar(v):
            continue
        rec[k] = v
    for k, v in flat.items():
        rec[f"cfg.{k}"] = v
    return rec


def to_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records -> DataFrame with a fixed column order and row order."""
    df = pd.DataFrame(list(records))
    if df.empty:
        return pd.DataFrame(columns=list(LEAD_COLUMNS))
    for c in LEAD_COLUMNS:
        if c not in df.columns:
            df[c] = None
    cfg = sorted(c for c in df.columns if c.startswith("cfg."))
    metrics = sorted(c for c in df.columns if c not in LEAD_COLUMNS and not c.startswith("cfg."))
    df = df[list(LEAD_COLUMNS) + metrics + cfg]
    key = ["model", "dataset", "sparsifier", "superposer", "distribution", "sparsity", "seed", "path"]
    order = df[key].astype(str).apply(tuple, axis=1).argsort(kind="stable")
    return df.iloc[order.values].reset_index(drop=True)


#: the result every table reads; a completed run without a finite one is never counted
RESULT_KEY = "test/acc"


def _finite_result(records: pd.DataFrame) -> pd.Series:
    """Per record: whether its :data:`RESULT_KEY` is a finite number."""
    if RESULT_KEY not in records:
        return pd.Series(False, index=records.index)
    values = pd.to_numeric(records[RESULT_KEY], errors="coerce").astype(float)
    return pd.Series(np.isfinite(values.to_numpy()), index=records.index)


def dedupe(records: pd.DataFrame) -> Collection:
    """Split records into counted runs (latest completed per identity) and excluded ones."""
    if records.empty:
        empty = records.assign(reason=pd.Series(dtype=object))
        return Collection(records.copy(), empty, records)
    done = records[(records["status"] == COMPLETED) & _finite_result(records)]
    latest = done.sort_values(["time", "path"], kind="stable").drop_duplicates("run_id", keep="last")
    kept_path = dict(zip(latest["run_id"], latest["path"]))
    runs = records.loc[sorted(latest.index)].reset_index(drop=True)
    excluded = records.drop(index=latest.index).copy()
    # a run's own "reason" (preempted, diverged) must not collide with the reason it is excluded
    excluded = excluded.rename(columns={"reason": "summary/reason"})
    reasons = []
    finite = _finite_result(excluded)
    for idx, r in excluded.iterrows():
        if r["status"] == COMPLETED and not finite[idx]:
            reasons.append(f"completed, but its {RESULT_KEY} is not a finite number (a diverged run): not counted")
        elif r["status"] == COMPLETED:
            reasons.append("superseded duplicate: same resolved config as a counted run (a requeued copy, or "
                           "the same run in another sweep); the latest completed copy is counted: "
                           f"{kept_path[r['run_id']]}")
        elif r["run_id"] in kept_path:
            reasons.append(f"status {r['status']!r} (a completed copy of the same run is counted: "
                           f"{kept_path[r['run_id']]})")
        else:
            reasons.append(f"status {r['status']!r}: not completed, not counted")
    excluded.insert(0, "reason", reasons)
    return Collection(runs, excluded.reset_index(drop=True), records)


# ---------------------------------------------------------------------------- local run directories
def find_run_dirs(root: str | os.PathLike) -> Iterator[Path]:
    """Run directories under ``root`` (recursively, sorted): a ``summary.json``, or the resolved
    ``config.yaml`` next to ``git.json`` / ``metrics.jsonl``. W&B and hidden folders are skipped;
    a run directory's subfolders are not searched."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "wandb")
        names = set(filenames)
        if "summary.json" in names or ("config.yaml" in names and names & {"git.json", "metrics.jsonl"}):
            dirnames[:] = []
            yield Path(dirpath)


def read_run_dir(path: Path) -> Dict[str, Any]:
    """One record from a run directory (``summary.json`` + ``config.yaml``)."""
    config, summary, status = None, None, None
    cfg_path, sum_path = path / "config.yaml", path / "summary.json"
    if cfg_path.exists():
        try:
            config = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError:
            status = "unreadable config.yaml"
    time = 0.0
    if sum_path.exists():
        time = sum_path.stat().st_mtime
        try:
            summary = json.loads(sum_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            status = "unreadable summary.json"
    elif cfg_path.exists():
        time = cfg_path.stat().st_mtime
    if summary:  # an explicit end time, where the summary has one, wins over the file time
        for k in ("finished_at", "time/finished", "end_time"):
            t = summary.get(k)
            if isinstance(t, (int, float)):
                time = float(t)
                break
            if isinstance(t, str):
                try:
                    time = _parse_time(t)
                    break
                except ValueError:
                    pass
    return make_record(config, summary, source="local", path=str(path), name=path.name, time=time, status=status)


#: summary keys an offline superposition replaces (the ultimate ticket's); the rest (the individual model's
#: ``last/*``, each cheap ticket's ``tickets/<i>/*``, diversity) is the same run's
OFFLINE_KEYS = ("test/acc", "test/nll", "test/ece", "val/acc", "val/nll", "val/ece", "sparsity/global", "tickets/count")
#: the variant fields of ``superposed/<variant>.json`` (:class:`sparse_exp.superposers.tickets.Variant`)
VARIANT_FIELDS = ("averaging", "beta", "reprune", "count_normal_phase_ticket", "prune_running_average", "bn")


def read_offline_records(path: Path) -> List[Dict[str, Any]]:
    """One record per offline superposition of a completed run (``<run>/superposed/<variant>.json``, written by
    ``python -m sparse_exp.superpose`` or ``superposer.offline``): the run's config with the variant's
    ``superposer.*`` values, the run's summary with the variant's ultimate-ticket metrics, and
    ``superposed/offline = 1`` (tables and figures mark such cells). The same run trained with that variant has
    the same identity (saving tickets changes no result), so the two count once."""
    files = sorted((path / "superposed").glob("*.json"))
    if not files or not (path / "summary.json").exists() or not (path / "config.yaml").exists():
        return []
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        summary = json.loads((path / "summary.json").read_text())
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    if summary.get("status") != COMPLETED:
        return []
    out = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        own = config.get("superposer", {})
        if all(own.get(k) == doc.get(k) for k in VARIANT_FIELDS):
            continue  # the run's own variant: the run itself is the record
        cfg = copy.deepcopy(config)
        cfg.setdefault("superposer", {}).update({k: doc[k] for k in VARIANT_FIELDS if k in doc})
        summ = {k: v for k, v in summary.items() if not k.startswith(("superpose/", "final/"))}
        summ.update({k: doc[k] for k in OFFLINE_KEYS if k in doc})
        summ["superposed/offline"] = 1
        out.append(make_record(cfg, summ, source="offline", path=str(f), name=f"{path.name}#{f.stem}",
                               time=f.stat().st_mtime))
    return out


def collect_local(roots: Sequence[str | os.PathLike]) -> Collection:
    """All run directories under ``roots``.

    Raises:
        FileNotFoundError: a root does not exist.
    """
    records, seen = [], set()
    for root in roots:
        if not Path(root).exists():
            raise FileNotFoundError(f"runs directory {str(root)!r} does not exist")
        for p in find_run_dirs(root):
            if p.resolve() not in seen:  # overlapping roots list a directory once
                seen.add(p.resolve())
                records.append(read_run_dir(p))
                records.extend(read_offline_records(p))
    return dedupe(to_frame(records))


# ---------------------------------------------------------------------------- W&B
def _parse_time(text: str) -> float:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def _unwrap_config(d: Mapping[str, Any]) -> Dict[str, Any]:
    """W&B config as stored: drop ``_wandb``-style keys, unwrap ``{"value": v, "desc": ...}``."""
    out = {}
    for k, v in d.items():
        if str(k).startswith("_"):
            continue
        if isinstance(v, Mapping) and "value" in v and set(v) <= {"value", "desc"}:
            v = v["value"]
        out[k] = _unwrap_config(v) if isinstance(v, Mapping) else v
    return out


def _summary_dict(summary: Any) -> Dict[str, Any]:
    if summary is None:
        return {}
    if hasattr(summary, "items"):
        return {k: v for k, v in summary.items()}
    return dict(summary)


def wandb_record(run: Any, project: str) -> Dict[str, Any]:
    """One record from a ``wandb.apis.public.Run`` (``.summary``, ``.config``, ``.state``, ...)."""
    summary = _summary_dict(run.summary)
    config = _unwrap_config(dict(run.config or {}))
    status = summary.get("status")
    if not status:
        status = WANDB_STATES.get(getattr(run, "state", None), f"W&B state {getattr(run, 'state', None)!r}")
    time = summary.get("_timestamp")
    if not isinstance(time, (int, float)) or isinstance(time, bool) or not math.isfinite(time):
        created = getattr(run, "created_at", None)
        time = _parse_time(created) if isinstance(created, str) else 0.0
    return make_record(config, summary, source="wandb", path=f"wandb:{project}/{run.id}",
                       name=str(getattr(run, "name", run.id)), time=float(time), status=status)


def collect_wandb(project: str, filters: Optional[Dict[str, Any]] = None, api: Any = None) -> Collection:
    """All runs of the W&B project ``ENTITY/PROJECT`` (``wandb.Api().runs(project, filters=...)``)."""
    if api is None:
        import wandb

        api = wandb.Api()
    records = [wandb_record(r, project) for r in api.runs(project, filters=filters)]
    return dedupe(to_frame(records))


def collect(source: str = "local", runs: Sequence[str] = ("runs",), project: Optional[str] = None,
            filters: Optional[Dict[str, Any]] = None) -> Collection:
    """Runs from ``source`` (``local``: directories ``runs``; ``wandb``: ``project``)."""
    if source == "local":
        return collect_local(runs)
    if source == "wandb":
        if not project:
            raise ValueError("--source wandb needs --project ENTITY/PROJECT")
        return collect_wandb(project, filters)
    raise ValueError(f"source {source!r} is not known; allowed: ['local', 'wandb']")
