"""Tables 1-7 of the Sup-tickets paper (Yin et al., UAI 2022), laid out as in the paper.

How runs map to cells
---------------------
A cell is (method, dataset, model, sparsity, metric); its value is the mean ± sample standard
deviation (ddof=1) over the seeds of the counted (completed, deduplicated) runs that match.

* Methods (rows): ``dense`` = ``sparsifier=dense`` (sparsity 0); ``erk`` = ``sparsifier=static
  distribution=erk``; ``set`` / ``rigl`` / ``granet`` = that sparsifier with ``distribution=erk``;
  ``snip`` = ``sparsifier=snip``; all with ``superposer=none``. ``<method>+sup`` is the same with
  ``superposer=sup_tickets`` at the paper's default setting: CIA averaging, the triangle LR,
  ``num_tickets`` unset (4 on ImageNet, as the paper and ``conf/sweep/table3_method`` set it) and
  the data set's default cycle length (``superposer.cycle_epochs == dataset.sup_cycle_epochs``). Table 5 varies the cycle length (``rigl+sup/C=<epochs>``), Table 7
  the LR schedule (``rigl+sup/lr=<fge|swa|triangle>``). Small-Dense, DSR, SNFS, TreeNet,
  BatchEnsemble and the dense ensemble are not implemented here: their rows are shown (marked †)
  and never counted as missing.
* Columns keep the paper's data sets, models and sparsity levels (95/90/80 %; 80/90 % for
  ImageNet; 90 % for Table 6, whose sparsity the paper does not state). Runs on a data set the paper does not use (e.g. Fashion-MNIST smoke grids) land in
  the same layout: extra column groups (Tables 1, 2) or row blocks (Tables 3-7) per (data set,
  model) present, at the paper's sparsity levels plus any level present. Cells of these extra
  groups are reported apart from the paper's cells.
* Runs in one cell that differ in anything but the seed (e.g. ``epochs``) are not averaged
  together: the variant with the most seeds (then the most recent) is used and the cell is
  reported as ambiguous, naming the config keys that differ.
* Bold: the best mean (at the printed precision) of each method pair (X vs. X+Sup-tickets) in a
  column -- the paper's "in each setting" -- or of a block (Tables 5-7); Table 4 bolds the
  GraNet+Sup-tickets cells above the dense network. "(n=k)" follows a cell with fewer than the
  paper's 3 seeds; "–" is a missing cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

PAPER_DATASETS = ("cifar10", "cifar100", "imagenet")
PAPER_SPARSITIES = (0.95, 0.9, 0.8)
IMAGENET_SPARSITIES = (0.8, 0.9)
PAPER_CYCLES = (2.0, 4.0, 8.0, 12.0)
#: Table 3 rows the paper quotes from Evci et al. (2020) rather than runs itself: optional here
QUOTED_TABLE3 = ("dense", "erk", "snip", "set")
#: Table 6: the paper does not state the sparsity; conf/sweep/table6.yaml runs 90 %
TABLE6_SPARSITIES = (0.9,)
LR_SCHEDULES = ("fge", "swa", "triangle")
PAPER_SEEDS = 3

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet",
                  "fashion_mnist": "Fashion-MNIST", "tiny_imagenet": "Tiny-ImageNet"}
MODEL_LABELS = {"vgg16": "VGG-16", "resnet50": "ResNet-50", "resnet50_imagenet": "ResNet-50",
                "wrn28_10": "WRN28-10", "lenet5": "LeNet-5", "lenet_300_100": "LeNet-300-100",
                "resnet18": "ResNet-18", "resnet32": "ResNet-32", "mobilenet_v2": "MobileNetV2"}
BASE_LABELS = {"dense": "Dense", "erk": "ERK [Evci et al., 2020]", "snip": "SNIP [Lee et al., 2018]",
               "set": "SET [Mocanu et al., 2018]", "rigl": "RigL [Evci et al., 2020]",
               "granet": "GraNet [Liu et al., 2021b]", "small_dense": "Small-Dense",
               "dsr": "DSR [Mostafa and Wang, 2019]", "snfs": "SNFS [Dettmers and Zettlemoyer, 2019]",
               "treenet": "TreeNet [Lee et al., 2015]", "batchensemble": "BatchEnsemble [Wen et al., 2020]",
               "dense_ensemble": "Traditional Dense Ensemble"}
SHORT = {"erk": "ERK", "snip": "SNIP", "set": "SET", "rigl": "RigL", "granet": "GraNet"}
NOT_IMPLEMENTED = ("small_dense", "dsr", "snfs", "treenet", "batchensemble", "dense_ensemble")
METRIC_LABELS = {"test/acc": "Top-1", "flops/train": "FLOPs (Train)", "flops/test": "FLOPs (Test)",
                 "diversity/disagreement": "d_dis", "diversity/kl": "d_KL"}


def ds_label(ds: str) -> str:
    return DATASET_LABELS.get(ds, ds)


def model_label(m: str) -> str:
    return MODEL_LABELS.get(m, m)


def pct(s: float) -> str:
    return f"{100 * s:g}%"


def fmt_num(x: float) -> str:
    return f"{x:g}"


# ---------------------------------------------------------------------------- selecting runs
@dataclass(frozen=True)
class Pred:
    """A filter that is not a plain ``column == value`` (``fn(df)`` -> boolean mask)."""

    name: str
    fn: Callable[[pd.DataFrame], pd.Series]


def _default_cycle(df: pd.DataFrame) -> pd.Series:
    a, b = "cfg.superposer.cycle_epochs", "cfg.dataset.sup_cycle_epochs"
    if a not in df.columns or b not in df.columns:
        return pd.Series(True, index=df.index)
    x = pd.to_numeric(df[a], errors="coerce").astype(float)
    y = pd.to_numeric(df[b], errors="coerce").astype(float)
    return pd.Series(np.isclose(x, y) | y.isna().values, index=df.index)


DEFAULT_CYCLE = Pred("superposer.cycle_epochs=dataset default", _default_cycle)

#: ticket counts the paper sets explicitly (Sec. 4.1: ImageNet, "4 cheap tickets in the last 8
#: epochs"; conf/sweep/table3_method/*_sup.yaml); elsewhere the count follows from the phase
PROTOCOL_TICKETS = {"imagenet": 4}


def _default_tickets(df: pd.DataFrame) -> pd.Series:
    col = "cfg.superposer.num_tickets"
    if col not in df.columns:
        return pd.Series(True, index=df.index)
    n = pd.to_numeric(df[col], errors="coerce").astype(float)
    want = df["dataset"].map(PROTOCOL_TICKETS).astype(float)
    return n.isna() | (n == want)


DEFAULT_TICKETS = Pred("superposer.num_tickets=null (4 on ImageNet)", _default_tickets)


def method_filters(method: str) -> Optional[Dict[str, Any]]:
    """Column filters of a method key (``rigl``, ``rigl+sup``, ``rigl+sup/C=4``, ``rigl+sup/lr=fge``,
    ``rigl+sup/avg=cima:0.8``, ``rigl+sup/any_tickets``, ``rigl+sup/any``); ``None`` when not implemented here."""
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
        f["superposer"] = "none"
        return f
    f.update({"superposer": "sup_tickets", "cfg.superposer.averaging": "cia",
              "cfg.superposer.lr_schedule": "triangle", "tickets": DEFAULT_TICKETS, "cycle": DEFAULT_CYCLE})
    if variant.startswith("C="):
        del f["cycle"]
        f["cfg.superposer.cycle_epochs"] = float(variant[2:])
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
        f = {k: v for k, v in f.items() if k in ("sparsifier", "distribution", "superposer")}
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
            x = pd.to_numeric(s, errors="coerce").astype(float)
            mask &= pd.Series(np.isclose(x, want, rtol=0, atol=1e-6), index=df.index)
        else:
            mask &= s == want
    return df[mask]


def describe_filters(filters: Optional[Dict[str, Any]]) -> str:
    if filters is None:
        return "not implemented in sparse_exp"
    parts = []
    for k, v in filters.items():
        if isinstance(v, Pred):
            parts.append(v.name)
        else:
            parts.append(f"{k.removeprefix('cfg.')}={'null' if v is None else fmt_num(v) if isinstance(v, float) else v}")
    return " ".join(parts)


# ---------------------------------------------------------------------------- table model
@dataclass
class CellSpec:
    """One value cell: which runs (``filters``) and which summary ``metric``.

    ``(table, method, dataset, model, sparsity, metric)`` is the cell's key, shared with
    ``paper_numbers.csv``. ``paper`` marks the cells of the paper's own layout (they decide
    whether a table is complete); ``where`` names the column for messages."""

    table: int
    method: str
    dataset: str
    model: str
    sparsity: float
    metric: str
    kind: str = "acc"  # acc | flops | div
    paper: bool = True
    where: str = ""
    filters: Optional[Dict[str, Any]] = None
    optional: bool = False  # filled when runs exist, never reported missing (rows the paper quotes)

    def __post_init__(self) -> None:
        if self.filters is None:
            f = method_filters(self.method)
            if f is not None:
                f.update({"dataset": self.dataset, "model": self.model, "sparsity": float(self.sparsity)})
            self.filters = f

    @property
    def implemented(self) -> bool:
        return self.filters is not None

    @property
    def required(self) -> bool:
        return self.implemented and not self.optional

    @property
    def key(self) -> Tuple[int, str, str, str, float, str]:
        return (self.table, self.method, self.dataset, self.model, round(float(self.sparsity), 6), self.metric)


@dataclass
class Row:
    key: str
    labels: List[str]
    cells: List[Any]  # CellSpec, or literal text ("": not applicable, where the paper prints "-")
    bold_group: Optional[str] = None
    name: Optional[str] = None  # for messages, where the labels alone are ambiguous


@dataclass
class Block:
    title: Optional[str]
    rows: List[Row]


@dataclass
class TableSpec:
    number: int
    caption: str
    label_headers: List[str]
    header_rows: List[Tuple[List[str], List[Tuple[str, int]]]]
    blocks: List[Block]
    bold: str = "pairs"  # pairs | vs_dense
    notes: List[str] = field(default_factory=list)

    @property
    def ncols(self) -> int:
        return sum(span for _, span in self.header_rows[0][1])


@dataclass
class CellValue:
    """A cell's counted values (finite values of the metric, one per seed)."""

    spec: CellSpec
    values: List[float] = field(default_factory=list)
    paths: List[str] = field(default_factory=list)
    note: str = ""
    bold: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else math.nan

    @property
    def status(self) -> str:
        if not self.spec.implemented:
            return "not implemented"
        return "ok" if self.values else "missing"

    @property
    def digits(self) -> int:
        return 3 if self.spec.kind == "div" else 2

    def rounded(self) -> float:
        return round(self.mean, self.digits)

    def _core(self) -> Tuple[str, str]:
        d = self.digits
        if self.spec.kind == "flops":
            return f"{self.mean:.{d}f}×", rf"{self.mean:.{d}f}\times"
        if self.n > 1:
            return f"{self.mean:.{d}f} ± {self.std:.{d}f}", rf"{self.mean:.{d}f}\pm{self.std:.{d}f}"
        return f"{self.mean:.{d}f}", f"{self.mean:.{d}f}"

    def markdown(self) -> str:
        if not self.values:
            return "–"
        text = self._core()[0]
        if self.bold:
            text = f"**{text}**"
        if self.n < PAPER_SEEDS:
            text += f" (n={self.n})"
        return text

    def latex(self) -> str:
        if not self.values:
            return "--"
        core = self._core()[1]
        text = rf"$\mathbf{{{core}}}$" if self.bold else f"${core}$"
        if self.n < PAPER_SEEDS:
            text += rf"\,{{\scriptsize(n={self.n})}}"
        return text


