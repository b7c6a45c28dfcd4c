"""Figures 2-5 of the Sup-tickets paper (Yin et al., UAI 2022) as PNG and PDF, byte-for-byte reproducible.

* Figure 2: the LR over the iterations of a 250-epoch CIFAR run, computed by the training code
  (``lr_schedules.lr_factor_fn``, then ``cyclic_lr.sup_tickets_lr_factor``) for each
  ``superposer.lr_schedule`` (FGE, triangle, SWA); circles mark where cheap tickets are taken.
* Figure 3: ultimate-ticket test accuracy of CIA, CAA and CIMA (per beta) over sparsity (RigL + Sup-tickets).
* Figure 4: ultimate-ticket and mean cheap-ticket accuracy over the number of tickets.
* Figure 5: ECE and NLL of RigL vs. RigL + Sup-tickets.

Points: mean ± std over seeds, selected as for the tables; a panel without runs says so, and the files are
still written. Reproducible: matplotlib's defaults, no timestamps or versions in the files. Drawn with matplotlib's
object API (``Figure`` + ``savefig``, no pyplot): importing this module changes no backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from sparse_exp.config.compose import compose
from sparse_exp.superposers.cyclic_lr import collect_fraction, make_budget, sup_tickets_lr_factor
from sparse_exp.training.lr_schedules import lr_factor_fn

from .labels import ds_label, model_label, pct
from .mask_iou import write_mask_iou
from .selection import finite_values, mean_std, method_filters, numeric, pick_variant, select
from .topology_gain import write_topology_gain

PNG_META = {"Software": None}
PDF_META = {"Creator": None, "Producer": None, "CreationDate": None}
RC = {"svg.hashsalt": "sparse_exp", "svg.fonttype": "none", "pdf.fonttype": 42, "font.size": 9,
      "axes.titlesize": 9, "legend.fontsize": 7, "figure.dpi": 100, "savefig.dpi": 150}
FIGURE_FILES = [f"figure{n}.{ext}" for n in (2, 3, 4, 5) for ext in ("png", "pdf")]


def save(fig: Any, out: Path, name: str, title: Optional[str] = None) -> List[Path]:
    """Write ``fig`` as ``name.png`` and ``name.pdf`` (with ``title`` above the panels)."""
    if title is not None:
        fig.suptitle(title)
        fig.tight_layout()
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], metadata=PNG_META)
    fig.savefig(paths[1], metadata=PDF_META)
    return paths


def _empty(ax: Any, text: str = "no matching runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def point(sub: pd.DataFrame, metric: str) -> Tuple[float, float, int]:
    """Mean, std (ddof=1; 0 for one seed) and count over seeds, counted as a table cell counts them
    (several config variants -> the one with most seeds)."""
    if sub.empty or metric not in sub.columns:
        return np.nan, np.nan, 0
    vals, ok = finite_values(pick_variant(sub)[0], metric)
    v = vals.values[ok]
    if len(v) == 0:
        return np.nan, np.nan, 0
    mean, std = mean_std(v)
    return mean, std if len(v) > 1 else 0.0, len(v)


def _of(runs: pd.DataFrame, filters: Dict[str, Any]) -> pd.DataFrame:
    """The runs matching ``filters`` (:func:`sparse_exp.analysis.selection.method_filters`)."""
    return select(runs, filters) if not runs.empty else runs


def _groups(df: pd.DataFrame) -> List[Tuple[str, str]]:
    return sorted({(str(d), str(m)) for d, m in zip(df["dataset"], df["model"])}) if not df.empty else []


def _settings(df: pd.DataFrame) -> set:
    """The (dataset, model, sparsity) triples present."""
    return {(str(a), str(b), float(s)) for a, b, s in zip(df["dataset"], df["model"], df["sparsity"])}


def _at(df: pd.DataFrame, ds: str, model: str, sparsity: Optional[float] = None) -> pd.DataFrame:
    """The runs of ``df`` on data set ``ds`` with ``model`` (at ``sparsity``, when given)."""
    mask = (df["dataset"] == ds) & (df["model"] == model)
    if sparsity is not None:
        mask &= np.isclose(df["sparsity"].astype(float), sparsity)
    return df[mask]


def _ticket_counts(df: pd.DataFrame) -> List[int]:
    return sorted({int(c) for c in numeric(df["tickets/count"]).dropna()})


# ---------------------------------------------------------------------------- Figure 2
def protocol_config(schedule: str, dataset: str = "cifar100", model: str = "vgg16") -> Any:
    """The resolved config of a Sup-tickets run with ``schedule`` (the repository's ``conf/``)."""
    return compose([f"dataset={dataset}", f"model={model}", "sparsifier=rigl", "superposer=sup_tickets",
                    f"superposer.lr_schedule={schedule}", "epochs=250", "logger=none"])


def lr_curve(cfg: Any, num_train: int = 50_000) -> Dict[str, Any]:
    """Per-iteration LR of ``cfg`` as the training loop computes it, and the ticket iterations."""
    spe = math.ceil((num_train - cfg.dataset.val_size) / cfg.batch_size)
    total = cfg.epochs * spe
    sp = cfg.superposer
    # a plain namespace: the schedule function reads it per step (OmegaConf access is slow)
    schedule = SimpleNamespace(**OmegaConf.to_container(cfg.schedule, resolve=True))
    budget = make_budget(cfg.epochs, spe, sp.cycle_epochs, sp.phase_fraction, sp.num_tickets)
    normal = lr_factor_fn(schedule, budget.start_step, spe)
    factor = sup_tickets_lr_factor(budget, normal, sp.lr_schedule, sp.lr_low, sp.lr_high, cfg.optimizer.lr)
    base_lr = float(cfg.optimizer.lr)
    lr = np.array([base_lr * factor(k) for k in range(total)])
    tickets = budget.ticket_steps(collect_fraction(sp.lr_schedule))
    return {"iteration": np.arange(1, total + 1), "lr": lr, "tickets": tickets, "budget": budget,
            "steps_per_epoch": spe}


def figure2(out: Path) -> List[Path]:
    names = {"fge": "FGE [Garipov et al., 2018]", "triangle": "Sup-tickets (triangle, Eq. 3)",
             "swa": "SWA [Izmailov et al., 2018]"}
    fig = Figure(figsize=(9, 6.6))
    axes = fig.subplots(3, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    for row, schedule in enumerate(("fge", "triangle", "swa")):
        cfg = protocol_config(schedule)
        c = lr_curve(cfg)
        it, lr, b = c["iteration"], c["lr"], c["budget"]
        full, zoom = axes[row]
        full.plot(it, lr, lw=1, color="C0")
        full.set_yscale("log")
        full.axvspan(b.start_step, b.total_steps, color="0.9", lw=0)
        full.set_title(f"{names[schedule]}: whole run")
        lo = max(0, b.start_step - b.cycle_steps)
        zoom.plot(it[lo:], lr[lo:], lw=1, color="C0")
        tk = np.array(c["tickets"])
        zoom.plot(tk, lr[tk - 1], "o", ms=6, mfc="none", mec="green", mew=1.5, label="cheap ticket")
        zoom.set_title(f"{names[schedule]}: cyclic phase, {len(tk)} cycles × {cfg.superposer.cycle_epochs:g} epochs")
        zoom.legend(loc="upper left", frameon=False)
        for ax in (full, zoom):
            ax.set_ylabel("learning rate")
        if row == 2:
            full.set_xlabel("iteration")
            zoom.set_xlabel("iteration")
    return save(fig, out, "figure2", f"Figure 2: LR schedules (CIFAR-100, {cfg.epochs} epochs, "
                f"{c['steps_per_epoch']} iterations/epoch, base LR {cfg.optimizer.lr:g})")


# ---------------------------------------------------------------------------- Figure 3
AVERAGING = [("cia", None, "CIA"), ("caa", None, "CAA")] + [("cima", b, f"CIMA β={b:g}")
                                                           for b in (0.9, 0.8, 0.5, 0.2, 0.1)]


def _avg_filters(avg: str, beta: Optional[float]) -> Dict[str, Any]:
    return method_filters(f"rigl+sup/avg={avg}" + (f":{beta}" if beta is not None else ""))


def figure3(runs: pd.DataFrame, out: Path) -> List[Path]:
    sel = {lab: _of(runs, _avg_filters(a, b)) for a, b, lab in AVERAGING}
    groups = sorted(set().union(*[_groups(d) for d in sel.values()]))
    fig = Figure(figsize=(4.2 * max(1, len(groups)), 3.4))
    axes = fig.subplots(1, max(1, len(groups)), squeeze=False)
    if not groups:
        _empty(axes[0][0], "no RigL+Sup-tickets runs")
    for ax, (ds, model) in zip(axes[0], groups):
        levels = sorted({float(s) for d in sel.values() for s in _at(d, ds, model)["sparsity"]}, reverse=True)
        x = np.arange(len(levels))
        any_offline = False
        for k, (_, _, lab) in enumerate(AVERAGING):
            pts = [point(_at(sel[lab], ds, model, s), "test/acc") for s in levels]
            m = np.array([p[0] for p in pts])
            offline = _offline(_at(sel[lab], ds, model))
            any_offline |= offline
            if np.isfinite(m).any():
                ax.errorbar(x, m, yerr=[p[1] for p in pts], marker="os^v<>d"[k % 7], ms=4, capsize=2, lw=1,
                            label=lab + (" (offline)" if offline else ""), color=f"C{k}",
                            mfc="none" if offline else None)
        ax.set_xticks(x, [pct(s) for s in levels])
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy (%) of the ultimate ticket")
        ax.set_title(f"RigL+Sup-tickets, {model_label(model)} on {ds_label(ds)}"
                     + ("\nopen markers: superposed offline from saved tickets" if any_offline else ""), fontsize=9)
        ax.legend(frameon=False, fontsize=7)
    return save(fig, out, "figure3", "Figure 3: averaging methods")


def _offline(df: pd.DataFrame) -> bool:
    """Whether any run of ``df`` is an offline superposition (``superposed/offline``,
    :mod:`sparse_exp.analysis.collect`)."""
    return "superposed/offline" in df.columns and bool((numeric(df["superposed/offline"]) == 1).any())


# ---------------------------------------------------------------------------- Figure 4
def figure4(runs: pd.DataFrame, out: Path) -> List[Path]:
    d = _of(runs, method_filters("rigl+sup/any_tickets"))
    fig = Figure(figsize=(8, 3.4))
    axes = fig.subplots(1, 2)
    titles = (("test/acc", "ultimate ticket"), ("tickets/mean/test/acc", "mean of the individual cheap tickets"))
    if d.empty or "tickets/count" not in d.columns:
        for ax in axes:
            _empty(ax, "no RigL+Sup-tickets runs")
    else:
        lines = sorted(_settings(d))
        ticks = _ticket_counts(d)
        for ax, (metric, title) in zip(axes, titles):
            for k, (ds, model, s) in enumerate(lines):
                sub = _at(d, ds, model, s)
                counts = _ticket_counts(sub)
                pts = [point(sub[sub["tickets/count"] == c], metric) for c in counts]
                ax.errorbar(counts, [p[0] for p in pts], yerr=[p[1] for p in pts], marker="o", ms=4, capsize=2,
                            lw=1, color=f"C{k}", label=f"{model_label(model)}, {ds_label(ds)}, {pct(s)}")
            ax.set_xlabel("number of cheap tickets")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(title)
            ax.set_xticks(ticks)
            ax.legend(frameon=False)
    return save(fig, out, "figure4", "Figure 4: impact of the cheap-ticket count (RigL+Sup-tickets)")


# ---------------------------------------------------------------------------- Figure 5
def figure5(runs: pd.DataFrame, out: Path) -> List[Path]:
    base = _of(runs, method_filters("rigl"))
    sup = _of(runs, method_filters("rigl+sup"))
    both = pd.concat([base, sup])
    fig = Figure(figsize=(8, 3.4))
    axes = fig.subplots(1, 2)
    if both.empty:
        for ax in axes:
            _empty(ax, "no RigL / RigL+Sup-tickets runs")
    else:
        keys = sorted(_settings(both), key=lambda k: (k[0], k[1], -k[2]))
        x = np.arange(len(keys))
        for ax, (metric, name) in zip(axes, (("test/ece", "ECE"), ("test/nll", "NLL"))):
            for k, (d, lab) in enumerate(((base, "RigL"), (sup, "RigL+Sup-tickets"))):
                pts = [point(_at(d, a, b, s), metric) for a, b, s in keys]
                ax.bar(x + (k - 0.5) * 0.38, [0 if not np.isfinite(p[0]) else p[0] for p in pts], 0.38,
                       yerr=[p[1] if np.isfinite(p[1]) else 0 for p in pts], capsize=2, label=lab, color=f"C{k}")
            ax.set_xticks(x, [f"{model_label(b)}\n{ds_label(a)}\n{pct(s)}" for a, b, s in keys])
            ax.set_ylabel(f"test {name} (lower is better)")
            ax.set_title(name)
            ax.legend(frameon=False)
    return save(fig, out, "figure5", "Figure 5: RigL vs. RigL+Sup-tickets, uncertainty estimation")


def write_figures(runs: pd.DataFrame, out: str | Path) -> List[Path]:
    """All four figures into ``out`` (``figureN.png`` and ``figureN.pdf``), then the mask IoU heatmaps and tables
    across each grid's runs (:mod:`sparse_exp.analysis.mask_iou`) and the Sup-tickets gain vs the tickets'
    diversity (:mod:`sparse_exp.analysis.topology_gain`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(RC)
        paths = figure2(out)
        for fn in (figure3, figure4, figure5):
            paths += fn(runs, out)
        paths += write_mask_iou(runs, out)
        paths += write_topology_gain(runs, out)
    return paths
