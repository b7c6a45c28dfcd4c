"""W&B logging, offline (tests never touch the network): one W&B run per run directory, also across resume."""

import os

from conftest import compose_cfg, needs_data

from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run


@needs_data
def test_wandb_offline_run_id_is_reused_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ["logger=wandb", "epochs=2", "model=lenet_300_100", "sparsifier.delta_t=4"]
    rd = RunDir(tmp_path / "run")
    run(compose_cfg(overrides + ["stop_after_epochs=1"]), rd.path)
    first_id = rd.wandb_id_path.read_text().strip()
    assert first_id
    summary = run(compose_cfg(overrides), rd.path)
    assert summary["status"] == "completed"
    assert rd.wandb_id_path.read_text().strip() == first_id
    # One offline segment per process (first run + resume). W&B names a segment
    # offline-run-<time>-<id>, adding "-1" when two start in the same second, so the
    # run id is read from the segment's run-<id>.wandb file, not from its name.
    offline = sorted(p for p in (rd.path / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert len(offline) == 2, os.listdir(rd.path / "wandb")
    for segment in offline:
        ids = {f.name for f in segment.glob("run-*.wandb")}
        assert ids == {f"run-{first_id}.wandb"}, (segment.name, ids)
