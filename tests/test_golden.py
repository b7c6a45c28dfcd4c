"""Golden equivalence: short fixed-seed CPU runs of every sparsifier, Sup-tickets (CIA / CAA / CIMA and
each option) and LTH end with exactly the weights, masks and metrics recorded in ``tests/goldens.json``
(AVX512) or, on an AVX2 machine, ``tests/goldens_avx2.json``.

The goldens were recorded from the engine before the build / loop / callbacks refactor (issue 9), so
this test is the proof that the refactor changed no behaviour; it guards every later change the same
way. How they are made and what they hold: ``tests/golden_cases.py``.
"""

import json

import pytest

from conftest import needs_data
from golden_cases import CASES, golden_files, platform, recorded_for, run_case

pytestmark = pytest.mark.slow  # ~1 min of short trainings; still part of `make test`

MATCH = recorded_for(platform())
RECORDED = MATCH[1] if MATCH else None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Case name -> run directory; cases that read another case's masks.pt reuse its run."""
    return {}


def _skip_on_other_platform():
    if RECORDED is None:
        there = [json.loads(p.read_text())["platform"] for p in golden_files()]
        pytest.skip(f"goldens were recorded on {there}; this machine is {platform()}: bitwise float results are "
                    "not defined across torch versions or CPU instruction sets (record this platform's with "
                    "`python tests/golden_cases.py --write` from a known-good commit)")


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.name)
def test_every_case_is_recorded(path):
    assert set(json.loads(path.read_text())["cases"]) == set(CASES)


@needs_data
@pytest.mark.parametrize("name", list(CASES))
def test_golden(name, tmp_path_factory, trained):
    _skip_on_other_platform()
    source = CASES[name][1]
    if source is not None and source not in trained:
        run_case(source, tmp_path_factory.mktemp(source), trained)
    got = json.loads(json.dumps(run_case(name, tmp_path_factory.mktemp(name), trained)))  # the file's types
    want = RECORDED["cases"][name]
    assert got["masks"] == want["masks"], "final masks differ"
    assert got["model"] == want["model"], "final weights differ"
    assert got["metrics"] == want["metrics"], "per-epoch metrics differ"
    assert got["summary"] == want["summary"], "summary.json differs"
