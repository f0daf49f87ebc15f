"""Winograd F(m x m, 3x3) rewrite of NHWC 3x3 convolutions (compiler.winograd): the transforms
are exact in exact arithmetic, the rewrite picks only the convolutions it handles and a tile size
per layer, and scheduled builds of rewritten models match onnxruntime."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import winograd


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_valid_correlation(m):
    """A^T [(G g) * (B^T d)] is the valid 1-D correlation of d (m+2 samples) with g (3 taps)."""
    a, b, g = winograd.transform_matrices(m)
    alpha = m + 2
    assert a.shape == (alpha, m) and b.shape == (alpha, alpha) and g.shape == (alpha, 3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, k = rng.standard_normal(alpha), rng.standard_normal(3)
        want = np.array([d[i:i + 3] @ k for i in range(m)])
        np.testing.assert_allclose(a.T @ ((g @ k) * (b.T @ d)), want, rtol=1e-12, atol=1e-12)


def test_tile_size_follows_the_weight_read():
    """Few output tiles: the GEMM is bound by reading its transformed weight, (m+2)^2 floats per
    channel pair, so the small tile wins (ResNet-18's 7x7 stage); large maps keep F(4x4)."""
    assert winograd.choose_tile(1, (7, 7)) == 2
    assert winograd.choose_tile(1, (8, 8)) == 2
    for hw in (14, 28, 56, 112):
        assert winograd.choose_tile(1, (hw, hw)) == 4
    assert winograd.choose_tile(4, (7, 7)) == 4  # a batch of 4 reads the weight for 16 tiles
    # a machine with more bandwidth per FLOP keeps the big tile longer
    assert winograd.choose_tile(1, (7, 7), balance=1.0) == 4


def _conv_model(c_in: int, c_out: int, hw: int, *, stride: int = 1, group: int = 1,
                kernel: int = 3, pad: int = 1) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(c_in * 1000 + hw)
    w = (rng.standard_normal((c_out, c_in // group, kernel, kernel)) * 0.2).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    out_hw = (hw + 2 * pad - kernel) // stride + 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4, strides=[stride] * 2,
                          group=group),
         helper.make_node("Relu", ["c"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c_out, out_hw, out_hw])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.standard_normal((1, c_in, hw, hw)).astype(np.float32)}
    return model.SerializeToString(), feed


def _nhwc(data: bytes):
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load_from_string(data), keep_params_in_input=False)
    return tvm.transform.Sequential([
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}),
        relax.transform.FoldConstant()])(mod)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, 1),
    ({"stride": 2}, 0),             # strided: not Winograd's minimal filtering
    ({"group": 16}, 0),             # depthwise
    ({"kernel": 1, "pad": 0}, 0),   # 1x1
    ({"hw": 4}, 0),                 # output smaller than MIN_HW
])
def test_rewrite_picks_only_the_convolutions_it_handles(kwargs, expected):
    args = {"c_in": 16, "c_out": 16, "hw": 12} | kwargs
    _, count = winograd.rewrite(_nhwc(_conv_model(**args)[0]))
    assert count == expected


@pytest.mark.parametrize(("c_in", "c_out", "hw", "tile"),
                         [(16, 24, 12, 2), (32, 16, 9, 2), (16, 16, 14, 4), (16, 24, 9, 4)])
def test_scheduled_build_matches_onnxruntime(c_in, c_out, hw, tile, caplog):
    """Through build_cpu's default (NHWC, Winograd, prepack), with the tile size it picks (2 at
    12x12 and 9x9, 4 at 14x14) or a forced one, including sizes that are not a multiple of the
    tile (the last tiles are padded and cropped)."""
    import tvm
    from tvm import relax

    from compiler.optimize import build_cpu

    data, feed = _conv_model(c_in, c_out, hw)
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load_from_string(data), keep_params_in_input=False)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "x86-64-v2"})
    opts = {"measure": False, "candidates": 1}
    if winograd.choose_tile(1, (hw, hw)) != tile:
        opts["winograd"] = tile
    with caplog.at_level(logging.INFO, logger="compiler.winograd"):
        ex = build_cpu(mod, target, options=opts)
    assert f"winograd: 1 conv2d rewritten (1 as F({tile}x{tile}, 3x3))" in caplog.text
    vm = relax.VirtualMachine(ex, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(feed["x"])).numpy()
    ref = ort.InferenceSession(data).run(None, feed)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.parametrize("schedule", ["none", "dlight"])
