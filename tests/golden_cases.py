"""Golden runs: short fixed-seed CPU trainings whose final weights, masks and metrics must not change.

    python tests/golden_cases.py --write     # record this platform's goldens file (only from a known-good commit)

Recorded before the build / loop / callbacks refactor (issue 9) from the engine it replaced, and
checked bitwise by ``tests/test_golden.py`` ever since: every sparsifier, Sup-tickets with CIA / CAA /
CIMA and each of its options at least once, and an LTH run. Each case trains on real Fashion-MNIST
subsets with one CPU thread (``torch.set_num_threads(1)``), so results are bitwise repeatable on one
machine. Bitwise float results are not defined across CPU instruction sets: each goldens file records its
platform (torch version, CPU capability), the test checks against the file of this machine's platform and
skips, saying why, where there is none.

* ``tests/goldens.json``: AVX512, recorded before the refactor; the proof that it changed no behaviour.
* ``tests/goldens_avx2.json``: AVX2, recorded on 2026-12-03 from a commit whose runs matched
  ``goldens.json`` bitwise on AVX512 (its CI run), so AVX2 machines are guarded the same way from then on.

What is recorded per case: the SHA-256 of every tensor of the final model state and of the final masks
(``masks.pt``), every per-epoch row of ``metrics.jsonl`` and the result keys of ``summary.json``
(timings, paths, dates and the git SHA left out).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent

#: keys of summary.json / metrics.jsonl that measure time or name places, not results
VOLATILE = ("time/", "finished_at", "run_dir", "git", "superpose/seconds", "superpose/epoch_fraction",
            "superpose/eval_seconds", "superpose/eval_epoch_fraction")

_SUP = ["superposer=sup_tickets", "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"]

#: name -> (overrides, name of the case whose masks.pt it trains from, or None)
CASES: Dict[str, Tuple[List[str], Optional[str]]] = {
    "dense": (["sparsifier=dense", "sparsity=0", "epochs=2"], None),
    "static": (["sparsifier=static", "epochs=2"], None),
    "static-uniform-dense-first": (["sparsifier=static", "epochs=1", "distribution=uniform",
                                    "distribution.dense_first_layer=true"], None),
    "snip": (["sparsifier=snip", "epochs=2"], None),
    "grasp": (["sparsifier=grasp", "epochs=2"], None),
    "synflow": (["sparsifier=synflow", "sparsifier.iterations=10", "epochs=2"], None),
    "random": (["sparsifier=random", "epochs=2"], None),
    "mask_file": (["sparsifier=mask_file", "epochs=2"], "snip"),
    "set": (["sparsifier=set", "sparsifier.delta_t=5", "epochs=2"], None),
    "rigl": (["sparsifier=rigl", "sparsifier.delta_t=5", "epochs=2", "optimizer=adam", "optimizer.lr=0.001"], None),
    "granet": (["sparsifier=granet", "sparsifier.delta_t=4", "epochs=3"], None),
    "gmp": (["sparsifier=gmp", "sparsifier.delta_t=4", "epochs=3", "schedule=cosine"], None),
    "lth": (["sparsifier=lth", "sparsifier.rounds=2", "sparsifier.round_epochs=1", "sparsifier.rewind_epoch=0",
             "epochs=1"], None),
    "lth-rewind": (["sparsifier=lth", "sparsifier.rounds=2", "sparsifier.round_epochs=2",
                    "sparsifier.rewind_epoch=1", "epochs=1"], None),
    "sup-cia": (["sparsifier=rigl", "sparsifier.delta_t=5", "epochs=6", *_SUP, "superposer.averaging=cia"], None),
    "sup-caa-normal-ticket": (["sparsifier=rigl", "sparsifier.delta_t=5", "epochs=6", *_SUP,
                               "superposer.averaging=caa", "superposer.count_normal_phase_ticket=true"], None),
    "sup-cima-fge-layerwise": (["sparsifier=rigl", "sparsifier.delta_t=5", "epochs=6", *_SUP,
                                "superposer.averaging=cima", "superposer.beta=0.5", "superposer.lr_schedule=fge",
                                "superposer.reprune=layerwise"], None),
    "sup-set-swa-prune-running": (["sparsifier=set", "sparsifier.delta_t=5", "epochs=6", *_SUP,
                                   "superposer.lr_schedule=swa", "superposer.prune_running_average=true",
                                   "superposer.dst_updates_in_cycles=false"], None),
    "sup-static-num-tickets": (["sparsifier=static", "epochs=6", "superposer=sup_tickets",
                                "superposer.num_tickets=2", "superposer.cycle_epochs=1"], None),
    "sup-granet": (["sparsifier=granet", "sparsifier.delta_t=4", "epochs=6", *_SUP], None),
    "sup-resnet-bn-recompute": (["model=resnet32", "sparsifier=rigl", "sparsifier.delta_t=4", "epochs=4",
                                 "dataset.subset_train=256", *_SUP, "superposer.bn=recompute"], None),
}


def tensor_digest(t: Any) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (CPU, contiguous)."""
    import torch

    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def _clean(row: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def platform() -> Dict[str, str]:
    """What bitwise float results depend on besides the code."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def golden_files() -> List[Path]:
    """Every recorded goldens file, one per platform."""
    return sorted(HERE.glob("goldens*.json"))


def recorded_for(plat: Dict[str, str]) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """``(path, goldens)`` of the file recorded on platform ``plat``, or None."""
    for path in golden_files():
        data = json.loads(path.read_text())
        if data["platform"] == plat:
            return path, data
    return None


def default_out() -> Path:
    """Where ``--write`` records: this platform's file, or a new ``goldens_<capability>.json``."""
    match = recorded_for(platform())
    return match[0] if match else HERE / f"goldens_{platform()['cpu_capability'].lower()}.json"


def run_case(name: str, tmp: Path, done: Dict[str, Path]) -> Dict[str, Any]:
    """Train case ``name`` into ``tmp/name`` and return its record (see module doc)."""
    import torch

    sys.path.insert(0, str(HERE))
    from conftest import compose_cfg
    from sparse_exp.rundir import RunDir
    from sparse_exp.train import run

    overrides, source = CASES[name]
    overrides = list(overrides)
    if source is not None:
        overrides.append(f"sparsifier.path={done[source] / 'masks.pt'}")
    path = tmp / name
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(compose_cfg(overrides), path)
    finally:
        torch.set_num_threads(threads)
    done[name] = path
    rd = RunDir(path)
    state = rd.load_checkpoint()
    masks = torch.load(path / "masks.pt", map_location="cpu", weights_only=False)["masks"]
    return {
        "summary": _clean(summary),
        "metrics": [_clean(row) for row in rd.metrics()],
        "model": {k: tensor_digest(v) for k, v in state["model"].items()},
        "masks": {k: tensor_digest(v) for k, v in masks.items()},
    }


def record_all(tmp: Path) -> Dict[str, Any]:
    """Run every case in order (``mask_file`` after the case it reads) and return the goldens."""
    done: Dict[str, Path] = {}
    return {"platform": platform(), "cases": {name: run_case(name, tmp, done) for name in CASES}}


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write this platform's goldens file")
    ap.add_argument("--out", type=Path, default=None, help="the file to write (default: this platform's)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        goldens = record_all(Path(d))
    text = json.dumps(goldens, indent=1, sort_keys=True, allow_nan=True)
    if args.write:
        out = args.out or default_out()
        out.write_text(text + "\n")
        print(f"wrote {out} ({len(goldens['cases'])} cases)")
    else:
        print(text)
