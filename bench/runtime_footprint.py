"""Device footprint: edgeforge-runtime against onnxruntime (and the full apache-tvm wheel).

    python -m bench.runtime_footprint [--model mobilenetv2] [--runs 5] [--threads 1]
                                      [--artifact A.efa --trusted-key K.pem] [--wheel W.whl]
                                      [--with-tvm] [--json out.json]

Prints, side by side from one run:

* installed size: bytes on disk of each distribution's files (its RECORD, byte-compiled files
  included), alone and with its install requirements, numpy excluded (every side needs it).
  edgeforge-runtime is measured in a fresh venv where its platform wheel (built by
  scripts/build_runtime_wheel.sh, or --wheel) was pip-installed; onnxruntime and apache-tvm where
  they are installed in this (development) environment.
* cold start: a fresh Python process doing import + load + first inference on the same model and
  the same input, as a device does at boot; phases timed inside the process, the whole process
  (interpreter start included) timed from outside; peak RSS is the process's VmHWM (Linux). The runtimes take
  turns (A B A B ...) for ``--runs`` rounds; medians are reported. edgeforge-runtime runs from
  the fresh venv (no TVM installed), onnxruntime from this environment. ``--with-tvm`` adds the
  same with the full ``import tvm`` (relax VM).

The artifact (MobileNetV2 by default, from bench.models) is compiled once with the ``edgeforge``
CLI for this machine's profile and cached under .cache/footprint/. The outputs of the first round
are compared (max abs / rel error against onnxruntime).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "footprint"

# --- the processes measured ----------------------------------------------------------------------

# Peak RSS from the kernel's VmHWM: getrusage()'s ru_maxrss is carried across fork+exec on Linux,
# so every child of this (large) process would report this process's peak instead of its own.
_PRELUDE = """
import json, sys, time
t0 = time.perf_counter()

def peak_rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
"""
_EPILOGUE = """
t4 = time.perf_counter()
np.save(sys.argv[2], np.asarray(out))
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_run_s": t4 - t3,
                  "peak_rss_kb": peak_rss_kb()}))
"""
_CHILD = {
    "edgeforge-runtime": """
import numpy as np
from edgeforge_runtime import InferenceSession, SessionOptions
t1 = time.perf_counter()
cfg = json.loads(sys.argv[1])
sess = InferenceSession(cfg["artifact"], [cfg["key"]],
                        SessionOptions(intra_op_num_threads=cfg["threads"]))
t2 = time.perf_counter()
with np.load(cfg["inputs"]) as f:
    feed = {k: f[k] for k in f.files}
t3 = time.perf_counter()
out = sess.run(None, feed)[0]
""",
    "onnxruntime": """
import numpy as np
import onnxruntime as ort
t1 = time.perf_counter()
cfg = json.loads(sys.argv[1])
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.intra_op_num_threads = cfg["threads"]
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(cfg["onnx"], opts, providers=["CPUExecutionProvider"])
t2 = time.perf_counter()
with np.load(cfg["inputs"]) as f:
    feed = {k: f[k] for k in f.files}
t3 = time.perf_counter()
out = sess.run(None, feed)[0]
""",
    "apache-tvm (import tvm)": """
import numpy as np
import tvm
from tvm import relax
t1 = time.perf_counter()
cfg = json.loads(sys.argv[1])
vm = relax.VirtualMachine(tvm.runtime.load_module(cfg["library"]), tvm.cpu())
t2 = time.perf_counter()
with np.load(cfg["inputs"]) as f:
    args = [tvm.runtime.tensor(f[k]) for k in f.files]
