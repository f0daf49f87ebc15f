"""``edgeforge-runtime``: inspect, verify, run and benchmark edgeforge artifacts on a device.

The CLI only turns arguments into calls of the library (:func:`~edgeforge_runtime.open_artifact`,
:class:`~edgeforge_runtime.InferenceSession`) and prints the result. Exit status: 0 success, 1 the
artifact was refused (signature, digest, profile, ABI...), 2 bad usage or input (missing file,
unusable key, wrong feed), 3 the TVM runtime or the device could not be loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .archive import open_artifact, read_manifest
from .compat import check_compatible, host_arch
from .dtypes import ML_DTYPES
from .exceptions import ArtifactError, EdgeforgeRuntimeError, RuntimeLoadError
from .manifest import RUNTIME_ABI, Manifest, TensorSpec
from .signature import TrustedKeys, load_signatures

if TYPE_CHECKING:
    import numpy as np

    from .session import InferenceSession

__all__ = ["build_parser", "main"]

PROG = "edgeforge-runtime"

EPILOG = """\
examples:
  edgeforge-runtime inspect resnet-3-rpi4.efa
  edgeforge-runtime verify resnet-3-rpi4.efa --trusted-key signing-key.pub.pem --profile rpi4
  edgeforge-runtime run resnet-3-rpi4.efa --trusted-key signing-key.pub.pem \\
      --input input=image.npy --output result.npz
  edgeforge-runtime bench resnet-3-rpi4.efa --trusted-key signing-key.pub.pem --runs 100 --threads 1

Nothing in an artifact is trusted until it is verified against --trusted-key (the public key of
the signer, e.g. the .pub.pem that `edgeforge keygen` wrote). `inspect` without --trusted-key shows
the manifest as the file claims it, labelled UNVERIFIED.

exit status: 0 ok, 1 artifact refused (bad signature, digest, profile, ABI...), 2 bad usage or
input, 3 the TVM runtime or the device (e.g. CUDA) cannot be loaded here.
"""

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_LOAD = 0, 1, 2, 3


def _peak_rss_kb() -> int:
    """Peak resident memory of this process, KiB. Linux carries getrusage()'s ru_maxrss across
    fork+exec, so a child started by a large process would report its parent's peak: read the
    kernel's VmHWM of the process's own address space, and fall back to getrusage elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# Runs in a fresh interpreter: import + load + first inference, as a device would at boot.
_COLD_START = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from edgeforge_runtime import InferenceSession, SessionOptions
t1 = time.perf_counter()
artifact, threads, profile, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, sys.argv[4:]
sess = InferenceSession(artifact, keys, SessionOptions(intra_op_num_threads=threads),
                        expected_profile=profile)
t2 = time.perf_counter()
rng = np.random.default_rng(0)
feed = {}
for i in sess.get_inputs():
    if i.dtype.startswith("float"):
        feed[i.name] = rng.standard_normal(i.shape).astype(i.dtype)
    else:
        feed[i.name] = rng.integers(0, 2, i.shape).astype(i.dtype)
t3 = time.perf_counter()
sess.run(None, feed)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_run_s": t4 - t3,
                  "peak_rss_kb": _peak_rss_kb()}))
"""


class UsageError(Exception):
    """A bad argument or input file (exit status 2)."""


# --- helpers ----------------------------------------------------------------------------------


def _trusted(args: argparse.Namespace) -> TrustedKeys:
    if not args.trusted_key:
        raise UsageError("--trusted-key is required (the signer's public key, PEM)")
    return TrustedKeys.load(args.trusted_key, threshold=args.threshold)


def _session(args: argparse.Namespace) -> InferenceSession:
    from .session import InferenceSession, SessionOptions

    options = SessionOptions(intra_op_num_threads=args.threads or 0)
    return InferenceSession(args.artifact, _trusted(args), options,
                            expected_profile=args.profile)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensor(t: TensorSpec) -> str:
    return f"{t.name}: {t.dtype}{list(t.shape)}"


def _num(value: Any, fmt: str = ".3g") -> str:
    """Format a number from an (unverified) manifest without trusting its type."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return repr(value)


