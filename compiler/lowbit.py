"""Low-bit ONNX tensor types through TVM: float8 (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ, E8M0),
FLOAT4E2M1, INT4, UINT4, INT2, UINT2.

TVM 0.27 cannot carry these types correctly on CPU (its float8 ``astype`` neither saturates nor
handles NaN, the FNUZ variants are off by a factor 2, float4 does not compile, int4/int2 fail),
so :func:`lower_lowbit` rewrites the ONNX graph before validation's shape checks and before the
TVM import:

* **storage**: every low-bit tensor (graph inputs and outputs, initializers, ``Constant`` nodes,
  value_info) holds one element per byte: the float formats as their **bit pattern** in
  ``uint8`` (as ml_dtypes stores them), int4/int2 as their value in ``int8``, uint4/uint2 in
  ``uint8`` (ONNX's packed 4-/2-bit initializers are unpacked). The artifact's manifest records
  the *logical* dtype (ml_dtypes' names: ``float8_e4m3fn``, ``int4``, ...) and the device
  runtime converts at the boundary (``edgeforge_runtime.dtypes``).
* **conversions**: ``Cast``/``CastLike`` to or from a low-bit type, ``QuantizeLinear`` to one and
  ``DequantizeLinear`` from one become nodes of the ``ai.edgeforge`` domain whose converters
  (:func:`install`) compute the exact conversion with integer arithmetic on float32 bits:

  - to float8/float4: round to nearest even. ``saturate=1`` clamps out-of-range values and
    ±Inf to ±max (ONNX's ``saturate_cast``); ``saturate=0`` gives Inf (E5M2) or NaN (the
    others) as ml_dtypes does. NaN → the format's NaN (E4M3FN 0x7F/0xFF by sign, E5M2
    0x7E/0xFE, FNUZ 0x80). FNUZ formats have no −0. FLOAT4E2M1 has no NaN/Inf and always
    saturates; NaN gives ml_dtypes' pattern (0x8 for +NaN, 0x0 for −NaN).
  - to E8M0: ``onnx.numpy_helper.to_float8e8m0`` (``round_mode`` up/down/nearest, ``saturate``).
  - to int4/uint4/int2/uint2 (``Cast``): truncation toward zero, then the low bits (wrap), as
    ml_dtypes' ``astype``; NaN, ±Inf and |x| ≥ 2³¹ give 0 (x86's conversion result, INT_MIN,
    has zero low bits).
  - from float8/float4/E8M0: a table of the 256 (16) values, built with ml_dtypes in the target
    dtype, indexed by the bit pattern: exact by construction, NaN and Inf included.
  - ``QuantizeLinear``: integers: ``clip(rint(x / scale) + zero_point)`` to the type's range
    (ONNX's reference, with the rounded value clamped before the int32 conversion instead of
    overflowing); float8: ``saturate_cast(x / scale)`` (the reference ignores the zero point,
    which ONNX requires to be 0); float4: ``(x / scale + zero_point)`` cast. Per-axis and
    blocked scales are broadcast as the reference does.
  - ``DequantizeLinear``: ``(decode(x) − zero_point) · scale`` in float32 (no zero point for
    the float formats), cast to the scale's dtype or ``output_dtype``.

  Float16/bfloat16 inputs are converted to float32 first (exact); float64 inputs too (so a
  float64 → float8 cast rounds twice, unlike ONNX's reference).

Other operators may only move low-bit tensors around unchanged (Identity, Reshape, Transpose,
...); any other use is refused with a message naming the node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeforge_runtime.dtypes import LOWBIT_STORAGE

from .exceptions import InvalidModelError

logger = logging.getLogger(__name__)

__all__ = ["DOMAIN", "LOWBIT_TYPES", "OPS", "LowBitType", "install", "logical_dtype",
           "lower_lowbit"]

DOMAIN = "ai.edgeforge"
CAST, QUANTIZE, DEQUANTIZE = "EdgeforgeLowBitCast", "EdgeforgeLowBitQuantize", \
    "EdgeforgeLowBitDequantize"
#: The operators of :data:`DOMAIN` (the pre-flight accepts them).
OPS = frozenset({CAST, QUANTIZE, DEQUANTIZE})


@dataclass(frozen=True)
class LowBitType:
    onnx: int
    name: str  # ml_dtypes' name: the manifest's logical dtype
    kind: str  # "float" (bit pattern in uint8) or "int"/"uint" (value in int8/uint8)
    bits: int
    # float formats: exponent bias, mantissa bits, family (fn, fnuz, e5m2, e2m1, e8m0)
    bias: int = 0
    mantissa: int = 0
    family: str = ""

    @property
    def storage(self) -> str:
        return LOWBIT_STORAGE[self.name]

    @property
    def storage_onnx(self) -> int:
        return TensorProto.INT8 if self.storage == "int8" else TensorProto.UINT8


_T = TensorProto
LOWBIT_TYPES: dict[int, LowBitType] = {t.onnx: t for t in (
    LowBitType(_T.FLOAT8E4M3FN, "float8_e4m3fn", "float", 8, 7, 3, "fn"),
    LowBitType(_T.FLOAT8E4M3FNUZ, "float8_e4m3fnuz", "float", 8, 8, 3, "fnuz"),
    LowBitType(_T.FLOAT8E5M2, "float8_e5m2", "float", 8, 15, 2, "e5m2"),
    LowBitType(_T.FLOAT8E5M2FNUZ, "float8_e5m2fnuz", "float", 8, 16, 2, "fnuz"),
    LowBitType(_T.FLOAT8E8M0, "float8_e8m0fnu", "float", 8, 127, 0, "e8m0"),
    LowBitType(_T.FLOAT4E2M1, "float4_e2m1fn", "float", 4, 1, 1, "e2m1"),
    LowBitType(_T.INT4, "int4", "int", 4),
    LowBitType(_T.UINT4, "uint4", "uint", 4),
    LowBitType(_T.INT2, "int2", "int", 2),
    LowBitType(_T.UINT2, "uint2", "uint", 2),
)}
#: Operators that move tensors without looking at their values: low-bit tensors may pass.
_MOVERS = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Shape", "Size",
    "Optional", "OptionalGetElement",
})
# ONNX element types of the ordinary dtypes (converter side: ONNX id → TVM dtype).
_PLAIN = {_T.FLOAT: "float32", _T.FLOAT16: "float16", _T.DOUBLE: "float64",
          _T.BFLOAT16: "bfloat16", _T.INT8: "int8", _T.INT16: "int16", _T.INT32: "int32",
          _T.INT64: "int64", _T.UINT8: "uint8", _T.UINT16: "uint16", _T.UINT32: "uint32",
          _T.UINT64: "uint64", _T.BOOL: "bool"}


def logical_dtype(elem_type: int) -> str | None:
    """The manifest dtype of a low-bit ONNX element type, or None for other types."""
    t = LOWBIT_TYPES.get(elem_type)
    return t.name if t else None


# --------------------------------------------------------------------------- ONNX rewrite


def _storage_array(tensor: TensorProto) -> np.ndarray:
    t = LOWBIT_TYPES[tensor.data_type]
    value = numpy_helper.to_array(tensor)  # an ml_dtypes array, unpacked
    return value.astype(t.storage) if t.kind != "float" else value.view(t.storage)


def _store_tensor(tensor: TensorProto) -> None:
    """Rewrite a low-bit TensorProto in place as its storage tensor."""
    if tensor.data_type not in LOWBIT_TYPES:
        return
    stored = numpy_helper.from_array(_storage_array(tensor), tensor.name)
    tensor.CopyFrom(stored)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value ONNX's type inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # the caller's validation reports broken models; types stay partial
        inferred = model
    g = inferred.graph
    out = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            out[vi.name] = vi.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t.data_type
    return out


def _mentions_lowbit(g: onnx.GraphProto) -> bool:
    if any(t.data_type in LOWBIT_TYPES for t in g.initializer):
        return True
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type in LOWBIT_TYPES:
            return True
    for node in g.node:
        for a in node.attribute:
            if a.name in ("to", "output_dtype") and a.i in LOWBIT_TYPES:
                return True
            if a.HasField("t") and a.t.data_type in LOWBIT_TYPES:
                return True
            if any(_mentions_lowbit(sub) for sub in _subgraphs(a)):
                return True
    return False


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    return list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []


def _check_untouched(node: onnx.NodeProto, label: str, types: dict[str, int]) -> None:
    """Refuse a node that would compute on a low-bit tensor's storage."""
    touched = [n for n in [*node.input, *node.output] if n and types.get(n) in LOWBIT_TYPES]
    if touched:
        name = onnx.TensorProto.DataType.Name(types[touched[0]])
        raise InvalidModelError(
            f"node {label} ({node.op_type}) computes on {touched[0]!r} of type {name}: "
            "low-bit tensors are supported as inputs and outputs of Cast, CastLike, "
            "QuantizeLinear and DequantizeLinear only; cast to float first")
    if any(_mentions_lowbit(sub) for a in node.attribute for sub in _subgraphs(a)):
        raise InvalidModelError(f"node {label} ({node.op_type}): low-bit types inside "
                                "subgraphs are not supported")


