"""The boundary between logical and storage dtypes (edgeforge_runtime.dtypes, FORMAT.md §3.3):
low-bit arrays as storage and back, bfloat16 and zero-size arrays through the VM's tensor
conversion, and the error that names the ``lowbit`` extra when ml_dtypes is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeforge_runtime import InferenceSession, MissingDependencyError
from edgeforge_runtime.dtypes import LOWBIT_STORAGE, from_storage, storage_dtype, to_storage
from edgeforge_runtime.manifest import TensorSpec

ml_dtypes = pytest.importorskip("ml_dtypes")


@pytest.mark.parametrize("dtype", sorted(LOWBIT_STORAGE))
def test_low_bit_arrays_round_trip_through_storage(dtype) -> None:
    t = getattr(ml_dtypes, dtype)
    if dtype in ("int4", "uint4", "int2", "uint2"):
        info = ml_dtypes.iinfo(t)
        values = np.arange(int(info.min), int(info.max) + 1).astype(t)
        stored = to_storage(values, dtype)
        # The value, sign-extended: ml_dtypes keeps only the low bits of its byte.
        np.testing.assert_array_equal(stored, np.arange(int(info.min), int(info.max) + 1))
    else:
        values = np.arange(16 if dtype == "float4_e2m1fn" else 256, dtype=np.uint8).view(t)
        stored = to_storage(values, dtype)
        assert np.shares_memory(stored, values)  # a view: the bit pattern
        np.testing.assert_array_equal(stored, values.view(np.uint8))
    assert str(stored.dtype) == storage_dtype(dtype)
    back = from_storage(stored, dtype)
    assert back.dtype == t
    np.testing.assert_array_equal(back.view(np.uint8), values.view(np.uint8))


def test_ordinary_dtypes_are_their_own_storage() -> None:
    x = np.arange(4, dtype=np.float32)
    assert to_storage(x, "float32") is x and from_storage(x, "float32") is x
    assert storage_dtype("bfloat16") == "bfloat16"


def test_manifest_accepts_the_logical_dtypes() -> None:
    for dtype in LOWBIT_STORAGE:
        spec = TensorSpec.from_dict({"name": "x", "shape": [2], "dtype": dtype}, "inputs[0]")
        assert spec.dtype == dtype


def test_bfloat16_and_zero_size_arrays_cross_the_vm_boundary() -> None:
    from edgeforge_runtime._vm import _to_tensor, load_runtime, to_numpy

    ffi = load_runtime()
    x = np.array([1.5, -2.25, 3e38, np.inf], ml_dtypes.bfloat16)
    t = _to_tensor(ffi, x)
    assert str(t.dtype) == "bfloat16" and tuple(t.shape) == (4,)
    back = to_numpy(t)
    assert back.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back.view(np.uint16), x.view(np.uint16))

    empty = np.zeros((2, 0, 4), np.float32)
    t = _to_tensor(ffi, empty)  # numpy's strides for it are not compact: a fresh tensor
    assert tuple(t.shape) == (2, 0, 4) and str(t.dtype) == "float32"
    assert to_numpy(t).shape == (2, 0, 4)


def test_missing_ml_dtypes_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes → ImportError
    with pytest.raises(MissingDependencyError, match=r"edgeforge-runtime\[lowbit\]"):
        from_storage(np.zeros(2, np.uint8), "float8_e4m3fn")


def test_loading_a_low_bit_artifact_without_ml_dtypes(artifacts, helpers, test_key, tmp_path,
                                                       monkeypatch) -> None:
    """Refused at load time, before the library is loaded, with the extra named."""
    def change(manifest):
        manifest["outputs"][0]["dtype"] = "bfloat16"

    path = helpers.resign(artifacts.host, tmp_path / "bf16.efa", test_key, change)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(MissingDependencyError, match=r"bfloat16.*edgeforge-runtime\[lowbit\]"):
        InferenceSession(path, [test_key.pem_path])


def test_cli_reads_ml_dtypes_arrays_back_from_npy(tmp_path) -> None:
    """np.save stores ml_dtypes arrays as raw bytes ("|V2"); `run --input` views them as the
    input's dtype again."""
    from edgeforge_runtime.cli import _feed
    from edgeforge_runtime.session import NodeArg

    x = np.array([1.5, -2.0], ml_dtypes.bfloat16)
    np.save(tmp_path / "x.npy", x)

    class Session:
        def get_inputs(self):
            return [NodeArg("x", [2], "tensor(bfloat16)", "bfloat16")]

    feed = _feed([f"x={tmp_path / 'x.npy'}"], Session(), None)  # type: ignore[arg-type]
    assert feed["x"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(feed["x"], x)
