"""The public surface of ``edgeforge_runtime``: ``__all__``, the error tree, the ABI pin, and
that FORMAT.md states the same numbers as the code."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import edgeforge_runtime as rt
from edgeforge_runtime import exceptions as exc


def test_all_matches_the_public_surface() -> None:
    public = {
        name for name, value in vars(rt).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert set(rt.__all__) == public
    assert sorted(rt.__all__, key=str.lower) == sorted(set(rt.__all__), key=str.lower)
    for name in rt.__all__:
        assert getattr(rt, name) is not None


def test_every_error_is_exported_and_named_error() -> None:
    errors = {n for n, v in vars(exc).items() if inspect.isclass(v) and issubclass(v, Exception)}
    assert errors == set(exc.__all__)
    assert errors <= set(rt.__all__)
    assert all(n.endswith("Error") for n in errors)


def test_the_error_tree() -> None:
    """As drawn at the top of exceptions.py."""
    tree = {
        exc.ArtifactError: exc.EdgeforgeRuntimeError,
        exc.ArchiveError: exc.ArtifactError, exc.ManifestError: exc.ArtifactError,
        exc.SignatureError: exc.ArtifactError, exc.UntrustedKeyError: exc.SignatureError,
        exc.DigestMismatchError: exc.ArtifactError, exc.ProfileMismatchError: exc.ArtifactError,
        exc.AbiMismatchError: exc.ArtifactError, exc.RollbackError: exc.ArtifactError,
        exc.RuntimeLoadError: exc.EdgeforgeRuntimeError,
        exc.DeviceUnavailableError: exc.RuntimeLoadError,
        exc.MissingDependencyError: exc.RuntimeLoadError,
        exc.RepositoryError: exc.EdgeforgeRuntimeError,
    }
    for cls, parent in tree.items():
        assert cls.__bases__ == (parent,), cls
    assert exc.EdgeforgeRuntimeError.__bases__ == (Exception,)
    doc = exc.__doc__ or ""
    for cls in tree:
        assert cls.__name__ in doc


def test_the_tvm_ffi_pin_is_the_runtime_abi() -> None:
    """pyproject's apache-tvm-ffi pin must equal RUNTIME_ABI['tvm_ffi']."""
    try:
        requires = importlib.metadata.requires("edgeforge-runtime") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("edgeforge-runtime is not installed (run from an installed package)")
    pins = [r for r in requires if r.replace(" ", "").startswith("apache-tvm-ffi")]
    assert pins == [f"apache-tvm-ffi=={rt.RUNTIME_ABI['tvm_ffi']}"]


def _format_md() -> str:
    path = Path(rt.__file__).parent / "FORMAT.md"
    if not path.exists():
        pytest.skip("FORMAT.md is not beside the package")
    return path.read_text()


def test_format_md_states_the_code_limits_and_names() -> None:
    text = _format_md()
    assert f"format version {rt.FORMAT_VERSION}" in text.lower()
    for field in dataclasses.fields(rt.Limits):
        default = field.default
        assert re.search(rf"`{field.name}`\s*\|\s*{default:,}|`{field.name}`.*\b{default}\b", text), (
            f"FORMAT.md does not state Limits.{field.name} = {default}")
    from edgeforge_runtime.manifest import _DTYPES, _MEMBER_RE, FORMAT_NAME
    from edgeforge_runtime.signature import ALGORITHM

    assert FORMAT_NAME in text and ALGORITHM in text
    assert _MEMBER_RE.pattern in text
    for dtype in _DTYPES:
        assert f"`{dtype}`" in text
    for key, version in rt.RUNTIME_ABI.items():
        assert f'"{key}": "{version}"' in text


def test_importing_the_runtime_is_light() -> None:
    """Importing the package (and its CLI) loads neither TVM, nor tvm_ffi, nor numpy."""
    code = ("import sys, edgeforge_runtime, edgeforge_runtime.cli; "
            "print(','.join(sorted(m for m in ('tvm', 'tvm_ffi', 'numpy', 'cryptography') "
            "if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == ""
