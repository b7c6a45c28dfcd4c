"""Table ``st_regime`` (analysis/regime.py): base method vs + Sup-tickets with the last individual model, the
mean cheap ticket, NLL and ECE, and the cycle-length block, from run directories as sparse_exp.train writes them."""

from __future__ import annotations

import sys

import pandas as pd
import yaml
from conftest import ROOT
from test_anymask_tables import write_run

if str(ROOT) not in sys.path:  # `analysis` lives at the repository root
    sys.path.insert(0, str(ROOT))


def _sup(acc):
    """The Sup-tickets summary keys of a run whose ultimate ticket reached ``acc``."""
    return {"last/test/acc": acc - 0.5, "tickets/mean/test/acc": acc - 1.0, "test/nll": 0.4, "test/ece": 0.01}


def _cycle_lr(run_dir, high, default_high=0.005):
    """Give a written run the cycle LR range keys a real run's config.yaml has (where a run from before the
    data set's defaults moved to ``superposer.dataset_defaults`` has them: ``dataset.sup_*``)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["superposer"].update(lr_low=0.001, lr_high=high)
    if "dataset_defaults" in cfg["superposer"]:
        cfg["superposer"]["dataset_defaults"].update(lr_low=0.001, lr_high=default_high)
    else:
        cfg["dataset"].update(sup_lr_low=0.001, sup_lr_high=default_high)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_st_regime_rows_metrics_bold_and_cycle_block(tmp_path):
    from sparse_exp.analysis.collect import collect_local
    from sparse_exp.analysis.tables import write_tables

    root = tmp_path / "runs"
    for seed, acc in enumerate([89.0, 89.4]):
        write_run(root, f"rigl_{seed}", sparsifier="rigl", seed=seed, acc=acc, model="lenet_300_100")
    for seed, acc in enumerate([89.2, 89.6]):  # seed 1 as written before superposer.dataset_defaults existed
        _cycle_lr(write_run(root, f"rigl_sup_{seed}", sparsifier="rigl", superposer="sup_tickets", seed=seed,
                            acc=acc, model="lenet_300_100", extra=_sup(acc), legacy=seed == 1), 0.005)
    # a cycle LR peak 10x the data set's (sweeps/st_fmnist_lr.yaml): its own block, never the paper's row
    _cycle_lr(write_run(root, "rigl_sup_peak", sparsifier="rigl", superposer="sup_tickets", seed=1, acc=95.0,
                        model="lenet_300_100", extra=_sup(95.0)), 0.05)
    d = write_run(root, "rigl_sup_c4", sparsifier="rigl", superposer="sup_tickets", seed=0, acc=88.0,
                  model="lenet_300_100", extra={"last/test/acc": 87.9, "tickets/mean/test/acc": 87.5}, legacy=True)
    cfg = (d / "config.yaml").read_text().replace("cycle_epochs: 2\n  lr_schedule", "cycle_epochs: 4\n  lr_schedule")
    (d / "config.yaml").write_text(cfg)
    # at 90 % only the default cycle length: no cycle-length rows there
    write_run(root, "rigl_sup_90", sparsifier="rigl", superposer="sup_tickets", seed=0, acc=89.9, sparsity=0.9,
              model="lenet_300_100", extra=_sup(89.9))
    # a CIFAR run never enters this table (the paper's tables hold it)
    write_run(root, "cifar_sup", sparsifier="rigl", superposer="sup_tickets", seed=0, acc=70.0, dataset="cifar100")

    out = tmp_path / "results"
    write_tables(collect_local([root]), out)
    cells = pd.read_csv(out / "st_regime_cells.csv")
    assert set(cells["table"]) == {"st_regime"} and set(cells["dataset"]) == {"fashion_mnist"}
    got = {(r.method, r.metric): (r.n, round(r.mean, 4)) for r in cells.itertuples()
           if r.status == "ok" and abs(r.sparsity - 0.95) < 1e-9}
    assert got[("rigl/test/acc", "test/acc")] == (2, 89.2)
    assert got[("rigl+sup/test/acc", "test/acc")] == (2, 89.4)
    assert got[("rigl+sup/last/test/acc", "last/test/acc")] == (2, 88.9)
    assert got[("rigl+sup/tickets/mean/test/acc", "tickets/mean/test/acc")] == (2, 88.4)
    assert got[("rigl+sup/C=4/test/acc", "test/acc")] == (1, 88.0)
    # the cycle-length block counts the seeds every cycle length has (seed 0), not C=2's two seeds against
    # C=4's one
    assert got[("rigl+sup/C=2/test/acc", "test/acc")] == (1, 89.2)
    md = (out / "st_regime.md").read_text()
    assert "| 95% | RigL | 89.20 ± 0.28 (n=2) |  |  | 0.5000 ± 0.0000 (n=2) |" in md  # no ticket columns on a base row
    # bold: the higher accuracy, the lower NLL / ECE of the pair
    assert "| 95% | RigL + Sup-tickets | **89.40 ± 0.28** (n=2) |" in md and "**0.4000 ± 0.0000** (n=2)" in md
    assert "cycle length" in md and "C=4 epochs" in md
    assert "| 95% | RigL + Sup-tickets, C=2 epochs | **89.20** (n=1) |" in md
    assert "| 90% | RigL + Sup-tickets" in md and "| 90% | RigL + Sup-tickets, C=" not in md
    # the LR-peak block: seed 1 is the seed both peaks have
    assert got[("rigl+sup/peak=0.05/test/acc", "test/acc")] == (1, 95.0)
    assert got[("rigl+sup/peak=0.005/test/acc", "test/acc")] == (1, 89.6)
    assert "cycle LR peak" in md and "| 95% | RigL + Sup-tickets, cycle LR peak 0.05 | **95.00** (n=1) |" in md
    assert not (out / "anymask_cells.csv").exists(), "st_regime cells are not any-mask cells"
