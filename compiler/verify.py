"""Check an artifact's numerics against onnxruntime, where the build machine can run it.

x86_64 libraries run natively (when the CPU has the profile's features); aarch64 and armv7
libraries run under qemu-user with an emulated Debian sysroot (``scripts/sysroot.sh``); CUDA
libraries cannot run without a GPU and are recorded as not verified, with the reason.

The check is ``max |a - b| / (|b| + 1) <= tolerance`` over every output element. Only when it
fails does a second, stricter-than-it-sounds check run: the *reference noise floor*
(:func:`judge_reference_noise`), for models that are ill-conditioned on the verification
inputs, where onnxruntime disagrees with itself beyond the tolerance once those inputs move by
one ulp. An artifact accepted that way is recorded as such (``within_reference_noise``), never
as a plain pass.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeforge_runtime.manifest import Verification

from .exceptions import VerificationError
from .profiles import Profile
from .toolchain import Emulator, emulator_for, host_cpu_flags
from .validation import TensorInfo

logger = logging.getLogger(__name__)

__all__ = ["NOISE_RUNS", "NoiseVerdict", "judge_reference_noise", "make_inputs", "nudge_feed",
           "reference_outputs", "verify_library"]

_RUN_TIMEOUT_S = 900

#: onnxruntime runs on nudged copies of the verification feed when the plain check fails. A
#: one-ulp nudge only changes anything where it carries a value across a rounding boundary
#: (a quantization tie, a Round, a comparison), so the noise is sparse: for ddddocr-old 13 of 30
#: nudged feeds moved onnxruntime's output at all, and 3 runs would miss it about 1 time in 5;
#: 8 miss it about 1 time in 100. They run in one onnxruntime session, on the failure path only.
NOISE_RUNS = 8


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


def nudge_feed(feed: dict[str, np.ndarray], seed: int, run: int) -> dict[str, np.ndarray]:
    """A copy of ``feed`` with every element of every floating-point input moved by exactly
    one ulp (``numpy.nextafter``) in a seeded random direction; integer and bool inputs are
    unchanged. An input whose dtype has no ``nextafter`` (none known) stays unchanged: no noise
    from it, which can only make :func:`judge_reference_noise` stricter."""
    rng = np.random.default_rng([seed, 0x6E6F697A, run])
    out = dict(feed)
    for name in sorted(feed):
        x = np.asarray(feed[name])
        if not str(x.dtype).startswith(("float", "bfloat")) or x.size == 0:
            continue
        up = rng.integers(0, 2, x.shape).astype(bool)
        try:
            toward = np.where(up, np.inf, -np.inf).astype(x.dtype)
            out[name] = np.nextafter(x, toward).astype(x.dtype)
        except TypeError:
            continue
    return out


def _reference_runs(model_bytes: bytes, feeds: Sequence[dict[str, np.ndarray]]
                    ) -> list[list[np.ndarray]]:
    with tempfile.TemporaryDirectory(prefix="edgeforge-ref-") as tmp:
        model = Path(tmp) / "m.onnx"
        model.write_bytes(model_bytes)
        args = []
        for i, feed in enumerate(feeds):
            in_path, out_path = Path(tmp) / f"in{i}.npz", Path(tmp) / f"out{i}.npz"
            np.savez(in_path, **feed)
            args += [str(in_path), str(out_path)]
        try:
            proc = subprocess.run([sys.executable, "-m", "compiler._reference", str(model), *args],
                                  capture_output=True, text=True, timeout=_RUN_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise VerificationError(f"onnxruntime took over {_RUN_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            how = (f"crashed (signal {-proc.returncode})" if proc.returncode < 0
                   else "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300])
            raise VerificationError(f"onnxruntime {how}")
        results = []
        for out_path in args[1::2]:
            with np.load(out_path) as data:
                results.append([data[f"arr_{i}"] for i in range(len(data.files))])
        return results


def reference_outputs(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs for ``feed``, computed in a child process (onnxruntime can crash
    on unusual models; the caller must survive that). Raises VerificationError."""
    return _reference_runs(model_bytes, [feed])[0]


