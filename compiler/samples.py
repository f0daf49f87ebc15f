"""Small ONNX models built in code, for the demo, the docs and the tests (no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["dynamic_batch_cnn", "tiny_cnn", "two_output_mlp", "unsupported_ops_model"]


def _model(graph: onnx.GraphProto, opset: int = 17) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="edgeforge-samples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_cnn(size: int = 8, channels: int = 4, seed: int = 0) -> bytes:
    """input [1,3,size,size] → Conv3x3 → Relu → GlobalAveragePool → Flatten → Gemm → Softmax."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    fc = numpy_helper.from_array(rng.standard_normal((channels, 5)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])],
        [w, b, fc],
    )
    return _model(graph)


def dynamic_batch_cnn() -> bytes:
    """Like :func:`tiny_cnn` without the head, with a symbolic batch dimension ``N``."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["out"], name="relu")],
        "dynamic_batch",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w],
    )
    return _model(graph)


def two_output_mlp() -> bytes:
    """Two inputs, two outputs: ``sum = a + b`` and ``prod = tanh(a @ w) * b``."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
         helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
         helper.make_node("Tanh", ["m"], ["t"], name="tanh"),
         helper.make_node("Mul", ["t", "b"], ["prod"], name="mul")],
        "two_output_mlp",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 6]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 6]),
         helper.make_tensor_value_info("prod", TensorProto.FLOAT, [2, 6])],
        [w],
    )
    return _model(graph)


def unsupported_ops_model() -> bytes:
    """Valid ONNX using operators the compiler cannot convert (Bernoulli, RandomUniformLike ×2)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="ok_relu"),
         helper.make_node("Bernoulli", ["r"], ["c"], name="bernoulli_a", seed=0.0),
         helper.make_node("RandomUniformLike", ["c"], ["d1"], name="rand_1"),
         helper.make_node("RandomUniformLike", ["x"], ["d2"], name="rand_2"),
         helper.make_node("Add", ["d1", "d2"], ["y"], name="ok_add")],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 3])],
    )
    return _model(graph)