def evaluate_cell(runs: pd.DataFrame, spec: CellSpec) -> CellValue:
    """The counted runs of one cell; several config variants -> the one with the most seeds."""
    cell = CellValue(spec)
    if not spec.implemented or runs.empty:
        return cell
    sub = select(runs, spec.filters)
    if sub.empty:
        return cell
    if sub["cell_id"].nunique() > 1:
        groups = sorted(sub.groupby("cell_id"), key=lambda kv: (len(kv[1]), kv[1]["time"].max(), kv[0]))
        chosen = groups[-1][1]
        cfg_cols = [c for c in sub.columns if c.startswith("cfg.") or c == "epochs"]
        differ = [c.removeprefix("cfg.") for c in cfg_cols
                  if c != "cfg.seed" and sub[c].astype(str).nunique() > 1]
        cell.note = (f"{len(groups)} config variants in one cell (differ in: {', '.join(differ) or '?'}); "
                     f"counted the one with the most seeds ({len(chosen)})")
        sub = chosen
    if spec.metric not in sub.columns:
        cell.note = (cell.note + "; " if cell.note else "") + f"metric {spec.metric!r} not in the summaries"
        return cell
    vals = pd.to_numeric(sub[spec.metric], errors="coerce").astype(float)
    ok = np.isfinite(vals.values)
    if not ok.all():
        cell.note = (cell.note + "; " if cell.note else "") + f"{int((~ok).sum())} run(s) with a non-finite {spec.metric}"
    cell.values = [float(v) for v in vals[ok]]
    cell.paths = [str(p) for p in sub["path"][ok]]
    return cell


