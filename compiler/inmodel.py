"""In-model selection: the schedule search's winners, re-chosen by their time inside the model.

The search (``compiler.optimize``) times each candidate alone, on the same buffers again and
again. In the model a kernel's input was written by the kernel before it, its output buffer was
last touched layers ago and its weights one inference ago, and the ranking changes for
memory-bound kernels. Measured on MobileNetV2's depthwise 56x56x144 convolution: the isolated
winner took 0.24 ms alone and 0.52 ms in the model (onnxruntime's kernel: 0.20 ms); of 12
samples timed alone at 0.24-0.64 ms, the evicted-cache times ranged 0.47-0.98 ms and ranked them
differently. Timing every candidate cold instead picked worse schedules for the whole model
(1.18x against 1.12x of onnxruntime's time), so the model itself is the measure here:

1. the model is compiled with the winners and every kernel is timed in it (the relax VM's
   instrument hook, median over runs);
2. the tasks whose in-model time most exceeds their isolated time get their next-best timed
   candidates (checked for correct results first), several tasks per compile, each judged by
   its own in-model time;
3. the whole model with the swaps that helped is timed against the original, interleaved, and
   kept only when it is faster.

Nothing here knows about MetaSchedule: the caller passes the candidates and a compile function.

Status: on by default with several threads (``build_cpu`` option ``refine_s``, "auto"). At 2
threads the search's winners can run far slower in the model than alone (two transformer builds
from the same code: the FFN's second matmul 0.47-0.52 ms in one, 0.77-0.87 ms in the other),
and a same-process A/B measured MobileNetV2 at 0.90x of onnxruntime's time with it against
1.00x without, the transformer at 0.87x against 0.88x (whole-model gains of the kept swaps:
3.3% and 3.9%). With one thread it stays off.

Three MobileNetV2 builds (1 thread, 60-90 s each): the swaps it found made their kernels faster
under the instrument hook (depthwise 56x56x144 0.44 -> 0.36 ms, 112x112x96 stride 2 0.36 -> 0.30
ms, ...), but the whole model with them, timed without the hook, was faster once (0.983x, kept;
the benchmark gave 1.08x of onnxruntime's time against 1.15x for the same search without it)
and slower twice (1.016x, 1.013x; discarded). The hook runs Python between kernels, so a
kernel's in-model time under it is not quite its time in the model; swaps judged by whole-model
time (several variants of ``main`` in one compile) would be the next step.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["call_times", "kernel_times", "model_inputs", "refine", "whole_model_ratio"]


def model_inputs(func, dev) -> list | None:
    """Seeded random tensors for a relax function's parameters (standard normal floats, zeros for
    integers); None when a parameter is not a tensor of static shape."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    args = []
    for p in func.params:
        ty = p.ty
        shape = getattr(ty, "shape", None)
        dtype = str(getattr(ty, "dtype", ""))
        if shape is None or not dtype or not all(isinstance(d, tvm.tirx.IntImm)
                                                 for d in shape.values):
            return None
        dims = [int(d) for d in shape.values]
        arr = (rng.standard_normal(dims).astype(dtype) if dtype.startswith(("float", "bfloat"))
               else np.zeros(dims, dtype))
        args.append(tvm.runtime.tensor(arr, dev))
    return args


def call_times(vm, inputs: list, runs: int) -> list[list[tuple[str, float]]]:
    """Per run, every call of the executable in call order: (function, seconds), from the relax
    VM's instrument hook (one warm-up run first; VM builtins included)."""
    runs_out: list[list[tuple[str, float]]] = []
    start: dict[str, float] = {}

    def instrument(func, symbol, before, ret, *args):  # the VM instrument signature
        if before:
            start[symbol] = time.perf_counter()
        else:
            runs_out[-1].append((symbol, time.perf_counter() - start[symbol]))
        return 0

    main = vm["main"]
    main(*inputs)  # warm-up
    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            runs_out.append([])
            main(*inputs)
    finally:
        vm.set_instrument(None)
    return runs_out


def kernel_times(vm, inputs: list, runs: int) -> dict[str, float]:
    """Seconds per inference spent in each compiled function (all its calls in one run summed;
    median over ``runs`` runs). VM builtins are left out."""
    per_run = []
    for calls in call_times(vm, inputs, runs):
        run: dict[str, float] = {}
        for symbol, t in calls:
            if not symbol.startswith("vm.builtin"):
                run[symbol] = run.get(symbol, 0.0) + t
        per_run.append(run)
    names = {s for run in per_run for s in run}
    return {s: statistics.median(run.get(s, 0.0) for run in per_run) for s in names}


