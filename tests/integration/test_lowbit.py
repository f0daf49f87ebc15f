"""Low-bit ONNX types (compiler/lowbit.py) through edgeforge's real compile path, bit for bit
against ONNX's reference implementation (onnx.reference, which uses ml_dtypes), and through a
signed artifact and the runtime's InferenceSession (logical dtypes at the boundary)."""

from __future__ import annotations

import itertools
import json
import tarfile

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from bench.conformance import TARGET, run

FLOAT8 = {
    TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
    TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2,
    TensorProto.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
}
SMALL = {TensorProto.FLOAT4E2M1: ml_dtypes.float4_e2m1fn, TensorProto.INT4: ml_dtypes.int4,
         TensorProto.UINT4: ml_dtypes.uint4, TensorProto.INT2: ml_dtypes.int2,
         TensorProto.UINT2: ml_dtypes.uint2}

#: A CI slice of the ONNX node tests these types unlocked (the full run is a command).
NODE_TESTS = [
    "test_cast_FLOAT_to_FLOAT8E4M3FN",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT16",
    "test_cast_e8m0_FLOAT_to_FLOAT8E8M0",
    "test_castlike_INT4_to_FLOAT_expanded",
    "test_cast_FLOAT_to_FLOAT4E2M1",
    "test_quantizelinear_int4",
    "test_quantizelinear_e4m3fn",
    "test_dequantizelinear_e4m3fn_zero_point",
    "test_dequantizelinear_uint2",
    "test_cast_BFLOAT16_to_FLOAT",       # bfloat16 through the runtime boundary
    "test_cast_FLOAT_to_BFLOAT16",
    "test_reduce_sum_empty_set",         # zero-size input
    "test_not_2d",                       # opset 1, converted
]


_BUILDS = itertools.count()


def _build_and_run(model, feed, tmp_path):
    """validate → fold → build → the runtime VM, with the runtime's storage conversions (each
    library at its own path: dlopen returns the first library again for a reused path)."""
    from compiler._build import BuildRequest, build
    from compiler.prepasses import fold_constants
    from compiler.validation import validate_model
    from edgeforge_runtime._vm import VirtualMachine, to_numpy
    from edgeforge_runtime.dtypes import from_storage, to_storage

    validated = validate_model(model.SerializeToString(),
                               {k: list(v.shape) for k, v in feed.items()})
    folded, _ = fold_constants(validated.model)
    out = build(BuildRequest(model_bytes=folded.SerializeToString(), target=TARGET, cc="g++",
                             out_path=str(tmp_path / f"m{next(_BUILDS)}.so"),
                             optimize={"measure": False, "candidates": 1}), lambda _: None)
    vm = VirtualMachine(out.library)
    results = vm.run([to_storage(feed[i.name], i.dtype) for i in validated.inputs])
    return [from_storage(to_numpy(t), o.dtype) for t, o in zip(results, validated.outputs)]


