"""``report=last|best_val``: which model's test metrics a run reports (sparse_exp/callbacks/best_val.py).

Unit checks of :class:`BestValReport` on hand-made rows (eligibility, LR phases, ties, test evaluated only at
improving epochs, the final model as a candidate, checkpoint state), and tiny end-to-end runs: ``best_val``
reports the test metrics of the best-validation epoch without changing the training, and a run stopped (or
preempted mid-epoch) and resumed reports exactly what the uninterrupted one does.
"""

import io
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_cfg, needs_data

from sparse_exp.callbacks.best_val import BestValReport
from sparse_exp.config.errors import ConfigError
from sparse_exp.config.validate import validate
from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run
from sparse_exp.training.metrics import evaluate

#: a constant, high LR: the validation accuracy peaks before the last epoch (epoch 2 of 4 here)
BASE = ["sparsifier=static", "model=lenet_300_100", "epochs=4", "schedule=constant", "optimizer.lr=0.3"]
#: keys of summary.json that measure time or name places, not results
VOLATILE = ("time/", "finished_at", "run_dir", "git", "superpose/seconds", "superpose/epoch_fraction")


def results(summary):
    return {k: v for k, v in summary.items() if not k.startswith(VOLATILE)}


def rows(path):
    return [{k: v for k, v in r.items() if k != "time/epoch_s"} for r in RunDir(path).metrics()]


# ----------------------------------------------------------------------------- units (no data)
class FakeTest:
    """Stands in for ``evaluate`` on the test split: counts calls, returns the epoch's made-up metrics."""

    def __init__(self, state):
        self.state, self.calls = state, []

    def __call__(self, model, loader, num_classes, prefix=None):
        assert prefix == "test" and loader == "test-loader"
        self.calls.append(self.state.epoch)
        return {"test/acc": 10.0 * self.state.epoch, "test/nll": 1.0, "test/ece": 0.1}


@pytest.fixture
def fake(monkeypatch):
    masking = SimpleNamespace(names=["weight"], masks={"weight": torch.ones(2, 3, dtype=torch.bool)})
    state = SimpleNamespace(model=torch.nn.Linear(3, 2), masking=masking, data=SimpleNamespace(test="test-loader"),
                            num_classes=10, step=0, epoch=0, pre_steps=0, steps_per_epoch=5)
    test = FakeTest(state)
    monkeypatch.setattr("sparse_exp.callbacks.best_val.evaluate", test)
    cb = BestValReport()

    def epoch(val, **row):
        state.epoch += 1
        state.step += state.steps_per_epoch
        torch.nn.init.constant_(state.model.weight, float(state.epoch))  # each epoch's model is recognisable
        row = {"val/acc": val, "val/nll": 0.5, "val/ece": 0.05, "epoch": state.epoch, "phase": "main",
               "sparsity/global": 0.9, **row}
        cb.on_epoch_end(state, row)

    return SimpleNamespace(cb=cb, state=state, test=test, epoch=epoch)


FINAL = {"test/acc": 55.0, "test/nll": 2.0, "test/ece": 0.2, "val/acc": 60.0, "val/nll": 2.5, "val/ece": 0.3,
         "sparsity/global": 0.9}


def test_choice_on_val_only_test_at_improving_epochs_ties_first(fake):
    for val in (50.0, 70.0, 65.0, 70.0, 69.0):
        fake.epoch(val)
    assert fake.test.calls == [1, 2], "the test split is evaluated only at strictly improving epochs"
    out = fake.cb.final_metrics(fake.state, dict(FINAL))
    assert out["report/source"] == "epoch" and out["report/epoch"] == 2 and out["report/phase"] == "main"
    assert out["test/acc"] == 20.0 and out["val/acc"] == 70.0 and out["val/nll"] == 0.5
    assert out["report/mode"] == "best_val" and out["report/total_epochs"] == 5 and out["report/sparsity"] == 0.9
    assert {k: out[f"final/{k}"] for k in FINAL if k != "sparsity/global"} == {
        k: v for k, v in FINAL.items() if k != "sparsity/global"}
    (line, _) = fake.cb.summary_lines({**FINAL, **out})
    assert line.startswith("reported: best-validation epoch 2 of 5 (val 70.00 %")


