"""Mask topology in a run's results (tiny Fashion-MNIST runs): the topology meter's keys in metrics.jsonl and
summary.json, and the Sup-tickets tickets' mask diversity next to their prediction disagreement."""

import pytest
from conftest import compose_cfg, needs_data

from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run

KEYS = ("topology/hamming_vs_init", "topology/iou_vs_init", "topology/hamming_vs_prev", "topology/iou_vs_prev")
FAST = ["model=lenet_300_100", "sparsity=0.9", "dataset.subset_train=512", "dataset.subset_test=256"]


@needs_data
def test_a_rigl_run_reports_how_far_its_topology_moved(tmp_path):
    rd = RunDir(tmp_path / "rigl")
    summary = run(compose_cfg(FAST + ["sparsifier=rigl", "sparsifier.delta_t=4", "epochs=2"]), rd.path)
    rows = rd.metrics()
    for row in rows:
        assert all(0.0 <= row[k] <= 1.0 for k in KEYS), row
    assert all(0.0 <= summary[k] <= 1.0 for k in KEYS)
    assert summary["topology/updates"] == rows[-1]["topology/updates"] > 1  # 16 steps, an update every 4
    assert summary["topology/hamming_vs_init"] > 0 and summary["topology/iou_vs_init"] < 1
    # the latest update moves fewer positions than all updates together (RigL's drop fraction anneals)
    assert 0 < summary["topology/hamming_vs_prev"] <= summary["topology/hamming_vs_init"]
    assert rows[-1]["topology/hamming_vs_init"] == summary["topology/hamming_vs_init"]


@needs_data
def test_a_static_run_keeps_its_topology(tmp_path):
    summary = run(compose_cfg(FAST + ["sparsifier=static", "epochs=1"]), tmp_path / "static")
    assert (summary["topology/hamming_vs_init"], summary["topology/iou_vs_init"]) == (0.0, 1.0)
    assert summary["topology/updates"] == 0


@pytest.mark.slow
@needs_data
def test_sup_tickets_reports_the_tickets_mask_diversity(tmp_path):
    summary = run(compose_cfg(FAST + ["sparsifier=rigl", "sparsifier.delta_t=4", "epochs=4",
                                      "superposer=sup_tickets", "superposer.phase_fraction=0.5",
                                      "superposer.cycle_epochs=1"]), tmp_path / "sup")
    n = summary["tickets/count"]
    assert n == 2 and "diversity/disagreement" in summary
    for i in range(1, n + 1):
        assert 0.0 < summary[f"tickets/{i}/mask_hamming_vs_ultimate"] < 1.0
        assert 0.0 < summary[f"tickets/{i}/mask_iou_vs_ultimate"] < 1.0
    assert summary["diversity/mask_iou_pairs"] == [[1, 2, summary["diversity/mask_iou"]]]
    assert 0.0 < summary["diversity/mask_hamming"] < 1.0 and 0.0 < summary["diversity/mask_iou"] < 1.0