def whole_model_ratio(vm_a, vm_b, inputs: list, runs: int = 40) -> float:
    """Median time of ``vm_b`` over that of ``vm_a``, the two run interleaved."""
    fa, fb = vm_a["main"], vm_b["main"]
    fa(*inputs)
    fb(*inputs)
    ta, tb = [], []
    for _ in range(runs):
        t = time.perf_counter()
        fa(*inputs)
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb(*inputs)
        tb.append(time.perf_counter() - t)
    return statistics.median(tb) / statistics.median(ta)


def _time_of(times: dict[str, float], name: str) -> float | None:
    """A task's in-model time: its function keeps the task's name, with ``_prepacked`` appended
    when its schedule rewrote a weight layout (TVM's SplitLayoutRewritePreproc)."""
    return times.get(name, times.get(name + "_prepacked"))


def refine(
    choice: dict[int, Any],
    alternatives: Callable[[int], list[Any]],
    isolated_s: dict[int, float],
    symbols: dict[int, str],
    compile_fn: Callable[[dict[int, Any]], Any],
    check_fn: Callable[[int, Any], bool],
    inputs: list | None,
    budget_s: float,
    *,
    max_tasks: int = 8,
    runs: int = 15,
    min_gain: float = 0.05,
) -> tuple[dict[int, Any], Any, dict[str, Any]]:
    """Re-choose schedules by in-model time. Returns (choice, executable, summary).

    ``choice``: task -> schedule (the search's winners); ``alternatives(task)``: other
    candidates for a task, most promising first (asked only for the tasks picked);
    ``isolated_s``: task -> the winner's seconds per inference alone (all its calls);
    ``symbols``: task -> its function's name in the executable; ``compile_fn`` builds the whole
    model for a choice; ``check_fn(task, schedule)`` says whether a schedule computes the right
    results; ``inputs``: the model's inputs (None: not refinable).
    """
    import tvm

    t0 = time.perf_counter()
    dev = tvm.cpu()
    summary: dict[str, Any] = {"compiles": 1, "tried": 0, "swapped": 0, "kept": False}
    base_ex = compile_fn(choice)
    t_compile = time.perf_counter() - t0
    if inputs is None:
        summary["skipped"] = "symbolic input shapes"
        return choice, base_ex, summary
    base_vm = tvm.relax.VirtualMachine(base_ex, dev)
    base = kernel_times(base_vm, inputs, runs)
    total = sum(base.values()) or 1e-9
    current = {i: t for i, s in symbols.items() if (t := _time_of(base, s)) is not None}
    # the tasks whose in-model time most exceeds their time alone
    excess = {i: current[i] - isolated_s[i] for i in current if i in isolated_s}
    picked = sorted((i for i in excess if excess[i] > max(0.2 * isolated_s[i], 0.003 * total)),
                    key=lambda i: -excess[i])[:max_tasks]
    summary["tasks"] = len(picked)
    for i in picked:
        logger.debug("in-model: %s %.3f ms in the model, %.3f ms alone", symbols[i],
                     current[i] * 1e3, isolated_s[i] * 1e3)
    queue = {}
    for i in picked:
        if time.perf_counter() - t0 + 3 * t_compile > budget_s:
            break
        queue[i] = list(alternatives(i))
    picked = [i for i in picked if queue.get(i)]
    if not picked:
        return choice, base_ex, summary
    new = dict(choice)
    swapped: set[int] = set()
    while any(queue.values()):
        if time.perf_counter() - t0 + 2 * t_compile > budget_s:
            logger.info("in-model selection: time budget spent")
            break
        trial = dict(new)
        trying: dict[int, Any] = {}
        for i in picked:
            while queue[i]:
                alt = queue[i].pop(0)
                if check_fn(i, alt):
                    trial[i] = trying[i] = alt
                    break
        if not trying:
            break
        ex = compile_fn(trial)
        summary["compiles"] += 1
        summary["tried"] += len(trying)
        times = kernel_times(tvm.relax.VirtualMachine(ex, dev), inputs, runs)
        for i, alt in trying.items():
            t = _time_of(times, symbols[i])
            if t is not None and t < current[i] * (1.0 - min_gain):
                logger.debug("in-model: %s %.3f -> %.3f ms", symbols[i], current[i] * 1e3, t * 1e3)
                new[i], current[i] = alt, t
                swapped.add(i)
    summary["swapped"] = len(swapped)
    if not swapped:
        return choice, base_ex, summary
    ex = compile_fn(new)
    summary["compiles"] += 1
    ratio = whole_model_ratio(base_vm, tvm.relax.VirtualMachine(ex, dev), inputs)
    summary["ratio"] = round(ratio, 4)
    if ratio < 0.99:
        summary["kept"] = True
        return new, ex, summary
    return choice, base_ex, summary