def test_ineligible_and_lr_phase_epochs_are_never_candidates(fake):
    fake.state.pre_steps = 10  # two epochs of a sparsifier LR phase (e.g. IMP rounds) before the run's own
    fake.epoch(99.0)
    fake.epoch(98.0)
    fake.epoch(50.0)
    fake.epoch(97.0, **{"report/eligible": False})  # e.g. a network that will still lose modules
    fake.epoch(51.0, **{"report/eligible": True})
    assert fake.test.calls == [3, 5]
    assert fake.cb.best["epoch"] == 5 and fake.cb.best["val"]["val/acc"] == 51.0


def test_the_final_model_wins_unless_an_epoch_is_strictly_better(fake):
    fake.epoch(60.0)  # equal to the final model's val/acc: the final model is reported
    out = fake.cb.final_metrics(fake.state, dict(FINAL))
    assert out["report/source"] == "final" and out["report/epoch"] == 1 and "report/phase" not in out
    assert not any(k.startswith(("test/", "val/")) for k in out), "the final model's test/* / val/* stay"
    assert out["final/test/acc"] == 55.0 and out["report/sparsity"] == 0.9
    (line, _) = fake.cb.summary_lines({**FINAL, **out})
    assert line.startswith("reported: the final model, after epoch 1 of 1 (val 60.00 %")
    assert BestValReport().final_metrics(fake.state, dict(FINAL))["report/source"] == "final"  # no candidate


def test_state_round_trips_through_a_checkpoint(fake):
    fake.epoch(50.0)
    fake.epoch(70.0)
    buf = io.BytesIO()
    torch.save({"report": fake.cb.state_dict()}, buf)
    buf.seek(0)
    other = BestValReport()
    other.load_state_dict(torch.load(buf, weights_only=True)["report"], torch.device("cpu"))
    assert other.best == fake.cb.best
    assert torch.equal(other.snapshot["state"]["weight"], torch.full((2, 3), 2.0)), "the best epoch's weights"
    fresh = BestValReport()
    fresh.load_state_dict(BestValReport().state_dict(), torch.device("cpu"))
    assert fresh.best is None


def test_built_last_and_only_for_best_val():
    from sparse_exp.engine.build import build_callbacks

    names = [cb.name for cb in build_callbacks(compose_cfg(["superposer=sup_tickets", "report=best_val"]))]
    assert names == ["sup_tickets", "report"]
    assert [cb.name for cb in build_callbacks(compose_cfg(["report=last"]))] == []
    assert compose_cfg(BASE) == compose_cfg(BASE + ["report=last"]), "last is the default"


@pytest.mark.parametrize("overrides,allowed", [
    (["report=best"], "must be one of ['best_val', 'last']"),
    (["report=best_val", "dataset.val_size=0"], "needs dataset.val_size >= 1"),
])
def test_bad_report_is_refused_in_one_line(overrides, allowed):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg(overrides))
    msg = str(exc.value)
    assert exc.value.key == "report" and msg.startswith("report=") and allowed in msg and "\n" not in msg


