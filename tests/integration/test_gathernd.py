"""GatherND with constant indices through the scheduled CPU build (compiler/converters.py).

Regression: MiniLM-L6 (int8, torch export) reads its attention mask back through a GatherND
whose [1,1,1,128,2] indices the pre-passes fold to a constant. TVM's gather_nd reads that index
tensor with one load per coordinate; the scheduled build marked it layout-free and
MetaSchedule's RewriteLayout packed it through a non-injective map, so the mask came back
rotated by 64 tokens and the model's verification failed (max abs error 3.84) whenever the
mask held zeros."""

from __future__ import annotations

import numpy as np


def _model() -> tuple[bytes, dict[str, np.ndarray]]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n = 128
    mask_idx = np.stack([np.zeros(n, np.int64), np.arange(n)], -1).reshape(1, 1, 1, n, 2)
    perm_idx = np.stack([rng.integers(0, 4, 40), rng.integers(-8, 8, 40)], -1)  # negatives
    batch_idx = rng.integers(-5, 5, (3, 7, 1))  # batch_dims=1, rows of 6
    inits = [numpy_helper.from_array(a, name) for a, name in
             [(mask_idx, "mask_idx"), (perm_idx, "perm_idx"), (batch_idx, "batch_idx")]]
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_b"], to=TensorProto.BOOL),
        helper.make_node("GatherND", ["mask_b", "mask_idx"], ["mask_out"]),  # in order: a slice
        helper.make_node("GatherND", ["x", "perm_idx"], ["perm_out"]),        # a take
        helper.make_node("GatherND", ["y", "batch_idx"], ["batch_out"], batch_dims=1),
        helper.make_node("GatherND", ["x", "rt_idx"], ["rt_out"]),           # run-time indices
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("mask", TensorProto.INT64, [1, n]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8, 5]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6, 2]),
         helper.make_tensor_value_info("rt_idx", TensorProto.INT64, [9, 2])],
        [helper.make_tensor_value_info("mask_out", TensorProto.BOOL, [1, 1, 1, n]),
         helper.make_tensor_value_info("perm_out", TensorProto.FLOAT, [40, 5]),
         helper.make_tensor_value_info("batch_out", TensorProto.FLOAT, [3, 7, 2]),
         helper.make_tensor_value_info("rt_out", TensorProto.FLOAT, [9, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"mask": rng.integers(0, 2, (1, n)).astype(np.int64),
            "x": rng.standard_normal((4, 8, 5)).astype(np.float32),
            "y": rng.standard_normal((3, 6, 2)).astype(np.float32),
            "rt_idx": np.stack([rng.integers(0, 4, 9), rng.integers(0, 8, 9)], -1)}
    return model.SerializeToString(), feed


def test_gathernd_constant_indices_scheduled_build(tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    from bench.conformance import TARGET
    from compiler._build import BuildRequest, build
    from edgeforge_runtime._vm import VirtualMachine

    data, feed = _model()
    # The default schedule path (sampled MetaSchedule schedules, prepacked layout-free
    # constants), one untimed sample per task: where the wrong index layout came from.
    out = build(BuildRequest(model_bytes=data, target=TARGET, cc="g++",
                             out_path=str(tmp_path / "m.so"),
                             optimize={"measure": False, "candidates": 1}), lambda _: None)
    actual = [np.from_dlpack(t) for t in VirtualMachine(out.library).run(list(feed.values()))]
    expected = ReferenceEvaluator(onnx.load_from_string(data)).run(None, feed)
    names = ["mask_out", "perm_out", "batch_out", "rt_out"]
    for name, a, e in zip(names, actual, expected):
        assert a.shape == e.shape, name
        np.testing.assert_array_equal(a, e, err_msg=name)
