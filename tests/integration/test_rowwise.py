"""The row-wise schedule (compiler.rowwise): offered for softmax-like functions (every block over
the same rows, elementwise along the last axis or reducing it), and every candidate computes
what the unscheduled function does."""

from __future__ import annotations

import numpy as np
import pytest


def _task(build, name: str):
    """The one task whose name contains ``name`` of the relax function ``build(bb)`` emits,
    through the compiler's preprocessing (fast-math softmax, fusion)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from compiler.optimize import DEFAULT_OPTIONS, _canon_target, _ms_target, _preprocess, stub_tensor_intrin

    bb = relax.BlockBuilder()
    build(bb)
    stub_tensor_intrin(("x86",))
    target = _canon_target(tvm.target.Target("llvm"))
    mst = _ms_target(target)
    prepared = _preprocess(bb.get(), target, dict(DEFAULT_OPTIONS))
    tasks = [t for t in ms.relax_integration.extract_tasks(prepared, mst) if name in t.task_name]
    assert len(tasks) == 1, [t.task_name for t in ms.relax_integration.extract_tasks(prepared, mst)]
    return tasks[0], mst


def _softmax(shape, log=False):
    def build(bb):
        from tvm import relax

        x = relax.Var("x", relax.TensorType(shape, "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                op = relax.op.nn.log_softmax if log else relax.op.nn.softmax
                out = bb.emit_output(op(x, axis=-1))
            bb.emit_func_output(out)
    return build


@pytest.mark.parametrize(("shape", "log", "name"), [
    ((2, 16, 64), False, "softmax"),    # attention-like rows, a multiple of the lanes
    ((3, 37), False, "softmax"),        # a row that is not: scalar reductions only
    ((4, 40), True, "log_softmax"),
])
def test_softmax_candidates_compute_the_softmax(tmp_path, shape, log, name):
    from compiler import rowwise
    from compiler.optimize import _same_results, _time_candidates

    task, mst = _task(_softmax(shape, log), name)
    cands = rowwise.candidates(task.dispatched[0], [], 8)
    assert cands, task.task_name
    ref_cache: dict = {}
    for sch in cands:
        assert _same_results(task.dispatched[0], sch, mst, ref_cache, str(tmp_path), 30.0)
        assert "T.parallel" in sch.mod.script()
    # the vectorised reductions (lanes partial results per row) where the row divides into lanes
    vectorised = ["_rf" in sch.mod.script() and "T.vectorized" in sch.mod.script() for sch in cands]
    assert any(vectorised) == (shape[-1] % 8 == 0)
    assert all(np.isfinite(_time_candidates(cands, mst, task.task_name)))


def test_not_offered_for_a_gemm_or_an_elementwise_function():
    def build(bb):
        from tvm import relax

        x = relax.Var("x", relax.TensorType((8, 16), "float32"))
        w = relax.Var("w", relax.TensorType((16, 8), "float32"))
        with bb.function("main", [x, w]):
            with bb.dataflow():
                y = relax.op.matmul(x, w)
                out = bb.emit_output(relax.op.add(y, y))
            bb.emit_func_output(out)

    from compiler import rowwise

    task, _ = _task(build, "matmul")
    assert rowwise.candidates(task.dispatched[0], [], 8) == []