t3 = time.perf_counter()
out = vm["main"](*args)
out = (out[0] if not isinstance(out, tvm.runtime.Tensor) else out).numpy()
""",
}


def _child_code(kind: str) -> str:
    return _PRELUDE + textwrap.dedent(_CHILD[kind]) + _EPILOGUE


def _clean_env(**extra: str) -> dict[str, str]:
    drop = {"PYTHONPATH", "PYTHONHOME", "EDGEFORGE_TVM_RUNTIME_DIR", "VIRTUAL_ENV"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


# --- installed sizes -----------------------------------------------------------------------------

_SIZES = r"""
import importlib.metadata as md, json, os, re, sys

def norm(n):
    return re.sub(r"[-_.]+", "-", n).lower()

def dist_bytes(d):
    total = 0
    for f in d.files or []:
        try:
            total += os.lstat(d.locate_file(f)).st_size
        except OSError:
            pass
    return total

def closure(name):
    seen, todo, out = set(), [name], {}
    while todo:
        n = norm(todo.pop())
        if n in seen or n == "numpy":
            continue
        seen.add(n)
        try:
            d = md.distribution(n)
        except md.PackageNotFoundError:
            continue
        out[d.metadata["Name"]] = dist_bytes(d)
        for r in d.requires or []:
            if "extra ==" not in r:
                todo.append(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0])
    return out

