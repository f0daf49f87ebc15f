"""Regression guard for the fast CPU default (a correctness test, not a timing test): a real
benchmark architecture goes through the scheduled build and still matches onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from bench.models import build_model
from compiler.pipeline import compile_model
from compiler.spec import CompileSpec
from edgeforge_runtime import InferenceSession


def test_kws_scheduled_build_matches_onnxruntime(tmp_path, worker, signer, public_key):
    data = build_model("kws_dscnn").SerializeToString()
    spec = CompileSpec(model_name="kws", profiles=["x86_64"])
    [r] = compile_model(data, spec, signer, tmp_path, worker=worker).results
    assert r.status == "ok", r.error
    assert r.verified and r.verification["max_rel_error"] < 1e-4
    sess = InferenceSession(r.artifact, trusted_keys=[public_key])
    # The scheduled build itself succeeded (no fallback to TVM's slow default pipeline) with its
    # default layout and prepacking; every function was scheduled.
    compile_info = sess.manifest.compile
    assert compile_info["notes"] == []
    options = compile_info["tuning"]["schedule_options"]
    assert options["layout"] == "NHWC" and options["prepack"] is True
    assert len(compile_info["tuning"]["records"]) >= 5
    feed = {i.name: np.random.default_rng(5).standard_normal(i.shape).astype(i.dtype)
            for i in sess.get_inputs()}
    ours = sess.run(None, feed)
    ref = ort.InferenceSession(data).run(None, feed)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_manifest_records_the_applied_schedules(tmp_path, worker, signer):
    """Reproducibility: the manifest names every scheduled function's workload, where its schedule
    came from and its digest; a rebuild with the same tuning database gives the same set."""
    from edgeforge_runtime import read_manifest

    data = build_model("kws_dscnn").SerializeToString()
    spec = CompileSpec(model_name="kws", profiles=["x86_64"],
                       options={"tuning_db": str(tmp_path / "db")})
    first, second = (compile_model(data, spec, signer, tmp_path / d, worker=worker).results[0]
                     for d in ("a", "b"))
    assert first.status == second.status == "ok", (first.error, second.error)
    tunings = [read_manifest(r.artifact)[0].compile["tuning"] for r in (first, second)]
    for tuning in tunings:
        records = tuning["records"]
        assert records and all(len(r["workload"]) == 16 and len(r["schedule"]) == 16
                               for r in records)
        assert tuning["schedule_options"]["prepack"] is True
        assert len({r["workload"] for r in records}) == len(records)
    # The first build timed its candidates (this machine runs x86_64 code) and stored them; the
    # second applies those database records: the same schedules, so the same digest.
    a, b = ({r["workload"]: r for r in t["records"]} for t in tunings)
    assert a.keys() == b.keys()
    assert sum(r["source"] == "timed" for r in a.values()) >= len(a) // 2
    for wl, rec in a.items():
        assert rec["source"] in {"timed", "sampled"}
        assert b[wl]["source"] == ("database" if rec["source"] == "timed" else "sampled")
        assert b[wl]["schedule"] == rec["schedule"]
    assert tunings[0]["records_digest"] == tunings[1]["records_digest"]
