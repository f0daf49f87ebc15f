"""The hand-written NHWC depthwise schedule (compiler.depthwise): offered only for depthwise
convolutions, and every candidate computes what the unscheduled function does."""

from __future__ import annotations

import numpy as np
import pytest


def _tasks(channels: int, groups: int, stride: int = 1):
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from compiler.optimize import DEFAULT_OPTIONS, _canon_target, _ms_target, _preprocess, stub_tensor_intrin

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, 14, 14), "float32"))
    w = rng.standard_normal((channels, channels // groups, 3, 3)).astype("float32")
    b = rng.standard_normal((1, channels, 1, 1)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=1, groups=groups)
            y = relax.op.clip(relax.op.add(y, relax.const(b)), 0.0, 6.0)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    stub_tensor_intrin(("x86",))
    target = _canon_target(tvm.target.Target("llvm"))
    mst = _ms_target(target)
    opts = {**DEFAULT_OPTIONS, "layout": "NHWC", "winograd": False}
    prepared = _preprocess(bb.get(), target, opts)
    tasks = [t for t in ms.relax_integration.extract_tasks(prepared, mst) if "conv" in t.task_name]
    assert len(tasks) == 1
    return tasks[0], mst


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_candidates_compute_the_convolution(tmp_path, stride):
    from compiler import depthwise
    from compiler.optimize import _same_results, _TaskSampler, _time_candidates

    task, mst = _tasks(32, 32, stride)
    sampler = _TaskSampler(task, mst, seed=1)
    cands = depthwise.candidates(task.dispatched[0], sampler.postprocs, lanes=8)
    assert len(cands) >= 2  # one per distinct width tile (14 wide: tiles of 2/4, 7 and 14)
    ref_cache: dict = {}
    for sch in cands:
        assert _same_results(task.dispatched[0], sch, mst, ref_cache, str(tmp_path), 30.0)
        # the weights are prepacked to the read order (channel blocks of one vector)
        assert "layout_rewrite_preproc" in sch.mod.script()
    assert all(np.isfinite(_time_candidates(cands, mst, task.task_name)))


def test_not_offered_for_other_convolutions():
    from compiler import depthwise
    from compiler.optimize import _TaskSampler

    task, mst = _tasks(32, 1)  # a dense 3x3 convolution
    assert depthwise.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8) == []
    task, mst = _tasks(12, 12)  # depthwise, but 12 channels are not a multiple of 8 lanes
    assert depthwise.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8) == []
