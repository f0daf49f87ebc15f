"""Expand + depthwise fusion (compiler.expand_dw): the hand-written kernel against numpy, the
rewrite against onnxruntime through build_cpu, and the patterns it must leave alone."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import expand_dw


def _reference(x, w1, b1, wd, bd, s, lo1, hi1, lo2, hi2):
    e = np.clip(np.einsum("nhwk,kc->nhwc", x.astype(np.float64), w1) + b1, lo1, hi1)
    ep = np.pad(e, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    oh, ow = (h - 1) // s + 1, (w - 1) // s + 1
    d = np.zeros((1, oh, ow, e.shape[3]))
    for ry in range(3):
        for rx in range(3):
            d += ep[:, ry:ry + s * (oh - 1) + 1:s, rx:rx + s * (ow - 1) + 1:s, :] * wd[ry, rx]
    return np.clip(d + bd, lo2, hi2)


@pytest.mark.parametrize(("h", "w", "c", "e", "s", "bands", "groups", "wt", "wo_t", "clamp", "nv"), [
    (12, 8, 8, 32, 1, 1, 1, 4, 4, (0.0, 6.0), 1),
    (12, 10, 8, 16, 1, 2, 1, 4, 5, (0.0, 3e38), 1),    # width not a multiple of the expand tile
    (12, 12, 4, 16, 2, 1, 2, 7, 6, (0.0, 6.0), 1),     # stride 2, two channel slices
    (11, 16, 8, 32, 2, 3, 2, 4, 8, (-3e38, 3e38), 1),  # odd height, 3 bands x 2 slices, no clamp
    (9, 10, 8, 48, 1, 1, 1, 4, 5, (0.0, 6.0), 3),      # 4 pixels x 3 vectors, ragged width
    (10, 5, 8, 32, 2, 2, 2, 5, 3, (0.0, 6.0), 2),      # KWS-like 5-wide rows, 5 x 2 per slice
])
def test_kernel_matches_numpy(h, w, c, e, s, bands, groups, wt, wo_t, clamp, nv):
    import tvm

    rng = np.random.default_rng(h * 100 + w)
    x = rng.standard_normal((1, h, w, c)).astype(np.float32)
    w1 = (rng.standard_normal((c, e)) * 0.4).astype(np.float32)
    b1 = rng.standard_normal(e).astype(np.float32)
    wd = (rng.standard_normal((3, 3, e)) * 0.4).astype(np.float32)
    bd = rng.standard_normal(e).astype(np.float32)
    lo, hi = clamp
    prim = expand_dw.kernel(h, w, c, e, s, lo, hi, lo, hi, lanes=8, bands=bands, groups=groups,
                            wt=wt, wo_t=wo_t, nv=nv)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "x86-64-v2"})
    lib = tvm.compile(tvm.IRModule({"main": prim}), target=target).mod
    oh, ow = (h - 1) // s + 1, (w - 1) // s + 1
    out = tvm.runtime.tensor(np.full((1, oh, ow, e), np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in (x, w1, b1, wd, bd)], out)
    want = _reference(x, w1, b1, wd, bd, s, lo, hi, lo, hi)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def _block_model(c: int, e: int, hw: int, stride: int, *, batch_norm: bool = False,
                 second_use: bool = False) -> onnx.ModelProto:
    """1x1 conv c->e + (bias, ReLU6 | batch norm, ReLU) -> depthwise 3x3 + same -> 1x1 conv e->8
    (MobileNetV2's inverted residual block; DS-CNN's batch-norm form). ``second_use``: the
    expanded tensor also feeds the output (the fusion must not apply)."""
    rng = np.random.default_rng(c + e + hw)
    arrs = {"w1": rng.standard_normal((e, c, 1, 1)) * 0.3, "b1": rng.standard_normal(e),
            "wd": rng.standard_normal((e, 1, 3, 3)) * 0.3, "bd": rng.standard_normal(e),
            "w2": rng.standard_normal((8, e, 1, 1)) * 0.3, "lo": np.array(0.0),
            "hi": np.array(6.0)}
    for n in ("1", "d") if batch_norm else ():
        arrs |= {f"g{n}": rng.random(e) + 0.5, f"be{n}": rng.standard_normal(e),
                 f"m{n}": rng.standard_normal(e), f"v{n}": rng.random(e) + 0.5}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrs.items()]
    if batch_norm:
        nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
                 helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"]),
                 helper.make_node("Relu", ["n1"], ["a1"]),
                 helper.make_node("Conv", ["a1", "wd"], ["c2"], group=e, pads=[1] * 4,
                                  strides=[stride] * 2),
                 helper.make_node("BatchNormalization", ["c2", "gd", "bed", "md", "vd"], ["n2"]),
                 helper.make_node("Relu", ["n2"], ["a2"])]
    else:
        nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
                 helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"]),
                 helper.make_node("Conv", ["a1", "wd", "bd"], ["c2"], group=e, pads=[1] * 4,
                                  strides=[stride] * 2),
                 helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"])]
    nodes.append(helper.make_node("Conv", ["a2", "w2"], ["y"]))
    oh = (hw - 1) // stride + 1
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, oh, oh])]
    if second_use:
        outputs.append(helper.make_tensor_value_info("a1", TensorProto.FLOAT, [1, e, hw, hw]))
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _build_and_compare(model: onnx.ModelProto, caplog) -> str:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.converters import install
    from compiler.optimize import build_cpu

    install()
    c, hw = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:3])
    x = np.random.default_rng(1).standard_normal((1, c, hw, hw)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "x86-64-v2"})
    with caplog.at_level(logging.INFO, logger="compiler.expand_dw"):
        ex = build_cpu(from_onnx(model, keep_params_in_input=False), target,
                       options={"measure": False, "candidates": 1})
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    for got, want in zip(outs, ref):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(want).max()))
    return caplog.text


@pytest.mark.parametrize(("stride", "batch_norm"), [(1, False), (2, False), (1, True)])
def test_rewrite_fuses_the_block_and_matches_onnxruntime(stride, batch_norm, caplog):
    text = _build_and_compare(_block_model(8, 32, 14, stride, batch_norm=batch_norm), caplog)
    assert "expand+depthwise: 1 pairs fused" in text


@pytest.mark.parametrize("case", ["second_use", "small"])
def test_rewrite_leaves_what_it_must_not_fuse(case, caplog, monkeypatch):
    """An expanded tensor with another use stays (fusing would compute it twice); one below a
    MIN_BYTES threshold stays too."""
    if case == "small":
        monkeypatch.setattr(expand_dw, "MIN_BYTES", 1 << 20)
    text = _build_and_compare(_block_model(8, 32, 14, 1, second_use=case == "second_use"),
                              caplog)
    assert "expand+depthwise" not in text


def test_aarch64_build_with_the_fused_kernel_verifies_under_qemu(tmp_path, worker, signer):
    """The kernel is plain TIR: cross-compiled for the rpi4 profile (NEON, 4 float lanes) it
    runs under qemu-user and matches onnxruntime (the compile job's own verification)."""
    from compiler.pipeline import compile_model
    from compiler.spec import CompileSpec
    from compiler.toolchain import emulator_for

    emu = emulator_for("aarch64")
    if isinstance(emu, str):
        pytest.fail(f"the arm64 sysroot must exist after scripts/setup.sh: {emu}")
    model = _block_model(8, 64, 64, 2)
    spec = CompileSpec(model_name="block", model_version="1", profiles=["rpi4"])
    [r] = compile_model(model.SerializeToString(), spec, signer, tmp_path, worker=worker).results
    assert r.status == "ok", r.error
    assert r.verified and r.verification["method"] == "qemu-user"
    assert r.verification["max_rel_error"] < 1e-4
    import tarfile

    with tarfile.open(r.artifact) as tar:
        assert b"expand_dw" in tar.extractfile("model.so").read()


@pytest.mark.parametrize(("hw", "threads"), [(14, 1), (64, 2)])
def test_small_pairs_run_on_one_thread(hw, threads):
    """A pair below PARALLEL_FLOPS (8->32 channels at 14x14: 0.3 MFLOP) is not split across the
    pool's threads: waking them costs more than it saves (KWS DS-CNN at 2 threads went from
    0.74x to 1.07x of onnxruntime's time with every pair split); 64x64 (4.5 MFLOP) is."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.converters import install

    install()
    mod = from_onnx(_block_model(8, 32, hw, 1), keep_params_in_input=False)
    mod = tvm.transform.Sequential([
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}),
        relax.transform.FoldConstant()])(mod)
    out, count = expand_dw.rewrite(mod, lanes=8, bands=2)
    assert count == 1
    [prim] = [f for f in out.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert f"T.parallel({threads})" in prim.script()


def test_x86_artifact_with_the_fused_kernel_runs_in_the_device_runtime(tmp_path, worker, signer,
                                                                       public_key):
    """Compile job -> signed artifact -> edgeforge_runtime's InferenceSession: the fused
    kernel's ring buffers come from the TVM runtime's workspace allocator, which the device
    runtime provides."""
    import tarfile

    from compiler.pipeline import compile_model
    from compiler.spec import CompileSpec
    from edgeforge_runtime import InferenceSession

    model = _block_model(8, 64, 64, 2)
    spec = CompileSpec(model_name="block", model_version="1", profiles=["x86_64"])
    [r] = compile_model(model.SerializeToString(), spec, signer, tmp_path, worker=worker).results
    assert r.status == "ok" and r.verified, r.error
    with tarfile.open(r.artifact) as tar:
        assert b"expand_dw" in tar.extractfile("model.so").read()
    x = np.random.default_rng(0).standard_normal((1, 8, 64, 64)).astype(np.float32)
    got = InferenceSession(r.artifact, trusted_keys=[public_key]).run(None, {"x": x})[0]
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_expand_tile_fits_the_registers_and_avoids_ragged_tiles():
    from compiler.expand_dw import expand_tile

    assert expand_tile(5, 8, 16) == (5, 2)     # KWS's 5-wide rows: no half-empty 4-pixel tile
    assert expand_tile(56, 18, 16) == (4, 3)   # MobileNetV2 56x56x144 on AVX2
    assert expand_tile(7, 120, 16) == (7, 1)   # 7-wide rows, 960 channels
    for w in (5, 7, 14, 28, 56, 112):
        for blocks in (4, 8, 12, 18, 72, 120):
            for regs in (16, 32):
                wt, nv = expand_tile(w, blocks, regs)
                assert blocks % nv == 0 and wt * nv + nv + 1 <= regs
