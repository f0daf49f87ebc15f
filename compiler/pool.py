"""What TVM's CPU thread pool costs a kernel, and schedules that do without it.

MetaSchedule's CPU design space parallelises the outer loops of every function it schedules, so
each kernel of a model wakes the thread pool's workers. When they sleep between kernels
(``TVM_THREAD_POOL_SPIN_COUNT=0``, as onnxruntime's workers with ``allow_spinning=0``), a wake-up
costs ~28 us on this 2-core VM, and a small kernel loses more than it gains: the transformer at
2 threads ran a 128 KB transpose in 25 us per call in the model and in 5 us on one thread, its
LayerNorm in 43 and 33 us. A kernel timed alone, back to back, hides most of it (the workers
have just finished: 4 us).
"""

from __future__ import annotations

import statistics
import time

_WAKE: dict[int, float] = {}


def wake_cost_s(gap_s: float = 20e-6, runs: int = 30) -> float:
    """Seconds a parallel loop pays for the pool over the same loop run serially, each call
    after ``gap_s`` of other (busy) work on the calling thread, as between a model's kernels;
    measured once per process and thread count. Measured here (2 vCPUs, 2 threads): 27.8 us
    with workers that sleep at once, 1.8 us with TVM's default spinning."""
    import numpy as np
    import tvm
    from tvm import te

    n = int(tvm.get_global_func("runtime.NumThreads")())
    if n in _WAKE:
        return _WAKE[n]
    a = te.placeholder((2, 16), name="A")
    b = te.compute((2, 16), lambda i, j: a[i, j] + 1.0, name="B")
    serial = te.create_prim_func([a, b])
    sch = tvm.s_tir.Schedule(serial)
    sch.parallel(sch.get_loops(sch.get_sblock("B"))[0])
    lib = tvm.compile(tvm.IRModule({"par": sch.mod["main"].with_attr("global_symbol", "par"),
                                    "ser": serial.with_attr("global_symbol", "ser")}),
                      target=tvm.target.Target("llvm"))
    x, y = (tvm.runtime.tensor(np.zeros((2, 16), "float32")) for _ in range(2))
    med = {}
    for name in ("par", "ser"):
        fn, times = lib[name], []
        fn(x, y)
        for _ in range(runs):
            until = time.perf_counter() + gap_s
            while time.perf_counter() < until:
                pass
            t = time.perf_counter()
            fn(x, y)
            times.append(time.perf_counter() - t)
        med[name] = statistics.median(times)
    _WAKE[n] = max(0.0, med["par"] - med["ser"])
    return _WAKE[n]


def serial_variant(sch, tmod):
    """``sch`` (a schedule of ``tmod``) with its parallel loops left serial: the same trace and
    decisions, less its ``Parallel`` instructions; None when it has none."""
    from tvm.s_tir import Schedule
    from tvm.s_tir.schedule import Trace

    trace = sch.trace
    insts = [inst for inst in trace.insts if inst.kind.name != "Parallel"]
    if len(insts) == len(trace.insts):
        return None
    # a Parallel instruction takes no decision: the sampled ones all carry over
    decisions = {inst: d for inst, d in trace.decisions.items() if inst.kind.name != "Parallel"}
    out = Schedule(tmod, seed=1, debug_mask="none")  # no random decision left to draw
    Trace(insts, decisions).apply_to_schedule(out, remove_postproc=False)
    return out
