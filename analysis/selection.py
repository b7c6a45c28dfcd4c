"""Which runs a table cell or a figure point counts, and the statistic it shows.

* :func:`method_filters` -- the filters of a method key (``rigl``, ``rigl+sup``, ``rigl+sup/C=4``, ...; rules in
  :mod:`sparse_exp.analysis.tables`); every Sup-tickets key also requires :data:`PAPER_PROTOCOL` (no any-mask
  tweak, the final model reported), so any-mask runs never enter Tables 1-7 or Figures 3-5.
  :func:`select` -- the runs matching them.
* :func:`pick_variant` -- runs of one cell that differ in more than the seed are not averaged: the config
  variant (``cell_id``) with the most seeds, then the most recent, is used.
* :func:`finite_values` / :func:`mean_std` -- a metric's finite values, one per seed; mean ± sample std (ddof=1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from sparse_exp.config.identity import IDENTITY_DEFAULTS

from .labels import fmt_num


def numeric(s: pd.Series) -> pd.Series:
    """A column as floats (anything not a number -> NaN)."""
    return pd.to_numeric(s, errors="coerce").astype(float)


# ---------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class Pred:
    """A filter that is not a plain ``column == value`` (``fn(df)`` -> boolean mask)."""

    name: str
    fn: Callable[[pd.DataFrame], pd.Series]


def _dataset_default(df: pd.DataFrame, key: str) -> Optional[pd.Series]:
    """The data set's Sup-tickets default ``key`` (``cycle_epochs``, ``lr_low``, ``lr_high``) each run was configured
    with, ``superposer.dataset_defaults.<key>`` (runs from before have it as ``dataset.sup_<key>``, which
    :func:`sparse_exp.analysis.collect.make_record` renames); None when no run has it."""
    col = f"cfg.superposer.dataset_defaults.{key}"
    return numeric(df[col]) if col in df.columns else None


def _default_cycle(df: pd.DataFrame) -> pd.Series:
    a, y = "cfg.superposer.cycle_epochs", _dataset_default(df, "cycle_epochs")
    if a not in df.columns or y is None:
        return pd.Series(True, index=df.index)
    x = numeric(df[a])
    return pd.Series(np.isclose(x, y) | y.isna().values, index=df.index)


DEFAULT_CYCLE = Pred("superposer.cycle_epochs=dataset default", _default_cycle)


def _default_lr(end: str) -> Pred:
    """``superposer.lr_<end>`` equal to the data set's default (``superposer.dataset_defaults.lr_<end>``, the paper's
    cycle LR range)."""

    def fn(df: pd.DataFrame) -> pd.Series:
        a, y = f"cfg.superposer.lr_{end}", _dataset_default(df, f"lr_{end}")
        if a not in df.columns or y is None:
            return pd.Series(True, index=df.index)
        x = numeric(df[a])
        return pd.Series(np.isclose(x, y) | x.isna().values | y.isna().values, index=df.index)

    return Pred(f"superposer.lr_{end}=dataset default", fn)


DEFAULT_LR_LOW, DEFAULT_LR_HIGH = _default_lr("low"), _default_lr("high")

#: ticket counts the paper sets explicitly (Sec. 4.1: ImageNet, "4 cheap tickets in the last 8
#: epochs"; sweeps/table3_method/*_sup.yaml); elsewhere the count follows from the phase
PROTOCOL_TICKETS = {"imagenet": 4}


def _default_tickets(df: pd.DataFrame) -> pd.Series:
    col = "cfg.superposer.num_tickets"
    if col not in df.columns:
        return pd.Series(True, index=df.index)
    n = numeric(df[col])
    want = df["dataset"].map(PROTOCOL_TICKETS).astype(float)
    return n.isna() | (n == want)


DEFAULT_TICKETS = Pred("superposer.num_tickets=null (4 on ImageNet)", _default_tickets)


def choice_is(key: str, want: str) -> Pred:
    """``key == want`` for an identifying choice with a default (``tweaks``, ``report``): a missing
    column or value reads as the default (:data:`sparse_exp.config.identity.IDENTITY_DEFAULTS`), as
    :func:`sparse_exp.analysis.collect.make_record` does."""

    def fn(df: pd.DataFrame) -> pd.Series:
        if key not in df.columns:
            return pd.Series(want == IDENTITY_DEFAULTS[key], index=df.index)
        return df[key].where(df[key].notna(), IDENTITY_DEFAULTS[key]).astype(str) == want

    return Pred(f"{key}={want}", fn)


def _paper_protocol(df: pd.DataFrame) -> pd.Series:
    return choice_is("tweaks", "none").fn(df) & choice_is("report", "last").fn(df)


#: the Sup-tickets paper's protocol: no any-mask training tweak (``tweaks=none``) and the final
#: model reported (``report=last``); runs with ``tweaks`` or ``report=best_val`` are left out of
#: its tables and figures (they are in :mod:`sparse_exp.analysis.anymask`'s tables)
PAPER_PROTOCOL = Pred("tweaks=none report=last", _paper_protocol)


def method_filters(method: str) -> Optional[Dict[str, Any]]:
    """Column filters of a method key (``rigl``, ``rigl+sup``, ``rigl+sup/C=4``, ``rigl+sup/lr=fge``,
    ``rigl+sup/peak=0.05``, ``rigl+sup/avg=cima:0.8``, ``rigl+sup/any_tickets``, ``rigl+sup/any``); ``None`` when
    not implemented here. ``<method>+sup`` is the paper's setting: CIA, triangle LR over the data set's cycle LR
    range (``superposer.lr_low`` / ``lr_high``), the data set's cycle length and ticket count."""
    base, _, variant = method.partition("/")
    sup = base.endswith("+sup")
    name = base[: -len("+sup")] if sup else base
    if name == "dense":
        f: Dict[str, Any] = {"sparsifier": "dense"}
    elif name == "erk":
        f = {"sparsifier": "static", "distribution": "erk"}
    elif name in ("set", "rigl", "granet"):
        f = {"sparsifier": name, "distribution": "erk"}
    elif name == "snip":
        f = {"sparsifier": "snip"}
    else:
        return None
    if not sup:
        f.update({"superposer": "none", "protocol": PAPER_PROTOCOL})
        return f
    f.update({"superposer": "sup_tickets", "cfg.superposer.averaging": "cia", "cfg.superposer.lr_schedule":
              "triangle", "tickets": DEFAULT_TICKETS, "cycle": DEFAULT_CYCLE, "lr_low": DEFAULT_LR_LOW,
              "lr_high": DEFAULT_LR_HIGH, "protocol": PAPER_PROTOCOL})
    if variant.startswith("C="):
        del f["cycle"]
        f["cfg.superposer.cycle_epochs"] = float(variant[2:])
    elif variant.startswith("peak="):  # the cycle LR's peak (superposer.lr_high)
        del f["lr_high"]
        f["cfg.superposer.lr_high"] = float(variant[5:])
    elif variant.startswith("lr="):
        f["cfg.superposer.lr_schedule"] = variant[3:]
    elif variant.startswith("avg="):
        avg, _, beta = variant[4:].partition(":")
        f["cfg.superposer.averaging"] = avg
        if beta:
            f["cfg.superposer.beta"] = float(beta)
    elif variant == "any_tickets":  # Figure 4: the ticket count varies
        del f["tickets"]
    elif variant == "any":  # any Sup-tickets setting (which extra groups exist)
        f = {k: v for k, v in f.items() if k in ("sparsifier", "distribution", "superposer", "protocol")}
    elif variant:
        raise ValueError(f"unknown method variant {method!r}")
    return f


