"""The device runtime depends on nothing of the cloud side: no compiler/, no functions/, no AWS
SDK, no TVM compiler (``tvm``) — only the standard library, tvm_ffi and numpy."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import edgeforge_runtime

ALLOWED_THIRD_PARTY = {"tvm_ffi", "numpy"}
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
                   and n != "__future__"}
    assert not (third_party & FORBIDDEN), {n: used[n] for n in third_party & FORBIDDEN}
    assert third_party <= ALLOWED_THIRD_PARTY, {n: used[n] for n in third_party}
