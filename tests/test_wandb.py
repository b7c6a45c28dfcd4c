"""W&B logging, offline (tests never touch the network): one W&B run per run directory, also across resume."""

import os

from conftest import compose_cfg, needs_data
from sparse_exp.rundir import RunDir
from sparse_exp.train import run


@needs_data
def test_wandb_offline_run_id_is_reused_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ["logger=wandb", "epochs=2", "model=lenet_300_100"]
    rd = RunDir(tmp_path / "run")
    run(compose_cfg(overrides + ["stop_after_epochs=1"]), rd.path)
    first_id = rd.wandb_id_path.read_text().strip()
    assert first_id
    summary = run(compose_cfg(overrides), rd.path)
    assert summary["status"] == "completed"
    assert rd.wandb_id_path.read_text().strip() == first_id
    offline = [p for p in (rd.path / "wandb").iterdir() if p.name.startswith("offline-run-")]
    assert offline and all(p.name.endswith(first_id) for p in offline), os.listdir(rd.path / "wandb")