def _emit(args: argparse.Namespace, payload: dict[str, Any], lines: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("\n".join(lines))


def _compat(manifest: Manifest, profile: str | None = None, arch: str | None = None
            ) -> tuple[bool, str | None]:
    try:
        check_compatible(manifest, expected_profile=profile, arch=arch)
    except ArtifactError as e:
        return False, f"{type(e).__name__}: {e}"
    return True, None


# --- inspect ----------------------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    manifest, mbytes, sbytes = read_manifest(args.artifact)
    try:
        claimed = [{"keyid": s.keyid, "alg": s.alg} for s in load_signatures(sbytes)]
    except EdgeforgeRuntimeError as e:
        claimed = [{"error": str(e)}]
    status: dict[str, Any] = {"verified": False, "checked": False}
    if args.trusted_key:
        status["checked"] = True
        with tempfile.TemporaryDirectory(prefix="edgeforge-inspect-") as tmp:
            try:
                verified = open_artifact(args.artifact, _trusted(args), extract_to=tmp)
            except ArtifactError as e:
                status.update(error=type(e).__name__, message=str(e))
            else:
                verified.cleanup()
                status.update(verified=True, signed_by=verified.signed_by)
    ok, reason = _compat(manifest)
    m, p, v = manifest, manifest.profile, manifest.verification
    payload = {
        "artifact": str(args.artifact), "size": os.path.getsize(args.artifact),
        "sha256": _sha256(args.artifact), "verification": status, "signatures": claimed,
        "compatible_here": {"ok": ok, "reason": reason, "arch": host_arch()},
        "manifest": json.loads(mbytes),
    }
    if status["verified"]:
        banner = (f"VERIFIED: signed by trusted key(s) {', '.join(status['signed_by'])}; every "
                  "file matches the signed manifest")
    elif status["checked"]:
        banner = f"VERIFICATION FAILED: {status['error']}: {status['message']}"
    else:
        banner = ("UNVERIFIED: the signature and file digests were NOT checked; everything below "
                  "is what the file claims (pass --trusted-key to verify)")
    lines = [
        f"{args.artifact}  ({payload['size']:,} bytes, sha256 {payload['sha256']})",
        banner,
        "",
        f"format        {m.format} v{m.format_version}",
        f"model         {m.model.name} v{m.model.version} (source sha256 "
        f"{m.model.source_sha256[:16]}…, {_num(m.model.source_size, ',')} bytes)",
        f"profile       {p.name}: {p.arch}, {p.device}"
        + (f" {p.cuda_arch}" if p.cuda_arch else "")
        + f", target {json.dumps(p.target, sort_keys=True)}",
        "abi           " + ", ".join(f"{k} {val}" for k, val in sorted(m.abi.items()))
        + ("  (this runtime: same)" if m.abi == RUNTIME_ABI else
           f"  (this runtime: {', '.join(f'{k} {val}' for k, val in RUNTIME_ABI.items())})"),
        f"library       {m.library} (entry {m.entry})",
    ]
    lines += [f"file          {f.path}  {f.size:,} bytes  sha256 {f.sha256}" for f in m.files]
    lines += [f"input         {_tensor(t)}" for t in m.inputs]
    lines += [f"output        {_tensor(t)}" for t in m.outputs]
    for s in claimed:
        lines.append(f"signature     {s.get('keyid', '?')} ({s.get('alg', s.get('error'))})"
                     + ("" if status["verified"] else "  [claimed, not verified]"))
    if v.verified and v.within_reference_noise:
        noise = v.reference_noise if isinstance(v.reference_noise, dict) else {}
        lines.append(f"build check   passed WITHIN ONNXRUNTIME'S OWN NOISE ({v.method}), not the "
                     f"tolerance: max rel error {_num(v.max_rel_error)} > tolerance "
                     f"{_num(v.tolerance)}; onnxruntime itself moves by up to "
                     f"{_num(noise.get('max_rel_error'))} when the inputs are nudged by 1 ulp")
    elif v.verified:
        lines.append(f"build check   passed ({v.method}): max abs error {_num(v.max_abs_error)}, "
                     f"max rel error {_num(v.max_rel_error)} (tolerance {_num(v.tolerance)}) "
                     "against onnxruntime")
    else:
        lines.append(f"build check   not verified ({v.method}): {v.reason}")
    opts = m.compile.get("options") if isinstance(m.compile.get("options"), dict) else {}
    if opts:
        lines.append("compile       " + ", ".join(f"{k}={val}" for k, val in sorted(opts.items())))
    lines.append(f"this machine  {host_arch()}: "
                 + ("compatible" if ok else f"NOT compatible ({reason})"))
    _emit(args, payload, lines)
    return EXIT_REFUSED if status["checked"] and not status["verified"] else EXIT_OK


# --- verify -----------------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    trusted = _trusted(args)
    with tempfile.TemporaryDirectory(prefix="edgeforge-verify-") as tmp:
        verified = open_artifact(args.artifact, trusted, extract_to=tmp)
        verified.cleanup()
    m = verified.manifest
    check_compatible(m, expected_profile=args.profile, arch=args.arch)
    payload = {
        "ok": True, "artifact": str(args.artifact), "signed_by": verified.signed_by,
        "model": {"name": m.model.name, "version": m.model.version},
        "profile": m.profile.name, "arch": m.profile.arch, "device": m.profile.device,
        "abi": m.abi, "files": [f.path for f in m.files],
    }
    lines = [
        f"OK: {args.artifact}",
        f"  signature  valid, by trusted key(s) {', '.join(verified.signed_by)}",
        f"  files      {len(m.files)} file(s) match the signed sizes and sha256 digests",
        f"  abi        {', '.join(f'{k} {val}' for k, val in sorted(m.abi.items()))} "
        "(matches this runtime)",
        f"  profile    {m.profile.name} ({m.profile.arch}, {m.profile.device})"
        + (", as expected" if args.profile else "")
        + f"; runs on {args.arch or host_arch()}",
        f"  model      {m.model.name} v{m.model.version}",
    ]
    _emit(args, payload, lines)
    return EXIT_OK


# --- run --------------------------------------------------------------------------------------


def _load_array(path: str) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"{path}: not a readable .npy/.npz file ({e})") from e


