"""Check an artifact's numerics against onnxruntime, where the build machine can run it.

x86_64 libraries run natively (when the CPU has the profile's features); aarch64 and armv7
libraries run under qemu-user with an emulated Debian sysroot (``scripts/sysroot.sh``); CUDA
libraries cannot run without a GPU and are recorded as not verified, with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeforge_runtime.manifest import Verification

from .exceptions import VerificationError
from .profiles import Profile
from .toolchain import Emulator, emulator_for, host_cpu_flags
from .validation import TensorInfo

logger = logging.getLogger(__name__)

__all__ = ["make_inputs", "reference_outputs", "verify_library"]

_RUN_TIMEOUT_S = 900


def make_inputs(inputs: tuple[TensorInfo, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for t in inputs:
        if t.dtype.startswith("float") or t.dtype == "bfloat16":
            feed[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
        elif t.dtype == "bool":
            feed[t.name] = rng.integers(0, 2, t.shape).astype(bool)
        else:  # ids, masks, token types: 0/1 are valid for every such input we know of
            feed[t.name] = rng.integers(0, 2, t.shape).astype(t.dtype)
    return feed


def reference_outputs(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs for ``feed``, computed in a child process (onnxruntime can crash
    on unusual models; the caller must survive that). Raises VerificationError."""
    with tempfile.TemporaryDirectory(prefix="edgeforge-ref-") as tmp:
        model, in_path, out_path = Path(tmp) / "m.onnx", Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        model.write_bytes(model_bytes)
        np.savez(in_path, **feed)
        try:
            proc = subprocess.run([sys.executable, "-m", "compiler._reference", str(model),
                                   str(in_path), str(out_path)], capture_output=True, text=True,
                                  timeout=_RUN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise VerificationError(f"onnxruntime took over {_RUN_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            how = (f"crashed (signal {-proc.returncode})" if proc.returncode < 0
                   else "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300])
            raise VerificationError(f"onnxruntime {how}")
        with np.load(out_path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]


_REFERENCES: dict[str, list[np.ndarray]] = {}


def _cached_reference(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One onnxruntime run per (model, inputs): every profile of a compile checks against it."""
    h = hashlib.sha256(model_bytes)
    for name in sorted(feed):
        h.update(name.encode())
        h.update(np.ascontiguousarray(feed[name]).tobytes())
    key = h.hexdigest()
    if key not in _REFERENCES:
        if len(_REFERENCES) >= 4:
            _REFERENCES.pop(next(iter(_REFERENCES)))
        _REFERENCES[key] = reference_outputs(model_bytes, feed)
    return _REFERENCES[key]


def _how(profile: Profile) -> Emulator | str | None:
    """None = native; an Emulator; or a string saying why the artifact cannot run here."""
    if profile.device == "cuda":
        return "CUDA artifacts need an NVIDIA GPU, and the build machine has none"
    if profile.arch == platform.machine():
        missing = [f for f in profile.host_features if f not in host_cpu_flags()]
        if missing:
            return f"the build machine's CPU lacks {', '.join(missing)}"
        return None
    return emulator_for(profile.arch)


def _runtime_path() -> Path:
    """The directory that holds the edgeforge_runtime package (source checkout or site-packages)."""
    import edgeforge_runtime

    return Path(edgeforge_runtime.__file__).resolve().parent.parent


def verify_library(library: Path, profile: Profile, model_bytes: bytes,
                   inputs: tuple[TensorInfo, ...], seed: int, tolerance: float,
                   constants: dict[str, np.ndarray] | None = None) -> Verification:
    """``model_bytes``: the model as uploaded; ``constants``: the inputs the spec froze, fed to
    onnxruntime (the artifact no longer has them) so the reference is the original model."""
    how = _how(profile)
    if isinstance(how, str):
        return Verification(verified=False, method="none", reason=how)
    feed = make_inputs(inputs, seed)
    try:
        expected = _cached_reference(model_bytes, {**feed, **(constants or {})})
    except VerificationError as e:
        return Verification(
            verified=False, method="none",
            reason=f"no reference: {e} on random inputs; the artifact was not checked")
    with tempfile.TemporaryDirectory(prefix="edgeforge-verify-") as tmp:
        in_path, out_path = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(in_path, __order__=np.array(list(feed)), **feed)
        if how is None:
            cmd = [sys.executable, "-m", "edgeforge_runtime._runner"]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(_runtime_path()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            method = "native"
        else:
            cmd = [*how.python_command(), "-m", "edgeforge_runtime._runner"]
            env = how.env([_runtime_path()])
            method = "qemu-user"
        cmd += [str(library.resolve()), str(in_path), str(out_path)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=_RUN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise VerificationError(
                f"running the artifact ({method}) took over {_RUN_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines()
                     if ln.strip() and not ln.lstrip().startswith(("File ", "Traceback"))]
            raise VerificationError(
                f"the compiled artifact failed to run ({method}, exit {proc.returncode}): "
                + " | ".join(lines[-3:]))
        with np.load(out_path) as data:
            actual = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(actual) != len(expected):
        raise VerificationError(
            f"the artifact returned {len(actual)} outputs, onnxruntime {len(expected)}")
    max_abs = max_rel = 0.0
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a.shape != e.shape:
            raise VerificationError(
                f"output {i}: shape {list(a.shape)} differs from onnxruntime's {list(e.shape)}")
        if e.size == 0:
            continue
        diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / (np.abs(e.astype(np.float64)) + 1.0)).max()))
    result = Verification(verified=max_rel <= tolerance, method=method,
                          max_abs_error=max_abs, max_rel_error=max_rel, tolerance=tolerance,
                          reason=None if max_rel <= tolerance else
                          f"max error {max_rel:.3g} exceeds the tolerance {tolerance:g}")
    if not result.verified:
        raise VerificationError(
            f"the artifact's outputs differ from onnxruntime's: max |a-b|/(|b|+1) = "
            f"{max_rel:.3g} > {tolerance:g} (max abs error {max_abs:.3g})")
    return result