# ---------------------------------------------------------------------------- table builders
def _matching(runs: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    parts = [select(runs, f) for f in (method_filters(m) for m in methods) if f is not None]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts) if parts else runs.iloc[0:0]


def extra_groups(runs: pd.DataFrame, methods: Sequence[str]) -> List[Tuple[str, str]]:
    """(dataset, model) pairs outside the paper's data sets with a run of one of ``methods``."""
    if runs.empty:
        return []
    m = _matching(runs, methods)
    m = m[~m["dataset"].isin(PAPER_DATASETS)]
    return sorted({(str(d), str(k)) for d, k in zip(m["dataset"], m["model"])})


def group_levels(runs: pd.DataFrame, methods: Sequence[str], ds: str, model: str, paper: bool,
                 paper_levels: Sequence[float] = PAPER_SPARSITIES) -> List[float]:
    """Sparsity levels of a column group / block: the paper's, plus those present for extras."""
    levels = set(paper_levels)
    if not paper and not runs.empty:
        m = _matching(runs, methods)
        m = m[(m["dataset"] == ds) & (m["model"] == model)]
        levels |= {round(float(s), 6) for s in m["sparsity"] if s is not None and float(s) > 0}
    return sorted(levels, reverse=True)


def _group_label(ds: str, model: str, paper: bool) -> str:
    return ds_label(ds) if paper else f"{ds_label(ds)} ({model_label(model)})"


