"""ONNX node-test conformance through edgeforge's compile path, raw TVM, and onnxruntime.

    python -m bench.conformance                 # all 1,884 node tests (≈ 30-60 min on 2 cores)
    python -m bench.conformance --filter conv   # the tests whose name contains "conv"
    python -m bench.conformance --limit 40 --json results.json

Every case runs in a long-lived worker process (crashes and hangs are contained: the worker is
replaced), classified as: pass, unsupported (pre-flight refused it), invalid (validation
refused it), import_error (TVM's ONNX frontend), compile_error, runtime_error, mismatch,
timeout, crash, skipped (inputs that are not tensors). "ours" is the real pipeline
(validation with the test's input shapes, pre-passes, our converters, the fast CPU build, the
runtime's VM); "raw" is what a user gets from ``from_onnx`` + ``tvm.compile`` alone.

When the strict run fails (import/compile error, or the pre-flight names a runtime input that
must be a constant), the case is retried with its parameter inputs frozen through the compile
spec's ``constant_inputs``: small integer inputs, and float/bool inputs read only at
:data:`PARAMETER_SLOTS` (Resize scales, Pad's value, NMS thresholds, ...). ``detail`` then
carries both attempts' errors.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"}
CLASSES = ["pass", "mismatch", "unsupported", "invalid", "import_error", "compile_error",
           "runtime_error", "timeout", "crash", "skipped"]


@dataclass
class CaseResult:
    name: str
    ops: list[str]
    ours: str
    raw: str
    ort: str
    detail: str = ""
    seconds: float = 0.0


def _cases() -> list[Any]:
    import warnings

    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(load_node_model_tests(), key=lambda c: c.name)


def _io(case: Any) -> tuple[dict[str, Any], list[Any]] | None:
    import numpy as np
    from onnx import TensorProto, numpy_helper

    def array(a: Any) -> Any:
        if isinstance(a, TensorProto):
            try:
                return numpy_helper.to_array(a)
            except Exception:
                return None
        if isinstance(a, np.generic):
            return np.asarray(a)
        return a if isinstance(a, np.ndarray) else None

    raw_in, raw_out = case.data_sets[0]
    inputs, expected = [array(a) for a in raw_in], [array(a) for a in raw_out]
    if any(a is None for a in [*inputs, *expected]):
        return None
    inits = {t.name for t in case.model.graph.initializer}
    names = [i.name for i in case.model.graph.input if i.name not in inits]
    if len(names) != len(inputs):
        return None
    return dict(zip(names, inputs)), list(expected)


def _compare(actual: list[Any], expected: list[Any], rtol: float, atol: float) -> str | None:
    """None when ``actual`` matches ``expected``. Floats within the test's tolerances (at least
    1e-3 relative, 1e-5 absolute), NaN where NaN is expected; bfloat16 in float32 with ONNX's
    own runner rule (``onnx.backend.test.runner``: relative tolerance at least 2**-6, "two
    bfloat16 ULPs"); float8/float4 (pure conversions in the node tests) bit for bit, any NaN
    matching a NaN; integers, bools and int4/int2 exactly."""
    import numpy as np

    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        a = np.asarray(a)
        if a.shape != e.shape:
            return f"output {i}: shape {a.shape} != {e.shape}"
        if a.dtype != e.dtype and (_low_float(e.dtype) or str(e.dtype) == "bfloat16"):
            return f"output {i}: dtype {a.dtype} != {e.dtype}"
        if _low_float(e.dtype):
            af, ef = a.astype(np.float32), e.astype(np.float32)
            same = (a.view(np.uint8) == e.view(np.uint8)) | (np.isnan(af) & np.isnan(ef))
            if not same.all():
                return f"output {i}: {int((~same).sum())} value(s) differ bitwise"
        elif e.dtype.kind in "fc" or str(e.dtype) == "bfloat16":
            bf16 = str(e.dtype) == "bfloat16"
            wide = np.float32 if bf16 else e.dtype
            af, ef = a.astype(wide), e.astype(wide)
            if not np.allclose(af, ef, rtol=max(rtol, 1e-3, 2.0**-6 if bf16 else 0),
                               atol=max(atol, 1e-5), equal_nan=True):
                return f"output {i}: max abs diff {np.nanmax(np.abs(af - ef)):.3g}"
        elif not np.array_equal(a.astype(e.dtype), e):
            return f"output {i}: values differ"
    return None


def _low_float(dtype: Any) -> bool:
    """float8 (all five) and float4: one byte per element, compared by bit pattern."""
    return str(dtype).startswith(("float8", "float4"))


#: (operator, input index) pairs that are parameters rather than data: they decide the output
#: shape or are a scalar setting, whatever their dtype.
PARAMETER_SLOTS = {
    "Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2, 3}, "OneHot": {1}, "Range": {0, 1, 2},
    "Compress": {1}, "NonMaxSuppression": {2, 3, 4}, "Loop": {0, 1},
}


def _parameter_inputs(model: Any) -> set[str]:
    """Graph inputs read only at :data:`PARAMETER_SLOTS`."""
    uses: dict[str, list[bool]] = collections.defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            uses[name].append(i in PARAMETER_SLOTS.get(node.op_type, ()))
    return {name for name, flags in uses.items() if flags and all(flags)}


def _ours(case: Any, io: tuple[dict[str, Any], list[Any]], tmp: str, freeze: bool = False
          ) -> tuple[str, str]:

    from compiler._build import BuildRequest, build
    from compiler.exceptions import CompileError, ModelError, SpecError, UnsupportedOperatorError
    from compiler.prepasses import fold_constants
    from compiler.validation import validate_model
    from edgeforge_runtime._vm import VirtualMachine, to_numpy
    from edgeforge_runtime.dtypes import from_storage, to_storage

    feed, expected = io
    # Integer inputs of node tests are parameters (shapes, axes, pads, indices, k): an edge
    # deployment fixes them in the compile spec (``constant_inputs``), so the pre-passes can
    # fold them. Float or bool inputs stay runtime inputs unless every node reading them reads
    # them at a parameter slot that fixes the output shape (Resize scales, Pad's constant value).
    params = _parameter_inputs(case.model) if freeze else set()
    frozen = {k: v for k, v in feed.items()
              if (v.dtype.kind in "iu" or k in params) and v.size <= 64} if freeze else {}
    feed = {k: v for k, v in feed.items() if k not in frozen}
    try:
        validated = validate_model(case.model.SerializeToString(),
                                   {k: list(v.shape) for k, v in feed.items() if v.ndim > 0},
                                   constant_inputs=frozen)
    except UnsupportedOperatorError as e:
        return "unsupported", str(e).splitlines()[-1].strip()
    except (ModelError, SpecError) as e:
        return "invalid", str(e)[:300]
    folded, _ = fold_constants(validated.model)
    try:
        # One sampled schedule per task, nothing timed: coverage, not speed, is measured here.
        out = build(BuildRequest(model_bytes=folded.SerializeToString(), target=TARGET, cc="g++",
                                 out_path=os.path.join(tmp, "m.so"),
                                 optimize={"measure": False, "candidates": 1}), lambda _: None)
    except CompileError as e:
        kind = "import_error" if "ONNX frontend" in str(e) else "compile_error"
        return kind, str(e)[:300]
    except Exception as e:
        return "compile_error", f"{type(e).__name__}: {str(e)[:300]}"
    try:
        vm = VirtualMachine(out.library)
        results = vm.run([to_storage(feed[i.name], i.dtype) for i in validated.inputs])
        actual = [from_storage(to_numpy(t), o.dtype) for t, o in zip(results, validated.outputs)]
    except Exception as e:
        return "runtime_error", f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
    bad = _compare(actual, expected, case.rtol, case.atol)
    return ("mismatch", bad) if bad else ("pass", "")


def _raw(case: Any, io: tuple[dict[str, Any], list[Any]]) -> str:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx, onnx_frontend

    from compiler.converters import tvm_only_convert_map

    feed, expected = io
    patched = onnx_frontend._get_convert_map
    original = tvm_only_convert_map()
    if original is not None:  # raw TVM: without edgeforge's converters (installed by _ours)
        onnx_frontend._get_convert_map = original
    try:
        mod = from_onnx(case.model, shape_dict={k: list(v.shape) for k, v in feed.items()},
                        keep_params_in_input=False)
    except Exception:
        return "import_error"
    finally:
        onnx_frontend._get_convert_map = patched
    try:
        ex = tvm.compile(mod, target=tvm.target.Target(TARGET))
    except Exception:
        return "compile_error"
    try:
        vm = relax.VirtualMachine(ex, tvm.cpu())
        res = vm["main"](*[tvm.runtime.tensor(v) for v in feed.values()])
        res = list(res) if not hasattr(res, "numpy") else [res]
        actual = [r.numpy() for r in res]
    except Exception:
        return "runtime_error"
    return "mismatch" if _compare(actual, expected, case.rtol, case.atol) else "pass"


def _ort(case: Any, io: tuple[dict[str, Any], list[Any]]) -> str:
    import onnxruntime as ort

    feed, expected = io
    try:
        sess = ort.InferenceSession(case.model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        actual = sess.run(None, feed)
    except Exception:
        return "runtime_error"
    return "mismatch" if _compare(actual, expected, case.rtol, case.atol) else "pass"


def _serve(conn: Connection, raw: bool) -> None:  # pragma: no cover - child process
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    cases = {c.name: c for c in _cases()}
    import tvm  # noqa: F401  (warm)

    conn.send("ready")
    while True:
        try:
            name = conn.recv()
        except EOFError:
            return
        case = cases[name]
        t = time.perf_counter()
        ops = sorted({n.op_type for n in case.model.graph.node})
        io = _io(case)
        if io is None:
            conn.send(CaseResult(name, ops, "skipped", "skipped", "skipped", "non-tensor I/O"))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                ours, detail = _ours(case, io, tmp)
                has_params = any(v.dtype.kind in "iu" for v in io[0].values()) or bool(
                    _parameter_inputs(case.model) & set(io[0]))
                if ours in ("import_error", "compile_error", "unsupported") and has_params:
                    frozen, fdetail = _ours(case, io, tmp, freeze=True)
                    if frozen == "pass":
                        ours, detail = "pass", "parameter inputs frozen as constants"
                    elif frozen not in ("import_error", "compile_error", "unsupported",
                                        "invalid"):
                        ours, detail = frozen, f"(frozen) {fdetail}"
                    else:
                        detail = f"{detail} | frozen: {fdetail}"
            except Exception as e:
                ours, detail = "compile_error", traceback.format_exception_only(e)[-1][:300]
        raw_status = _raw(case, io) if raw else "-"
        conn.send(CaseResult(name, ops, ours, raw_status, _ort(case, io), detail,
                             time.perf_counter() - t))


class _Worker:
    def __init__(self, ctx: Any, raw: bool) -> None:
        self.parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, raw), daemon=True)
        self.proc.start()
        child.close()
        self.case: str | None = None
        self.deadline = 0.0
        self.ready = False


def run(names: list[str], jobs: int, timeout: float, raw: bool, progress: bool = True
        ) -> list[CaseResult]:
    ctx = mp.get_context("spawn")
    todo = collections.deque(names)
    results: list[CaseResult] = []
    workers = [_Worker(ctx, raw) for _ in range(max(1, jobs))]
    start = time.monotonic()
    try:
        while todo or any(w.case for w in workers):
            for i, w in enumerate(workers):
                if w.case is None and w.ready and todo:
                    w.case = todo.popleft()
                    w.deadline = time.monotonic() + timeout
                    w.parent.send(w.case)
                if w.parent.poll(0.02):
                    try:
                        msg = w.parent.recv()
                    except EOFError:
                        msg = None
                    if msg == "ready":
                        w.ready = True
                        continue
                    if isinstance(msg, CaseResult):
                        results.append(msg)
                        w.case = None
                        if progress and len(results) % 25 == 0:
                            print(f"  {len(results)}/{len(names)} cases, "
                                  f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
                        continue
                dead = not w.proc.is_alive()
                late = w.case is not None and time.monotonic() > w.deadline
                if dead or late:
                    if w.case is not None:
                        results.append(CaseResult(w.case, [], "crash" if dead else "timeout",
                                                  "-", "-", f"worker {'died' if dead else 'timed out'}"))
                    w.proc.kill()
                    workers[i] = _Worker(ctx, raw)
    finally:
        for w in workers:
            w.proc.kill()
    return sorted(results, key=lambda r: r.name)


def summarize(results: list[CaseResult]) -> str:
    n = len(results)
    lines = [f"{'class':<15} {'ours':>6} {'raw TVM':>8} {'onnxruntime':>12}"]
    for cls in CLASSES:
        ours = sum(r.ours == cls for r in results)
        raw = sum(r.raw == cls for r in results)
        ort = sum(r.ort == cls for r in results)
        if ours or raw or ort:
            lines.append(f"{cls:<15} {ours:>6} {raw:>8} {ort:>12}")

    def pct(key: str) -> str:
        ok = sum(getattr(r, key) == "pass" for r in results)
        return f"{ok}/{n} ({100 * ok / max(n, 1):.1f}%)"

    lines.append(f"{'pass rate':<15} ours {pct('ours')}, raw TVM {pct('raw')}, "
                 f"onnxruntime {pct('ort')}")
    return "\n".join(lines)


def per_operator(results: list[CaseResult]) -> str:
    by_op: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        main = [o for o in r.ops if o not in ("Constant",)] or r.ops or ["?"]
        for op in main[:1]:
            by_op[op][r.ours] += 1
    rows = ["| operator | cases | pass | failures |", "|---|---|---|---|"]
    for op, c in sorted(by_op.items()):
        fails = ", ".join(f"{k} {v}" for k, v in c.items() if k != "pass")
        rows.append(f"| {op} | {sum(c.values())} | {c['pass']} | {fails} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--filter", action="append", default=[], help="substring of test names")
    p.add_argument("--limit", type=int, help="first N matching cases")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--no-raw", action="store_true", help="skip the raw TVM comparison")
    p.add_argument("--json", help="write every case's result to this file")
    p.add_argument("--markdown", help="write the per-operator table to this file")
    args = p.parse_args(argv)
    names = [c.name for c in _cases()]
    if args.filter:
        names = [n for n in names if any(f in n for f in args.filter)]
    if args.limit:
        names = names[: args.limit]
    t = time.monotonic()
    results = run(names, args.jobs, args.timeout, raw=not args.no_raw)
    print(summarize(results))
    print(f"({len(results)} cases in {time.monotonic() - t:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    if args.markdown:
        Path(args.markdown).write_text(per_operator(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
