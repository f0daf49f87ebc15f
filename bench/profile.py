"""Per-kernel profile of a benchmark model: edgeforge's fused functions against onnxruntime's
nodes, both at the same thread count.

    python -m bench.profile mobilenetv2 [--threads 1] [--runs 30] [--options JSON] [--json F]

edgeforge side: the relax VM's instrument hook times every call of the built executable (each
fused TIR function, in call order; VM builtins are summed apart). onnxruntime side: its own
profiler (``enable_profiling``), per node. Convolution/matmul kernels are then paired in graph
order (both engines keep the graph's order and fuse activations into them), which is how the
MobileNetV2 depthwise layers were found to run 1.7-2.6x onnxruntime's time in the model while
their isolated timings were close. Times under the instrument hook include ~1-2 us of Python
per call: compare kernels, not totals, with the benchmark (``python -m bench.run``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
from typing import Any

_HEAVY_ORT = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul", "NchwcConv")
_HEAVY_OURS = ("conv", "matmul", "winograd", "dense", "expand_dw")


def ort_profile(model, feed, threads: int, runs: int) -> list[tuple[str, str, float]]:
    """(node name, op type, median seconds) per onnxruntime node, in execution order."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="edgeforge-prof-") as tmp:
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per: dict[str, list[float]] = collections.defaultdict(list)
    order: list[tuple[str, str]] = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            if name not in per:
                order.append((name, e["args"].get("op_name", "?")))
            per[name].append(e["dur"] / 1e6)
    return [(n, op, statistics.median(per[n])) for n, op in order]


def vm_profile(vm, inputs, runs: int) -> list[tuple[str, float]]:
    """(function, median seconds) per call of the executable, in call order (one run)."""
    from compiler.inmodel import call_times

    per_run = call_times(vm, inputs, runs)
    return [(symbol, statistics.median(run[k][1] for run in per_run))
            for k, (symbol, _) in enumerate(per_run[0])]


def pair_kernels(ours: list[tuple[str, float]], theirs: list[tuple[str, str, float]]):
    """Convolution/matmul kernels of both sides, paired in order (None when counts differ); a
    fused expand + depthwise kernel (compiler.expand_dw) pairs with two onnxruntime nodes."""
    a = [o for o in ours if any(k in o[0] for k in _HEAVY_OURS)]
    b = [t for t in theirs if t[1] in _HEAVY_ORT]
    pairs, j = [], 0
    for sa, ta in a:
        n = 2 if sa.startswith("expand_dw") else 1
        if j + n > len(b):
            return None
        nodes = b[j:j + n]
        j += n
        pairs.append((sa, ta, "+".join(t[0] for t in nodes), "+".join(t[1] for t in nodes),
                      sum(t[2] for t in nodes)))
    return pairs if j == len(b) else None


def main(argv=None) -> int:
    from bench.models import MODELS

    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=MODELS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--options", default=None, help="JSON dict of build_cpu options")
    p.add_argument("--json", default=None, help="write the rows as JSON to this file")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before tvm is imported

    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from bench.models import build_model, input_feed
    from compiler.converters import install
    from compiler.optimize import build_cpu

    install()
    model = build_model(args.model)
    feed = input_feed(model, seed=0)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())})
    ex = build_cpu(from_onnx(model, keep_params_in_input=False), target,
                   options=json.loads(args.options) if args.options else None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    inputs = [tvm.runtime.tensor(v) for v in feed.values()]
    ours = vm_profile(vm, inputs, args.runs)
    theirs = ort_profile(model, feed, args.threads, args.runs)

    kernels = [(s, t) for s, t in ours if not s.startswith("vm.builtin")]
    builtins = sum(t for s, t in ours if s.startswith("vm.builtin"))
    print(f"{args.model}, {args.threads} thread(s): edgeforge {len(kernels)} kernel calls "
          f"{sum(t for _, t in kernels) * 1e3:.3f} ms (+ VM builtins {builtins * 1e3:.3f} ms); "
          f"onnxruntime {len(theirs)} nodes {sum(t for *_, t in theirs) * 1e3:.3f} ms")
    pairs = pair_kernels(ours, theirs)
    rows: list[dict[str, Any]] = []
    if pairs is None:
        print("kernel counts differ: no pairing; edgeforge's slowest calls:")
        for s, t in sorted(kernels, key=lambda r: -r[1])[:25]:
            print(f"  {t * 1e3:8.3f} ms  {s}")
            rows.append({"function": s, "ms": t * 1e3})
    else:
        print(f"{'ours ms':>8} {'ORT ms':>8} {'ratio':>6}  function / onnxruntime node")
        for sa, ta, nb, op, tb in pairs:
            print(f"{ta * 1e3:8.3f} {tb * 1e3:8.3f} {ta / tb:6.2f}  {sa}  /  {op} {nb}")
            rows.append({"function": sa, "ms": ta * 1e3, "ort_node": nb, "ort_op": op,
                         "ort_ms": tb * 1e3, "ratio": ta / tb})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "threads": args.threads, "rows": rows}, f, indent=1)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