def _method_label(method: str) -> str:
    base, _, variant = method.partition("/")
    if base.endswith("+sup"):
        return f"{SHORT[base[:-4]]}+Sup-tickets (ours)"
    label = BASE_LABELS[base]
    return label + (" †" if base in NOT_IMPLEMENTED else "")


def method_table(number: int, runs: pd.DataFrame, model: str, bases: Sequence[str], caption: str) -> TableSpec:
    """Tables 1 and 2: rows = dense + (X, X+Sup-tickets) pairs; columns = dataset × sparsity."""
    methods = ["dense"] + [m for b in bases for m in (b, b + "+sup")]
    groups = [(ds, model, True) for ds in ("cifar10", "cifar100")]
    groups += [(ds, m, False) for ds, m in extra_groups(runs, methods)]
    cols = [(g, s) for g in groups for s in group_levels(runs, methods, g[0], g[1], g[2])]
    header = [(["Dataset"], [(_group_label(ds, m, p), sum(1 for (gg, _) in cols if gg == (ds, m, p)))
                             for ds, m, p in groups]),
              (["Sparsity"], [(pct(s), 1) for _, s in cols])]

    def where(g, s):
        return f"{_group_label(g[0], g[1], g[2])} {pct(s)}"

    dense_cells: List[Any] = []
    for i, (g, s) in enumerate(cols):
        first = i == 0 or cols[i - 1][0] != g
        dense_cells.append(CellSpec(number, "dense", g[0], g[1], 0.0, "test/acc", paper=g[2],
                                    where=f"{_group_label(g[0], g[1], g[2])} dense") if first else "")
    blocks = [Block(None, [Row("dense", [f"{model_label(model)} (Dense)"], dense_cells)])]
    for b in bases:
        rows = []
        for m in (b, b + "+sup"):
            cells = [CellSpec(number, m, g[0], g[1], s, "test/acc", paper=g[2] and s in PAPER_SPARSITIES,
                              where=where(g, s)) for g, s in cols]
            rows.append(Row(m, [_method_label(m)], cells, bold_group=b))
        blocks.append(Block(None, rows))
    return TableSpec(number, caption, ["Dataset"], header, blocks)


def table1(runs: pd.DataFrame) -> TableSpec:
    return method_table(1, runs, "vgg16", ("set", "rigl", "granet"),
                        "Test accuracy (%) of sparse VGG-16 on CIFAR-10/100.")


def table2(runs: pd.DataFrame) -> TableSpec:
    return method_table(2, runs, "resnet50", ("snip", "erk", "set", "rigl", "granet"),
                        "Test accuracy (%) of sparse ResNet-50 on CIFAR-10/100.")


