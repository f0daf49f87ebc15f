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
    feed = {i.name: np.random.default_rng(5).standard_normal(i.shape).astype(i.dtype)
            for i in sess.get_inputs()}
    ours = sess.run(None, feed)
    ref = ort.InferenceSession(data).run(None, feed)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