def _feed(specs: Sequence[str], sess: InferenceSession, random_seed: int | None
          ) -> dict[str, np.ndarray]:
    import numpy as np

    inputs = sess.get_inputs()
    feed: dict[str, np.ndarray] = {}
    if random_seed is not None:
        rng = np.random.default_rng(random_seed)
        for i in inputs:
            if i.dtype.startswith("float") or i.dtype == "bfloat16":
                feed[i.name] = rng.standard_normal(i.shape).astype(i.dtype)
            else:
                feed[i.name] = rng.integers(0, 2, i.shape).astype(i.dtype)
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        data = _load_array(path)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if name:
                    raise UsageError(f"--input {spec}: give an .npz file without NAME=")
                for key in data.files:
                    feed[key] = data[key]
            continue
        if not name:
            if len(inputs) != 1:
                raise UsageError(
                    f"--input {spec}: the model has {len(inputs)} inputs "
                    f"({', '.join(i.name for i in inputs)}); write NAME=FILE.npy")
            name = inputs[0].name
        feed[name] = data
    # .npy/.npz store ml_dtypes arrays (bfloat16, float8, int4, ...) as raw bytes ("|V1"):
    # read them back as the input's dtype.
    for i in inputs:
        arr = feed.get(i.name)
        if arr is not None and arr.dtype.kind == "V" and i.dtype in ML_DTYPES:
            want = np.dtype(i.dtype)
            if arr.dtype.itemsize == want.itemsize:
                feed[i.name] = arr.view(want)
    return feed