def _rel_errors(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]
                ) -> tuple[list[np.ndarray], float]:
    """Per output, ``|a - b| / (|b| + 1)`` element by element (float64, flattened); and the
    max ``|a - b|`` over all of them. Equal values (the same infinity, NaN on both sides) are
    0; a NaN or infinity against anything else is an infinite error. (A NaN error used to be
    dropped: Python's ``max(0.0, nan)`` is 0.0, so an artifact returning NaN passed.)"""
    rels, max_abs = [], 0.0
    for a, e in zip(actual, expected):
        e64 = np.asarray(e, np.float64).ravel()
        a64 = np.asarray(a, np.float64).ravel()
        same = (a64 == e64) | (np.isnan(a64) & np.isnan(e64))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(a64 - e64))
        diff[np.isnan(diff)] = np.inf
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
        with np.errstate(invalid="ignore"):
            rel = np.where(same, 0.0, diff / (np.abs(e64) + 1.0))
        rel[np.isnan(rel)] = np.inf  # inf / inf: an infinity against the other infinity
        rels.append(rel)
    return rels, max_abs


def _stats(rels: Sequence[np.ndarray], max_abs: float, tolerance: float) -> dict[str, float]:
    total = sum(r.size for r in rels)
    beyond = sum(int(np.count_nonzero(r > tolerance)) for r in rels)
    return {"max_abs_error": max_abs,
            "max_rel_error": max((float(r.max()) for r in rels if r.size), default=0.0),
            "fraction_beyond_tolerance": beyond / total if total else 0.0}


