"""``edgeforge bench``: compile a user's model for a profile this machine can run, then time the
artifact (through the device runtime) against onnxruntime, interleaved in one process
(BENCHMARKS.md: medians of interleaved runs, same inputs, same thread count)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from .pipeline import compile_model
from .signing import Signer
from .spec import CompileSpec
from .verify import make_inputs
from .worker import CompileWorker

__all__ = ["BenchResult", "bench_model", "interleaved"]


class BenchResult(BaseModel):
    model: str
    profile: str
    threads: int
    repeat: int
    compile_s: float
    edgeforge_ms: float
    onnxruntime_ms: float
    ratio: float
    max_abs_error: float
    artifact: str


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeat: int
                ) -> dict[str, list[float]]:
    """Run every function once per round (A B A B …); return the timed rounds per name."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def bench_model(data: bytes, spec: CompileSpec, signer: Signer, public_key: bytes,
                out_dir: Path, worker: CompileWorker, threads: int = 1, repeat: int = 30,
                warmup: int = 5) -> BenchResult:
    import onnxruntime as ort

    from edgeforge_runtime import InferenceSession, SessionOptions

    if threads > 1:  # read when TVM's thread pool starts, at the artifact's first parallel run
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

    report = compile_model(data, spec, signer, out_dir, worker=worker)
    [r] = report.results
    if r.status != "ok" or r.artifact is None:
        from .exceptions import CompileError

        raise CompileError(f"{spec.profiles[0]}: {r.error}")
    sess = InferenceSession(r.artifact, trusted_keys=[public_key],
                            sess_options=SessionOptions(intra_op_num_threads=threads))
    from .validation import TensorInfo

    feed = make_inputs(tuple(TensorInfo(i.name, tuple(i.shape), i.dtype)
                             for i in sess.get_inputs()), seed=0)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if threads > 1:  # interleaved runs share the cores: neither pool may spin-wait (bench.run)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ref = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    ours = sess.run(None, feed)
    theirs = ref.run(None, feed)
    err = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(ours, theirs))
    times = interleaved({"edgeforge": lambda: sess.run(None, feed),
                         "onnxruntime": lambda: ref.run(None, feed)}, warmup, repeat)
    ef, ort_ms = (statistics.median(times[k]) * 1e3 for k in ("edgeforge", "onnxruntime"))
    return BenchResult(model=spec.model_name, profile=spec.profiles[0], threads=threads,
                       repeat=repeat, compile_s=r.timings.get("build_total_s", 0.0),
                       edgeforge_ms=ef, onnxruntime_ms=ort_ms, ratio=ef / ort_ms,
                       max_abs_error=err, artifact=r.artifact)
