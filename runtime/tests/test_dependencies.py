"""The device runtime depends on nothing of the cloud side: no compiler/, no functions/, no AWS
SDK, no TVM compiler (``tvm``) — only the standard library, tvm_ffi and numpy."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import edgeforge_runtime

ALLOWED_THIRD_PARTY = {"tvm_ffi", "numpy"}
#: Optional dependencies (pyproject extras), imported lazily by one module each.
OPTIONAL = {"ml_dtypes": "dtypes.py"}
FORBIDDEN = {"compiler", "functions", "boto3", "botocore", "tvm", "cryptography", "onnx",
             "onnxruntime", "pydantic"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_runtime_imports_only_stdlib_tvm_ffi_and_numpy() -> None:
    package = Path(edgeforge_runtime.__file__).parent
    used: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for name in _imports(path):
            used.setdefault(name, set()).add(path.name)
    third_party = {n for n in used if n not in sys.stdlib_module_names and n != "edgeforge_runtime"
                   and n != "__future__" and n not in OPTIONAL}
    assert not (third_party & FORBIDDEN), {n: used[n] for n in third_party & FORBIDDEN}
    assert third_party <= ALLOWED_THIRD_PARTY, {n: used[n] for n in third_party}


def test_optional_dependencies_are_imported_lazily_in_one_module() -> None:
    """ml_dtypes (the ``lowbit`` extra) is imported only inside a function of dtypes.py, so
    the runtime imports and runs every other artifact without it."""
    package = Path(edgeforge_runtime.__file__).parent
    for name, module in OPTIONAL.items():
        users = {p.name for p in package.rglob("*.py") if name in _imports(p)}
        assert users == {module}, users
        tree = ast.parse((package / module).read_text())
        top_level = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import)
                     for a in n.names}
        top_level |= {n.module.split(".")[0] for n in tree.body
                      if isinstance(n, ast.ImportFrom) and n.module}
        assert name not in top_level


def test_the_lowbit_extra_declares_ml_dtypes() -> None:
    tomllib = pytest.importorskip("tomllib")

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert [r for r in extras["lowbit"] if r.startswith("ml_dtypes")], extras
