"""In-model selection (compiler.inmodel): the search's winners re-chosen by their time inside the
compiled model, with real compiles of a small convolution network."""

from __future__ import annotations

import numpy as np


def _convnet():
    import tvm
    from tvm import relax

    rng = np.random.default_rng(3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 16, 16), "float32"))
    w1 = rng.standard_normal((16, 8, 3, 3)).astype("float32") * 0.2
    w2 = rng.standard_normal((8, 16, 1, 1)).astype("float32") * 0.2
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(w1), padding=1)))
            out = bb.emit_output(relax.op.nn.conv2d(y, relax.const(w2)))
        bb.emit_func_output(out)

    def reference(a):
        pad = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        y = np.zeros((1, 16, 16, 16), np.float64)
        for kh in range(3):
            for kw in range(3):
                y += np.einsum("nchw,oc->nohw", pad[:, :, kh:kh + 16, kw:kw + 16], w1[:, :, kh, kw])
        return np.einsum("nchw,oc->nohw", np.maximum(y, 0), w2[:, :, 0, 0])

    return bb.get(), reference, tvm


def _target(tvm):
    from compiler.optimize import _canon_target, _ms_target, stub_tensor_intrin

    stub_tensor_intrin(("x86",))
    target = _canon_target(tvm.target.Target("llvm"))
    return target, _ms_target(target)


def test_refine_tries_checked_alternatives_and_keeps_a_correct_model():
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from compiler import inmodel
    from compiler.optimize import DEFAULT_OPTIONS, _compile_scheduled, _preprocess, _TaskSampler

    mod, reference, tvm = _convnet()
    target, mst = _target(tvm)
    prepared = _preprocess(mod, target, {**DEFAULT_OPTIONS, "layout": "NHWC"})
    tasks = [t for t in ms.relax_integration.extract_tasks(prepared, mst) if "conv" in t.task_name]
    assert len(tasks) == 2
    draws = {i: _TaskSampler(t, mst, seed=11).draw(3) for i, t in enumerate(tasks)}
    choice = {i: d[0] for i, d in draws.items()}
    refused = draws[0][1]
    checked = []

    def check(i, sch):
        checked.append(sch)
        return sch is not refused

    def compile_fn(ch):
        db = ms.database.MemoryDatabase()
        for i, sch in ch.items():
            wl = db.commit_workload(tasks[i].dispatched[0])
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [1.0], mst, None))
        return _compile_scheduled(prepared, target, mst, db, prepack=True)

    inputs = inmodel.model_inputs(prepared["main"], tvm.cpu())
    assert [tuple(t.shape) for t in inputs] == [(1, 8, 16, 16)]
    # isolated times of 0: every task looks slower in the model than alone, so all are tried;
    # min_gain=-1 takes any alternative that is not 2x slower, so swaps happen
    new, ex, summary = inmodel.refine(choice, lambda i: draws[i][1:], {0: 0.0, 1: 0.0},
                                      {i: str(t.task_name) for i, t in enumerate(tasks)},
                                      compile_fn, check, inputs, budget_s=300, min_gain=-1.0)
    assert summary["tasks"] == 2 and summary["tried"] == 3, summary  # 4 alternatives, 1 refused
    assert refused in checked and refused not in new.values()
    assert summary["swapped"] >= 1 and summary["compiles"] >= 3
    assert summary["kept"] == (new != choice), summary  # kept only when the whole model is faster
    assert 0.3 < summary["ratio"] < 3.0
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*inputs).numpy()
    want = reference(inputs[0].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_kernel_times_and_inputs():
    from tvm import relax

    from compiler import inmodel

    mod, _, tvm = _convnet()
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    inputs = inmodel.model_inputs(mod["main"], tvm.cpu())
    times = inmodel.kernel_times(vm, inputs, runs=3)
    assert times and all(t > 0 for t in times.values())
    assert not any(s.startswith("vm.builtin") for s in times)
    assert any("conv2d" in s for s in times), times
    x = relax.Var("x", relax.TensorType((tvm.tirx.Var("n", "int64"), 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        bb.emit_func_output(x)
    assert inmodel.model_inputs(bb.get()["main"], tvm.cpu()) is None  # symbolic shape


def test_build_records_the_in_model_selection():
    from tvm import relax

    from compiler.optimize import build_cpu

    mod, reference, tvm = _convnet()
    target, _ = _target(tvm)
    report: dict = {}
    ex = build_cpu(mod, target, options={"budget_s": 15, "candidates": 8, "refine_s": 60},
                   report=report)
    summary = report["in_model"]
    assert summary["compiles"] >= 1
    sources = [e["source"] for e in report["schedules"]]
    assert ("in-model" in sources) == summary["kept"], (sources, summary)
    a = np.random.default_rng(5).standard_normal((1, 8, 16, 16)).astype("float32")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a)).numpy()
    np.testing.assert_allclose(got, reference(a), rtol=1e-4, atol=1e-4)


def test_in_model_selection_is_on_by_default_with_several_threads():
    """``refine_s`` "auto" (the default): REFINE_AUTO_S seconds with several threads, where the
    search's isolated timings misjudge kernels in the model, none with one thread."""
    from compiler import optimize

    assert optimize.DEFAULT_OPTIONS["refine_s"] == "auto"
    assert optimize.auto_refine_s(1) == 0.0
    assert optimize.auto_refine_s(2) == optimize.REFINE_AUTO_S > 0
    import tvm

    threads = int(tvm.get_global_func("runtime.NumThreads")())
    assert optimize.auto_refine_s() == optimize.auto_refine_s(threads)
