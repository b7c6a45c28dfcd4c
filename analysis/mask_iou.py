"""How far apart the final masks of a grid's runs are: ``mask_iou_<group>.png`` / ``.pdf`` / ``.md`` (``make tables``).

Runs are grouped by (data set, model, sparsity); a group of two runs or more whose run directories hold ``masks.pt``
(the reported model's masks: the ultimate ticket's under Sup-tickets) gives a heatmap of the global mask IoU of
every pair of runs (pooled over all prunable positions, :mod:`sparse_exp.sparse.mask_distance`; the diagonal is 1)
and a Markdown table: the same matrix, then per layer the mean, min and max IoU over the pairs. Runs are labelled
``<sparsifier>[+<superposer>] s<seed>``, with `` lr_high=<v>`` / `` cycle_epochs=<v>`` where the group's runs
that have those superposer keys differ in them (by their directory names where two labels of a group still
coincide), and sorted by that label. A pair whose masks do not match (layers or shapes) is left blank. Runs
collected from W&B have no local ``masks.pt`` and are skipped.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd
import torch

from sparse_exp.sparse.mask_distance import MaskMismatchError, mask_distance

from .labels import ds_label, model_label, pct


def _label(row: Any) -> str:
    sup = row.get("superposer")
    method = str(row.get("sparsifier")) + (f"+{sup}" if isinstance(sup, str) and sup != "none" else "")
    return f"{method} s{row.get('seed')}"


#: superposer keys named in a label (``lr_high=0.05``) where a group's runs differ in them
VARYING = ("lr_high", "cycle_epochs")


def _groups(runs: pd.DataFrame) -> Dict[Tuple[str, str, float], List[Tuple[str, Path]]]:
    out: Dict[Tuple[str, str, float], List[Tuple[Any, Path]]] = {}
    if runs.empty or "path" not in runs.columns:
        return out
    for _, row in runs.iterrows():
        path = Path(str(row["path"])) / "masks.pt"
        if row.get("status") != "completed" or not path.is_file():
            continue
        key = (str(row.get("dataset")), str(row.get("model")), float(row.get("sparsity")))
        out.setdefault(key, []).append((row, path))
    labelled: Dict[Tuple[str, str, float], List[Tuple[str, Path]]] = {}
    for key, members in out.items():
        labels = [_label(row) for row, _ in members]
        for k in VARYING:  # the superposer keys the group's runs differ in
            values = [row.get(f"cfg.superposer.{k}") for row, _ in members]
            values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]  # a run without the key
            if len({str(v) for v in values if v is not None}) > 1:  # a run without the key differs in nothing
                labels = [a if v is None else f"{a} {k}={v:g}" if isinstance(v, (int, float)) else f"{a} {k}={v}"
                          for a, v in zip(labels, values)]
        if len(set(labels)) < len(labels):  # runs that differ in still more: their directory names
            labels = [p.parent.name for _, p in members]
        labelled[key] = sorted(zip(labels, (p for _, p in members)))
    return {k: v for k, v in labelled.items() if len(v) >= 2}


def iou_matrix(masks: List[Dict[str, torch.Tensor]]) -> Tuple[np.ndarray, Dict[str, List[float]]]:
    """``(global IoU matrix [n, n], {layer: IoU of every pair i < j})`` of ``n`` mask dicts; NaN where two
    mask dicts do not match."""
    n = len(masks)
    mat = np.eye(n)
    layers: Dict[str, List[float]] = {}
    for i, j in combinations(range(n), 2):
        try:
            d = mask_distance(masks[i], masks[j])
        except MaskMismatchError:
            mat[i, j] = mat[j, i] = np.nan
            continue
        mat[i, j] = mat[j, i] = d.iou
        for name, v in d.layers.items():
            layers.setdefault(name, []).append(v["iou"])
    return mat, layers


def _cell(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.3f}"


def _markdown(title: str, labels: List[str], mat: np.ndarray, layers: Dict[str, List[float]]) -> str:
    lines = [f"# Mask IoU across runs: {title}", "", "Global mask IoU (pooled over all prunable positions):", "",
             "| run | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [f"| {a} | " + " | ".join(_cell(v) for v in mat[i]) + " |" for i, a in enumerate(labels)]
    lines += ["", "Per layer, over the pairs of runs:", "", "| layer | mean IoU | min | max |", "|---|---|---|---|"]
    lines += [f"| {n} | {np.mean(v):.3f} | {min(v):.3f} | {max(v):.3f} |" for n, v in layers.items()]
    return "\n".join(lines) + "\n"


def write_mask_iou(runs: pd.DataFrame, out: Path) -> List[Path]:
    """The heatmap (PNG, PDF) and table (Markdown) of every group with two runs or more; returns their paths."""
    from matplotlib.figure import Figure

    from .figures import save

    paths: List[Path] = []
    for (ds, model, sparsity), members in sorted(_groups(runs).items()):
        labels = [a for a, _ in members]
        masks = [torch.load(p, map_location="cpu", weights_only=True)["masks"] for _, p in members]
        mat, layers = iou_matrix(masks)
        stem = f"mask_iou_{ds}_{model}_{round(sparsity * 100)}"
        title = f"{model_label(model)}, {ds_label(ds)}, {pct(sparsity)} sparsity"
        size = 2.5 + 0.45 * len(labels)
        fig = Figure(figsize=(size + 1.2, size))
        ax = fig.subplots()
        im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if np.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if mat[i, j] < 0.6 else "black")
        fig.colorbar(im, ax=ax, label="IoU of the active sets")
        paths += save(fig, out, stem, f"Mask IoU across runs\n{title}")
        md = out / f"{stem}.md"
        md.write_text(_markdown(title, labels, mat, layers))
        paths.append(md)
    return paths