def _summary(name: str, arr: np.ndarray) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if arr.size and arr.dtype.kind in "fiub":
        a = arr.astype(np.float64)
        out.update(min=float(a.min()), max=float(a.max()), mean=float(a.mean()))
        flat = arr.reshape(-1)
        if arr.size <= 1024:
            out["values"] = flat.tolist()
        if arr.ndim == 2 and arr.shape[0] == 1 and arr.shape[1] > 1:
            top = np.argsort(-a[0])[:5]
            out["top5"] = [[int(i), float(a[0, i])] for i in top]
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    if not args.input and args.random_inputs is None:
        raise UsageError("give the model's inputs with --input NAME=FILE.npy (or --random-inputs)")
    t0 = time.perf_counter()
    sess = _session(args)
    load_s = time.perf_counter() - t0
    feed = _feed(args.input, sess, args.random_inputs)
    t1 = time.perf_counter()
    results = sess.run(None, feed)
    run_s = time.perf_counter() - t1
    names = [o.name for o in sess.get_outputs()]
    if args.output:
        with open(args.output, "wb") as f:
            np.savez(f, **dict(zip(names, results)))
    summaries = [_summary(n, r) for n, r in zip(names, results)]
    payload = {"ok": True, "artifact": str(args.artifact), "signed_by": sess.signed_by,
               "load_s": load_s, "run_s": run_s, "output_file": args.output,
               "outputs": summaries}
    lines = [f"{args.artifact}: verified (signed by {', '.join(k[:16] + '…' for k in sess.signed_by)}"
             f"), loaded in {load_s * 1e3:.1f} ms, ran in {run_s * 1e3:.2f} ms"]
    for s in summaries:
        line = f"  output {s['name']}: {s['dtype']}{s['shape']}"
        if "min" in s:
            line += f"  min {s['min']:.6g}  max {s['max']:.6g}  mean {s['mean']:.6g}"
        if "top5" in s:
            line += "  top5 " + ", ".join(f"{i}:{v:.4g}" for i, v in s["top5"])
        lines.append(line)
    if args.output:
        lines.append(f"outputs written to {args.output} ({', '.join(names)})")
    _emit(args, payload, lines)
    return EXIT_OK


# --- bench ------------------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _median(values: Sequence[float]) -> float:
    return _percentile(sorted(values), 50)