def _same_bits(actual, expected):
    """Bit for bit, any NaN matching any NaN; returns the mismatching indices."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape
    with np.errstate(invalid="ignore"):
        both_nan = np.isnan(a.astype(np.float32)) & np.isnan(e.astype(np.float32))
    bits = a.view(np.uint8) == e.view(np.uint8)
    return np.flatnonzero(~(bits | both_nan))


def _probe_floats() -> np.ndarray:
    """Every float16 value as float32, float32 values around each format's rounding and
    overflow points, float32 subnormals, huge values and random bit patterns."""
    rng = np.random.default_rng(0)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    points = []
    for t in (*FLOAT8.values(), ml_dtypes.float4_e2m1fn):
        vals = np.arange(256 if t is not ml_dtypes.float4_e2m1fn else 16, dtype=np.uint8
                         ).view(t).astype(np.float32)
        vals = vals[np.isfinite(vals)]
        mids = (np.sort(vals)[1:] + np.sort(vals)[:-1]) / 2
        points += [vals, mids, np.nextafter(mids, np.float32(np.inf)),
                   np.nextafter(mids, np.float32(-np.inf))]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1e-40,
                         3e38, -3e38, 2.0**31, -(2.0**31), 3e9, -3e9, 1e10], np.float32)
    random = rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([halves, *points, specials, random]).astype(np.float32)


def _cast_model(x_type, outputs, opset=25):
    """One Cast node per (name, to, saturate, round_mode) from input x."""
    nodes, outs = [], []
    for name, to, saturate, round_mode in outputs:
        attrs = {"to": to, "saturate": saturate}
        if round_mode:
            attrs["round_mode"] = round_mode
        nodes.append(helper.make_node("Cast", ["x"], [name], **attrs))
        outs.append(helper.make_tensor_value_info(name, to, None))
    g = helper.make_graph(nodes, "casts", [helper.make_tensor_value_info("x", x_type, None)],
                          outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 11
    return m


def _set_shapes(model, shape):
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim.clear()
        for d in shape:
            vi.type.tensor_type.shape.dim.add().dim_value = d


@pytest.mark.parametrize("src", [np.float32, np.float16], ids=["float32", "float16"])
def test_casts_to_low_bit_types_are_bit_exact(src, tmp_path):
    x = _probe_floats()
    if src is np.float16:
        x = np.unique(x.astype(np.float16))
    outputs = [(f"f8_{to}_{sat}", to, sat, None) for to in FLOAT8 for sat in (0, 1)]
    outputs += [(f"small_{to}", to, 1, None) for to in SMALL]
    outputs += [(f"e8m0_{mode}_{sat}", TensorProto.FLOAT8E8M0, sat, mode)
                for mode in ("up", "down", "nearest") for sat in (0, 1)]
    model = _cast_model(TensorProto.FLOAT if src is np.float32 else TensorProto.FLOAT16, outputs)
    _set_shapes(model, x.shape)
    feed = {"x": x.astype(src)}
    with np.errstate(all="ignore"):
        expected = ReferenceEvaluator(model).run(None, feed)
    actual = _build_and_run(model, feed, tmp_path)
    bad = {name: [(float(x[i]), int(np.asarray(actual[k]).view(np.uint8)[i]),
                   int(np.asarray(expected[k]).view(np.uint8)[i])) for i in idx[:5]]
           for k, (name, *_) in enumerate(outputs) if len(idx := _same_bits(actual[k],
                                                                             expected[k]))}
    assert not bad, bad


def _all_values(t) -> np.ndarray:
    """Every value of a low-bit type: all bit patterns (floats), the whole range (integers)."""
    if t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2):
        info = ml_dtypes.iinfo(t)
        return np.arange(int(info.min), int(info.max) + 1).astype(t)
    bits = 4 if t is ml_dtypes.float4_e2m1fn else 8
    return np.arange(1 << bits, dtype=np.uint8).view(t)


@pytest.mark.parametrize("elem", [*FLOAT8, *SMALL, TensorProto.FLOAT8E8M0])
def test_casts_from_low_bit_types_are_exact(elem, tmp_path):
    """Every value of the type to float32 and float16 (and int4/int2 to int8)."""
    t = {**FLOAT8, **SMALL, TensorProto.FLOAT8E8M0: ml_dtypes.float8_e8m0fnu}[elem]
    codes = _all_values(t)
    outs = [("f32", TensorProto.FLOAT, 1, None), ("f16", TensorProto.FLOAT16, 1, None)]
    if elem in (TensorProto.INT4, TensorProto.INT2):
        outs.append(("i8", TensorProto.INT8, 1, None))
    model = _cast_model(elem, outs)
    _set_shapes(model, codes.shape)
    feed = {"x": codes}
    with np.errstate(all="ignore"):
        expected = ReferenceEvaluator(model).run(None, feed)
    actual = _build_and_run(model, feed, tmp_path)
    for (name, *_), a, e in zip(outs, actual, expected):
        assert a.dtype == e.dtype, name
        np.testing.assert_array_equal(a, e, err_msg=f"{t.__name__} → {name}")


def _qdq_model(op, x_type, y_type, x_shape, scale, zero_point, **attrs):
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, scale.shape, scale.ravel())]
    inputs = ["x", "scale"]
    if zero_point is not None:
        from onnx import numpy_helper

        inits.append(numpy_helper.from_array(zero_point, "zp"))
        inputs.append("zp")
    node = helper.make_node(op, inputs, ["y"], **attrs)
    g = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", x_type, x_shape)],
                          [helper.make_tensor_value_info("y", y_type, x_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 25)])
    m.ir_version = 11
    return m


@pytest.mark.parametrize("q_type,zp", [
    (TensorProto.INT4, np.array([1, -2, 0], ml_dtypes.int4)),
    (TensorProto.UINT4, np.array([3, 0, 15], ml_dtypes.uint4)),
    (TensorProto.INT2, np.array([1, -2, 0], ml_dtypes.int2)),
    (TensorProto.FLOAT8E4M3FN, np.zeros(3, ml_dtypes.float8_e4m3fn)),
    (TensorProto.FLOAT8E5M2FNUZ, np.zeros(3, ml_dtypes.float8_e5m2fnuz)),
    (TensorProto.FLOAT4E2M1, np.array([0.5, 0, -1], ml_dtypes.float4_e2m1fn)),
], ids=lambda v: str(v) if isinstance(v, int) else "")
@pytest.mark.parametrize("blocked", [False, True], ids=["per_axis", "blocked"])
def test_quantize_and_dequantize_match_the_reference(q_type, zp, blocked, tmp_path):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 8)) * 20).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf] if q_type in FLOAT8 else [0, 1e6, -1e6]
    if blocked:
        scale = rng.uniform(0.5, 3, (3, 2)).astype(np.float32)
        zero = np.repeat(zp[:, None], 2, axis=1).astype(zp.dtype)
        attrs = {"axis": 1, "block_size": 4}
    else:
        scale, zero, attrs = rng.uniform(0.5, 3, 3).astype(np.float32), zp, {"axis": 0}
    q = _qdq_model("QuantizeLinear", TensorProto.FLOAT, q_type, [3, 8], scale, zero, **attrs)
    feed = {"x": x}
    with np.errstate(all="ignore"):
        [expected] = ReferenceEvaluator(q).run(None, feed)
    [actual] = _build_and_run(q, feed, tmp_path)
    assert not len(_same_bits(actual, expected)), (actual, expected)

    dq = _qdq_model("DequantizeLinear", q_type, TensorProto.FLOAT, [3, 8], scale, zero, **attrs)
    feed = {"x": expected}
    with np.errstate(all="ignore"):
        [expected_f] = ReferenceEvaluator(dq).run(None, feed)
    [actual_f] = _build_and_run(dq, feed, tmp_path)
    np.testing.assert_array_equal(actual_f, expected_f)


def test_low_bit_tensors_elsewhere_are_refused_by_name():
    from compiler.exceptions import InvalidModelError
    from compiler.validation import validate_model

    nodes = [helper.make_node("Cast", ["x"], ["q"], to=TensorProto.FLOAT8E4M3FN),
             helper.make_node("Add", ["q", "q"], ["s"], name="adder"),
             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 25)])
    m.ir_version = 11
    with pytest.raises(InvalidModelError, match=r"adder \(Add\).*FLOAT8E4M3FN"):
        validate_model(m.SerializeToString())


def test_node_tests():
    results = run(NODE_TESTS, jobs=1, timeout=300, raw=False, progress=False)
    assert sorted(r.name for r in results) == sorted(NODE_TESTS)
    failed = {r.name: f"{r.ours}: {r.detail}" for r in results if r.ours != "pass"}
    assert not failed, failed


def test_artifact_records_logical_dtypes_and_the_session_converts(tmp_path, signer, public_key,
                                                                 worker):
    """float8 in, int4 and bfloat16 out: the manifest names the logical dtypes, the session takes
    and returns ml_dtypes arrays."""
    from compiler.pipeline import compile_model
    from compiler.spec import CompileSpec
    from edgeforge_runtime import InferenceSession

    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["f"], ["q"], to=TensorProto.INT4),
             helper.make_node("Cast", ["f"], ["b"], to=TensorProto.BFLOAT16)]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT8E4M3FN, [4])],
                          [helper.make_tensor_value_info("q", TensorProto.INT4, [4]),
                           helper.make_tensor_value_info("b", TensorProto.BFLOAT16, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 25)])
    m.ir_version = 11
    spec = CompileSpec(model_name="lowbit", model_version="1", profiles=["x86_64"],
                       options={"verify": False})
    report = compile_model(m.SerializeToString(), spec, signer, tmp_path, worker=worker)
    assert report.ok, report
    path = report.results[0].artifact
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert [t["dtype"] for t in manifest["inputs"]] == ["float8_e4m3fn"]
    assert [t["dtype"] for t in manifest["outputs"]] == ["int4", "bfloat16"]

    sess = InferenceSession(path, trusted_keys=[public_key])
    assert [i.type for i in sess.get_inputs()] == ["tensor(float8e4m3fn)"]
    x = np.array([1.5, -3.0, 7.5, 448.0], ml_dtypes.float8_e4m3fn)
    q, b = sess.run(None, {"x": x})
    assert q.dtype == ml_dtypes.int4 and b.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(q.astype(int), [1, -3, 7, 0])  # 448 wraps to 0 (ml_dtypes)
    np.testing.assert_array_equal(b.astype(np.float32), [1.5, -3.0, 7.5, 448.0])
    with pytest.raises(ValueError, match="dtype float32, expected float8_e4m3fn"):
        sess.run(None, {"x": x.astype(np.float32)})