def table3(runs: pd.DataFrame) -> TableSpec:
    """ImageNet: rows = methods; columns = sparsity × (Top-1, train FLOPs, test FLOPs)."""
    methods = ["dense", "erk", "small_dense", "snip", "set", "dsr", "snfs", "rigl", "rigl+sup", "granet",
               "granet+sup"]
    impl = [m for m in methods if method_filters(m) is not None]
    groups = [("imagenet", "resnet50_imagenet", True)] + [(d, m, False) for d, m in extra_groups(runs, impl)]
    glevels = {g: group_levels(runs, impl, g[0], g[1], g[2], IMAGENET_SPARSITIES) for g in groups}
    levels = sorted({s for v in glevels.values() for s in v})
    metrics = ("test/acc", "flops/train", "flops/test")
    header = [(["Method"], [(f"{pct(s)} sparsity", 3) for s in levels]),
              ([""], [(METRIC_LABELS[k], 1) for _ in levels for k in metrics])]
    blocks = []
    for g in groups:
        ds, model, paper = g
        rows = []
        for m in methods:
            cells: List[Any] = []
            for s in levels:
                for k in metrics:
                    if s not in glevels[g]:
                        cells.append("")
                        continue
                    cells.append(CellSpec(3, m, ds, model, 0.0 if m == "dense" else s, k,
                                          kind="acc" if k == "test/acc" else "flops", paper=paper,
                                          where=f"{_group_label(ds, model, paper)} {pct(s)} {METRIC_LABELS[k]}",
                                          optional=m in QUOTED_TABLE3))
            label = f"{model_label(model)} (Dense)" if m == "dense" else (
                "Static sparse training (ERK)" if m == "erk" else _method_label(m))
            if m in QUOTED_TABLE3:
                label += " ‡"
            bold = m.removesuffix("+sup") if m.removesuffix("+sup") in ("rigl", "granet") else None
            rows.append(Row(m, [label], cells, bold_group=bold))
        blocks.append(Block(f"{model_label(model)} on {ds_label(ds)}", rows))
    return TableSpec(3, "Test accuracy (%) of sparse ResNet-50 on ImageNet; training and inference FLOPs "
                        "normalised by the dense model's.", ["Method"], header, blocks,
                     notes=["† not implemented in sparse_exp (the paper's numbers are in paper_numbers.csv). "
                            "‡ baselines the paper quotes from Evci et al. (2020): filled when such runs exist, "
                            "not required for completeness (conf/sweep/table3.yaml runs RigL and GraNet ± "
                            "Sup-tickets)."])


def table4(runs: pd.DataFrame) -> TableSpec:
    """GraNet+Sup-tickets vs. the dense network; rows = (dataset, network)."""
    methods = ["dense", "granet+sup"]
    paper_rows = [(ds, m, True) for ds in ("cifar10", "cifar100") for m in ("vgg16", "resnet50", "wrn28_10")]
    extra = [(d, m, False) for d, m in extra_groups(runs, methods)]
    levels = sorted(set(PAPER_SPARSITIES).union(*[group_levels(runs, methods, d, m, False) for d, m, _ in extra]),
                    reverse=True)
    header = [(["Dataset", "Network"], [("Dense", 1), ("GraNet+Sup-tickets", len(levels))]),
              (["", ""], [("", 1)] + [(f"{pct(s)} sparsity", 1) for s in levels])]
    blocks: List[Block] = []
    for ds in dict.fromkeys(d for d, _, _ in paper_rows + extra):
        rows = []
        for i, (d, m, paper) in enumerate(r for r in paper_rows + extra if r[0] == ds):
            levs = levels if not paper else PAPER_SPARSITIES
            cells: List[Any] = [CellSpec(4, "dense", d, m, 0.0, "test/acc", paper=paper,
                                         where=f"{ds_label(d)} {model_label(m)} dense")]
            cells += [CellSpec(4, "granet+sup", d, m, s, "test/acc", paper=paper,
                               where=f"{ds_label(d)} {model_label(m)} {pct(s)}") if s in levs else ""
                      for s in levels]
            rows.append(Row(f"{d}/{m}", [ds_label(d) if i == 0 else "", model_label(m)], cells,
                            name=f"{ds_label(d)} {model_label(m)}"))
        blocks.append(Block(None, rows))
    return TableSpec(4, "Performance comparison between GraNet+Sup-tickets and the dense network "
                        "(bold: better than the dense network).", ["Dataset", "Network"], header, blocks,
                     bold="vs_dense")


