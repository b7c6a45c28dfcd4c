# make wheelhouse   (= python scripts/wheelhouse.py; WHEELHOUSE_ARGS='--set hydra --python 3.11 --wandb' for options)
"""Wheels of the run-time dependencies (not torch / torchvision) for an offline node, into ``wheelhouse/``.

Sets (``--set``):

* ``full`` (default): every run-time dependency in ``pyproject.toml`` but torch and torchvision, with its whole
  dependency closure, plus the test extra (pytest, pytest-timeout): what a node with only Python and a PyTorch
  build needs. torchmetrics and timm are fetched without their dependencies (torch / torchvision, which the node has,
  and the small packages listed in ``NO_DEPS``; timm's huggingface_hub and safetensors serve only pretrained
  weights, never used).
* ``hydra``: what a PyTorch image with the scientific stack (numpy, pandas, matplotlib, torchmetrics, tqdm) lacks:
  hydra-core, omegaconf, antlr4-python3-runtime, submitit, hydra-submitit-launcher and their dependencies
  (PyYAML, packaging, typing-extensions, cloudpickle), and timm (``model=vit``) without its dependencies. About 4 MB.

W&B (``wandb`` and its closure, ~25 MB) only with ``--wandb``; without it, ``logger=none`` runs everything.

The wheels are for ``--python`` (default 3.12, CPython) and ``--platform`` (default ``manylinux_2_28_x86_64``:
glibc >= 2.28, which PyTorch's own wheels need since 2.6; every older manylinux tag is accepted too), whatever
interpreter runs this script. A package that ships only an sdist (antlr4-python3-runtime 4.9.3) is built into a
pure-Python wheel first, here, and the resolver takes it from the wheelhouse. Needs pip and internet; the node
needs neither (docs/gpu.md):

    pip install --no-index --find-links wheelhouse hydra-core hydra-submitit-launcher ...
    pip install --no-index --no-deps --target /tmp/site wheelhouse/*.whl && export PYTHONPATH=/tmp/site:.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
HYDRA = ["hydra-core>=1.3,<1.4", "omegaconf>=2.3,<2.4", "antlr4-python3-runtime==4.9.3", "submitit>=1.5",
         "hydra-submitit-launcher>=1.2", "timm>=1.0,<1.1"]
SDIST_ONLY = ["antlr4-python3-runtime==4.9.3"]  # built into a wheel here
#: package -> its deps other than torch / torchvision that it needs (timm: huggingface_hub and safetensors serve only
#: its pretrained-weight loaders, which are never used; it imports without them)
NO_DEPS = {"torchmetrics": ["lightning-utilities>=0.8", "packaging>17.1"], "timm": ["PyYAML>=6.0"]}
SKIP = {"torch", "torchvision"}


def name_of(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def project_requirements(with_dev: bool) -> list[str]:
    """``pyproject.toml``'s dependencies (and its dev extra), as written there."""
    text = (ROOT / "pyproject.toml").read_text()
    if tomllib is not None:
        proj = tomllib.loads(text)["project"]
        reqs = list(proj["dependencies"]) + (list(proj["optional-dependencies"]["dev"]) if with_dev else [])
    else:  # the two lists are flat; enough for 3.10 without tomllib
        block = re.search(r"dependencies = \[(.*?)\]", text, re.S).group(1)
        reqs = re.findall(r'"([^"]+)"', block)
        if with_dev:
            reqs += re.findall(r'"([^"]+)"', re.search(r"dev = \[(.*?)\]", text).group(1))
    return reqs


def platforms(tag: str) -> list[str]:
    """``manylinux_2_28_x86_64`` -> that tag and every older manylinux tag of the architecture (pip matches one)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not m:
        return [tag]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for v, name in legacy.items() if v <= glibc]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=["full", "hydra"], default="full", dest="which")
    p.add_argument("--wandb", action="store_true", help="add wandb and its dependencies")
    p.add_argument("--no-dev", action="store_true", help="full set without pytest / pytest-timeout")
    p.add_argument("--python", default="3.12", help="target CPython version, e.g. 3.11 (default 3.12)")
    p.add_argument("--platform", default="manylinux_2_28_x86_64",
                   help="newest manylinux tag of the target (default manylinux_2_28_x86_64; e.g. "
                        "manylinux_2_28_aarch64)")
    p.add_argument("--out", default=str(ROOT / "wheelhouse"))
    p.add_argument("--keep", action="store_true", help="keep the wheels already in --out (default: remove them)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob("*.whl"))
    if stale and not args.keep:  # another set or target would mix in: start empty
        for w in stale:
            w.unlink()
        print(f"removed {len(stale)} wheels left in {out} by an earlier run (--keep keeps them)")

    if args.which == "hydra":
        reqs = list(HYDRA)
    else:
        reqs = [r for r in project_requirements(not args.no_dev) if name_of(r) not in SKIP]
    if not args.wandb:
        reqs = [r for r in reqs if name_of(r) != "wandb"]
    elif not any(name_of(r) == "wandb" for r in reqs):
        reqs.append("wandb>=0.17")
    no_deps = [r for r in reqs if name_of(r) in NO_DEPS]
    reqs = [r for r in reqs if name_of(r) not in NO_DEPS] + [d for r in no_deps for d in NO_DEPS[name_of(r)]]
    if not any(name_of(r) == "antlr4-python3-runtime" for r in reqs):
        reqs += SDIST_ONLY  # hydra-core needs it in either set

    # 1. the sdist-only packages, built here (pure Python, so the wheel fits every target)
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), *SDIST_ONLY)
    # 2. the closure, binary wheels for the target only; the built wheels are found in the wheelhouse itself
    py = args.python.replace(".", "")
    target = ["--only-binary=:all:", "--python-version", args.python, "--implementation", "cp",
              "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none"]
    for tag in platforms(args.platform):
        target += ["--platform", tag]
    target += ["--platform", "any"]
    pip("download", "--quiet", "--dest", str(out), "--find-links", str(out), *target, *reqs)
    if no_deps:
        pip("download", "--quiet", "--no-deps", "--dest", str(out), *target, *no_deps)
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {out} (set {args.which}, CPython {args.python}, {args.platform}):")
    for w in wheels:
        print("  " + w.name)


if __name__ == "__main__":
    main()