def _tail_dominated(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> bool:
    """Whether ``ours``' errors beyond the tolerance, largest first, are each <= the error of
    the same rank in ``theirs``: for every threshold t >= tolerance, no more of our elements
    exceed t than of theirs. Implies both max(ours) <= max(theirs) and
    count(ours > tolerance) <= count(theirs > tolerance)."""
    a = np.sort(ours[ours > tolerance])[::-1]
    if a.size == 0:
        return True
    b = np.sort(theirs[theirs > tolerance])[::-1]
    return b.size >= a.size and bool(np.all(a <= b[:a.size]))


@dataclass(frozen=True)
class NoiseVerdict:
    """The reference-noise decision: ``accepted``; ``ill_conditioned`` (some nudged onnxruntime
    run disagrees with onnxruntime beyond the tolerance); ``record`` (the manifest's
    ``verification.reference_noise``); ``summary`` (one sentence for reasons and errors)."""

    accepted: bool
    ill_conditioned: bool
    record: dict[str, Any]
    summary: str


def judge_reference_noise(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray],
                          perturbed: Sequence[Sequence[np.ndarray]],
                          tolerance: float) -> NoiseVerdict:
    """Is the artifact's disagreement with onnxruntime (``actual`` vs ``expected``) within
    onnxruntime's own disagreement with itself (each of ``perturbed``, onnxruntime's outputs
    on a copy of the feed nudged by :func:`nudge_feed`, vs ``expected``)?

    Called only after the plain check failed. Errors are the plain check's measure,
    ``|x - b| / (|b| + 1)`` per element, ``b`` onnxruntime's output on the real feed. The
    artifact is accepted only if **one** nudged run dominates it on every output that fails the
    plain tolerance, in this sense: sort each side's errors above the tolerance, largest first;
    every one of ours must be <= theirs at the same rank (so in particular our max error is <=
    that run's max error, and no more of our elements exceed the tolerance than of that run's,
    and the same holds for every threshold above the tolerance). Why this and not less:

    - it is relative to an observed, reproducible behaviour of the reference itself: a one-ulp
      input nudge is below any precision the model can claim, so an output that moves beyond
      the tolerance under it cannot be held to the tolerance by anyone, onnxruntime included;
    - a well-conditioned model has no run beyond the tolerance, so a real error there fails
      exactly as before (the plain tolerance is never loosened);
    - max error alone would let a bug that shifts many elements moderately through, fraction
      alone one that ruins a few elements badly; rank-by-rank dominance refuses both, and one
      error distribution with a heavier tail than onnxruntime's worst observed one;
    - per output: a wrong output cannot hide behind another output's noise; one run for all
      failing outputs: our single run is compared with a single run of onnxruntime's;
    - a non-finite error (NaN or infinity against anything else, ours or a nudged run's)
      refuses it: a NaN is never noise;
    - the nudges are seeded from the verification seed, so the decision is reproducible.

    What it cannot catch: a bug whose effect on this feed is no larger than a one-ulp input
    nudge's on an ill-conditioned model (e.g. the wrong rounding of exact ties, which random
    inputs almost never hit): such a model cannot separate the two on random inputs; the
    dynamic-quantization tests check tie rounding directly
    (tests/integration/test_dynamic_quantization.py). Elementwise agreement (that our
    out-of-tolerance elements are ones onnxruntime's runs also move) is not required: a
    different rounding flip moves different elements, and for ddddocr-old 349 of our 3640
    elements beyond the tolerance lay outside the union of 6 nudged runs' elements that did.
    """
    ours, ours_abs = _rel_errors(actual, expected)
    ours_stats = _stats(ours, ours_abs, tolerance)
    finite = all(bool(np.isfinite(r).all()) for r in ours)
    failing = [i for i, r in enumerate(ours) if r.size and not float(r.max()) <= tolerance]
    runs: list[dict[str, float] | None] = []
    dominating = None
    for k, outs in enumerate(perturbed):  # one run's errors in memory at a time
        rels, max_abs = _rel_errors(outs, expected)
        if not all(bool(np.isfinite(r).all()) for r in rels):
            runs.append(None)  # unusable as a floor
            continue
        runs.append(_stats(rels, max_abs, tolerance))
        if (dominating is None and finite and failing
                and all(_tail_dominated(ours[i], rels[i], tolerance) for i in failing)):
            dominating = k
    usable = [r for r in runs if r is not None]
    worst = {key: max((r[key] for r in usable), default=0.0)
             for key in ("max_abs_error", "max_rel_error", "fraction_beyond_tolerance")}
    ill = worst["max_rel_error"] > tolerance
    accepted = dominating is not None
    record: dict[str, Any] = {
        "perturbation": "every float input element moved 1 ulp (numpy.nextafter), seeded "
                        "random direction per element; integer and bool inputs unchanged",
        "runs": len(runs),
        **worst,
        "runs_beyond_tolerance": sum(r["max_rel_error"] > tolerance for r in usable),
        "unusable_runs": len(runs) - len(usable),
        "ours_fraction_beyond_tolerance": ours_stats["fraction_beyond_tolerance"],
        "dominating_run": None if dominating is None else {"run": dominating,
                                                           **(runs[dominating] or {})},
    }
    noise = (f"onnxruntime's own outputs move by up to {worst['max_rel_error']:.3g} "
             f"(max abs {worst['max_abs_error']:.3g}; {worst['fraction_beyond_tolerance']:.1%} of "
             f"elements beyond the tolerance) when its float inputs are nudged by 1 ulp "
             f"({len(perturbed)} seeded runs)")
    ours_txt = (f"the artifact's errors (max {ours_stats['max_rel_error']:.3g}, "
                f"{ours_stats['fraction_beyond_tolerance']:.2%} of elements beyond the tolerance)")
    if accepted:
        summary = (f"the model is ill-conditioned on the verification inputs: {noise}; "
                   f"{ours_txt} are within that noise (dominated by nudged run {dominating})")
    elif not finite:
        summary = ("the artifact returns NaN or infinity where onnxruntime does not: no noise "
                   "floor applies")
    elif not ill:
        summary = (f"{noise.replace('move by up to', 'move by at most')}: the model is "
                   "well-conditioned there, so this is not reference noise")
    else:
        summary = (f"the model is ill-conditioned on the verification inputs: {noise}; but "
                   f"{ours_txt} exceed that noise (no nudged run dominates them)")
    return NoiseVerdict(accepted=accepted, ill_conditioned=ill, record=record, summary=summary)