def _variant_table(number: int, runs: pd.DataFrame, variants: Sequence[Tuple[str, str, bool]],
                   present: Callable[[pd.DataFrame], List[Tuple[str, str, bool]]], label_header: str,
                   caption: str) -> TableSpec:
    """Tables 5 and 7: RigL+Sup-tickets variants (rows) per model block; columns = sparsity."""
    probe = ["rigl+sup/any"]
    groups = [("cifar100", m, True) for m in ("vgg16", "resnet50")]
    groups += [(d, m, False) for d, m in extra_groups(runs, probe)]
    levels = sorted(set(PAPER_SPARSITIES).union(*[group_levels(runs, probe, d, m, p) for d, m, p in groups]),
                    reverse=True)
    header = [([label_header], [("Sparsity", len(levels))]), ([""], [(pct(s), 1) for s in levels])]
    blocks = []
    for ds, model, paper in groups:
        rows_v = list(variants)
        sub = runs[(runs["dataset"] == ds) & (runs["model"] == model)] if not runs.empty else runs
        rows_v += [v for v in present(sub) if v[0] not in {r[0] for r in rows_v}]
        rows = []
        for method, label, paper_row in rows_v:
            cells = [CellSpec(number, method, ds, model, s, "test/acc",
                              paper=paper and paper_row and s in PAPER_SPARSITIES,
                              where=f"{ds_label(ds)} {model_label(model)} {pct(s)}")
                     if paper is False or s in PAPER_SPARSITIES else "" for s in levels]
            rows.append(Row(method, [label], cells, bold_group="block"))
        title = model_label(model) if paper else f"{model_label(model)} on {ds_label(ds)}"
        blocks.append(Block(title, rows))
    return TableSpec(number, caption, [label_header], header, blocks)


def _present_cycles(sub: pd.DataFrame) -> List[Tuple[str, str, bool]]:
    if sub.empty or "cfg.superposer.cycle_epochs" not in sub.columns:
        return []
    f = method_filters("rigl+sup")
    del f["cycle"]
    m = select(sub, f)
    cs = sorted({float(c) for c in pd.to_numeric(m["cfg.superposer.cycle_epochs"], errors="coerce").dropna()})
    return [(f"rigl+sup/C={fmt_num(c)}", f"C={fmt_num(c)}", False) for c in cs]


def table5(runs: pd.DataFrame) -> TableSpec:
    variants = [(f"rigl+sup/C={fmt_num(c)}", f"C={fmt_num(c)}", True) for c in PAPER_CYCLES]
    return _variant_table(5, runs, variants, _present_cycles, "Cyclical length (epochs)",
                          "Test accuracy (%) on CIFAR-100 of Sup-tickets combined with RigL under different "
                          "cyclical lengths.")


def table7(runs: pd.DataFrame) -> TableSpec:
    variants = [("rigl+sup/lr=fge", "LR of FGE [Garipov et al., 2018]", True),
                ("rigl+sup/lr=swa", "LR of SWA [Izmailov et al., 2018]", True),
                ("rigl+sup/lr=triangle", "Sup-ticket (Ours)", True)]
    return _variant_table(7, runs, variants, lambda sub: [], "LR schedule",
                          "Effect of different learning-rate (LR) schedules (RigL+Sup-tickets, CIFAR-100).")


def table6(runs: pd.DataFrame) -> TableSpec:
    """Diversity of the cheap tickets: rows = methods; columns = sparsity × (d_dis, d_KL)."""
    methods = ["treenet", "batchensemble", "set+sup", "rigl+sup", "dense_ensemble"]
    impl = ["set+sup", "rigl+sup"]
    groups = [("cifar10", "wrn28_10", True)] + [(d, m, False) for d, m in extra_groups(runs, impl)]
    levels = sorted(set(TABLE6_SPARSITIES).union(*[group_levels(runs, impl, d, m, p, TABLE6_SPARSITIES)
                                                   for d, m, p in groups]), reverse=True)
    metrics = ("diversity/disagreement", "diversity/kl")
    header = [(["Methods"], [(pct(s), 2) for s in levels]),
              ([""], [(f"{METRIC_LABELS[k]} (↑)", 1) for _ in levels for k in metrics])]
    blocks = []
    for ds, model, paper in groups:
        rows = []
        for m in methods:
            cells: List[Any] = []
            for s in levels:
                for k in metrics:
                    cells.append(CellSpec(6, m, ds, model, s, k, kind="div", paper=paper and s in TABLE6_SPARSITIES,
                                          where=f"{ds_label(ds)} {model_label(model)} {pct(s)} {METRIC_LABELS[k]}")
                                 if not paper or s in TABLE6_SPARSITIES else "")
            label = _method_label(m)
            rows.append(Row(m, [label], cells, bold_group="block" if m in impl else None))
        blocks.append(Block(f"{model_label(model)} on {ds_label(ds)}", rows))
    return TableSpec(6, "Prediction disagreement and KL divergence among the cheap tickets (WRN28-10 on CIFAR-10; "
                        "the paper does not state the sparsity: 90 % as in conf/sweep/table6.yaml).",
                     ["Methods"], header, blocks,
                     notes=["† not implemented in sparse_exp."])


