"""InferenceSession on a real compiled artifact: results, the onnxruntime-shaped API, feed errors,
devices, and that no TVM compiler is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgeforge_runtime import (
    DeviceUnavailableError,
    InferenceSession,
    NodeArg,
    SessionOptions,
    read_manifest,
)


@pytest.fixture(scope="module")
def sess(artifacts) -> InferenceSession:
    return InferenceSession(artifacts.host, [artifacts.public_key])


def _close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_outputs_match_onnxruntime(sess, artifacts) -> None:
    outputs = sess.run(None, artifacts.feed)
    assert len(outputs) == len(artifacts.expected)
    for got, want in zip(outputs, artifacts.expected):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        _close(got, want)


def test_repeated_runs_are_stable_and_outputs_are_not_overwritten(sess, artifacts) -> None:
    first = sess.run(None, artifacts.feed)[0]
    kept = first.copy()
    other = {k: np.zeros_like(v) for k, v in artifacts.feed.items()}
    for _ in range(5):
        sess.run(None, other)
    np.testing.assert_array_equal(first, kept)
    _close(sess.run(None, artifacts.feed)[0], artifacts.expected[0])


def test_the_onnxruntime_shaped_api(sess, artifacts) -> None:
    manifest = read_manifest(artifacts.host)[0]
    [inp] = sess.get_inputs()
    assert inp == NodeArg(name="input", shape=[1, 3, 8, 8], type="tensor(float)", dtype="float32")
    assert [o.name for o in sess.get_outputs()] == [t.name for t in manifest.outputs]
    assert sess.get_providers() == ["CPUExecutionProvider"]
    meta = sess.get_modelmeta()
    assert meta["name"] == manifest.model.name and meta["profile"] == manifest.profile.name
    assert sess.manifest == manifest
    sess.get_inputs().clear()  # callers get copies
    assert len(sess.get_inputs()) == 1


def test_output_names_select_outputs(sess, artifacts) -> None:
    name = sess.get_outputs()[0].name
    [only] = sess.run([name], artifacts.feed)
    _close(only, artifacts.expected[0])
    with pytest.raises(ValueError, match="unknown outputs"):
        sess.run(["nope"], artifacts.feed)


def test_non_contiguous_and_misaligned_inputs(sess, artifacts) -> None:
    x = artifacts.feed["input"]
    transposed = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not transposed.flags["C_CONTIGUOUS"]
    _close(sess.run(None, {"input": transposed})[0], artifacts.expected[0])
    raw = np.zeros(x.nbytes + 8, dtype=np.uint8)
    misaligned = raw[4 : 4 + x.nbytes].view(np.float32).reshape(x.shape)
    misaligned[...] = x
    assert misaligned.ctypes.data % 16 != 0
    _close(sess.run(None, {"input": misaligned})[0], artifacts.expected[0])
    readonly = x.copy()
    readonly.flags.writeable = False  # e.g. np.frombuffer over bytes, or onnx's test data
    _close(sess.run(None, {"input": readonly})[0], artifacts.expected[0])


@pytest.mark.parametrize(("feed", "match"), [
    ({}, r"missing \['input'\]"),
    ({"input": np.zeros((1, 3, 8, 8), np.float32), "extra": np.zeros(1)}, r"unexpected \['extra'\]"),
    ({"inputs": np.zeros((1, 3, 8, 8), np.float32)}, "missing"),
    ({"input": np.zeros((1, 3, 8, 9), np.float32)}, r"shape \[1, 3, 8, 9\], expected \[1, 3, 8, 8\]"),
    ({"input": np.zeros((3, 8, 8), np.float32)}, "shape"),
    ({"input": np.zeros((1, 3, 8, 8), np.float64)}, "dtype float64, expected float32"),
    ({"input": np.zeros((1, 3, 8, 8), np.int32)}, "dtype int32"),
    ({"input": [[1.0, 2.0]]}, "dtype float64"),
], ids=["missing", "unexpected", "misspelt", "wrong-shape", "wrong-rank", "float64", "int32",
        "list"])
def test_feed_errors_raise_value_error(sess, feed, match) -> None:
    with pytest.raises(ValueError, match=match):
        sess.run(None, feed)


def test_feed_must_be_a_mapping(sess, artifacts) -> None:
    with pytest.raises(ValueError, match="dict"):
        sess.run(None, [artifacts.feed["input"]])  # type: ignore[arg-type]


def test_providers(artifacts) -> None:
    keys = [artifacts.public_key]
    s = InferenceSession(artifacts.host, keys, providers=["CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="compiled for device 'cpu'"):
        InferenceSession(artifacts.host, keys, providers=["CUDAExecutionProvider"])
    with pytest.raises(ValueError, match="unknown providers"):
        InferenceSession(artifacts.host, keys, providers=["TensorrtExecutionProvider"])


def test_thread_option_and_extract_dir_cleanup(artifacts, tmp_path) -> None:
    s = InferenceSession(artifacts.host, [artifacts.public_key],
                         SessionOptions(intra_op_num_threads=1, extract_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == [], "the extracted library must be removed once loaded"
    _close(s.run(None, artifacts.feed)[0], artifacts.expected[0])


def test_cuda_artifact_without_a_driver(artifacts, helpers) -> None:
    if artifacts.cuda is None:
        pytest.skip("no CUDA artifact was built (nvcc missing?)")
    if helpers.has_cuda_driver():
        pytest.skip("this machine has a CUDA driver: the refusal cannot be observed")
    with pytest.raises(DeviceUnavailableError, match="CUDA") as info:
        InferenceSession(artifacts.cuda, [artifacts.public_key])
    assert "libcuda" in str(info.value)
    with pytest.raises(ValueError, match="compiled for device 'cuda'"):
        InferenceSession(artifacts.cuda, [artifacts.public_key], providers=["CPUExecutionProvider"])


def test_no_compiler_is_imported(artifacts) -> None:
    """The device path never imports tvm (the 300 MB compiler), the edgeforge compiler,
    boto3 or cryptography."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from edgeforge_runtime import InferenceSession
        s = InferenceSession({str(artifacts.host)!r}, [{str(artifacts.public_key)!r}])
        s.run(None, {{"input": np.zeros((1, 3, 8, 8), np.float32)}})
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in ("tvm", "compiler", "boto3", "botocore", "cryptography",
                                           "onnx", "onnxruntime", "pydantic"))
        print(",".join(bad))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