def lower_lowbit(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place (see the module docstring); return the number of nodes
    replaced by :data:`DOMAIN` nodes. A model without low-bit types is left untouched."""
    if not _mentions_lowbit(model.graph):
        return 0
    types = _types(model)
    g = model.graph
    replaced = 0
    new_nodes = []
    for i, node in enumerate(g.node):
        label = node.name or f"{node.op_type}_{i}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        src = types.get(node.input[0]) if node.input else None
        new = None
        if (node.domain or "ai.onnx") != "ai.onnx":
            _check_untouched(node, label, types)
        elif node.op_type in ("Cast", "CastLike"):
            to = attrs.get("to") if node.op_type == "Cast" else types.get(node.input[1])
            if to is None:
                raise InvalidModelError(f"{label}: the target type of the CastLike is unknown")
            if to in LOWBIT_TYPES or src in LOWBIT_TYPES:
                round_mode = attrs.get("round_mode", b"up")
                new = helper.make_node(
                    CAST, [node.input[0]], list(node.output), name=node.name, domain=DOMAIN,
                    to=int(to), source=int(src or 0), saturate=int(attrs.get("saturate", 1)),
                    round_mode=round_mode.decode() if isinstance(round_mode, bytes)
                    else str(round_mode))
        elif node.op_type == "QuantizeLinear":
            zp_type = types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            out_type = attrs.get("output_dtype") or zp_type
            if out_type in LOWBIT_TYPES:
                if attrs.get("precision"):
                    raise InvalidModelError(f"{label}: QuantizeLinear's precision attribute is "
                                            "not supported for low-bit outputs")
                new = helper.make_node(
                    QUANTIZE, list(node.input), list(node.output), name=node.name, domain=DOMAIN,
                    to=int(out_type), axis=int(attrs.get("axis", 1)),
                    saturate=int(attrs.get("saturate", 1)),
                    block_size=int(attrs.get("block_size", 0)))
        elif node.op_type == "DequantizeLinear":
            if src in LOWBIT_TYPES:
                scale_type = types.get(node.input[1], _T.FLOAT)
                new = helper.make_node(
                    DEQUANTIZE, list(node.input), list(node.output), name=node.name,
                    domain=DOMAIN, source=int(src), axis=int(attrs.get("axis", 1)),
                    block_size=int(attrs.get("block_size", 0)),
                    to=int(attrs.get("output_dtype") or scale_type))
        elif node.op_type == "Constant":
            for a in node.attribute:
                if a.HasField("t"):
                    _store_tensor(a.t)
        elif node.op_type not in _MOVERS:
            _check_untouched(node, label, types)
        if new is not None:
            replaced += 1
            new_nodes.append(new)
        else:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    for t in g.initializer:
        _store_tensor(t)
    for vi in [*g.input, *g.output, *g.value_info]:
        t = LOWBIT_TYPES.get(vi.type.tensor_type.elem_type)
        if t is not None:
            vi.type.tensor_type.elem_type = t.storage_onnx
    if replaced and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    logger.debug("low-bit types: %d node(s) rewritten", replaced)
    return replaced


# --------------------------------------------------------------------------- converters

_installed: dict[str, bool] = {}


def install() -> None:
    """Register the :data:`DOMAIN` converters with TVM's ONNX frontend (idempotent; call after
    :func:`compiler.converters.install`, whose table it extends)."""
    if _installed.get("done"):
        return
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    previous = fe._get_convert_map
    ours = _converters(fe.OnnxOpConverter)

    def convert_map() -> dict[str, Any]:
        table = previous()
        table.update(ours)
        return table

    fe._get_convert_map = convert_map
    _installed["done"] = True


def _tables(t: LowBitType, dtype: str) -> np.ndarray:
    """The value of every bit pattern of float format ``t`` in ``dtype`` (ml_dtypes' cast)."""
    import ml_dtypes

    codes = np.arange(1 << t.bits, dtype=np.uint8).view(getattr(ml_dtypes, t.name))
    with np.errstate(all="ignore"):
        return codes.astype(dtype)


def _converters(base: type) -> dict[str, type]:
    from tvm import relax, te
    from tvm import tirx as tir
    from tvm.relax import op as R

    def u32(v: int) -> Any:
        return tir.const(v, "uint32")

    def dtype_of(bb: Any, x: Any) -> str:
        return str(bb.normalize(x).ty.dtype)

    def shape_of(bb: Any, x: Any) -> list[int]:
        return [int(d) for d in bb.normalize(x).ty.shape.values]

    def elementwise(bb: Any, x: Any, fn: Any, name: str) -> Any:
        if not isinstance(x, relax.Var):
            x = bb.emit(x)
        return bb.emit_te(lambda a: te.compute(a.shape, lambda *i: fn(a(*i)), name=name), x)

    def as_f32(bb: Any, x: Any) -> Any:
        return x if dtype_of(bb, x) == "float32" else R.astype(x, "float32")

    # -- scalar TIR encoders (float32 expr → storage expr) --------------------------------

    def encode_float(v: Any, t: LowBitType, saturate: bool) -> Any:
        u = tir.reinterpret("uint32", v)
        s = u >> u32(31)
        a = u & u32(0x7FFFFFFF)
        m, bias = t.mantissa, t.bias
        shift = 23 - m
        rounded = a + u32((1 << (shift - 1)) - 1) + ((a >> u32(shift)) & u32(1))
        normal = (rounded >> u32(shift)) - u32((127 - bias) << m)
        min_normal = u32((127 - bias + 1) << 23)
        tiny = tir.Cast("uint32", te.nearbyint(tir.reinterpret("float32", a)
                                                * tir.const(2.0 ** (bias - 1 + m), "float32")))
        code = tir.Select(a < min_normal, tiny, normal)
        is_nan = a > u32(0x7F800000)
        is_inf = a == u32(0x7F800000)
        sign = s << u32(7) if t.family != "e2m1" else s << u32(3)
        if t.family == "fn":
            top, nan, overflow = 0x7E, u32(0x7F) | sign, u32(0x7F) | sign
        elif t.family == "e5m2":
            top, nan, overflow = 0x7B, u32(0x7E) | sign, u32(0x7C) | sign
        elif t.family == "fnuz":
            top, nan, overflow = 0x7F, u32(0x80), u32(0x80)
        else:  # e2m1: no NaN or Inf, saturates; NaN as ml_dtypes: the sign bit flipped, zero
            top, nan, overflow = 0x7, (s ^ u32(1)) << u32(3), None
            saturate = True
        big = tir.Or(is_inf, code > u32(top))
        clamp = (u32(top) | sign) if saturate else overflow
        signed = code | sign
        if t.family == "fnuz":
            signed = tir.Select(code == u32(0), u32(0), signed)
        out = tir.Select(is_nan, nan, tir.Select(big, clamp, signed))
        return tir.Cast("uint8", out)

    def encode_e8m0(v: Any, saturate: bool, mode: str) -> Any:
        u = tir.reinterpret("uint32", v)
        e = (u >> u32(23)) & u32(0xFF)
        special = e == u32(0xFF)
        if mode == "nearest":
            g = (u & u32(0x400000)) != u32(0)
            r = (u & u32(0x200000)) != u32(0)
            st = (u & u32(0x1FFFFF)) != u32(0)
            up = tir.And(g, tir.Or(tir.Or(r, st), e > u32(0)))
        elif mode == "up":
            up = (u & u32(0x7FFFFF)) != u32(0)
        elif mode == "down":
            up = tir.const(False, "bool")
        else:
            raise ValueError(f"Cast: unknown round_mode {mode!r}")
        if saturate:
            up = tir.And(up, e != u32(0xFE))
        e = tir.Select(up, e + u32(1), e)
        return tir.Cast("uint8", tir.Select(special, u32(0xFF), e & u32(0xFF)))

    def wrap_int(i: Any, t: LowBitType) -> Any:
        """int32 expr → its low ``t.bits`` bits, sign-extended for signed types."""
        k = tir.const(32 - t.bits, "int32")
        if t.kind == "int":
            return tir.Cast("int8", (i << k) >> k)
        return tir.Cast("uint8", i & tir.const((1 << t.bits) - 1, "int32"))

    def float_to_int(v: Any) -> Any:
        ok = tir.abs(v) < tir.const(2.0 ** 31, "float32")  # False for NaN
        return tir.Select(ok, tir.Cast("int32", tir.Select(ok, v, tir.const(0.0, "float32"))),
                          tir.const(0, "int32"))

    # -- tensor-level conversions ----------------------------------------------------------

    def decode(bb: Any, x: Any, t: LowBitType, dtype: str) -> Any:
        """Storage tensor of type ``t`` → values in ``dtype``."""
        if t.kind != "float":
            return R.astype(x, dtype)
        table_dtype = dtype if dtype in ("float32", "float16", "float64") else "float32"
        table = relax.const(_tables(t, table_dtype), table_dtype)
        idx = R.astype(x, "int32")
        if t.bits < 8:
            idx = R.bitwise_and(idx, relax.const((1 << t.bits) - 1, "int32"))
        out = R.take(table, idx, axis=0)
        return out if table_dtype == dtype else R.astype(out, dtype)

    def encode(bb: Any, x: Any, t: LowBitType, saturate: bool, mode: str = "up") -> Any:
        """Tensor of any ordinary dtype → storage tensor of type ``t``."""
        src = dtype_of(bb, x)
        if t.kind != "float":
            if src.startswith(("float", "bfloat")):
                return elementwise(bb, as_f32(bb, x),
                                   lambda v: wrap_int(float_to_int(v), t), "to_" + t.name)
            xi = x if src == "int32" else R.astype(x, "int32")
            return elementwise(bb, xi, lambda v: wrap_int(v, t), "to_" + t.name)
        xf = as_f32(bb, x)
        if t.family == "e8m0":
            return elementwise(bb, xf, lambda v: encode_e8m0(v, saturate, mode), "to_e8m0")
        return elementwise(bb, xf, lambda v: encode_float(v, t, saturate), "to_" + t.name)

    def param(bb: Any, p: Any, x_shape: list[int], axis: int, block: int) -> Any:
        """A scale/zero point broadcastable against ``x`` (ONNX's reshape_input)."""
        shape = shape_of(bb, p)
        rank = len(x_shape)
        if not shape or int(np.prod(shape)) == 1:
            return R.reshape(p, []) if shape else p
        axis = axis + rank if axis < 0 else axis
        if not block:
            dims = [1] * rank
            dims[axis] = int(np.prod(shape))
            return R.reshape(p, dims)
        rep = R.repeat(p, block, axis=axis)
        if shape[axis] * block != x_shape[axis]:
            rep = R.strided_slice(rep, [axis], [0], [x_shape[axis]])
        return rep

    def opt(inputs: list[Any], i: int) -> Any:
        return inputs[i] if len(inputs) > i and inputs[i] is not None else None

    def text(attr: dict[str, Any], name: str, default: str) -> str:
        v = attr.get(name, default)
        return v.decode() if isinstance(v, bytes) else str(v)

    class LowBitCast(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], params: Any) -> Any:
            x = inputs[0]
            to, source = int(attr["to"]), int(attr.get("source", 0))
            saturate = bool(attr.get("saturate", 1))
            src_t, dst_t = LOWBIT_TYPES.get(source), LOWBIT_TYPES.get(to)
            if dst_t is None and to not in _PLAIN:
                raise ValueError(f"Cast to ONNX type {to} is not supported")
            if src_t is not None:
                if dst_t is None:
                    return decode(bb, x, src_t, _PLAIN[to])
                mid = "int32" if src_t.kind != "float" and dst_t.kind != "float" else "float32"
                x = decode(bb, x, src_t, mid)
            assert dst_t is not None
            return encode(bb, x, dst_t, saturate, text(attr, "round_mode", "up"))

    class LowBitQuantize(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], params: Any) -> Any:
            x, scale, zp = inputs[0], inputs[1], opt(inputs, 2)
            t = LOWBIT_TYPES[int(attr["to"])]
            axis, block = int(attr.get("axis", 1)), int(attr.get("block_size", 0))
            x_shape, dt = shape_of(bb, x), dtype_of(bb, x)
            q = R.divide(x, R.astype(param(bb, scale, x_shape, axis, block), dt))
            if t.kind != "float":
                lo, hi = (-(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1) if t.kind == "int" \
                    else (0, (1 << t.bits) - 1)
                q = R.clip(R.round(R.astype(q, "float32")), -(2 ** 30), 2 ** 30)
                qi = R.astype(q, "int32")
                if zp is not None:
                    qi = R.add(qi, R.astype(param(bb, zp, x_shape, axis, block), "int32"))
                return R.astype(R.clip(qi, lo, hi), t.storage)
            if t.family == "e2m1" and zp is not None:
                q = R.add(R.astype(q, "float32"),
                          decode(bb, param(bb, zp, x_shape, axis, block), t, "float32"))
            return encode(bb, q, t, bool(attr.get("saturate", 1)))

    class LowBitDequantize(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], params: Any) -> Any:
            x, scale, zp = inputs[0], inputs[1], opt(inputs, 2)
            t = LOWBIT_TYPES[int(attr["source"])]
            axis, block = int(attr.get("axis", 1)), int(attr.get("block_size", 0))
            x_shape = shape_of(bb, x)
            dx = decode(bb, x, t, "float32")
            if zp is not None and t.kind != "float":
                dx = R.subtract(dx, R.astype(param(bb, zp, x_shape, axis, block), "float32"))
            y = R.multiply(dx, R.astype(param(bb, scale, x_shape, axis, block), "float32"))
            return R.astype(y, _PLAIN[int(attr["to"])])

    return {CAST: LowBitCast, QUANTIZE: LowBitQuantize, DEQUANTIZE: LowBitDequantize}
