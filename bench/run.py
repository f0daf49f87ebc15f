"""Inference benchmark: TVM (edgeforge ``build_cpu`` and/or raw ``tvm.compile``) against onnxruntime.

    python -m bench.run [--models mobilenetv2 resnet18 ...] [--threads 1] [--repeat 30]
                        [--recipes edgeforge default] [--mcpu host|x86-64-v2|...] [--options JSON]

All executables of one model and the onnxruntime session are timed interleaved (ORT, A, B, ORT, A, B …)
in one process on the same seeded inputs, so ratios are meaningful on a noisy shared machine; absolute
times are not. Prints per model the compile time, medians, ratio to onnxruntime and the numerical error
against onnxruntime, then the geometric mean ratio per recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time


def _parse(argv=None):
    from bench.models import MODELS

    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--recipes", nargs="+", default=["edgeforge", "default"],
                   help="edgeforge = compiler.optimize.build_cpu; default = tvm.compile(mod, target); "
                        "name=JSON = build_cpu with these private options (experiments)")
    p.add_argument("--mcpu", default="host", help="'host' = llvm's host CPU name, or e.g. x86-64-v2")
    p.add_argument("--options", default=None, help="JSON dict of build_cpu options for 'edgeforge'")
    p.add_argument("--tune-trials", type=int, default=0)
    p.add_argument("--database-dir", default=None)
    p.add_argument("--json", default=None, help="write results as JSON to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _load_build_cpu():
    from compiler.optimize import build_cpu

    return build_cpu


def main(argv=None) -> int:
    args = _parse(argv)
    # must be set before tvm is imported: the TVM thread pool reads it once
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.threads > 1:
        # Interleaved runs share the cores: a pool that spin-waits after its run steals a core from
        # the other engine's next run (measured on 2 cores: MobileNetV2 at 2 threads took 44.7 ms
        # against 10.1 ms at 1 thread). Neither side spins (onnxruntime: allow_spinning=0 below).
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    import numpy as np
    import onnxruntime as ort

    t_imp = time.perf_counter()
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from bench.models import build_model, count_flops, input_feed
    from compiler.converters import install as install_converters

    build_cpu = _load_build_cpu()
    install_converters()  # the compiler's converter table (e.g. its layout-friendly Clip)

    logging.getLogger("bench").info("import tvm: %.1f s", time.perf_counter() - t_imp)
    n_pool = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
    if n_pool is not None:
        print(f"TVM thread pool: {n_pool()} threads (TVM_NUM_THREADS={args.threads})")

    mcpu = args.mcpu
    if mcpu == "host":
        mcpu = str(tvm.target.codegen.llvm_get_system_cpu())
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    print(f"target: {target}  threads={args.threads}  repeat={args.repeat}")

    recipes: list[tuple[str, dict | None]] = []
    for r in args.recipes:
        if r == "edgeforge":
            recipes.append((r, json.loads(args.options) if args.options else None))
        elif r == "default":
            recipes.append((r, None))
        elif "=" in r:
            name, js = r.split("=", 1)
            recipes.append((name, json.loads(js)))
        else:
            raise SystemExit(f"unknown recipe {r!r}")

    results = []
    ratios: dict[str, list[float]] = {name: [] for name, _ in recipes}
    for name in args.models:
        model = build_model(name)
        feed = input_feed(model, seed=0)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        if args.threads > 1:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feed)[0]

        runners = []
        for rname, opts in recipes:
            mod = from_onnx(model, keep_params_in_input=False)
            t0 = time.perf_counter()
            try:
                if rname == "default":
                    ex = tvm.compile(mod, target=target)
                else:
                    ex = build_cpu(mod, target, tune_trials=args.tune_trials, options=opts,
                                   database_dir=args.database_dir)
            except Exception as e:
                print(f"  {name}/{rname}: BUILD FAILED: {type(e).__name__}: {str(e)[:400]}")
                continue
            ctime = time.perf_counter() - t0
            vm = relax.VirtualMachine(ex, tvm.cpu())
            inputs = [tvm.runtime.tensor(v) for v in feed.values()]
            out = vm["main"](*inputs)
            if not isinstance(out, tvm.runtime.Tensor):
                out = out[0]
            got = out.numpy()
            err = float(np.max(np.abs(got - ref)))
            rel = err / max(float(np.max(np.abs(ref))), 1e-12)
            runners.append({"recipe": rname, "f": vm["main"], "in": inputs, "compile_s": ctime,
                            "max_abs": err, "max_rel": rel, "t": []})

        ort_t = []
        for i in range(args.warmup + args.repeat):
            t = time.perf_counter()
            sess.run(None, feed)
            dt = time.perf_counter() - t
            if i >= args.warmup:
                ort_t.append(dt)
            for r in runners:
                t = time.perf_counter()
                r["f"](*r["in"])
                dt = time.perf_counter() - t
                if i >= args.warmup:
                    r["t"].append(dt)
        ort_med = statistics.median(ort_t)
        flops = count_flops(model)  # 2 x multiply-accumulates: the roofline's work
        print(f"{name}: {flops / 1e9:.3f} GFLOP, onnxruntime {ort_med * 1e3:.2f} ms "
              f"({flops / ort_med / 1e9:.1f} GFLOP/s)")
        for r in runners:
            med = statistics.median(r["t"])
            ratio = med / ort_med
            ratios[r["recipe"]].append(ratio)
            print(f"  {r['recipe']:>12}: compile {r['compile_s']:6.1f} s  median {med * 1e3:8.2f} ms  "
                  f"({flops / med / 1e9:.1f} GFLOP/s)  ratio {ratio:6.2f}x  "
                  f"max_abs {r['max_abs']:.2e}  max_rel {r['max_rel']:.2e}")
            results.append({"model": name, "recipe": r["recipe"], "threads": args.threads,
                            "gflop": flops / 1e9,
                            "compile_s": r["compile_s"], "median_ms": med * 1e3,
                            "ort_median_ms": ort_med * 1e3, "ratio": ratio,
                            "max_abs": r["max_abs"], "max_rel": r["max_rel"]})
        sys.stdout.flush()
    for rname, rs in ratios.items():
        if rs:
            g = math.exp(sum(math.log(x) for x in rs) / len(rs))
            print(f"geomean ratio {rname}: {g:.2f}x over {len(rs)} models")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": str(target), "threads": args.threads, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