def select(df: pd.DataFrame, filters: Dict[str, Any]) -> pd.DataFrame:
    """Rows of ``df`` matching every filter: ``None`` = missing, floats compared with tolerance."""
    mask = pd.Series(True, index=df.index)
    for col, want in filters.items():
        if isinstance(want, Pred):
            mask &= want.fn(df).astype(bool)
            continue
        if col not in df.columns:
            if want is not None:
                mask &= False
            continue
        s = df[col]
        if want is None:
            mask &= s.isna()
        elif isinstance(want, float):
            mask &= pd.Series(np.isclose(numeric(s), want, rtol=0, atol=1e-6), index=df.index)
        else:
            mask &= s == want
    return df[mask]


def matching(runs: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Runs of any of ``methods`` (the implemented ones)."""
    parts = [select(runs, f) for f in (method_filters(m) for m in methods) if f is not None]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts) if parts else runs.iloc[0:0]


def describe_filters(filters: Optional[Dict[str, Any]]) -> str:
    if filters is None:
        return "not implemented in sparse_exp"
    parts = []
    for k, v in filters.items():
        if isinstance(v, Pred):
            parts.append(v.name)
        else:
            parts.append(f"{k.removeprefix('cfg.')}="
                         f"{'null' if v is None else fmt_num(v) if isinstance(v, float) else v}")
    return " ".join(parts)


# ---------------------------------------------------------------------------- the cell statistic
def pick_variant(sub: pd.DataFrame) -> Tuple[pd.DataFrame, int]:
    """The runs of one cell to count, and how many config variants (``cell_id``) the cell holds:
    the variant with the most seeds, then the most recent (then the largest ``cell_id``)."""
    if sub["cell_id"].nunique() <= 1:
        return sub, 1
    groups = sorted(sub.groupby("cell_id"), key=lambda kv: (len(kv[1]), kv[1]["time"].max(), kv[0]))
    return groups[-1][1], len(groups)


def finite_values(sub: pd.DataFrame, metric: str) -> Tuple[pd.Series, np.ndarray]:
    """``metric`` of each run as floats, and which of them are finite (the counted ones)."""
    vals = numeric(sub[metric])
    return vals, np.isfinite(vals.values)


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); NaN where there are too few values."""
    mean = float(np.mean(values)) if len(values) else math.nan
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return mean, std

