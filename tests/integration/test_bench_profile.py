"""bench.profile pairs edgeforge's fused kernels with onnxruntime's nodes (a developer tool:
checked for structure, never for speed)."""

from __future__ import annotations

import json
import re


def test_kws_kernels_pair_with_onnxruntime_nodes(tmp_path, capsys, monkeypatch):
    import os

    from bench.profile import main

    # main() sets TVM_NUM_THREADS for its own run: restored for the tests after this one
    monkeypatch.setenv("TVM_NUM_THREADS", os.environ.get("TVM_NUM_THREADS", "1"))

    out = tmp_path / "prof.json"
    assert main(["kws_dscnn", "--runs", "3", "--options", '{"measure": false}',
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    # DS-CNN: first conv, 4 x (depthwise + pointwise), the classifier: 10 onnxruntime nodes; on
    # our side the 3 pointwise -> next depthwise pairs are fused (compiler.expand_dw), so
    # 7 kernels, each fused one paired with 2 nodes
    assert len(rows) == 7, rows
    assert [r["function"].startswith("expand_dw") for r in rows] == [False, False] + [True] * 3 \
        + [False, False], rows
    assert [r["ort_op"] for r in rows] == ["Conv"] * 2 + ["Conv+Conv"] * 3 + ["Conv", "Gemm"]
    assert all("conv2d" in r["function"] for r in rows[:2] + rows[5:6])
    assert "matmul" in rows[6]["function"]
    assert all(r["ms"] > 0 and r["ort_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert re.search(r"onnxruntime \d+ nodes", capsys.readouterr().out)


def test_flop_count_of_conv_matmul_and_gemm():
    """bench's FLOP count (what its GFLOP/s figures divide): 2 x multiply-accumulates from the
    inferred shapes, grouped convolutions per group, elementwise work left out."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from bench.models import build_model, count_flops

    inits = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in
             (("w", (8, 3, 3, 3)), ("dw", (8, 1, 3, 3)), ("m", (4, 5)), ("g", (7, 5)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Conv", ["c", "dw"], ["d"], pads=[1, 1, 1, 1], group=8),
         helper.make_node("Relu", ["d"], ["r"]),
         helper.make_node("MatMul", ["r", "m"], ["p"]),            # [1, 8, 5, 4] x [4, 5]
         helper.make_node("Reshape", ["p", "shape"], ["q"]),
         helper.make_node("Gemm", ["q", "g"], ["y"], transB=1)],   # [40, 5] x [5, 7]
        "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [40, 7])],
        [*inits, numpy_helper.from_array(np.array([40, 5], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    conv = 2 * (8 * 5 * 4) * (3 * 3 * 3)     # output 8 x 5 x 4, 27 MACs each
    dw = 2 * (8 * 5 * 4) * 9                 # one input channel per output channel
    matmul = 2 * (8 * 5 * 5) * 4
    gemm = 2 * (40 * 7) * 5
    assert count_flops(model) == conv + dw + matmul + gemm
    # the benchmark set: MobileNetV2's 300 M and ResNet-18's 1.8 G multiply-accumulates
    assert abs(count_flops(build_model("mobilenetv2")) / 0.60e9 - 1) < 0.02
    assert abs(count_flops(build_model("resnet18")) / 3.63e9 - 1) < 0.02
