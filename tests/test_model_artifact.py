"""``model.pt`` and ``sparse_exp.load`` (sparse_exp/run/artifact.py): every completed run writes its reported model;
``load`` rebuilds it, and its test accuracy, computed here by a plain loop, is ``summary.json``'s ``test/acc`` exactly,
for a plain run, a ``report=best_val`` run whose best epoch is not the last, and a Sup-tickets run (the ultimate
ticket, BN statistics re-estimated once). Refusals are one line; a resumed ``best_val`` run writes the same file.
"""

import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_cfg, needs_data
from omegaconf import OmegaConf

import sparse_exp
from sparse_exp.callbacks.best_val import BestValReport
from sparse_exp.config.errors import UserError
from sparse_exp.data import build_data
from sparse_exp.run.artifact import MODEL_FORMAT
from sparse_exp.train import run

PLAIN = ["sparsifier=static", "model=lenet_300_100", "epochs=2"]
#: a constant, high LR: the validation accuracy peaks before the last epoch (epoch 2 of 4; tests/test_report.py)
BEST_VAL = ["sparsifier=static", "model=lenet_300_100", "epochs=4", "schedule=constant", "optimizer.lr=0.3",
            "report=best_val"]
SUP = ["sparsifier=rigl", "sparsifier.delta_t=4", "epochs=4", "superposer=sup_tickets",
       "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"]
CASES = {"plain": (PLAIN, "final"), "best_val": (BEST_VAL, "best_val"), "sup_tickets": (SUP, "ultimate")}


def test_accuracy(model, cfg):
    """Top-1 accuracy (%) of ``model`` on the run's test split, as ``summary.json`` computes it."""
    data = build_data(cfg.dataset, seed=cfg.seed, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                      device="cpu")
    with torch.no_grad():
        hits = [model(x).argmax(1) == y for x, y in data.test.iterate(0)]
    return torch.cat(hits).float().mean().item() * 100.0


test_accuracy.__test__ = False  # a helper, not a test


def one_line(exc):
    text = str(exc.value)
    assert "\n" not in text and text, text
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifact")
    out = {}
    for name, (overrides, _) in CASES.items():
        summary = run(compose_cfg(overrides), tmp / name)
        assert summary["status"] == "completed"
        out[name] = SimpleNamespace(path=tmp / name, summary=summary)
    return out


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("case", list(CASES))
def test_the_loaded_model_is_the_reported_one(runs, case):
    r, which = runs[case], CASES[case][1]
    model, meta = sparse_exp.load(r.path)
    assert not model.training and meta["which"] == which and meta["source"] == "model.pt"
    assert test_accuracy(model, OmegaConf.create(meta["config"])) == r.summary["test/acc"]
    if case == "best_val":  # the best epoch, not the final model, is what this run reports
        assert r.summary["report/source"] == "epoch" and r.summary["test/acc"] != r.summary["final/test/acc"]
    for name, mask in meta["masks"].items():  # the masks hold
        assert not model.state_dict()[name][~mask].any(), name


@pytest.mark.slow
@needs_data
def test_model_pt_is_plain_data_for_weights_only(runs):
    for case, r in runs.items():
        body = torch.load(r.path / "model.pt", weights_only=True)
        assert body["format"] == MODEL_FORMAT and body["which"] == CASES[case][1]
        assert body["config"] == OmegaConf.to_container(OmegaConf.load(r.path / "config.yaml"), resolve=True)
        assert body["network"] == {"as_built": True, "transformed_by": []}
        assert body["input"] == {"in_channels": 1, "num_classes": 10, "image_size": 28}
        assert all(t.device.type == "cpu" for t in body["state"].values())
        assert all(m.dtype == torch.bool for m in body["masks"].values())
        if case != "best_val":  # masks.pt: the final model's, also under report=best_val
            masks = torch.load(r.path / "masks.pt", weights_only=True)["masks"]
            assert all(torch.equal(masks[n], body["masks"][n]) for n in masks)