BUILDERS = {1: table1, 2: table2, 3: table3, 4: table4, 5: table5, 6: table6, 7: table7}


# ---------------------------------------------------------------------------- evaluating and rendering
@dataclass
class TableResult:
    spec: TableSpec
    cells: List[List[List[Any]]]  # [block][row][col] -> CellValue or literal text

    def values(self) -> List[CellValue]:
        return [c for b in self.cells for r in b for c in r if isinstance(c, CellValue)]

    def required(self, paper: Optional[bool] = True) -> List[CellValue]:
        return [c for c in self.values() if c.spec.required and (paper is None or c.spec.paper == paper)]

    @property
    def complete(self) -> bool:
        return all(c.values for c in self.required(True))


def evaluate_table(spec: TableSpec, runs: pd.DataFrame) -> TableResult:
    cells = [[[evaluate_cell(runs, c) if isinstance(c, CellSpec) else c for c in row.cells] for row in b.rows]
             for b in spec.blocks]
    for b, block in zip(spec.blocks, cells):
        ncol = len(block[0]) if block else 0
        for j in range(ncol):
            if spec.bold == "vs_dense":
                for row in block:
                    dense = row[0]
                    c = row[j]
                    if j > 0 and isinstance(c, CellValue) and c.values and isinstance(dense, CellValue) \
                            and dense.values and c.rounded() > dense.rounded():
                        c.bold = True
                continue
            groups: Dict[str, List[CellValue]] = {}
            for row_spec, row in zip(b.rows, block):
                c = row[j]
                if row_spec.bold_group and isinstance(c, CellValue) and c.values and c.spec.kind != "flops":
                    groups.setdefault(row_spec.bold_group, []).append(c)
            for group in groups.values():
                if len(group) < 2:
                    continue
                best = max(c.rounded() for c in group)
                for c in group:
                    c.bold = c.rounded() == best
    return TableResult(spec, cells)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_markdown(res: TableResult) -> str:
    spec = res.spec
    nlab = len(spec.label_headers)
    lines = [f"**Table {spec.number}.** {spec.caption}", ""]
    for i, (labels, spans) in enumerate(spec.header_rows):
        cells = list(labels)
        for text, span in spans:
            cells += [text] + [""] * (span - 1)
        if i == 0:
            lines.append(_md_row(cells))
            lines.append(_md_row([":--"] * nlab + [":-:"] * spec.ncols))
        else:
            lines.append(_md_row(cells))
    for block, rows in zip(spec.blocks, res.cells):
        if block.title:
            lines.append(_md_row([f"*{block.title}*"] + [""] * (nlab - 1 + spec.ncols)))
        for row, vals in zip(block.rows, rows):
            lines.append(_md_row(list(row.labels) + [v.markdown() if isinstance(v, CellValue) else v for v in vals]))
    for note in spec.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "×": r"$\times$", "–": "--",
        "†": r"$^\dagger$", "↑": r"$\uparrow$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(res: TableResult) -> str:
    spec = res.spec
    nlab = len(spec.label_headers)
    total = nlab + spec.ncols
    lines = [r"% generated by python -m analysis; needs \usepackage{booktabs,graphicx}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{tex_escape(spec.caption)}}}", rf"\label{{tab:table{spec.number}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{'l' * nlab}{'c' * spec.ncols}}}", r"\toprule"]
    for i, (labels, spans) in enumerate(spec.header_rows):
        cells = [tex_escape(x) for x in labels]
        rules, col = [], nlab + 1
        for text, span in spans:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(text)}}}" if span > 1 else tex_escape(text))
            if span > 1 and i == 0:
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines.append(" & ".join(cells) + r" \\")
        if rules:
            lines.append("".join(rules))
    lines.append(r"\midrule")
    for k, (block, rows) in enumerate(zip(spec.blocks, res.cells)):
        if k > 0:
            lines.append(r"\midrule")
        if block.title:
            lines.append(rf"\multicolumn{{{total}}}{{l}}{{\textit{{{tex_escape(block.title)}}}}} \\")
        for row, vals in zip(block.rows, rows):
            cells = [tex_escape(x) for x in row.labels]
            cells += [v.latex() if isinstance(v, CellValue) else tex_escape(v) for v in vals]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    for note in spec.notes:
        lines.append(rf"\par\footnotesize {tex_escape(note)}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def cells_frame(results: Sequence[TableResult]) -> pd.DataFrame:
    """Every value cell of every table (the machine-readable form of the tables)."""
    rows = []
    for res in results:
        for c in res.values():
            s = c.spec
            rows.append({"table": s.table, "method": s.method, "dataset": s.dataset, "model": s.model,
                         "sparsity": round(float(s.sparsity), 6), "metric": s.metric, "paper_cell": s.paper,
                         "where": s.where, "status": c.status, "n": c.n, "mean": c.mean, "std": c.std,
                         "bold": c.bold, "markdown": c.markdown() if s.implemented else "–", "note": c.note,
                         "runs": ";".join(c.paths)})
    return pd.DataFrame(rows)


def build_tables(runs: pd.DataFrame, numbers: Sequence[int] = tuple(BUILDERS)) -> List[TableResult]:
    return [evaluate_table(BUILDERS[n](runs), runs) for n in numbers]


def _placed_paths(results: Sequence[TableResult]) -> set:
    return {p for res in results for c in res.values() for p in c.paths}


def report(results: Sequence[TableResult], collection: Any) -> List[str]:
    """Human-readable status: complete tables, missing cells, excluded and unplaced runs."""
    lines = ["# Status of the tables", ""]
    methods: Dict[str, str] = {}
    for res in results:
        req, extra = res.required(True), res.required(False)
        filled = [c for c in req if c.values]
        few = [c for c in req + extra if c.values and c.n < PAPER_SEEDS]
        state = "complete" if res.complete else "incomplete"
        line = f"Table {res.spec.number}: {state} -- paper cells {len(filled)}/{len(req)} filled"
        if extra:
            line += f"; extra data sets {sum(1 for c in extra if c.values)}/{len(extra)} filled"
        if few:
            line += f"; {len(few)} cell(s) with fewer than {PAPER_SEEDS} seeds"
        lines.append(line)
        missing: Dict[str, List[str]] = {}
        for block, rows in zip(res.spec.blocks, res.cells):
            for row, vals in zip(block.rows, rows):
                for v in vals:
                    if isinstance(v, CellValue) and v.spec.required and not v.values:
                        name = row.name or " ".join(x for x in row.labels if x)
                        key = f"{block.title}: {name}" if block.title else name
                        missing.setdefault(key, []).append(v.spec.where)
                        methods.setdefault(v.spec.method, describe_filters(
                            {k: f for k, f in v.spec.filters.items() if k not in ("dataset", "model", "sparsity")}))
        for key, wheres in missing.items():
            lines.append(f"  missing  {key}: {', '.join(dict.fromkeys(wheres))}")
        for c in res.values():
            if c.note:
                lines.append(f"  note     {c.spec.method} @ {c.spec.where}: {c.note}")
    if methods:
        lines += ["", "Runs a missing cell needs (plus its data set, model and sparsity):"]
        lines += [f"  {m}: {d}" for m, d in sorted(methods.items())]
    lines.append("")
    runs = collection.runs
    lines.append(f"Counted runs: {len(runs)} (completed, one per run identity)")
    exc = collection.excluded
    if len(exc):
        lines.append(f"Not counted: {len(exc)}")
        for _, r in exc.iterrows():
            lines.append(f"  {r['path']}: {r['reason']}")
    placed = _placed_paths(results)
    unplaced = [p for p in runs["path"]] if not runs.empty else []
    unplaced = [p for p in unplaced if p not in placed]
    if unplaced:
        lines.append(f"Counted but in no table cell: {len(unplaced)} (not in the paper's layout, e.g. another "
                     f"distribution, sparsity or Sup-tickets setting; they are in runs.csv)")
        for p in unplaced:
            lines.append(f"  {p}")
    return lines


def write_tables(collection: Any, out: str | Path, numbers: Sequence[int] = tuple(BUILDERS)) -> List[TableResult]:
    """Write ``tableN.md`` / ``tableN.tex``, ``cells.csv``, ``runs.csv``, ``excluded.csv``, ``status.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = build_tables(collection.runs, numbers)
    for res in results:
        (out / f"table{res.spec.number}.md").write_text(to_markdown(res))
        (out / f"table{res.spec.number}.tex").write_text(to_latex(res))
    cells_frame(results).to_csv(out / "cells.csv", index=False)
    collection.runs.to_csv(out / "runs.csv", index=False)
    collection.excluded.to_csv(out / "excluded.csv", index=False)
    (out / "status.md").write_text("\n".join(report(results, collection)) + "\n")
    return results