def test_unsearched_builds_keep_direct_convolutions(schedule, caplog):
    """Without the search the transforms would run with their select chains unfolded (two orders
    of magnitude slower): the "none" and "dlight" paths build the direct convolution, and say so
    in the report's options."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.optimize import build_cpu

    data, feed = _conv_model(16, 16, 12)
    mod = from_onnx(onnx.load_from_string(data), keep_params_in_input=False)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "x86-64-v2"})
    report: dict = {}
    with caplog.at_level(logging.INFO, logger="compiler.winograd"):
        ex = build_cpu(mod, target, options={"schedule": schedule}, report=report)
    assert "winograd:" not in caplog.text
    assert report["options"]["winograd"] is False and report["options"]["layout"] == "NHWC"
    ours = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(feed["x"])).numpy()
    ref = ort.InferenceSession(data).run(None, feed)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_timed_winners_are_checked_against_the_unscheduled_function(tmp_path):
    """The search refuses a schedule whose results differ from the unscheduled function's (TVM
    0.27 produced one for a fused Winograd inverse): here a schedule of a different computation
    with the same signature stands in for a wrong one."""
    import tvm
    from tvm import te
    from tvm.s_tir import Schedule

    from compiler.optimize import _same_results

    def prim(op):
        a = te.placeholder((4, 8), name="a")
        b = te.placeholder((4, 8), name="b")
        return tvm.IRModule({"main": te.create_prim_func([a, b, te.compute(
            (4, 8), lambda i, j: op(a[i, j], b[i, j]), name="c")])})

    add, sub = prim(lambda x, y: x + y), prim(lambda x, y: x - y)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "x86-64-v2"})
    cache: dict = {}
    assert _same_results(add, Schedule(add), target, cache, str(tmp_path), 30.0)
    assert not _same_results(add, Schedule(sub), target, cache, str(tmp_path), 30.0)


def _winograd_tasks(c_in: int, c_out: int, hw: int, tile: int):
    """The data pack and inverse tasks of one 3x3 convolution + bias + ReLU, through the
    compiler's preprocessing (NHWC, Winograd F(tile x tile), fusion)."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.s_tir import meta_schedule as ms

    from compiler.optimize import DEFAULT_OPTIONS, _ms_target, _preprocess, stub_tensor_intrin

    stub_tensor_intrin(("x86",))
    mod = from_onnx(onnx.load_from_string(_conv_model(c_in, c_out, hw)[0]),
                    keep_params_in_input=False)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": "x86-64-v3"})
    mst = _ms_target(target)
    opts = {**DEFAULT_OPTIONS, "layout": "NHWC", "winograd": tile, "expand_dw": False}
    tasks = ms.relax_integration.extract_tasks(_preprocess(mod, target, opts), mst)
    named = {t.task_name: t for t in tasks}
    pack = [t for n, t in named.items() if n.startswith("winograd_data_pack")]
    inverse = [t for n, t in named.items() if "winograd_inverse" in n]
    assert len(pack) == 1 and len(inverse) == 1, list(named)
    return pack[0], inverse[0], mst


@pytest.mark.parametrize(("c_in", "c_out", "hw", "tile"),
                         [(16, 24, 12, 4), (32, 16, 9, 2), (24, 40, 14, 4)])
def test_transform_templates_compute_the_transforms(tmp_path, c_in, c_out, hw, tile):
    """The data pack (padding inlined or apart) and the inverse with its bias + ReLU epilogue:
    every template candidate computes what the unscheduled function does, including maps that
    are not a multiple of the tile (9x9 in 2x2 tiles, 14x14 in 4x4: guarded last tiles) and
    channel counts that are not a multiple of two vectors (24, 40); once lowered, the unrolled
    loops leave no select of the transform's literal coefficients."""
    import tvm
    from tvm import s_tir, tirx

    from compiler import winograd
    from compiler.optimize import _same_results, _time_candidates

    pack, inverse, mst = _winograd_tasks(c_in, c_out, hw, tile)
    ref_cache: dict = {}
    for task, n in ((pack, 2), (inverse, 1)):
        cands = winograd.candidates(task.dispatched[0], [], 8)
        assert len(cands) == n, task.task_name
        for sch in cands:
            assert _same_results(task.dispatched[0], sch, mst, ref_cache, str(tmp_path), 60.0)
            lowered = tvm.transform.Sequential([
                s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
                s_tir.transform.LowerOpaqueBlock(), tirx.transform.UnrollLoop(),
                tirx.transform.StmtSimplify()])(sch.mod)
            assert "T.Select" not in lowered.script(), task.task_name
            assert "T.parallel" in sch.mod.script()
        assert all(np.isfinite(_time_candidates(cands, mst, task.task_name)))


def test_transform_templates_only_for_winograd_functions():
    import tvm
    from tvm import te

    from compiler import winograd

    a = te.placeholder((4, 8), name="a")
    mod = tvm.IRModule({"main": te.create_prim_func([a, te.compute((4, 8), lambda i, j: a[i, j] * 2)])})
    assert winograd.candidates(mod, [], 8) == []
