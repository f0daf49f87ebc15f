"""Converters stack tensors as a concat of expand_dims (compiler.converters.stack), never with
relax.stack: TVM 0.27's layout inference for relax.stack writes a layout ("SAB") that matches no
initial layout, so ConvertLayout failed on any module holding one ("tvm::String index out of
bounds") and the CPU build fell back to the model's own layout for the whole model. ddddocr-old
(convolutions, then a DynamicQuantizeLSTM that stacks its hidden states) was built in NCHW."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _conv_lstm() -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    hidden, seq, feat = 8, 16, 4 * 8
    inits = [numpy_helper.from_array(a, n) for a, n in [
        ((rng.standard_normal((4, 2, 3, 3)) * 0.3).astype(np.float32), "w"),
        ((rng.standard_normal((2, 4 * hidden, feat)) * 0.2).astype(np.float32), "lw"),
        ((rng.standard_normal((2, 4 * hidden, hidden)) * 0.2).astype(np.float32), "lr"),
        ((rng.standard_normal((2, 8 * hidden)) * 0.1).astype(np.float32), "lb"),
        (np.array([seq, 1, feat], np.int64), "shp")]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[3, 0, 1, 2]),  # [W, N, C, H]
             helper.make_node("Reshape", ["t", "shp"], ["s"]),
             helper.make_node("LSTM", ["s", "lw", "lr", "lb"], ["y", "y_h"], hidden_size=hidden,
                              direction="bidirectional")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 2, 1, hidden]),
         helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [2, 1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), {
        "x": rng.standard_normal((1, 2, 8, seq)).astype(np.float32)}


def test_converters_emit_no_relax_stack_and_convert_layout_succeeds():
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.converters import install

    install()
    data, _ = _conv_lstm()
    mod = from_onnx(onnx.load_from_string(data), keep_params_in_input=False)
    assert "R.stack" not in mod.script() and "R.concat" in mod.script()
    with tvm.target.Target({"kind": "llvm"}):
        out = relax.transform.ConvertLayout(
            {"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)  # raised with relax.stack
    assert 'data_layout="NHWC"' in out.script()


def test_conv_then_lstm_builds_in_nhwc_and_matches_onnxruntime(tmp_path, caplog):
    from bench.conformance import TARGET
    from compiler._build import BuildRequest, build
    from edgeforge_runtime._vm import VirtualMachine

    data, feed = _conv_lstm()
    with caplog.at_level(logging.WARNING, logger="compiler.optimize"):
        res = build(BuildRequest(model_bytes=data, target=TARGET, cc="g++",
                                 out_path=str(tmp_path / "m.so"),
                                 optimize={"measure": False, "candidates": 1}), lambda _: None)
    assert not [r for r in caplog.records if "layout" in r.getMessage()], caplog.text
    assert res.schedule["options"]["layout"] == "NHWC"
    ours = [np.from_dlpack(t) for t in VirtualMachine(res.library).run([feed["x"]])]
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_tvm_frontend_stack_does_not_cost_the_nhwc_layout(caplog):
    """TVM's own converters emit relax.stack too (variadic Max/Min/Sum/Mean): the build rewrites
    any stack before ConvertLayout, so a conv followed by Max(a, b, c) stays in NHWC."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.converters import install
    from compiler.optimize import build_cpu

    rng = np.random.default_rng(9)
    w = numpy_helper.from_array((rng.standard_normal((4, 2, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Neg", ["a"], ["c"]),
             helper.make_node("Max", ["a", "b", "c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    install()
    mod = from_onnx(model, keep_params_in_input=False)
    assert "R.stack" in mod.script()  # TVM's variadic Max
    caplog.set_level(logging.INFO, logger="compiler.optimize")
    report: dict = {}
    ex = build_cpu(mod, tvm.target.Target("llvm"), report=report,
                   options={"measure": False, "candidates": 1})
    assert "layout conversion failed" not in caplog.text
    assert report["options"]["layout"] == "NHWC"
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
