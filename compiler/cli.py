"""``edgeforge``: compile ONNX models into signed artifacts for edge devices.

The CLI only turns arguments into one library call and prints the result; all logic lives in
the library. Exit status: 0 success, 1 some profile failed, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .exceptions import EdgeforgeError

EPILOG = """\
examples:
  edgeforge keygen                                   # create the local signing key pair
  edgeforge profiles                                 # list the target profiles
  edgeforge validate model.onnx --input-shape input=1,3,224,224
  edgeforge compile model.onnx --profile rpi4 --profile x86_64 --out dist/
  edgeforge compile model.onnx -p jetson-orin -p armv7 --name resnet --version 3 --json
  edgeforge demo                                     # the whole cloud-to-edge flow, locally
  edgeforge dev up --detach; edgeforge dev status    # the local stack (moto on 127.0.0.1)

Artifacts are signed with the local key (default ~/.config/edgeforge/signing-key.pem, or
$EDGEFORGE_SIGNING_KEY); devices verify them with the public key next to it (.pub.pem).
"""


def _default_key() -> Path:
    env = os.environ.get("EDGEFORGE_SIGNING_KEY")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "edgeforge" / "signing-key.pem"


def _public_path(private: Path) -> Path:
    return private.with_name(private.name.removesuffix(".pem") + ".pub.pem")


def _err(msg: str) -> None:
    print(f"edgeforge: error: {msg}", file=sys.stderr)


def _cmd_profiles(args: argparse.Namespace) -> int:
    from .profiles import load_profiles

    registry = load_profiles(args.profiles_file)
    if args.json:
        print(json.dumps([p.model_dump() for p in registry], indent=2))
        return 0
    rows = [(p.name, p.arch, p.device, p.verify, p.description) for p in registry]
    widths = [max(len(r[i]) for r in [*rows, ("profile", "arch", "device", "verify", "")])
              for i in range(4)]
    print(f"{'profile':<{widths[0]}}  {'arch':<{widths[1]}}  {'device':<{widths[2]}}  "
          f"{'verify':<{widths[3]}}  description")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
              f"{r[3]:<{widths[3]}}  {r[4]}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .signing import generate_key

    private = Path(args.out) if args.out else _default_key()
    signer = generate_key(private, _public_path(private), overwrite=args.force)
    info = {"private_key": str(private), "public_key": str(_public_path(private)),
            "keyid": signer.keyid}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"private key: {private} (keep it secret)")
        print(f"public key:  {_public_path(private)} (give it to devices)")
        print(f"key id:      {signer.keyid}")
    return 0


def _shapes(values: list[str]) -> dict[str, list[int]]:
    from .spec import parse_input_shape

    return dict(parse_input_shape(v) for v in values)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validation import validate_model

    data = Path(args.model).read_bytes()
    v = validate_model(data, _shapes(args.input_shape), max_bytes=args.max_model_mb << 20)
    info = {"model": args.model, "sha256": v.sha256, "size": v.size, "opset": v.opset,
            "inputs": [t.__dict__ for t in v.inputs], "outputs": [t.__dict__ for t in v.outputs]}
    if args.json:
        print(json.dumps(info, indent=2, default=list))
    else:
        print(f"{args.model}: valid ONNX, opset {v.opset}, {v.size:,} bytes")
        for kind in ("inputs", "outputs"):
            for t in info[kind]:
                print(f"  {kind[:-1]:<6} {t['name']}: {t['dtype']}{list(t['shape'])}")
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from .pipeline import compile_model
    from .profiles import load_profiles
    from .signing import LocalKeySigner, generate_key
    from .spec import CompileOptions, CompileSpec, parse_constant_input
    from .worker import CompileWorker

    model_path = Path(args.model)
    data = model_path.read_bytes()
    registry = load_profiles(args.profiles_file)
    for name in args.profile:
        registry.get(name)
    key = Path(args.key) if args.key else _default_key()
    if not key.exists() and not args.key:
        generate_key(key, _public_path(key))
        print(f"edgeforge: created a signing key at {key}; devices trust {_public_path(key)}",
              file=sys.stderr)
    signer = LocalKeySigner.from_file(key)
    name = args.name or model_path.stem
    spec = CompileSpec(
        model_name=name, model_version=args.version, profiles=args.profile,
        input_shapes=_shapes(args.input_shape),
        constant_inputs=dict(parse_constant_input(v) for v in args.constant_input),
        options=CompileOptions(verify=not args.no_verify, tune_trials=args.tune_trials,
                               tolerance=args.tolerance, tuning_db=args.tuning_db,
                               schedule_budget_s=args.schedule_budget),
    )
    start = time.monotonic()
    stamps: dict[str, float] = {}

    def progress(profile: str, stage: str) -> None:
        if args.quiet:
            return
        now = time.monotonic()
        stamps.setdefault(profile, now)
        print(f"[{now - start:6.1f}s] {profile:<14} {stage}", file=sys.stderr, flush=True)

    with CompileWorker(timeout_s=args.timeout, memory_limit_mb=args.memory_limit_mb) as worker:
        report = compile_model(data, spec, signer, Path(args.out), registry=registry,
                               worker=worker, progress=progress,
                               max_model_bytes=args.max_model_mb << 20)
    if args.json:
        out: dict[str, Any] = report.model_dump()
        out["public_key"] = str(_public_path(key))
        out["keyid"] = signer.keyid
        print(json.dumps(out, indent=2))
    else:
        print(f"\n{report.model_name} v{report.model_version} (sha256 {report.source_sha256[:12]}…)")
        print(f"{'profile':<15} {'status':<7} {'verified':<22} {'seconds':>8} {'size':>10}  artifact")
        for r in report.results:
            v = r.verification or {}
            yes = "noise" if v.get("within_reference_noise") else "yes"
            ver = (f"{yes} ({v.get('method')}, {v.get('max_rel_error', 0):.1e})" if r.verified
                   else "no" if r.status == "ok" else "-")
            secs = sum(t for k, t in r.timings.items() if k in ("build_total_s", "verify_s",
                                                                  "package_s"))
            size = f"{r.size:,}" if r.size else "-"
            print(f"{r.profile:<15} {r.status:<7} {ver:<22} {secs:8.1f} {size:>10}  "
                  f"{r.artifact or r.error}")
        unverified = [r for r in report.results if r.status == "ok" and not r.verified]
        for r in unverified:
            print(f"  note: {r.profile} not verified here: {(r.verification or {}).get('reason')}")
        for r in report.results:
            if r.verified and (r.verification or {}).get("within_reference_noise"):
                print(f"  note: {r.profile} verified {(r.verification or {}).get('reason')}")
        print(f"signed by key {signer.keyid[:16]}…; devices trust {_public_path(key)}")
    return 0 if report.ok else 1


def _cmd_local(args: argparse.Namespace) -> int:
    # The local embedded stack (functions/local) parses its own arguments; imported only here.
    from functions.local.cli import main as local_main

    return local_main([args.command, *args.args])


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import bench_model
    from .signing import LocalKeySigner, generate_key
    from .spec import CompileOptions, CompileSpec
    from .worker import CompileWorker

    model_path = Path(args.model)
    data = model_path.read_bytes()
    key = Path(args.key) if args.key else _default_key()
    if not key.exists() and not args.key:
        generate_key(key, _public_path(key))
    signer = LocalKeySigner.from_file(key)
    spec = CompileSpec(model_name=args.name or model_path.stem, profiles=[args.profile],
                       input_shapes=_shapes(args.input_shape),
                       options=CompileOptions(tuning_db=args.tuning_db,
                                              schedule_budget_s=args.schedule_budget))
    with CompileWorker() as worker:
        result = bench_model(data, spec, signer, signer.public_key_der, Path(args.out), worker,
                             threads=args.threads, repeat=args.repeat)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(f"{result.model} on {result.profile}, {result.threads} thread(s), median of "
              f"{result.repeat} interleaved runs:")
        print(f"  edgeforge   {result.edgeforge_ms:9.3f} ms   (compile {result.compile_s:.1f} s)")
        print(f"  onnxruntime {result.onnxruntime_ms:9.3f} ms")
        print(f"  ratio edgeforge/onnxruntime {result.ratio:.2f}x   max abs error "
              f"{result.max_abs_error:.2e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeforge", description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile an ONNX model into signed artifacts",
                       description="Validate MODEL, compile it for each --profile with Apache "
                       "TVM, check the numerics against onnxruntime where this machine can run "
                       "the result (natively or under qemu-user), and write one signed artifact "
                       "per profile into --out.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("-p", "--profile", action="append", required=True,
                   help="target profile (repeat for several); see `edgeforge profiles`")
    p.add_argument("-o", "--out", default="dist", help="output directory (default: dist/)")
    p.add_argument("--name", help="model name in the artifact (default: the file's stem)")
    p.add_argument("--version", default="1", help="model version (default: 1)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                   help="fix the shape of an input with dynamic dimensions (repeatable)")
    p.add_argument("--constant-input", action="append", default=[], metavar="NAME=V[,V...]",
                   help="freeze an input the device never changes (e.g. sr=16000), so what "
                   "depends on it is folded at compile time (repeatable)")
    p.add_argument("--key", help="PEM private key to sign with (default: see below)")
    p.add_argument("--profiles-file", help="JSON file with extra/overriding profiles")
    p.add_argument("--no-verify", action="store_true",
                   help="skip running the artifact against onnxruntime")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="max |a-b|/(|b|+1) against onnxruntime (default 1e-3)")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule tuning trials (0 = fast default schedules)")
    p.add_argument("--schedule-budget", type=float, metavar="SECONDS",
                   help="seconds a CPU build may spend sampling and timing schedules here "
                   "(default 240 or $EDGEFORGE_SCHEDULE_BUDGET_S; 0 = first samples only)")
    p.add_argument("--tuning-db", metavar="DIR",
                   help="tuning database reused across models and runs (default: "
                   "$EDGEFORGE_TUNING_DB or ~/.cache/edgeforge/tuning-db)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per profile build")
    p.add_argument("--memory-limit-mb", type=int, default=12288,
                   help="resident memory bound of the compiler process")
    p.add_argument("--max-model-mb", type=int, default=512, help="refuse larger models")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("bench", help="time a compiled model against onnxruntime on this machine",
                       description="Compile MODEL for --profile (one this machine can run, e.g. "
                       "x86_64), then time the artifact through the device runtime against "
                       "onnxruntime with the same inputs and thread count, interleaved.")
    p.add_argument("model")
    p.add_argument("-p", "--profile", default="x86_64")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    p.add_argument("--name")
    p.add_argument("--key")
    p.add_argument("--tuning-db", metavar="DIR")
    p.add_argument("--schedule-budget", type=float, metavar="SECONDS",
                   help="seconds spent sampling and timing schedules (default 240)")
    p.add_argument("-o", "--out", default=".cache/bench", help="where the artifact goes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("profiles", help="list target profiles")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profiles-file", help="JSON file with extra/overriding profiles")
    p.set_defaults(func=_cmd_profiles)

    p = sub.add_parser("keygen", help="create an ECDSA P-256 signing key pair")
    p.add_argument("--out", help="private key path (public key: NAME.pub.pem beside it)")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_keygen)

    # `demo` and `dev` hand all their arguments to functions/local/cli.py ('+' as the option
    # prefix here, so that '-p', '--help'… reach that parser untouched).
    for name, text in (("demo", "the whole flow on this machine: local stack, upload, compile, "
                                "device (see `edgeforge demo --help`)"),
                       ("dev", "run the local stack: up, down, status, env "
                               "(see `edgeforge dev --help`)")):
        p = sub.add_parser(name, help=text, add_help=False, prefix_chars="+")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_cmd_local)

    p = sub.add_parser("validate", help="check a model without compiling it")
    p.add_argument("model")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...")
    p.add_argument("--max-model-mb", type=int, default=512)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeforgeError as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": e.code, "message": str(e)}, indent=2))
        _err(str(e))
        return 2
    except FileNotFoundError as e:
        _err(f"{e.filename}: no such file")
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
