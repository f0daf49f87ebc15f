"""Real TVM compiles of tiny models for every kind of profile."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile

import numpy as np
import onnxruntime as ort
import pytest

from compiler import samples
from compiler.pipeline import compile_model
from compiler.spec import CompileSpec
from compiler.toolchain import emulator_for
from edgeforge_runtime import InferenceSession, read_manifest


def _compile(data, profiles, tmp_path, worker, signer, **spec):
    spec = CompileSpec(model_name="tiny", model_version="1", profiles=profiles, **spec)
    return compile_model(data, spec, signer, tmp_path, worker=worker)


def _library_bytes(artifact) -> bytes:
    with tarfile.open(artifact) as tar:
        return tar.extractfile("model.so").read()


def _elf_machine(lib: bytes) -> tuple[int, int]:
    """(EI_CLASS, e_machine): (2, 62) x86-64, (2, 183) aarch64, (1, 40) 32-bit ARM."""
    assert lib[:4] == b"\x7fELF"
    return lib[4], struct.unpack_from("<H", lib, 18)[0]


def test_supported_operator_list_matches_installed_tvm():
    from tvm.relax.frontend.onnx import onnx_frontend

    from compiler import lowbit
    from compiler.converters import EXTRA_OPS
    from compiler.validation import supported_operators

    # "If" is converted by the frontend itself, outside its table; lowbit's nodes are edgeforge's
    # own (ai.edgeforge, written by the low-bit lowering).
    assert supported_operators() == (frozenset(onnx_frontend._get_convert_map()) | EXTRA_OPS
                                     | lowbit.OPS | {"If"})


def test_x86_64_artifact_is_verified_and_runs(tmp_path, worker, signer, public_key, tiny_model):
    report = _compile(tiny_model, ["x86_64"], tmp_path, worker, signer)
    [r] = report.results
    assert r.status == "ok", r.error
    assert r.verified and r.verification["method"] == "native"
    assert r.verification["max_rel_error"] < 1e-4
    assert _elf_machine(_library_bytes(r.artifact)) == (2, 62)

    sess = InferenceSession(r.artifact, trusted_keys=[public_key])
    x = np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)
    [y] = sess.run(None, {"input": x})
    [expected] = ort.InferenceSession(tiny_model).run(None, {"input": x})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    m = sess.manifest
    assert m.model.source_sha256 == report.source_sha256
    assert m.profile.target["mcpu"] == "x86-64-v2" and m.abi["tvm"] == "0.27.0.post1"
    assert {"import_s", "compile_s", "export_s", "verify_s"} <= set(m.compile["timings"])


def test_multi_input_output_and_output_selection(tmp_path, worker, signer, public_key):
    data = samples.two_output_mlp()
    [r] = _compile(data, ["x86_64-avx2"], tmp_path, worker, signer).results
    assert r.status == "ok" and r.verified, r.error
    sess = InferenceSession(r.artifact, trusted_keys=[public_key])
    assert [o.name for o in sess.get_outputs()] == ["sum", "prod"]
    rng = np.random.default_rng(3)
    feed = {"a": rng.standard_normal((2, 6)).astype("float32"),
            "b": rng.standard_normal((2, 6)).astype("float32")}
    expected = ort.InferenceSession(data).run(["prod"], feed)
    [prod] = sess.run(["prod"], feed)
    np.testing.assert_allclose(prod, expected[0], rtol=1e-5, atol=1e-5)


def test_dynamic_input_with_shape_spec(tmp_path, worker, signer, public_key):
    [r] = _compile(samples.dynamic_batch_cnn(), ["x86_64"], tmp_path, worker, signer,
                   input_shapes={"image": [2, 3, 8, 8]}).results
    assert r.status == "ok" and r.verified, r.error
    sess = InferenceSession(r.artifact, trusted_keys=[public_key])
    assert sess.get_inputs()[0].shape == [2, 3, 8, 8]
    assert sess.get_outputs()[0].shape == [2, 4, 8, 8]


def test_aarch64_artifact_runs_under_qemu(tmp_path, worker, signer, tiny_model):
    emu = emulator_for("aarch64")
    if isinstance(emu, str):
        pytest.fail(f"the arm64 sysroot must exist after scripts/setup.sh: {emu}")
    [r] = _compile(tiny_model, ["rpi4"], tmp_path, worker, signer).results
    assert r.status == "ok", r.error
    assert r.verified and r.verification["method"] == "qemu-user"
    assert r.verification["max_rel_error"] < 1e-4
    assert _elf_machine(_library_bytes(r.artifact)) == (2, 183)


def test_armv7_cross_compiles(tmp_path, worker, signer, tiny_model):
    [r] = _compile(tiny_model, ["armv7"], tmp_path, worker, signer).results
    assert r.status == "ok", r.error
    assert _elf_machine(_library_bytes(r.artifact)) == (1, 40)
    manifest, _, _ = read_manifest(r.artifact)
    if isinstance(emulator_for("armv7l"), str):
        assert not r.verified and manifest.verification.method == "none"
        assert "armhf sysroot" in manifest.verification.reason
    else:
        assert r.verified and manifest.verification.method == "qemu-user"


@pytest.mark.cuda
def test_cuda_artifact_holds_compiled_kernels(tmp_path, worker, signer, tiny_model):
    from compiler.cuda import find_nvcc

    find_nvcc()  # the toolkit is part of the setup; fail loudly if it is gone
    report = _compile(tiny_model, ["cuda-sm80", "jetson-orin"], tmp_path, worker, signer)
    for r in report.results:
        assert r.status == "ok", r.error
        lib = _library_bytes(r.artifact)
        assert b"__global__" not in lib, "CUDA C source left in the artifact (needs NVRTC)"
        assert struct.pack("<I", 0xBA55ED50) in lib, "no fatbin in the artifact"
        manifest, _, _ = read_manifest(r.artifact)
        assert manifest.compile["kernels"] == "fatbin"
        assert not r.verified and "GPU" in manifest.verification.reason
    orin = read_manifest(report.results[1].artifact)[0]
    assert orin.profile.cuda_arch == "sm_87" and orin.profile.arch == "aarch64"
    assert _elf_machine(_library_bytes(report.results[1].artifact)) == (2, 183)


def test_one_failing_profile_does_not_block_the_others(tmp_path, worker, signer, tiny_model):
    # nvcc 13 cannot target Xavier's sm_72: a permanent toolchain error for that profile alone.
    report = _compile(tiny_model, ["jetson-xavier", "x86_64"], tmp_path, worker, signer)
    xavier, x86 = report.results
    assert xavier.status == "failed" and xavier.error_code == "toolchain_missing"
    assert "sm_72" in xavier.error
    assert x86.status == "ok" and x86.verified
    assert not report.ok


def test_same_input_gives_same_digests(tmp_path, worker, signer, tiny_model):
    """Same model, profile, options and schedules: the same bytes. A schedule budget of 0 keeps
    the seeded first samples (no timing, which may pick differently from run to run; that case,
    reproduced through the tuning database, is test_fast_default's)."""
    options = {"schedule_budget_s": 0, "tuning_db": str(tmp_path / "db")}
    a = _compile(tiny_model, ["x86_64"], tmp_path / "a", worker, signer, options=options).results[0]
    b = _compile(tiny_model, ["x86_64"], tmp_path / "b", worker, signer, options=options).results[0]
    ma, mb = read_manifest(a.artifact)[0], read_manifest(b.artifact)[0]
    assert ma.files == mb.files
    assert ma.model == mb.model and ma.inputs == mb.inputs and ma.outputs == mb.outputs


def test_cli_compile_json(tmp_path, tiny_model, monkeypatch):
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model)
    monkeypatch.setenv("EDGEFORGE_SIGNING_KEY", str(tmp_path / "key.pem"))
    proc = subprocess.run(
        [sys.executable, "-m", "compiler.cli", "compile", str(model), "-p", "x86_64",
         "-p", "jetson-xavier", "--out", str(tmp_path / "dist"), "--json"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr  # xavier fails (toolchain), x86_64 succeeds
    out = json.loads(proc.stdout)
    ok = next(r for r in out["results"] if r["profile"] == "x86_64")
    assert ok["status"] == "ok" and ok["verified"] and len(ok["sha256"]) == 64
    assert ok["artifact"].endswith("tiny-1-x86_64.efa") and ok["timings"]["compile_s"] > 0
    bad = next(r for r in out["results"] if r["profile"] == "jetson-xavier")
    assert bad["status"] == "failed" and bad["error_code"] == "toolchain_missing"
    assert "x86_64" in proc.stderr and "compile" in proc.stderr  # progress lines
    assert out["public_key"].endswith("key.pub.pem")


def _if_on_sample_rate_model() -> bytes:
    """out = If(sr == 16000, then: relu(x) * 2 (a nested If inside reads the outer value),
    else: -x): the shape of real exported speech models (silero-vad)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inner = helper.make_graph(
        [helper.make_node("Mul", ["r", "two"], ["inner_out"])], "inner", [],
        [helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(2, np.float32), "two")])
    inner_else = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["inner_out2"])], "inner_else", [],
        [helper.make_tensor_value_info("inner_out2", TensorProto.FLOAT, [1, 4])])
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("If", ["cond"], ["then_out"], then_branch=inner,
                          else_branch=inner_else)],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "k16"], ["cond"]),
         helper.make_node("If", ["cond"], ["out"], name="by_rate", then_branch=then,
                          else_branch=other)],
        "rate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                 helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(16000, np.int64), "k16")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_constant_input_folds_if_and_is_verified(tmp_path, worker, signer, public_key):
    data = _if_on_sample_rate_model()
    report = _compile(data, ["x86_64"], tmp_path, worker, signer,
                      constant_inputs={"sr": 16000})
    [r] = report.results
    assert r.status == "ok", r.error
    assert r.verified and r.verification["method"] == "native"
    manifest = read_manifest(r.artifact)[0]
    assert [i.name for i in manifest.inputs] == ["x"]  # sr is baked in
    assert manifest.compile["prepasses"]["inlined_ifs"] == 2
    sess = InferenceSession(r.artifact, trusted_keys=[public_key])
    x = np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)
    [y] = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x, 0) * 2)
