"""Attention's transposes folded into its batched matmuls (compiler.attention): no transpose
kernel is left, and the results still match onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.models import transformer


def _relax(model: onnx.ModelProto):
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.converters import install

    install()
    return from_onnx(model, keep_params_in_input=False)


def _ops(mod) -> list[str]:
    from tvm import relax

    names: list[str] = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: names.append(e.op.name) if isinstance(e, relax.Call)
        and hasattr(e.op, "name") else None)
    return names


def _run_legalized(mod, feed: dict) -> np.ndarray:
    import tvm
    from tvm import relax

    ex = tvm.compile(mod, target=tvm.target.Target("llvm"))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feed.values()])
    return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()


def _pytorch_style_attention(seq: int = 6, d: int = 16, heads: int = 2) -> onnx.ModelProto:
    """K split into heads as [b, h, s, hd] first, then transposed on its own ([0, 1, 3, 2]),
    the way torch.onnx exports ``k.transpose(-2, -1)``; Q is never transposed back."""
    rng = np.random.default_rng(1)
    hd = d // heads
    inits = [numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32) * 0.3, n)
             for n in ("wq", "wk", "wv")]
    inits.append(numpy_helper.from_array(np.array([1, seq, heads, hd], np.int64), "split"))
    nodes = [helper.make_node("MatMul", ["x", w], [w + "_o"]) for w in ("wq", "wk", "wv")]
    for t in ("wq", "wk", "wv"):
        nodes += [helper.make_node("Reshape", [t + "_o", "split"], [t + "_r"]),
                  helper.make_node("Transpose", [t + "_r"], [t + "_h"], perm=[0, 2, 1, 3])]
    nodes += [
        helper.make_node("Transpose", ["wk_h"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["wq_h", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "wv_h"], ["y"]),  # stays [b, h, s, hd]
    ]
    graph = helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, heads, seq, hd])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _check(model: onnx.ModelProto, expect_rewrites: int) -> None:
    from compiler import attention

    mod = _relax(model)
    assert "relax.permute_dims" in _ops(mod)
    out, n = attention.rewrite(mod)
    assert n == expect_rewrites
    assert "relax.permute_dims" not in _ops(out)  # every transpose was folded
    name = model.graph.input[0].name
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {name: np.random.default_rng(2).standard_normal(dims).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(_run_legalized(out, feed), ref, rtol=1e-5, atol=1e-5)


def test_encoder_attention_has_no_transpose_left():
    # the benchmark's encoder, scaled down: Q K^T reads K [0, 2, 3, 1] through its permutation,
    # P V writes straight into the [b, s, h, hd] order the head merge reshapes
    _check(transformer(layers=2, d=32, seq=8, heads=2, ffn=64), expect_rewrites=4)


def _matmul_count(mod) -> int:
    return _ops(mod).count("relax.matmul")


def test_projections_combine_and_attention_reads_their_slices():
    """Q, K and V of each layer become one matmul (weights side by side, biases too), and the
    attention matmuls read their heads straight from its columns: no slice or transpose kernel
    is left, and the results match onnxruntime."""
    from compiler import attention

    model = transformer(layers=2, d=32, seq=8, heads=2, ffn=64)
    mod = _relax(model)
    before = _matmul_count(mod)
    combined, n = attention.combine_projections(mod)
    assert n == 6  # 3 projections x 2 layers
    assert _matmul_count(combined) == before - 4
    out, k = attention.rewrite(combined)
    assert k == 4
    ops = _ops(out)
    assert "relax.strided_slice" not in ops and "relax.permute_dims" not in ops, ops
    feed = {"input": np.random.default_rng(4).standard_normal((1, 8, 32)).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(_run_legalized(out, feed), ref, rtol=1e-5, atol=1e-5)


def test_bias_free_projections_combine_too():
    """torch-style projections without a bias (MatMul only) combine the same way."""
    from compiler import attention

    model = _pytorch_style_attention()
    combined, n = attention.combine_projections(_relax(model))
    assert n == 3
    out, k = attention.rewrite(combined)
    assert k == 2 and "relax.strided_slice" not in _ops(out)
    feed = {"x": np.random.default_rng(5).standard_normal((1, 6, 16)).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(_run_legalized(out, feed), ref, rtol=1e-5, atol=1e-5)


def test_projections_read_elsewhere_are_not_combined():
    """Two matmuls of one input whose results are not only split into heads (one is also a
    model output) stay apart: combined, the slice would be a copy kernel of its own."""
    from tvm import relax

    from compiler import attention

    rng = np.random.default_rng(6)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            heads = []
            for _ in range(2):
                w = relax.const(rng.standard_normal((8, 8)).astype(np.float32))
                y = bb.emit(relax.op.matmul(x, w))
                heads.append(bb.emit(relax.op.reshape(y, [1, 4, 2, 4])))
            s = bb.emit(relax.op.matmul(bb.emit(relax.op.permute_dims(heads[0], [0, 2, 1, 3])),
                                        bb.emit(relax.op.permute_dims(heads[1], [0, 2, 3, 1]))))
            out = bb.emit_output(relax.Tuple([s, y]))  # y: the second projection, read again
        bb.emit_func_output(out)
    mod = bb.get()
    same, n = attention.combine_projections(mod)
    assert n == 0 and same is mod


def test_chained_transposes_compose():
    _check(_pytorch_style_attention(), expect_rewrites=2)


def test_plain_batched_matmul_is_left_alone():
    from tvm import relax

    from compiler import attention

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 2, 4, 8), "float32"))
    b = relax.Var("b", relax.TensorType((1, 2, 8, 4), "float32"))
    c = relax.Var("c", relax.TensorType((1, 1, 8, 4), "float32"))
    with bb.function("main", [a, b, c]):
        with bb.dataflow():
            mm = bb.emit(relax.op.matmul(a, b))  # nothing to fold
            bt = bb.emit(relax.op.permute_dims(c, [0, 1, 3, 2]))
            # a batch broadcast (1 against 2 heads) is not this rewrite's
            bc = bb.emit(relax.op.matmul(bb.emit(relax.op.permute_dims(a, [0, 1, 3, 2])), bt))
            out = bb.emit_output(relax.Tuple([mm, bc]))
        bb.emit_func_output(out)
    mod = bb.get()
    same, n = attention.rewrite(mod)
    assert n == 0 and same is mod


def test_scheduled_build_of_the_encoder_matches_onnxruntime():
    """Through the scheduled build (the new functions are searched like any matmul)."""
    import tvm
    from tvm import relax

    from compiler.optimize import build_cpu

    model = transformer(layers=1, d=32, seq=8, heads=2, ffn=64)
    feed = {"input": np.random.default_rng(3).standard_normal((1, 8, 32)).astype(np.float32)}
    report: dict = {}
    ex = build_cpu(_relax(model), tvm.target.Target(
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"}),
        options={"budget_s": 10}, report=report)
    names = [r["task"] for r in report["schedules"]]
    assert sum("attention_matmul" in n for n in names) == 2, names
    assert not any("transpose" in n or "strided_slice" in n for n in names), names
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(feed["input"])).numpy()
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