def test_collect_reads_a_summary_without_report_as_last():
    from sparse_exp.analysis.collect import make_record

    cfg = {"model": {"name": "lenet5"}, "dataset": {"name": "fashion_mnist"}, "sparsifier": {"name": "static"},
           "superposer": {"name": "none"}, "distribution": {"name": "erk"}, "sparsity": 0.9, "seed": 0, "epochs": 2}
    done = {"status": "completed", "test/acc": 50.0}
    old = make_record(cfg, done, source="local", path="a", name="a", time=1.0)  # from before the key existed
    new = make_record(dict(cfg, report="last"), done, source="local", path="b", name="b", time=2.0)
    best = make_record(dict(cfg, report="best_val"), dict(done, report="best_val"), source="local", path="c",
                       name="c", time=3.0)
    bare = make_record(None, dict(done, **{k: cfg[k] for k in ("sparsity", "seed", "epochs")}), source="local",
                       path="d", name="d", time=4.0)
    assert old["report"] == new["report"] == bare["report"] == "last" and best["report"] == "best_val"
    assert old["run_id"] == new["run_id"] != best["run_id"]
    assert old["cell_id"] == new["cell_id"] != best["cell_id"]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same tiny run with ``report`` left at its default and with ``best_val``."""
    tmp = tmp_path_factory.mktemp("report")
    out = {"tmp": tmp}
    for name, extra in (("last", []), ("best", ["report=best_val"])):
        out[name] = run(compose_cfg(BASE + extra), tmp / name)
        assert out[name]["status"] == "completed"
    return out


@needs_data
def test_last_is_unchanged_and_best_val_does_not_change_training(trained):
    last, best, tmp = trained["last"], trained["best"], trained["tmp"]
    assert "report" not in last and not any(k.startswith(("report/", "final/")) for k in last)
    assert rows(tmp / "last") == rows(tmp / "best"), "the test evaluations at improving epochs change nothing"
    for k in ("test/acc", "test/nll", "test/ece", "val/acc", "val/nll", "val/ece"):
        assert best[f"final/{k}"] == last[k], k
    same = {k for k in last if not k.startswith(("test/", "val/", *VOLATILE))}
    assert {k: best[k] for k in same} == {k: last[k] for k in same}
    a, b = (RunDir(tmp / d).load_checkpoint()["model"] for d in ("last", "best"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_data
def test_best_val_reports_the_best_validation_epoch(trained):
    best, tmp = trained["best"], trained["tmp"]
    metrics = rows(tmp / "best")
    vals = [r["val/acc"] for r in metrics]
    top = vals.index(max(vals))  # ties -> the first
    assert max(vals) > best["final/val/acc"], "this config's validation accuracy peaks before the end"
    assert best["report/source"] == "epoch" and best["report/epoch"] == metrics[top]["epoch"] == top + 1
    assert best["report/total_epochs"] == len(metrics) and best["report"] == "best_val"
    for k in ("val/acc", "val/nll", "val/ece"):
        assert best[k] == metrics[top][k], k
    assert best["report/sparsity"] == metrics[top]["sparsity/global"]
    assert best["test/acc"] != best["final/test/acc"] or best["test/nll"] != best["final/test/nll"]


@needs_data
def test_stopped_and_preempted_runs_resume_to_the_same_report(trained):
    from sparse_exp.engine.build import build_run
    from sparse_exp.engine.loop import Preempted, Trainer

    full, tmp = trained["best"], trained["tmp"]
    cfg = compose_cfg(BASE + ["report=best_val"])
    epoch = full["report/epoch"]
    part = tmp / "stopped"
    assert run(compose_cfg(BASE + ["report=best_val", f"stop_after_epochs={epoch}"]), part)["status"] == "stopped"
    # the reported test metrics are those of the best epoch's model (the checkpoint after it)
    r = build_run(cfg)
    r.model.load_state_dict(RunDir(part).load_checkpoint()["model"])
    assert evaluate(r.model, r.data.test, r.state.num_classes, prefix="test") == {
        k: full[k] for k in ("test/acc", "test/nll", "test/ece")}
    assert results(run(cfg, part)) == results(full)

    class StepGuard:  # a preemption request mid-epoch, after the best epoch was recorded
        requested = property(lambda self: trainer.step >= (epoch + 1) * trainer.state.steps_per_epoch - 3)

    rd = RunDir(tmp / "preempted")
    rd.prepare(cfg)
    trainer = Trainer(cfg, rd)
    trainer.preemption = StepGuard()
    with pytest.raises(Preempted):
        trainer.fit()
    assert rd.load_checkpoint()["batch_in_epoch"] > 0
    assert results(run(cfg, rd.path)) == results(full)


@needs_data
def test_with_a_booster_the_final_model_is_its_model(tmp_path):
    s = run(compose_cfg(["sparsifier=rigl", "sparsifier.delta_t=4", "epochs=4", "superposer=sup_tickets",
                         "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1", "report=best_val"]),
            tmp_path / "run")
    metrics = rows(tmp_path / "run")
    best_row = max(r["val/acc"] for r in metrics)
    # the superposer's model is the final model (final/*); the last individual model stays under last/*
    assert s["last/val/acc"] == metrics[-1]["val/acc"] and s["tickets/count"] == 2
    if best_row > s["final/val/acc"]:
        assert s["report/source"] == "epoch" and s["val/acc"] == best_row
    else:
        assert s["report/source"] == "final" and s["test/acc"] == s["final/test/acc"] and not math.isnan(s["test/acc"])
