"""``make tables``' superposition gain vs the tickets' diversity (sparse_exp.analysis.topology_gain): exact rows and
correlations on a synthetic DataFrame of runs."""

import math

import pandas as pd
import pytest

from sparse_exp.analysis.topology_gain import correlations, gain_tables, write_topology_gain

NAN = float("nan")
KEYS = ("test/acc", "tickets/mean/test/acc", "last/test/acc", "diversity/disagreement", "diversity/kl",
        "diversity/mask_iou", "diversity/mask_hamming")


def run(name, sparsifier, seed, values, vs_ultimate=(), sparsity=0.95, lr_high=0.005, cycle_epochs=2.0,
        superposer="sup_tickets", status="completed"):
    row = {"status": status, "name": name, "path": f"runs/{name}", "dataset": "fashion_mnist",
           "model": "lenet_300_100", "sparsity": sparsity, "sparsifier": sparsifier, "superposer": superposer,
           "seed": seed, "cfg.superposer.lr_high": lr_high, "cfg.superposer.cycle_epochs": cycle_epochs}
    row.update({k: v for k, v in zip(KEYS, values) if v is not None})  # None: the key is not in the summary
    row.update({f"tickets/{i}/mask_iou_vs_ultimate": v for i, v in vs_ultimate})
    return row


def grid():
    return pd.DataFrame([
        # group (0.95): 5 runs, two cycle LR peaks -> lr_high in the label
        run("a1", "rigl", 0, (88.20, 88.25, 88.00, 0.010, 0.020, 0.45, 0.040), [(1, 0.55), (2, 0.60)]),
        run("a2", "rigl", 1, (88.30, 88.30, 88.40, 0.012, 0.025, 0.44, 0.041), [(1, 0.56), (2, 0.62)]),
        run("a3", "rigl", 0, (88.40, 88.30, 88.20, 0.030, 0.060, 0.42, 0.043), [(1, 0.52), (2, 0.58)], lr_high=0.05),
        run("a4", "rigl", 1, (88.50, 88.30, None, 0.028, 0.055, 0.43, 0.042), [(0, 0.70), (1, 0.53), (2, 0.57)],
            lr_high=0.05),
        run("a5", "set", 0, (87.90, 87.60, 87.70, None, None, 0.41, 0.044), [(1, 0.50), (2, 0.51)]),
        # skipped: not Sup-tickets, not completed, one cyclic ticket (NaN IoU), no test acc per ticket
        run("no_sup", "rigl", 0, (88.0, None, None, None, None, None, None), superposer="none"),
        run("failed", "rigl", 2, (10.0, 10.0, 10.0, 0.5, 0.5, 0.3, 0.05), status="failed"),
        run("one_ticket", "rigl", 3, (88.0, 88.0, 88.0, NAN, NAN, NAN, NAN), [(1, 0.6)]),
        run("val_only", "rigl", 4, (88.0, None, 88.0, None, None, 0.4, 0.04)),
        # group (0.9): only 2 runs -> nothing
        run("b1", "rigl", 0, (85.0, 84.0, 84.5, 0.02, 0.04, 0.4, 0.05), sparsity=0.9),
        run("b2", "rigl", 1, (85.5, 84.0, 84.5, 0.03, 0.05, 0.3, 0.06), sparsity=0.9),
        # group (0.8): cycle_epochs differ; c1 and c2 (e.g. two averaging variants) share label and seed
        run("c1", "rigl", 0, (86.0, 85.0, 85.0, 0.02, 0.04, 0.5, 0.05), sparsity=0.8),
        run("c2", "rigl", 0, (86.5, 85.0, 85.0, 0.02, 0.04, 0.5, 0.05), sparsity=0.8),
        run("c3", "rigl", 1, (86.0, 85.5, 85.0, 0.03, 0.05, 0.4, 0.06), sparsity=0.8, cycle_epochs=4.0),
    ])


