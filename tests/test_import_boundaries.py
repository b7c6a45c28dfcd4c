"""Plug-ins talk only through the protocol and the registries (issue 23, item 4): the engine imports no
method package, and no method package imports another. Every import statement counts, those inside
functions too (parsed with ``ast``, nothing is imported)."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "sparse_exp"
#: the method packages: each plugs in through sparse_exp.registry and sparse_exp.callbacks.protocol only
METHOD_PACKAGES = ("sparse_exp.sparse.sparsifiers", "sparse_exp.superposers", "sparse_exp.tweaks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, name: str = ""):
    """``(line, module)`` of every import in ``path`` (module ``name``, default: from its path): ``import a.b``
    -> ``a.b``; ``from a import b`` -> ``a`` and ``a.b`` (``b`` may be a submodule); relative imports resolved
    against the module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (name or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def files_of(package: str):
    root = PACKAGE.parent / Path(*package.split("."))
    return sorted(root.rglob("*.py")) if root.is_dir() else sorted(root.parent.glob(root.name + ".py"))


def test_the_parser_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\ndef g():\n    from sparse_exp.tweaks import build_tweaks\n"
                 "    from ..superposers import x\n")
    found = {m for _, m in imported(f, "sparse_exp.engine.m")}
    assert {"os", "sparse_exp.tweaks.build_tweaks", "sparse_exp.superposers.x"} <= found


def test_the_packages_exist():
    assert files_of("sparse_exp.engine") and files_of("sparse_exp.tweaks") and files_of("sparse_exp.superposers")
    assert files_of("sparse_exp.sparse.sparsifiers")


@pytest.mark.parametrize("path", files_of("sparse_exp.engine"), ids=lambda p: p.name)
def test_the_engine_imports_no_method_package(path):
    bad = [(line, m) for line, m in imported(path) if any(within(m, p) for p in METHOD_PACKAGES)]
    assert not bad, f"{path.relative_to(ROOT)} imports method packages (use sparse_exp.registry): {bad}"


@pytest.mark.parametrize("package", METHOD_PACKAGES)
def test_no_method_package_imports_another(package):
    others = [p for p in METHOD_PACKAGES if p != package and not within(package, p) and not within(p, package)]
    bad = [(str(path.relative_to(ROOT)), line, m) for path in files_of(package) for line, m in imported(path)
           if any(within(m, o) for o in others)]
    assert not bad, f"{package} imports another method package (ask the registry or the protocol): {bad}"
