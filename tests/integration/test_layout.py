"""The NHWC layout of the fast CPU default keeps operators TVM 0.27 can only legalize in NCHW in
NCHW (a ConvTranspose after a convolution: PP-OCRv4 det's scheduled build failed in VM codegen
and fell back to TVM's default pipeline, 24x slower than onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def test_conv_then_conv_transpose_builds_scheduled_and_matches_onnxruntime():
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.optimize import build_cpu

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    wt = (rng.standard_normal((8, 4, 2, 2)) * 0.3).astype(np.float32)  # ConvTranspose: C_in, C_out
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ConvTranspose", ["r", "wt"], ["y"], strides=[2, 2])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(wt, "wt")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    mod = from_onnx(onnx.load_from_string(model.SerializeToString()), keep_params_in_input=False)
    report: dict = {}
    # build_cpu raises when its scheduled build fails (the fallback lives in compiler._build)
    ex = build_cpu(mod, tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                           "mcpu": "x86-64-v2"}),
                   options={"measure": False, "candidates": 1}, report=report)
    assert report["options"]["layout"] == "NHWC"
    ours = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def _kws_like(rng) -> onnx.ModelProto:
    """A 1-channel input into a bias-free Conv + BatchNormalization + Relu, pooled and flattened
    into a Gemm (the shape of the benchmark's DS-CNN keyword spotter)."""
    c = 8
    inits = [numpy_helper.from_array((rng.standard_normal((c, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "m"),
             numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), "v"),
             numpy_helper.from_array(rng.standard_normal((c, 4)).astype(np.float32), "fc")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
         helper.make_node("Relu", ["n"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["y"])], "kws",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 12, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batch_norm_folds_into_the_conv_and_unit_transposes_are_views():
    """The BatchNormalization becomes the convolution's weight and bias (no subtract/divide
    epilogue per element), and the NHWC conversion's transposes that only move axes of extent 1
    (the 1-channel input, the pooled 1x1xC tensor) become reshapes: no transpose kernel is
    left, and the VM runs the reshapes as views."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.optimize import DEFAULT_OPTIONS, _preprocess, build_cpu

    rng = np.random.default_rng(5)
    model = _kws_like(rng)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"})
    prepared = _preprocess(from_onnx(model, keep_params_in_input=False), target,
                           {**DEFAULT_OPTIONS, "layout": "NHWC"})
    names = [gv.name_hint for gv in prepared.get_global_vars()]
    assert not any("transpose" in n or "subtract" in n or "divide" in n for n in names), names
    assert any(n.startswith("fused_conv2d_add_relu") for n in names), names
    ex = build_cpu(from_onnx(model, keep_params_in_input=False), target,
                   options={"measure": False, "candidates": 1})
    assert "vm.builtin.reshape" in ex.as_text()
    x = rng.standard_normal((1, 1, 12, 6)).astype(np.float32)
    ours = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