def _cold_start(args: argparse.Namespace) -> dict[str, Any]:
    """Median over ``args.cold_runs`` fresh interpreters of import + load + first inference."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    import inspect

    code = inspect.getsource(_peak_rss_kb) + _COLD_START
    cmd = [sys.executable, "-c", code, str(args.artifact), str(args.threads or 0),
           args.profile or "", *map(str, args.trusted_key)]
    samples = []
    for _ in range(args.cold_runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:]
            raise RuntimeLoadError(f"the cold-start process failed: {' '.join(tail)}")
        sample = json.loads(proc.stdout.strip().splitlines()[-1])
        sample["process_s"] = wall
        samples.append(sample)
    keys = ("import_s", "load_s", "first_run_s", "process_s")
    out: dict[str, Any] = {k: _median([s[k] for s in samples]) for k in keys}
    out["total_s"] = _median([s["import_s"] + s["load_s"] + s["first_run_s"] for s in samples])
    out["peak_rss_mb"] = _median([s["peak_rss_kb"] / 1024 for s in samples])
    out["processes"] = len(samples)
    return out


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0 or args.cold_runs < 0:
        raise UsageError("--runs must be >= 1, --warmup and --cold-runs >= 0")
    import numpy  # noqa: F401  (imported before the clock starts: "load" is the session's own cost)

    t0 = time.perf_counter()
    sess = _session(args)
    load_s = time.perf_counter() - t0
    feed = _feed([], sess, random_seed=0)
    for _ in range(args.warmup):
        sess.run(None, feed)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter_ns()
        sess.run(None, feed)
        times.append((time.perf_counter_ns() - t) / 1e6)
    times.sort()
    latency = {"p50": _percentile(times, 50), "p90": _percentile(times, 90),
               "p99": _percentile(times, 99), "mean": sum(times) / len(times),
               "min": times[0], "max": times[-1]}
    rss_mb = _peak_rss_kb() / 1024
    cold = _cold_start(args) if args.cold_runs else None
    m = sess.manifest
    threads = args.threads or "default"
    payload = {
        "ok": True, "artifact": str(args.artifact), "model": m.model.name,
        "version": m.model.version, "profile": m.profile.name, "machine": platform.machine(),
        "threads": args.threads or 0, "runs": args.runs, "warmup": args.warmup,
        "load_s": load_s, "latency_ms": latency, "peak_rss_mb_bench": rss_mb, "cold_start": cold,
    }
    lines = [
        f"{m.model.name} v{m.model.version}, profile {m.profile.name} ({m.profile.device}) on "
        f"{platform.machine()}, threads {threads}: {args.runs} runs after {args.warmup} warm-up",
        f"latency      p50 {latency['p50']:.3f} ms   p90 {latency['p90']:.3f} ms   "
        f"p99 {latency['p99']:.3f} ms   (mean {latency['mean']:.3f}, min {latency['min']:.3f}, "
        f"max {latency['max']:.3f})",
        f"load         {load_s * 1e3:.1f} ms (verify + extract + dlopen, in this process)",
    ]
    if cold:
        lines += [
            f"cold start   {cold['total_s'] * 1e3:.0f} ms = import {cold['import_s'] * 1e3:.0f} + "
            f"load {cold['load_s'] * 1e3:.0f} + first run {cold['first_run_s'] * 1e3:.1f} ms "
            f"(median of {cold['processes']} fresh processes; whole process incl. interpreter "
            f"start {cold['process_s'] * 1e3:.0f} ms)",
            f"peak RSS     {cold['peak_rss_mb']:.1f} MB in a fresh process (one inference); "
            f"{rss_mb:.1f} MB in this process after {args.runs} runs",
        ]
    else:
        lines.append(f"peak RSS     {rss_mb:.1f} MB in this process after {args.runs} runs")
    _emit(args, payload, lines)
    return EXIT_OK


# --- parser and main --------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, description="Verify and run edgeforge-compiled models on this device.",
        epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s 0.1.0 (tvm {RUNTIME_ABI['tvm']}, "
                        f"tvm-ffi {RUNTIME_ABI['tvm_ffi']})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, keys_required: bool) -> None:
        p.add_argument("artifact", help="the .efa artifact file")
        p.add_argument("-k", "--trusted-key", action="append", default=[], metavar="PEM",
                       required=keys_required,
                       help="public key (PEM) allowed to sign artifacts; repeat for several")
        p.add_argument("--threshold", type=int, default=1,
                       help="how many distinct trusted keys must have signed (default 1)")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")

    p = sub.add_parser(
        "inspect", help="show an artifact's manifest (UNVERIFIED unless --trusted-key)",
        description=_wrap(
            "Print the manifest, the claimed signer key ids, the profile, inputs and "
            "outputs. Without --trusted-key nothing is verified and the output says so; with it, the "
            "signature and every file digest are checked too (exit 1 if they fail)."),
        epilog="example:\n  edgeforge-runtime inspect model-1-rpi4.efa --json", formatter_class=fmt)
    common(p, keys_required=False)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "verify", help="check signature, digests, ABI and profile; exit 0 or 1",
        description=_wrap(
            "Verify the signature over the manifest with the trusted key(s), every file's "
            "size and sha256, the runtime ABI, and that the artifact is built for this machine's "
            "architecture (or --arch) and, with --profile, that profile. Exit 0 when it would load, "
            "1 with the error class and message when it would be refused. Loads no library."),
        epilog="examples:\n"
        "  edgeforge-runtime verify m-1-rpi4.efa -k signing-key.pub.pem --profile rpi4\n"
        "  edgeforge-runtime verify m-1-rpi4.efa -k signing-key.pub.pem --arch aarch64  "
        "# from a gateway", formatter_class=fmt)
    common(p, keys_required=True)
    p.add_argument("--profile", help="refuse artifacts built for another profile")
    p.add_argument("--arch", help="check against this architecture instead of this machine's "
                   "(x86_64, aarch64, armv7l)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "run", help="verify, load and run an artifact on .npy inputs",
        description=_wrap(
            "Verify and load the artifact, run it once on the given inputs and print a "
            "summary of each output (or save them with --output)."),
        epilog="examples:\n"
        "  edgeforge-runtime run m.efa -k key.pub.pem --input input=x.npy --output y.npz\n"
        "  edgeforge-runtime run m.efa -k key.pub.pem --input inputs.npz --json\n"
        "  edgeforge-runtime run m.efa -k key.pub.pem --random-inputs 0", formatter_class=fmt)
    common(p, keys_required=True)
    p.add_argument("-i", "--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input tensor (repeat per input); FILE.npz gives several by name; a "
                   "bare FILE.npy is accepted for single-input models")
    p.add_argument("--random-inputs", type=int, metavar="SEED",
                   help="fill the inputs not given with seeded random values")
    p.add_argument("-o", "--output", metavar="FILE.npz", help="save the outputs by name")
    p.add_argument("--threads", type=_non_negative_int, default=0,
                   help="CPU threads (default: TVM's, one per physical core)")
    p.add_argument("--profile", help="refuse artifacts built for another profile")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "bench", help="latency percentiles, cold start and peak RSS",
        description=_wrap(
            "Verify and load the artifact, run it on seeded random inputs and report the "
            "latency (p50/p90/p99), the cold start (import + load + first inference, measured in fresh "
            "Python processes) and the peak resident memory (VmHWM on Linux, else getrusage)."),
        epilog="example:\n  edgeforge-runtime bench m.efa -k key.pub.pem --runs 200 --threads 1",
        formatter_class=fmt)
    common(p, keys_required=True)
    p.add_argument("-n", "--runs", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--cold-runs", type=int, default=3,
                   help="fresh processes for the cold start, median reported (default 3; 0 skips)")
    p.add_argument("--threads", type=_non_negative_int, default=0,
                   help="CPU threads (default: TVM's, one per physical core)")
    p.add_argument("--profile", help="refuse artifacts built for another profile")
    p.set_defaults(func=_cmd_bench)
    return parser


def _fail(args: argparse.Namespace, code: int, kind: str, message: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": kind, "message": message}, indent=2))
    print(f"{PROG}: error: {kind}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers: list[tuple[type[BaseException], int, Callable[[BaseException], str]]] = [
        (ArtifactError, EXIT_REFUSED, str),
        (RuntimeLoadError, EXIT_LOAD, str),
        (EdgeforgeRuntimeError, EXIT_REFUSED, str),
        (UsageError, EXIT_USAGE, str),
        (FileNotFoundError, EXIT_USAGE,
         lambda e: f"{getattr(e, 'filename', None) or e}: no such file"),
        (IsADirectoryError, EXIT_USAGE, lambda e: f"{getattr(e, 'filename', None)}: is a directory"),
        (PermissionError, EXIT_USAGE, lambda e: f"{getattr(e, 'filename', None)}: permission denied"),
        (ValueError, EXIT_USAGE, str),
        (OSError, EXIT_USAGE, str),  # e.g. the --output file cannot be written
    ]
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `edgeforge-runtime inspect X | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:
        for exc_type, code, message in handlers:
            if isinstance(e, exc_type):
                kind = "UsageError" if isinstance(e, UsageError) else type(e).__name__
                return _fail(args, code, kind, message(e))
        raise


if __name__ == "__main__":
    sys.exit(main())
