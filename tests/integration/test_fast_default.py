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
    came from and its digest; a rebuild with the tuning database the first build filled applies
    the same schedules and gives the same library, byte for byte."""
    from edgeforge_runtime import read_manifest

    data = build_model("kws_dscnn").SerializeToString()
    # A budget that lets the first build time every task (a task left untimed when the budget
    # runs out is searched by the next build instead: that one may then improve on it).
    spec = CompileSpec(model_name="kws", profiles=["x86_64"],
                       options={"tuning_db": str(tmp_path / "db"), "schedule_budget_s": 300})
    first, second = (compile_model(data, spec, signer, tmp_path / d, worker=worker).results[0]
                     for d in ("a", "b"))
    assert first.status == second.status == "ok", (first.error, second.error)
    manifests = [read_manifest(r.artifact)[0] for r in (first, second)]
    tunings = [m.compile["tuning"] for m in manifests]
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
    # Same schedules, same code: the library's digest does not change.
    assert manifests[0].files == manifests[1].files


def test_relu6_fuses_into_nhwc_convolutions():
    """Clip with constant bounds (ReLU6, MobileNet's activation) converts to relax maximum/minimum,
    which fuse into the convolution and follow it into NHWC; TVM's own converter emits opaque TE
    calls that cost a transpose pair around every activation."""
    import onnx
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    from compiler.converters import install
    from compiler.optimize import DEFAULT_OPTIONS, _preprocess

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0.0], np.float32), "lo"),   # shape [1], as exported
             numpy_helper.from_array(np.array([6.0], np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 4, 16, 16])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    install()
    mod = _preprocess(from_onnx(model, keep_params_in_input=False),
                      tvm.target.Target({"kind": "llvm"}), dict(DEFAULT_OPTIONS))
    names = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    fused = [n for n in names if "conv2d" in n and "maximum" in n and "minimum" in n]
    assert fused, names
    # Only the graph's own NCHW boundary is transposed: input and output.
    assert sum("transpose" in n for n in names) <= 2, names


def test_arm_profiles_are_timed_on_every_graviton_generation():
    """The ARM compile function (template.yaml, ArmCompile) times the AArch64 CPU profiles'
    schedules natively: each profile's kernel ISA must be a subset of every Graviton's."""
    import tvm

    from compiler.optimize import _isa_features
    from compiler.profiles import load_profiles

    registry = load_profiles()
    arm = [p for p in registry if p.arch == "aarch64" and p.device == "cpu"]
    assert {p.name for p in arm} >= {"rpi4", "rpi5", "graviton"}
    for host in ("neoverse-n1", "neoverse-v1", "neoverse-v2"):  # Graviton2, 3, 4
        have = _isa_features(tvm.target.Target(
            {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": host}))
        for p in arm:
            need = _isa_features(tvm.target.Target(p.target))
            assert need <= have, (p.name, host, need - have)


def test_candidate_builds_are_bounded(tmp_path):
    """A sampled schedule can make LLVM run for minutes (seen on a real quantized model): the
    search builds candidates in a child process with a time limit and drops those that exceed it."""
    import tvm
    from tvm import te

    from compiler.optimize import _build_isolated

    a = te.placeholder((64, 64), "float32", name="a")
    b = te.compute((64, 64), lambda i, j: a[i, j] * 2.0, name="b")
    mod = tvm.IRModule({"double": te.create_prim_func([a, b]).with_attr("global_symbol", "double")})
    target = tvm.target.Target("llvm")
    out = tmp_path / "ok.so"
    assert _build_isolated(mod, target, 60.0, str(out)) and out.stat().st_size > 0
    lib = tvm.runtime.load_module(str(out))
    x = tvm.runtime.tensor(np.ones((64, 64), np.float32))
    y = tvm.runtime.tensor(np.zeros((64, 64), np.float32))
    lib["double"](x, y)
    assert float(y.numpy().sum()) == 2.0 * 64 * 64
    # A limit the build cannot meet: the child is killed, nothing is written, no exception.
    late = tmp_path / "late.so"
    assert not _build_isolated(mod, target, 0.0, str(late))
    assert not late.exists()


def test_tuning_database_stays_loadable(tmp_path, caplog):
    """Every stored record must replay when the database is loaded (a JSONDatabase replays all of
    them, and one bad trace makes it unreadable: seen with a prepacked NHWC convolution), and an
    unreadable database costs the build its records, not its schedules."""
    import logging

    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from compiler import samples
    from compiler.optimize import build_cpu

    model = onnx.load_from_string(samples.tiny_cnn())
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"})
    db = tmp_path / "db"
    caplog.set_level(logging.INFO, logger="compiler.optimize")
    reports = []
    for _ in range(2):
        report: dict = {}
        build_cpu(from_onnx(model, keep_params_in_input=False), target, database_dir=db,
                  options={"budget_s": 15}, report=report)
        reports.append(report)
    assert "unreadable" not in caplog.text
    assert any(r["source"] == "database" for r in reports[1]["schedules"]), reports[1]
    # Now break it: the build still schedules every function, without the database.
    [key_dir] = [p for p in db.iterdir() if p.is_dir()]
    (key_dir / "database_tuning_record.json").write_text("[0, not json]\n")
    caplog.clear()
    report = {}
    build_cpu(from_onnx(model, keep_params_in_input=False), target, database_dir=db,
              options={"budget_s": 15}, report=report)
    assert "unreadable" in caplog.text
    assert report["schedules"] and all(r["source"] != "database" for r in report["schedules"])
    # The broken one is kept aside, and a fresh database took this build's records: the next
    # build reads them again instead of paying for the broken file forever.
    assert [p.name for p in db.iterdir() if ".unreadable-" in p.name]
    caplog.clear()
    report = {}
    build_cpu(from_onnx(model, keep_params_in_input=False), target, database_dir=db,
              options={"budget_s": 15}, report=report)
    assert "unreadable" not in caplog.text
    assert any(r["source"] == "database" for r in report["schedules"]), report
