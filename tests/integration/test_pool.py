"""Schedules without the thread pool (compiler.pool, compiler.optimize._try_serial): a winner's
serial variant computes the same results with no parallel loop left, and is chosen when waking
the pool would cost more than the parallel loop saves."""

from __future__ import annotations

import numpy as np


def _softmax_task():
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from compiler.optimize import _canon_target, _ms_target, stub_tensor_intrin

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 32, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.softmax(x))
        bb.emit_func_output(out)
    target = _ms_target(_canon_target(tvm.target.Target(
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2", "num-cores": 2})))
    stub_tensor_intrin(("x86",))
    mod = relax.transform.LegalizeOps()(bb.get())
    with target:
        mod = tvm.transform.Sequential([relax.transform.AnnotateTIROpPattern(),
                                        relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
    [task] = [t for t in ms.relax_integration.extract_tasks(mod, target)
              if "softmax" in t.task_name]
    return task, target


def _run(sch, target, x):
    import tvm

    lib = tvm.compile(sch.mod, target=target)
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def test_serial_variant_drops_only_the_parallel_loops():
    from compiler.optimize import _TaskSampler
    from compiler.pool import serial_variant

    task, target = _softmax_task()
    tmod = task.dispatched[0]
    samples = _TaskSampler(task, target, seed=3).draw(4)
    parallel = [s for s in samples if "T.parallel" in s.mod.script()]
    assert parallel, "MetaSchedule's CPU space parallelises the outer loops"
    x = np.random.default_rng(0).standard_normal((4, 32, 64)).astype("float32")
    e = np.exp(x - x.max(-1, keepdims=True))
    expected = e / e.sum(-1, keepdims=True)
    for sch in parallel:
        serial = serial_variant(sch, tmod)
        script = serial.mod.script()
        assert "T.parallel" not in script
        assert "T.vectorized" in script or "T.vectorized" not in sch.mod.script()
        # same sampled decisions: the trace is the winner's, less its Parallel instructions
        kinds = [i.kind.name for i in sch.trace.insts]
        assert [i.kind.name for i in serial.trace.insts] == [k for k in kinds if k != "Parallel"]
        np.testing.assert_allclose(_run(serial, target, x), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_run(sch, target, x), expected, rtol=1e-5, atol=1e-6)
        assert serial_variant(serial, tmod) is None  # nothing left to drop


def test_wake_cost_is_measured_once_per_pool():
    from compiler import pool

    first = pool.wake_cost_s()
    assert np.isfinite(first) and 0.0 <= first < 0.01  # seconds: microseconds here
    assert pool.wake_cost_s() == first  # cached for this process's pool


def test_try_serial_keeps_the_serial_winner_when_waking_costs_more(monkeypatch):
    from compiler import optimize, pool
    from compiler.optimize import _TaskSampler, _try_serial

    task, target = _softmax_task()
    samples = [s for s in _TaskSampler(task, target, seed=3).draw(4)
               if "T.parallel" in s.mod.script()]
    sch = samples[0]

    # A pool that costs a second to wake: the serial variant always wins, and is ranked so that
    # the result check (_verify_winners) considers it with the other timed candidates.
    monkeypatch.setattr(pool, "wake_cost_s", lambda: 1.0)
    best, ranked = {0: (sch, 1e-5)}, {0: [(1e-5, 1, sch)]}
    assert _try_serial([task], best, ranked, target, 30.0) == 1
    chosen, cost = best[0]
    assert "T.parallel" not in chosen.mod.script() and 0 < cost < 1.0
    assert any(c is chosen for _, _, c in ranked[0])

    # An untimed winner (a design space with one schedule) gets timed by the comparison.
    best = {0: (sch, None)}
    assert _try_serial([task], best, {}, target, 30.0) == 1 and best[0][1] > 0

    # A free pool and a slow winner: nothing is tried (over SERIAL_MAX_S), the winner stays.
    monkeypatch.setattr(pool, "wake_cost_s", lambda: 0.0)
    best = {0: (sch, 2 * optimize.SERIAL_MAX_S)}
    assert _try_serial([task], best, {}, target, 30.0) == 0 and best[0][0] is sch