_REFERENCES: dict[str, list[np.ndarray]] = {}
_NOISE: tuple[str, list[list[np.ndarray]]] | None = None  # the last noise floor's runs


def _feed_key(model_bytes: bytes, feed: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(model_bytes)
    for name in sorted(feed):
        h.update(name.encode())
        h.update(np.ascontiguousarray(feed[name]).tobytes())
    return h.hexdigest()


def _cached_reference(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One onnxruntime run per (model, inputs): every profile of a compile checks against it."""
    key = _feed_key(model_bytes, feed)
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
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a.shape != e.shape:
            raise VerificationError(
                f"output {i}: shape {list(a.shape)} differs from onnxruntime's {list(e.shape)}")
    rels, max_abs = _rel_errors(actual, expected)
    max_rel = max((float(r.max()) for r in rels if r.size), default=0.0)
    if max_rel <= tolerance:
        return Verification(verified=True, method=method, max_abs_error=max_abs,
                            max_rel_error=max_rel, tolerance=tolerance)
    plain = (f"the artifact's outputs differ from onnxruntime's: max |a-b|/(|b|+1) = "
             f"{max_rel:.3g} > {tolerance:g} (max abs error {max_abs:.3g})")
    verdict = _noise_verdict(model_bytes, feed, constants, seed, actual, expected, tolerance)
    if isinstance(verdict, str):
        raise VerificationError(f"{plain}; {verdict}")
    if not verdict.accepted:
        raise VerificationError(f"{plain}; {verdict.summary}")
    logger.info("verification: max error %.3g exceeds the tolerance %g, accepted within "
                "onnxruntime's own noise: %s", max_rel, tolerance, verdict.summary)
    return Verification(
        verified=True, method=method, max_abs_error=max_abs, max_rel_error=max_rel,
        tolerance=tolerance, within_reference_noise=True, reference_noise=verdict.record,
        reason=f"within onnxruntime's own noise, not the tolerance: max error {max_rel:.3g} "
               f"exceeds the tolerance {tolerance:g}, but {verdict.summary}")


def _noise_verdict(model_bytes: bytes, feed: dict[str, np.ndarray],
                   constants: dict[str, np.ndarray] | None, seed: int,
                   actual: list[np.ndarray], expected: list[np.ndarray],
                   tolerance: float) -> NoiseVerdict | str:
    """onnxruntime on NOISE_RUNS nudged feeds (frozen constants are part of the model and stay
    as they are), judged; a string when onnxruntime could not run them."""
    global _NOISE
    feeds = [{**nudge_feed(feed, seed, k), **(constants or {})} for k in range(NOISE_RUNS)]
    key = _feed_key(model_bytes, {f"{k}/{n}": x for k, f in enumerate(feeds) for n, x in f.items()})
    if _NOISE is None or _NOISE[0] != key:  # profiles of one compile share it
        try:
            _NOISE = (key, _reference_runs(model_bytes, feeds))
        except VerificationError as e:
            return f"no reference noise floor: {e} on the nudged inputs"
    perturbed = _NOISE[1]
    if any(len(p) != len(expected) or any(x.shape != e.shape for x, e in zip(p, expected))
           for p in perturbed):
        return "no reference noise floor: onnxruntime's output shapes changed on nudged inputs"
    return judge_reference_noise(actual, expected, perturbed, tolerance)