print(json.dumps({n: closure(n) for n in sys.argv[1:]}))
"""


def installed_sizes(python: str, *names: str) -> dict[str, dict[str, int]]:
    """{distribution: {itself and each install requirement (numpy excluded): bytes}}."""
    proc = subprocess.run([python, "-c", _SIZES, *names], capture_output=True, text=True,
                          env=_clean_env(), check=True, timeout=120)
    return json.loads(proc.stdout)


# --- setup: model, artifact, wheel venv ----------------------------------------------------------


def _host_profile() -> str:
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64",
            "arm64": "aarch64"}[platform.machine().lower()]


def _model(name: str) -> tuple[bytes, dict[str, Any], str]:
    """(ONNX bytes, seeded input feed, description)."""
    import numpy as np

    try:
        from bench.models import MODELS, build_model, input_feed
    except ImportError:
        MODELS = []
    if name in MODELS:
        model = build_model(name)
        return model.SerializeToString(), input_feed(model, seed=0), name
    from onnx import TensorProto, helper, numpy_helper

    print(f"bench.models has no {name!r}: using a small CNN instead", file=sys.stderr)
    rng = np.random.default_rng(0)
    inits, nodes, x, c = [], [], "input", 3
    for i, (cout, stride) in enumerate([(16, 2), (32, 2), (64, 2), (128, 2)]):
        w = numpy_helper.from_array((rng.standard_normal((cout, c, 3, 3)) * 0.1).astype(np.float32),
                                    f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c = f"r{i}", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["output"]))
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                           [1, 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 128, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feed = {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    return model.SerializeToString(), feed, "small CNN (4 conv, 224x224)"


def _artifact(onnx_bytes: bytes, name: str) -> tuple[Path, Path]:
    """Compile (once; cached by model hash and profile) with the edgeforge CLI."""
    profile = _host_profile()
    digest = hashlib.sha256(onnx_bytes).hexdigest()[:12]
    d = CACHE / f"{name}-{digest}-{profile}"
    art, key = d / f"{name}-1-{profile}.efa", d / "key.pem"
    if art.exists():
        return art, d / "key.pub.pem"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(onnx_bytes)
    cli = [sys.executable, "-m", "compiler.cli"]
    if not key.exists():
        subprocess.run([*cli, "keygen", "--out", str(key)], check=True, capture_output=True)
    print(f"compiling {name} for {profile} (once, cached in {d}) ...", file=sys.stderr)
    subprocess.run([*cli, "compile", str(d / "model.onnx"), "-p", profile, "--name", name,
                    "--out", str(d), "--key", str(key), "--no-verify", "--quiet"],
                   check=True, timeout=3600)
    return art, d / "key.pub.pem"


def _wheel_venv(tmp: Path, wheel: str | None) -> tuple[Path, int, dict[str, int]]:
    """A fresh venv with the runtime wheel installed: (python, bytes without numpy, breakdown)."""
    if wheel is None:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_runtime_wheel.sh"),
                               _host_profile(), str(tmp / "dist")],
                              env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                              text=True, check=False, timeout=900)
        if proc.returncode != 0:
            sys.exit(f"building the runtime wheel failed:\n{proc.stderr[-3000:]}")
        wheel = proc.stdout.strip().splitlines()[-1]
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    before = {p.name for p in site.iterdir()}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--disable-pip-version-check", wheel], check=True,
                   env=_clean_env())
    breakdown = {}
    for p in site.iterdir():
        if p.name in before or p.name.lower().startswith("numpy"):
            continue
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        breakdown[p.name] = sum(f.lstat().st_size for f in files)
    return venv / "bin" / "python", sum(breakdown.values()), breakdown


# --- measuring ---------------------------------------------------------------------------------------


def _cold(python: str, kind: str, cfg: dict[str, Any], out: Path, env: dict[str, str]
          ) -> dict[str, float]:
    import time

    t = time.perf_counter()
    proc = subprocess.run([python, "-c", _child_code(kind), json.dumps(cfg), str(out)],
                          capture_output=True, text=True, env=env, check=False, timeout=600)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{kind} cold start failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["total_s"] = r["import_s"] + r["load_s"] + r["first_run_s"]
    r["process_s"] = wall
    r["peak_rss_mb"] = r.pop("peak_rss_kb") / 1024
    return r


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runtime_footprint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--runs", type=int, default=5, help="fresh processes per runtime (>= 5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--artifact", help="use this artifact instead of compiling (with --trusted-key)")
    p.add_argument("--trusted-key", help="public key of --artifact")
    p.add_argument("--wheel", help="use this runtime wheel instead of building one")
    p.add_argument("--with-tvm", action="store_true",
                   help="also measure the cold start with the full `import tvm` (slow: ~10 s each)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")

    import numpy as np

    onnx_bytes, feed, described = _model(args.model)
    if args.artifact:
        if not args.trusted_key:
            p.error("--artifact needs --trusted-key")
        art, key = Path(args.artifact).resolve(), Path(args.trusted_key).resolve()
    else:
        art, key = _artifact(onnx_bytes, args.model)

    with tempfile.TemporaryDirectory(prefix="edgeforge-footprint-") as tmp_name:
        tmp = Path(tmp_name)
        ef_python, ef_bytes, ef_breakdown = _wheel_venv(tmp, args.wheel)
        sizes = installed_sizes(sys.executable, "onnxruntime", "apache-tvm")
        ef_sizes = installed_sizes(str(ef_python), "edgeforge-runtime")["edgeforge-runtime"]

        onnx_path, inputs = tmp / "model.onnx", tmp / "inputs.npz"
        onnx_path.write_bytes(onnx_bytes)
        np.savez(inputs, **feed)
        cfg = {"artifact": str(art), "key": str(key), "onnx": str(onnx_path),
               "inputs": str(inputs), "threads": args.threads}
        runners: dict[str, tuple[str, dict[str, str]]] = {
            "edgeforge-runtime": (str(ef_python), _clean_env()),
            "onnxruntime": (sys.executable, _clean_env()),
        }
        if args.with_tvm:
            from edgeforge_runtime import TrustedKeys, open_artifact

            verified = open_artifact(art, TrustedKeys.load([key]), extract_to=tmp)
            cfg["library"] = str(verified.library_path)
            runners["apache-tvm (import tvm)"] = (
                sys.executable, _clean_env(TVM_NUM_THREADS=str(args.threads)))

        results: dict[str, list[dict[str, float]]] = {k: [] for k in runners}
        outputs: dict[str, np.ndarray] = {}
        for i in range(args.runs):  # interleaved: A B (C) A B (C) ...
            for kind, (python, env) in runners.items():
                out = tmp / f"out-{len(outputs)}.npy"
                results[kind].append(_cold(python, kind, cfg, out, env))
                if i == 0:
                    outputs[kind] = np.load(out)
            print(f"round {i + 1}/{args.runs}: " + ", ".join(
                f"{k} {results[k][-1]['total_s']:.2f} s" for k in runners), file=sys.stderr)

    ref = outputs["onnxruntime"].astype(np.float64)
    agreement = {}
    for kind, out in outputs.items():
        if kind != "onnxruntime":
            diff = np.abs(out.astype(np.float64) - ref)
            agreement[kind] = {"max_abs": float(diff.max()),
                               "max_rel": float((diff / (np.abs(ref) + 1)).max())}
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}

    ort_alone = sizes["onnxruntime"].get("onnxruntime", 0)
    tvm_alone = sizes["apache-tvm"].get("apache-tvm", 0)
    ef_alone = ef_sizes.get("edgeforge-runtime", 0)
    rows = [
        ("edgeforge-runtime (wheel venv)", ef_alone, sum(ef_sizes.values()), ef_sizes),
        ("onnxruntime", ort_alone, sum(sizes["onnxruntime"].values()), sizes["onnxruntime"]),
        ("apache-tvm (full wheel)", tvm_alone, sum(sizes["apache-tvm"].values()),
         sizes["apache-tvm"]),
    ]
    print(f"\nedgeforge-runtime footprint on {platform.machine()}, Python "
          f"{platform.python_version()}; model: {described}; {args.threads} thread(s); "
          f"{args.runs} fresh processes each, interleaved; medians\n")
    print(f"{'installed (no numpy)':<32} {'package':>12} {'with deps':>12}  deps")
    for name, alone, total, parts in rows:
        deps = ", ".join(f"{k} {_mb(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
                         if k.lower() not in (name.split()[0].lower(),))
        print(f"{name:<32} {_mb(alone):>12} {_mb(total):>12}  {deps}")
    print(f"{'  (site-packages walk)':<32} {'':>12} {_mb(ef_bytes):>12}  "
          + ", ".join(f"{k} {_mb(v)}" for k, v in sorted(ef_breakdown.items(), key=lambda kv: -kv[1])))
    print(f"\n{'cold start (fresh process)':<28} {'import':>8} {'load':>8} {'1st run':>8} "
          f"{'total':>8} {'process':>8} {'peak RSS':>10}")
    for kind, m in med.items():
        print(f"{kind:<28} {m['import_s']:>7.3f}s {m['load_s']:>7.3f}s {m['first_run_s']:>7.3f}s "
              f"{m['total_s']:>7.3f}s {m['process_s']:>7.3f}s {m['peak_rss_mb']:>7.1f} MB")
    e, o = med["edgeforge-runtime"], med["onnxruntime"]
    print(f"\nedgeforge-runtime / onnxruntime: cold start (total) {e['total_s'] / o['total_s']:.2f}x, "
          f"whole process {e['process_s'] / o['process_s']:.2f}x, peak RSS "
          f"{e['peak_rss_mb'] / o['peak_rss_mb']:.2f}x, installed with deps "
          f"{sum(ef_sizes.values()) / rows[1][2]:.2f}x")
    for kind, a in agreement.items():
        print(f"agreement {kind} vs onnxruntime: max abs {a['max_abs']:.2e}, "
              f"max rel {a['max_rel']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": platform.machine(), "python": platform.python_version(),
            "model": described, "threads": args.threads, "runs": args.runs,
            "installed_bytes": {"edgeforge-runtime": ef_sizes, "edgeforge-runtime_walk": ef_breakdown,
                                **sizes},
            "cold_start_median": med, "cold_start_runs": results, "agreement": agreement,
        }, indent=2))
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:  # `python bench/runtime_footprint.py` from anywhere
        sys.path.insert(0, str(ROOT))
    if shutil.which("bash") is None:
        sys.exit("bash is needed to build the runtime wheel")
    sys.exit(main())
