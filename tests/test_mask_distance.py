"""Mask topology distances (sparse_exp.sparse.mask_distance): exact values on hand-made masks."""

import pytest
import torch

from sparse_exp.sparse.mask_distance import MaskMismatchError, mask_distance, snapshot


def t(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_exact_values_per_layer_and_pooled():
    # layer a: 2x4, active {0,1,2} vs {1,2,3} on row 0 -> 2 differ of 8, IoU 2/4
    # layer b: 1x2, active {0} vs {} -> 1 differ of 2, IoU 0/1
    a = {"a": t([1, 1, 1, 0], [0, 0, 0, 0]), "b": t([1, 0])}
    b = {"a": t([0, 1, 1, 1], [0, 0, 0, 0]), "b": t([0, 0])}
    d = mask_distance(a, b)
    assert d.layers == {"a": {"hamming": 2 / 8, "iou": 0.5}, "b": {"hamming": 0.5, "iou": 0.0}}
    # global pools positions: 3 differ of 10; intersections 2 over unions 4 + 1
    assert (d.differ, d.positions) == (3, 10)
    assert d.hamming == pytest.approx(0.3) and d.iou == pytest.approx(2 / 5)
    assert d.as_dict("topology/") == {"topology/hamming": d.hamming, "topology/iou": d.iou}


def test_identical_disjoint_and_float_masks():
    m = {"w": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}  # 0/1 floats, as Masking keeps them
    same = mask_distance(m, snapshot(m))
    assert (same.hamming, same.iou) == (0.0, 1.0)
    flip = mask_distance(m, {"w": 1 - m["w"]})
    assert (flip.hamming, flip.iou) == (1.0, 0.0)
    empty = mask_distance({"w": torch.zeros(3)}, {"w": torch.zeros(3, dtype=torch.bool)})
    assert (empty.hamming, empty.iou) == (0.0, 1.0)  # two empty masks: same topology


def test_symmetric():
    g = torch.Generator().manual_seed(0)
    a = {"x": torch.rand(5, 7, generator=g) > 0.6, "y": torch.rand(3, generator=g) > 0.5}
    b = {"x": torch.rand(5, 7, generator=g) > 0.6, "y": torch.rand(3, generator=g) > 0.5}
    assert mask_distance(a, b) == mask_distance(b, a)


def test_snapshot_is_not_a_view():
    m = {"w": torch.ones(4)}
    snap = snapshot(m)
    m["w"].zero_()
    assert snap["w"].all()


def test_refuses_mismatched_layers_and_shapes():
    with pytest.raises(MaskMismatchError, match=r"only in the first \['b'\].*only in the second \['c'\]"):
        mask_distance({"a": t(1), "b": t(1)}, {"a": t(1), "c": t(1)})
    with pytest.raises(MaskMismatchError, match=r"'a' has shape \(2,\) in the first dict and \(1, 2\)"):
        mask_distance({"a": t(1, 0)}, {"a": t([1, 0])})


def test_make_tables_draws_the_mask_iou_heatmap_of_a_grid(tmp_path):
    import pandas as pd

    from sparse_exp.analysis.mask_iou import iou_matrix, write_mask_iou

    masks = [{"fc.weight": t([1, 1, 0, 0]), "out.weight": t([1, 0])},
             {"fc.weight": t([1, 0, 1, 0]), "out.weight": t([1, 0])},
             {"fc.weight": t([0, 0, 1, 1]), "out.weight": t([0, 1])}]
    rows = []
    for k, (method, seed) in enumerate((("rigl", 0), ("rigl", 1), ("set", 0))):
        d = tmp_path / "runs" / f"r{k}"
        d.mkdir(parents=True)
        torch.save({"format": "sparse_exp.masks/v1", "masks": masks[k], "meta": {}}, d / "masks.pt")
        rows.append({"status": "completed", "path": str(d), "dataset": "fashion_mnist", "model": "lenet_300_100",
                     "sparsity": 0.5, "sparsifier": method, "superposer": "none", "seed": seed})
    rows.append({**rows[0], "sparsity": 0.9})  # alone at its sparsity: no heatmap
    mat, layers = iou_matrix(masks)
    # 0 vs 1: fc 1/3, out 1/1 -> pooled 2/4; 0 vs 2: fc 0/4, out 0/2 -> 0; 1 vs 2: fc 1/3, out 0/2 -> 1/5
    assert mat.tolist() == [[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]]
    assert layers == {"fc.weight": [1 / 3, 0.0, 1 / 3], "out.weight": [1.0, 0.0, 0.0]}
    (tmp_path / "out").mkdir()
    paths = write_mask_iou(pd.DataFrame(rows), tmp_path / "out")
    assert [p.name for p in paths] == ["mask_iou_fashion_mnist_lenet_300_100_50." + e for e in ("png", "pdf", "md")]
    md = paths[2].read_text()
    assert "| rigl s0 | 1.000 | 0.500 | 0.000 |" in md and "| out.weight | 0.333 | 0.000 | 1.000 |" in md


def test_heatmap_labels_name_the_superposer_key_two_runs_differ_in(tmp_path):
    import pandas as pd

    from sparse_exp.analysis.mask_iou import write_mask_iou

    rows = []
    for k, (sup, lr) in enumerate((("sup_tickets", 0.005), ("sup_tickets", 0.05), ("none", None))):
        d = tmp_path / "runs" / f"r{k}"
        d.mkdir(parents=True)
        torch.save({"format": "sparse_exp.masks/v1", "masks": {"fc.weight": t([1, k % 2, 0, 1])}, "meta": {}},
                   d / "masks.pt")
        rows.append({"status": "completed", "path": str(d), "dataset": "fashion_mnist", "model": "lenet_300_100",
                     "sparsity": 0.5, "sparsifier": "rigl", "superposer": sup, "seed": 0,
                     "cfg.superposer.lr_high": float("nan") if lr is None else lr})
    (tmp_path / "out").mkdir()
    md = write_mask_iou(pd.DataFrame(rows), tmp_path / "out")[2].read_text()
    assert "| run | rigl s0 | rigl+sup_tickets s0 lr_high=0.005 | rigl+sup_tickets s0 lr_high=0.05 |" in md, md
    # a run without the key (no superposer) does not make the others differ: one Sup-tickets run keeps a plain label
    md = write_mask_iou(pd.DataFrame([rows[0], rows[2]]), tmp_path / "out")[2].read_text()
    assert "| run | rigl s0 | rigl+sup_tickets s0 |" in md, md