def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_rows_correlations_and_files(tmp_path):
    paths = write_topology_gain(grid(), tmp_path)
    stems = ["topology_gain_fashion_mnist_lenet_300_100_80", "topology_gain_fashion_mnist_lenet_300_100_95"]
    assert [p.name for p in paths] == [f"{s}.{e}" for s in stems for e in ("png", "pdf", "md")]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    md = (tmp_path / f"{stems[1]}.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "+sup_tickets" in line]
    assert rows == [
        "| rigl+sup_tickets lr_high=0.005 | 0 | 88.20 | 88.25 | 88.00 | -0.05 | +0.20 | 0.0100 | 0.0200 | 0.450 "
        "| 0.0400 | 0.550-0.600 |",
        "| rigl+sup_tickets lr_high=0.005 | 1 | 88.30 | 88.30 | 88.40 | +0.00 | -0.10 | 0.0120 | 0.0250 | 0.440 "
        "| 0.0410 | 0.560-0.620 |",
        "| rigl+sup_tickets lr_high=0.05 | 0 | 88.40 | 88.30 | 88.20 | +0.10 | +0.20 | 0.0300 | 0.0600 | 0.420 "
        "| 0.0430 | 0.520-0.580 |",
        "| rigl+sup_tickets lr_high=0.05 | 1 | 88.50 | 88.30 |  | +0.20 |  | 0.0280 | 0.0550 | 0.430 "
        "| 0.0420 | 0.530-0.700 |",
        "| set+sup_tickets lr_high=0.005 | 0 | 87.90 | 87.60 | 87.70 | +0.30 | +0.20 |  |  | 0.410 "
        "| 0.0440 | 0.500-0.510 |",
    ]
    # expected correlations from the summary values, independently of pandas
    gain = [88.20 - 88.25, 88.30 - 88.30, 88.40 - 88.30, 88.50 - 88.30, 87.90 - 87.60]
    iou, dis = [0.45, 0.44, 0.42, 0.43, 0.41], [0.010, 0.012, 0.030, 0.028]
    r_iou, r_dis = pearson(gain, iou), pearson(gain[:4], dis)
    # Spearman, no ties: gain ranks 1..5; IoU ranks 5,4,2,3,1 -> 1 - 6*38/120; disagreement 1,2,4,3 -> 1 - 6*2/60
    assert correlations(gain_tables(grid())[("fashion_mnist", "lenet_300_100", 0.95)]) == [
        ("tickets' mask IoU", pytest.approx(r_iou, abs=1e-12), pytest.approx(-0.9, abs=1e-12), 5),
        ("disagreement", pytest.approx(r_dis, abs=1e-12), pytest.approx(0.8, abs=1e-12), 4)]
    assert f"| tickets' mask IoU | {r_iou:.3f} | -0.900 | 5 |" in md
    assert f"| disagreement | {r_dis:.3f} | 0.800 | 4 |" in md
    assert "descriptive over the 5 runs at hand (settings and seeds pooled), not a test" in md
    # the 0.8 group: cycle_epochs named; label and seed coinciding -> the runs' names
    md80 = (tmp_path / f"{stems[0]}.md").read_text()
    assert [line.split(" | ")[0] for line in md80.splitlines() if "+sup_tickets" in line] == [
        "| rigl+sup_tickets cycle_epochs=2 (c1)", "| rigl+sup_tickets cycle_epochs=2 (c2)",
        "| rigl+sup_tickets cycle_epochs=4"]


def test_byte_identical_across_calls(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    pa, pb = write_topology_gain(grid(), a), write_topology_gain(grid(), b)
    assert [p.name for p in pa] == [p.name for p in pb]
    for x, y in zip(pa, pb):
        assert x.read_bytes() == y.read_bytes(), x.name


def test_nothing_to_write(tmp_path):
    assert write_topology_gain(pd.DataFrame(), tmp_path) == []
    older = grid().drop(columns=[c for c in grid().columns if c.startswith("diversity/")])  # runs before the keys
    assert write_topology_gain(older, tmp_path) == []
    assert write_topology_gain(grid()[grid()["sparsity"] == 0.9], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_make_tables_figures_end_with_the_gain_files(tmp_path):
    from sparse_exp.analysis.figures import write_figures

    names = [p.name for p in write_figures(grid(), tmp_path)]
    assert names[-6:] == [f"topology_gain_fashion_mnist_lenet_300_100_{s}.{e}" for s in (80, 95)
                          for e in ("png", "pdf", "md")]