@pytest.mark.slow
@needs_data
def test_refusals_are_one_clear_line(runs, tmp_path):
    plain, sup = runs["plain"], runs["sup_tickets"]
    with pytest.raises(UserError) as exc:
        sparse_exp.load(plain.path, which="ultimate")
    assert "reports the 'final' model" in one_line(exc) and "which='final'" in one_line(exc)
    assert sparse_exp.load(runs["best_val"].path, which="best_val")[1]["which"] == "best_val"
    chose_final = tmp_path / "best-val-chose-final"  # report=best_val, no epoch beat the final model
    shutil.copytree(plain.path, chose_final)
    body = torch.load(chose_final / "model.pt", weights_only=True)
    body["config"]["report"] = "best_val"
    torch.save(body, chose_final / "model.pt")
    assert sparse_exp.load(chose_final, which="best_val")[1]["which"] == "final"

    tampered = tmp_path / "tampered"
    shutil.copytree(plain.path, tampered)
    body = torch.load(tampered / "model.pt", weights_only=True)
    name, mask = next(iter(body["masks"].items()))
    body["state"][name][~mask] = 1.0
    torch.save(body, tampered / "model.pt")
    with pytest.raises(UserError) as exc:
        sparse_exp.load(tampered)
    assert f"{name!r} has {int((~mask).sum())} non-zero weights where its mask is False" in one_line(exc)

    old = tmp_path / "old-sup"  # a run made before model.pt: its checkpoint holds the last individual model
    shutil.copytree(sup.path, old)
    (old / "model.pt").unlink()
    with pytest.raises(UserError) as exc:
        sparse_exp.load(old)
    assert "made before runs wrote model.pt" in one_line(exc) and "sup_tickets" in one_line(exc)
    with pytest.raises(UserError) as exc:
        sparse_exp.load(tmp_path / "nowhere")
    assert "not a run directory" in one_line(exc)


@pytest.mark.slow
@needs_data
def test_an_older_run_whose_reported_model_is_final_loads_from_its_checkpoint(runs, tmp_path):
    old = tmp_path / "old-plain"
    shutil.copytree(runs["plain"].path, old)
    (old / "model.pt").unlink()
    model, meta = sparse_exp.load(old)
    assert meta["source"] == "checkpoint.pt" and meta["which"] == "final"
    assert test_accuracy(model, OmegaConf.create(meta["config"])) == runs["plain"].summary["test/acc"]
    (old / "summary.json").write_text('{"status": "running"}')
    with pytest.raises(UserError) as exc:
        sparse_exp.load(old)
    assert "no model.pt and is not a completed run" in one_line(exc)


@pytest.mark.slow
@needs_data
def test_a_resumed_best_val_run_reports_the_same_model(runs, tmp_path):
    full = runs["best_val"]
    after_best = full.summary["report/epoch"] + 1  # the best epoch's weights survive only through the checkpoint
    part = tmp_path / "resumed"
    assert run(compose_cfg(BEST_VAL + [f"stop_after_epochs={after_best}"]), part)["status"] == "stopped"
    assert not (part / "model.pt").exists(), "only a completed run writes model.pt"
    assert run(compose_cfg(BEST_VAL), part)["test/acc"] == full.summary["test/acc"]
    a, b = (torch.load(p / "model.pt", weights_only=True) for p in (full.path, part))
    assert a["which"] == b["which"] == "best_val"
    assert a["state"].keys() == b["state"].keys() and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])


def test_best_val_answers_its_best_epoch_only_when_it_beats_the_final_model(monkeypatch):
    monkeypatch.setattr("sparse_exp.callbacks.best_val.evaluate", lambda *a, **k: {"test/acc": 1.0})
    model = torch.nn.Linear(3, 2)
    state = SimpleNamespace(model=model, masking=SimpleNamespace(names=["weight"], masks={"weight": model.weight > 0}),
                            data=SimpleNamespace(test=None), num_classes=2, step=5, epoch=1, pre_steps=0)
    cb = BestValReport()
    cb.on_epoch_end(state, {"val/acc": 80.0})
    kept = model.weight.detach().clone()
    torch.nn.init.zeros_(model.weight)  # training goes on
    cb.final_metrics(state, {"val/acc": 70.0})
    which, got, masks = cb.reported_model(state)
    assert which == "best_val" and got is not model and torch.equal(got.weight, kept)
    assert torch.equal(masks["weight"], kept > 0)
    cb.final_metrics(state, {"val/acc": 90.0})
    assert cb.reported_model(state) is None, "the final model (or a superposer's) is the reported one"
