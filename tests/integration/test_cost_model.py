"""The schedule search's cost model (compiler.optimize._CostModel): once trained on timed
candidates, it decides which fresh samples are timed; a build without xgboost still works."""

from __future__ import annotations

import numpy as np


def _matmul_task():
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from compiler.optimize import _canon_target, _ms_target, stub_tensor_intrin

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((32, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(np.random.default_rng(0).standard_normal((64, 48)).astype("float32"))
            out = bb.emit_output(relax.op.nn.relu(relax.op.matmul(x, w)))
        bb.emit_func_output(out)
    target = _ms_target(_canon_target(tvm.target.Target(
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"})))
    stub_tensor_intrin(("x86",))
    mod = relax.transform.LegalizeOps()(bb.get())
    with target:
        mod = tvm.transform.Sequential([relax.transform.AnnotateTIROpPattern(),
                                        relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
    [task] = [t for t in ms.relax_integration.extract_tasks(mod, target) if "matmul" in t.task_name]
    return task, target


def test_trained_model_picks_the_best_ranked_samples_plus_one_random():
    from compiler.optimize import _CostModel, _TaskSampler, _time_candidates

    task, target = _matmul_task()
    sampler = _TaskSampler(task, target, seed=7)
    model = _CostModel(seed=7, warmup=16, oversample=4)
    first = model.pick(sampler, 16)  # untrained: plain draws
    assert len(first) == 16
    costs = _time_candidates(first, target, task.task_name)
    assert all(np.isfinite(costs)), costs
    model.update(sampler, first, costs)
    assert model.timed == 16

    # Trained: each pick draws 4x, ranks by the model, keeps n-1 best-ranked and one other.
    drawn_before = sampler.k
    picked = model.pick(sampler, 4)
    assert len(picked) == 4 and sampler.k > drawn_before + 4
    traces = {str(s.trace) for s in picked}
    assert len(traces) == 4  # distinct schedules
    scores = model.model.predict(sampler.ctx, model._candidates(picked))
    assert np.all(np.isfinite(scores))
    # The picks still run and compute the task (a model only ranks, it never edits a schedule).
    assert all(np.isfinite(_time_candidates(picked, target, task.task_name)))
    # Timed with every buffer flushed first (cold_weight=1): still a finite time per candidate.
    cold = _time_candidates(picked, target, task.task_name, cold_weight=1.0)
    assert len(cold) == 4 and all(np.isfinite(cold)) and min(cold) > 0


def test_build_without_xgboost_times_random_samples(monkeypatch, caplog):
    import logging
    import sys

    import tvm
    from tvm import relax

    from compiler.optimize import build_cpu

    monkeypatch.setitem(sys.modules, "xgboost", None)  # import xgboost -> ImportError
    caplog.set_level(logging.INFO, logger="compiler.optimize")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.matmul(
                x, relax.const(np.eye(16, dtype="float32")))))
        bb.emit_func_output(out)
    ex = build_cpu(bb.get(), tvm.target.Target("llvm"), options={"budget_s": 5, "candidates": 4})
    assert "xgboost is not installed" in caplog.text
    a = np.random.default_rng(1).standard_normal((8, 16)).astype("float32")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a)).numpy()
    np.testing.assert_allclose(got, np.maximum(a, 0), rtol=1e-6)
