"""``git.json`` / the summary's ``git``: the commit a process was launched from, read once per process, so a grid's
runs never name a HEAD committed while the grid ran (:func:`sparse_exp.run.run_dir.git_info`)."""

import pytest

from sparse_exp.run import run_dir


def test_git_info_is_read_once_per_process_and_handed_out_as_a_copy(monkeypatch):
    first = run_dir.git_info()
    assert set(first) == {"sha", "dirty"}
    monkeypatch.setattr(run_dir.subprocess, "run", lambda *a, **k: pytest.fail("git was asked again"))
    first["sha"] = "changed by a caller"
    again = run_dir.git_info()
    assert again["sha"] != "changed by a caller" and again == run_dir.git_info()
