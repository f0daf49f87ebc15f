"""The local demo: compile a model for several profiles, then act as a device and run the
artifact for this machine through the device runtime, next to onnxruntime."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from . import samples
from .pipeline import CompileReport, compile_model
from .signing import LocalKeySigner, generate_key
from .spec import CompileSpec
from .worker import CompileWorker

DEFAULT_PROFILES = ["x86_64", "rpi4", "armv7", "jetson-orin"]


def run_demo(work_dir: Path, profiles: list[str], model: Path | None = None) -> int:
    work_dir.mkdir(parents=True, exist_ok=True)
    key = work_dir / "demo-key.pem"
    signer = (LocalKeySigner.from_file(key) if key.exists()
              else generate_key(key, work_dir / "demo-key.pub.pem"))
    data = model.read_bytes() if model else samples.tiny_cnn(size=32, channels=8)
    name = model.stem if model else "tiny-cnn"
    print(f"edgeforge demo: compiling {name} for {', '.join(profiles)} into {work_dir}/dist")
    start = time.monotonic()

    def progress(profile: str, stage: str) -> None:
        print(f"  [{time.monotonic() - start:6.1f}s] {profile:<13} {stage}", flush=True)

    spec = CompileSpec(model_name=name, profiles=profiles)
    with CompileWorker() as worker:
        report = compile_model(data, spec, signer, work_dir / "dist", worker=worker,
                               progress=progress)
    _summary(report)
    return _device(report, data, work_dir / "demo-key.pub.pem")


def _summary(report: CompileReport) -> None:
    print(f"\n{'profile':<14} {'status':<7} {'compile s':>9} {'size':>9}  verified")
    for r in report.results:
        secs = r.timings.get("build_total_s", 0.0)
        v = r.verification or {}
        how = (f"{v.get('method')} (max err {v.get('max_rel_error', 0):.1e})" if r.verified
               else f"no — {v.get('reason') or r.error}")
        size = f"{r.size:,}" if r.size else "-"
        print(f"{r.profile:<14} {r.status:<7} {secs:9.1f} {size:>9}  {how}")


def _device(report: CompileReport, model: bytes, public_key: Path) -> int:
    import onnxruntime as ort

    from edgeforge_runtime import InferenceSession, host_arch

    host = next((r for r in report.results if r.status == "ok" and r.profile.startswith(
        host_arch())), None)
    if host is None:
        print("\nno artifact for this machine's architecture was built; skipping the device step")
        return 0 if report.ok else 1
    print(f"\ndevice: loading {host.artifact} (verifying its signature with {public_key.name})")
    sess = InferenceSession(host.artifact, trusted_keys=[public_key])
    feed = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(i.dtype)
            for i in sess.get_inputs()}
    ours = sess.run(None, feed)
    ref = ort.InferenceSession(model).run(None, feed)
    for o, a, b in zip(sess.get_outputs(), ours, ref):
        print(f"  {o.name}: edgeforge {np.array2string(a.ravel()[:5], precision=4)}")
        print(f"  {o.name}: onnxruntime {np.array2string(b.ravel()[:5], precision=4)}  "
              f"(max abs diff {float(np.abs(a - b).max()):.2e})")
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Path("demo-out"), DEFAULT_PROFILES))
