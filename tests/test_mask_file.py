"""``sparsifier=mask_file`` end to end: a run trains from the ``masks.pt`` an earlier run wrote, and its
masks are exactly the file's (static training of a given mask: "any mask")."""

import pytest
import torch
from conftest import compose_cfg, needs_data

from sparse_exp.config.errors import ConfigError, UserError
from sparse_exp.run.run_dir import MASKS_FORMAT, RunDir
from sparse_exp.train import run

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`


def file_masks(path):
    obj = torch.load(path, map_location="cpu", weights_only=False)
    assert obj["format"] == MASKS_FORMAT
    return obj["masks"]


@needs_data
@pytest.mark.parametrize("source", [
    ["sparsifier=snip", "epochs=1"],
    # the ultimate ticket of a Sup-tickets run: re-pruned globally, so its layer densities are not ERK's
    ["sparsifier=rigl", "sparsifier.delta_t=4", "epochs=2", "superposer=sup_tickets",
     "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"],
], ids=["snip", "ultimate-ticket"])
def test_trains_from_an_earlier_runs_masks(tmp_path, source):
    run(compose_cfg(source + ["sparsity=0.9"]), tmp_path / "source")
    path = tmp_path / "source" / "masks.pt"
    want = file_masks(path)
    summary = run(compose_cfg(["sparsifier=mask_file", f"sparsifier.path={path}", "sparsity=0.9", "epochs=2",
                               "check_invariants=true"]), tmp_path / "run")
    assert summary["status"] == "completed" and summary["sparsifier"] == "mask_file"
    got = file_masks(tmp_path / "run" / "masks.pt")
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name].bool(), want[name].bool()), f"{name}: the trained mask is not the file's"
    weights = RunDir(tmp_path / "run").load_checkpoint()["model"]
    for name in want:
        assert not weights[name][~want[name].bool()].any(), f"{name}: weights off the file's mask are not zero"
    assert abs(summary["sparsity/global"] - 0.9) <= 1e-3


@needs_data
def test_a_mask_of_another_sparsity_is_refused(tmp_path):
    run(compose_cfg(["sparsifier=static", "sparsity=0.9", "epochs=1"]), tmp_path / "source")
    cfg = compose_cfg(["sparsifier=mask_file", f"sparsifier.path={tmp_path / 'source' / 'masks.pt'}",
                       "sparsity=0.95", "epochs=1"])
    with pytest.raises(ConfigError, match="sparsity"):
        run(cfg, tmp_path / "run")


class _Payload:
    """Unpickling it would run code: it creates the file named by ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    """Mask files, tickets and checkpoints may come from other people: they load with ``weights_only=True``."""
    from sparse_exp.sparse.sparsifiers.mask_file import load_mask_file

    marker = tmp_path / "ran"
    bad = tmp_path / "masks.pt"
    torch.save({"format": MASKS_FORMAT, "masks": {"fc.weight": torch.ones(2, 2, dtype=torch.bool)},
                "extra": _Payload(marker)}, bad)
    with pytest.raises(ConfigError, match="is not a readable torch file"):
        load_mask_file(bad)
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    torch.save({"format": "sparse_exp.checkpoint/v2", "extra": _Payload(marker)}, run_dir.checkpoint_path)
    with pytest.raises(UserError, match="is unreadable"):
        run_dir.load_checkpoint()
    assert not marker.exists(), "unpickling ran code from the file"
