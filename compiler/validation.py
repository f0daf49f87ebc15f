"""Cheap checks before any compile time is spent (no ``import tvm``).

Each failure class raises its own error type (see :mod:`compiler.exceptions`); the operator
pre-flight lists *every* node that cannot be converted in one error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper, shape_inference

from edgeforge_runtime.dtypes import to_storage

from . import lowbit
from .converters import EXTRA_OPS
from .converters_extra import DOMAINS as EXTRA_DOMAINS
from .exceptions import (
    CorruptModelError,
    DynamicShapeError,
    ExternalDataError,
    InvalidModelError,
    ModelTooLargeError,
    NotOnnxError,
    OpsetError,
    SpecError,
    UnsupportedOperatorError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_MODEL_BYTES",
    "MAX_OPSET",
    "MIN_OPSET",
    "TensorInfo",
    "ValidatedModel",
    "supported_operators",
    "validate_model",
]

DEFAULT_MAX_MODEL_BYTES = 512 << 20
MIN_OPSET, MAX_OPSET = 7, onnx.defs.onnx_opset_version()
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output. ``dtype`` is the logical dtype the manifest records (for the
    low-bit types ml_dtypes' name, e.g. ``float8_e4m3fn``; the library holds them in the
    storage dtype of ``edgeforge_runtime.dtypes``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ValidatedModel:
    """A model that passed validation, with its input shapes fixed."""

    model: onnx.ModelProto
    sha256: str
    size: int
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    #: What validation changed besides fixing shapes (e.g. an opset conversion), for the record.
    notes: tuple[str, ...] = ()

    def serialized(self) -> bytes:
        return self.model.SerializeToString()


@lru_cache(maxsize=1)
def supported_operators() -> frozenset[str]:
    """Operators the compiler converts: TVM 0.27's relax ONNX frontend table (generated from its
    converter table; a test keeps this list in sync with the installed TVM) plus edgeforge's own
    converters (:mod:`compiler.converters`)."""
    data = json.loads(
        resources.files("compiler").joinpath("data/tvm_onnx_ops.json").read_text("utf-8")
    )
    # "If" is handled by the frontend itself (outside its converter table).
    return frozenset(data["ops"]) | EXTRA_OPS | lowbit.OPS | {"If"}


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as e:
        looks_onnx = b"onnx" in data[:4096] or b"ir_version" in data[:4096] or data[:1] == b"\x08"
        if looks_onnx:
            raise CorruptModelError(
                f"the file looks like ONNX but cannot be decoded ({e}): it is truncated or "
                "damaged; re-export or re-upload it"
            ) from e
        raise NotOnnxError(
            "the file is not an ONNX model (protobuf decoding failed); upload the .onnx file "
            "exported by your framework"
        ) from e
    except RecursionError as e:
        raise CorruptModelError("the ONNX protobuf is nested too deeply to be decoded") from e
    if not model.HasField("graph") or model.ir_version == 0:
        if data[:1] == b"\x08" and len(data) > 16:
            raise CorruptModelError(
                "the file starts like an ONNX model but has no graph: it is truncated or damaged"
            )
        raise NotOnnxError(
            "the file is not an ONNX model (no ir_version / graph); upload the .onnx file "
            "exported by your framework"
        )
    return model


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return [None]
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _dtype(vi: onnx.ValueInfoProto, logical: dict[str, str] | None = None) -> str:
    if logical and vi.name in logical:
        return logical[vi.name]
    if not vi.type.HasField("tensor_type"):
        raise InvalidModelError(f"graph input/output {vi.name!r} is not a tensor")
    elem = vi.type.tensor_type.elem_type
    if elem not in _ONNX_DTYPES:
        name = onnx.TensorProto.DataType.Name(elem) if elem else "UNDEFINED"
        raise InvalidModelError(f"graph input/output {vi.name!r} has unsupported dtype {name}")
    return _ONNX_DTYPES[elem]


def _walk_nodes(graph: onnx.GraphProto, prefix: str = ""):  # type: ignore[no-untyped-def]
    for i, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{i}"
        yield node, prefix + label
        for attr in node.attribute:
            subs = list((attr.g and [attr.g]) or []) + list(attr.graphs)
            for sub in subs:
                if sub.node:
                    yield from _walk_nodes(sub, f"{prefix}{label}/{attr.name}/")


def _check_external_data(model: onnx.ModelProto) -> None:
    def tensors():  # type: ignore[no-untyped-def]
        yield from model.graph.initializer
        for node, _ in _walk_nodes(model.graph):
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors

    external = [t.name for t in tensors() if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        shown = ", ".join(external[:10]) + (" …" if len(external) > 10 else "")
        raise ExternalDataError(
            f"{len(external)} tensor(s) reference external data files ({shown}). Only "
            "self-contained models are accepted: re-save with "
            "onnx.save_model(model, path, save_as_external_data=False) (models under 2 GB)."
        )


def _opset(model: onnx.ModelProto) -> int:
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None:
        raise OpsetError("the model imports no default-domain (ai.onnx) opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        closest = min(max(opset, MIN_OPSET), MAX_OPSET)
        raise OpsetError(
            f"opset {opset} is outside the supported range {MIN_OPSET}–{MAX_OPSET}; convert the "
            f"model with onnx.version_converter.convert_version(model, {closest})"
        )
    return opset


def _add_default_opset(model: onnx.ModelProto) -> str | None:
    """A model that imports only other domains (ai.onnx.ml exports of classic models) has no
    ai.onnx node, so any ai.onnx opset describes it: import the newest, for the frontend, and
    return a note for the record. Models without any import are left to :func:`_opset`."""
    domains = {o.domain or "ai.onnx" for o in model.opset_import}
    if not domains or "ai.onnx" in domains:
        return None
    if any((n.domain or "ai.onnx") == "ai.onnx" for n, _ in _walk_nodes(model.graph)):
        return None  # the checker names the missing import
    model.opset_import.append(onnx.helper.make_opsetid("", MAX_OPSET))
    return (f"the model imports only {', '.join(sorted(domains))}: ai.onnx opset {MAX_OPSET} "
            "added (it has no ai.onnx node)")


def _upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Models below :data:`MIN_OPSET` are converted to it with ONNX's version converter (the
    converter the error message would otherwise tell the user to run); returns the model and a
    note for the record, or the model unchanged."""
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None or opset >= MIN_OPSET:
        return model, None
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:  # the converter raises RuntimeError/ValueError/its own types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise OpsetError(
            f"opset {opset} is outside the supported range {MIN_OPSET}–{MAX_OPSET} and ONNX's "
            f"version converter could not convert it to {MIN_OPSET}: {first}; re-export the "
            "model with a newer opset"
        ) from e
    note = f"converted from opset {opset} to {MIN_OPSET} with onnx.version_converter"
    logger.info("%s", note)
    return converted, note


def check_operators(model: onnx.ModelProto) -> None:
    """Raise one error naming every node whose operator the compiler cannot convert."""
    supported = supported_operators()
    bad: list[tuple[str, str, str]] = []
    for node, label in _walk_nodes(model.graph):
        domain = node.domain or "ai.onnx"
        known = (domain in ("ai.onnx", "com.microsoft") or EXTRA_DOMAINS.get(node.op_type) == domain
                 or (domain == lowbit.DOMAIN and node.op_type in lowbit.OPS))
        if not known or node.op_type not in supported:
            bad.append((f"{domain}::{node.op_type}", label, "no converter in TVM's ONNX frontend"))
    if bad:
        by_op: dict[str, list[str]] = {}
        for op, label, _ in bad:
            by_op.setdefault(op, []).append(label)
        lines = [
            f"  {op} ({len(names)} node{'s' if len(names) > 1 else ''}): "
            + ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
            for op, names in sorted(by_op.items())
        ]
        raise UnsupportedOperatorError(
            f"{len(bad)} node(s) use {len(by_op)} operator(s) the compiler cannot convert:\n"
            + "\n".join(lines),
            bad,
        )


#: (operator, input index, minimum opset or 0) whose value the converters need at compile time
#: (it decides an output shape or is read as an attribute): a *runtime* graph input there can
#: never be converted. Values computed from shapes are folded by the pre-passes, so only direct
#: graph inputs are named.
_CONSTANT_SLOTS: dict[str, tuple[tuple[int, int], ...]] = {
    "Resize": ((1, 0), (2, 11), (3, 11)),  # opset 10: scales at 1; 11+: roi may be dynamic
    "Upsample": ((1, 9),),
    "OneHot": ((1, 0),),
    "NonMaxSuppression": ((2, 0), (3, 0), (4, 0)),
    "MaxUnpool": ((2, 0),),
    "TopK": ((1, 10),),
    "ReduceMax": ((1, 18),), "ReduceMin": ((1, 18),), "ReduceMean": ((1, 18),),
    "ReduceProd": ((1, 18),), "ReduceSum": ((1, 13),), "ReduceSumSquare": ((1, 18),),
    "ReduceL1": ((1, 18),), "ReduceL2": ((1, 18),), "ReduceLogSum": ((1, 18),),
    "ReduceLogSumExp": ((1, 18),),
}
#: Operators whose output shape depends on the input *values*: as a graph output computed
#: from a runtime input, it cannot have the static shape an artifact needs.
_DATA_DEPENDENT = {"NonZero": 0, "Unique": 0, "Compress": 1}  # the input deciding the shape


def check_runtime_parameters(model: onnx.ModelProto, opset: int) -> None:
    """Raise one error naming every node that reads a runtime graph input where a compile-time
    constant is needed, or whose data-dependent output shape reaches a graph output."""
    runtime = {vi.name for vi in model.graph.input} - {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    bad: list[tuple[str, str, str]] = []
    for i, node in enumerate(model.graph.node):
        if (node.domain or "ai.onnx") != "ai.onnx":
            continue
        label = node.name or f"{node.op_type}_{i}"
        op = f"ai.onnx::{node.op_type}"
        for slot, since in _CONSTANT_SLOTS.get(node.op_type, ()):
            if node.op_type == "Resize" and slot == 1 and opset >= 11:
                continue
            if opset >= since and slot < len(node.input) and node.input[slot] in runtime:
                bad.append((op, label, f"input {node.input[slot]!r} must be a constant (give it "
                            "in the compile spec's constant_inputs)"))
        decides = _DATA_DEPENDENT.get(node.op_type)
        if (decides is not None and any(o in outputs for o in node.output)
                and decides < len(node.input) and node.input[decides] in runtime):
            bad.append((op, label, "its output shape depends on the input values and it is a "
                        "graph output (artifacts need static output shapes)"))
    if bad:
        lines = [f"  {op} ({label}): {reason}" for op, label, reason in bad]
        raise UnsupportedOperatorError(
            f"{len(bad)} node(s) cannot be compiled with these inputs:\n" + "\n".join(lines), bad)


def _fix_inputs(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> None:
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    names = {vi.name for vi in graph_inputs}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise SpecError(
            f"input shape given for {unknown}, which the model does not have; its inputs are "
            f"{sorted(names)}"
        )
    dynamic: dict[str, list[int | str | None]] = {}
    for vi in graph_inputs:
        dims = _dims(vi)
        given = input_shapes.get(vi.name)
        if given is not None:
            if dims != [None] and len(dims) != len(given):
                raise SpecError(
                    f"input {vi.name!r} has rank {len(dims)} ({dims}) but the shape spec gives "
                    f"{given}"
                )
            for have, want in zip(dims, given):
                if isinstance(have, int) and have != want:
                    raise SpecError(
                        f"input {vi.name!r} has fixed shape {dims}; the spec's {given} conflicts"
                    )
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in given:
                shape.dim.add().dim_value = d
        elif any(not isinstance(d, int) for d in dims):
            dynamic[vi.name] = dims
    if dynamic:
        desc = "; ".join(f"{n} {d}" for n, d in dynamic.items())
        example = " ".join(
            f"--input-shape {n}=" + ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
            for n, dims in dynamic.items()
        )
        raise DynamicShapeError(
            f"input(s) with dynamic dimensions need a fixed shape: {desc}. Give one in the compile "
            f"spec, e.g. {example}",
            dynamic,
        )
    # Keep initializers out of the input list: the frontend would otherwise treat them as inputs.
    keep = [vi for vi in model.graph.input if vi.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def _unwrap_optional_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs of type optional(tensor) become plain tensor inputs: a device always feeds
    a value (an artifact has no way to pass "absent"), so OptionalHasElement is true and
    OptionalGetElement is the tensor. Returns the names rewritten."""
    names = []
    for vi in model.graph.input:
        if vi.type.HasField("optional_type") and \
                vi.type.optional_type.elem_type.HasField("tensor_type"):
            tensor = onnx.TypeProto()
            tensor.CopyFrom(vi.type.optional_type.elem_type)
            vi.type.CopyFrom(tensor)
            names.append(vi.name)
    return names


def _freeze_inputs(model: onnx.ModelProto, constants: dict[str, Any],
                   logical: dict[str, str] | None = None) -> None:
    """Turn the named graph inputs into initializers holding the given values (cast to the
    input's dtype when that is exact, reshaped to its declared shape when that is static)."""
    names = {vi.name for vi in model.graph.input}
    unknown = sorted(set(constants) - names)
    if unknown:
        raise SpecError(f"constant input(s) {unknown} are not inputs of the model")
    for vi in list(model.graph.input):
        if vi.name not in constants:
            continue
        value = np.asarray(constants[vi.name])
        if logical and vi.name in logical:  # a low-bit input: its storage (lowbit.py)
            if str(value.dtype) != logical[vi.name]:
                raise SpecError(f"constant input {vi.name!r} must be an ml_dtypes "
                                f"{logical[vi.name]} array; got {value.dtype}")
            value = to_storage(value, logical[vi.name])
        want = _ONNX_DTYPES.get(vi.type.tensor_type.elem_type)
        if want is not None and str(value.dtype) != want:
            cast = value.astype(want)
            if not np.array_equal(cast, value):
                raise SpecError(f"constant input {vi.name!r} must be {want}; {value!r} is not")
            value = cast
        dims = _dims(vi)
        if dims != [None] and all(isinstance(d, int) for d in dims):
            if int(np.prod(dims)) != value.size:
                raise SpecError(f"constant input {vi.name!r} has shape {dims}; got "
                                f"{value.size} value(s)")
            value = value.reshape(dims)
        model.graph.initializer.append(numpy_helper.from_array(value, vi.name))
        model.graph.input.remove(vi)


def validate_model(
    data: bytes,
    input_shapes: dict[str, list[int]] | None = None,
    max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    constant_inputs: dict[str, Any] | None = None,
) -> ValidatedModel:
    """Validate raw model bytes; return the model with input shapes fixed from the spec and the
    ``constant_inputs`` (parameters such as shapes or axes the device will never change) frozen
    into initializers, so the pre-passes can fold what depends on them."""
    if len(data) > max_bytes:
        raise ModelTooLargeError(
            f"the model is {len(data):,} bytes, over the limit of {max_bytes:,} bytes"
        )
    if not data:
        raise NotOnnxError("the file is empty")
    model = _parse(data)
    _check_external_data(model)
    added = _add_default_opset(model)
    model, upgraded = _upgrade_opset(model)
    notes = [n for n in (added, upgraded) if n]
    opset = _opset(model)
    try:
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:500] if str(e).strip() else type(e).__name__
        raise InvalidModelError(f"the ONNX checker rejects the model: {first}") from e
    unwrapped = _unwrap_optional_inputs(model)
    if unwrapped:
        notes.append(f"optional input(s) {unwrapped} are always present on the device")
    logical = {vi.name: lowbit.logical_dtype(vi.type.tensor_type.elem_type)
               for vi in [*model.graph.input, *model.graph.output]}
    logical = {k: v for k, v in logical.items() if v}
    rewritten = lowbit.lower_lowbit(model)
    if rewritten:
        notes.append(f"{rewritten} low-bit conversion node(s) lowered to {lowbit.DOMAIN}")
    check_operators(model)
    if constant_inputs:
        _freeze_inputs(model, constant_inputs, logical)
    _fix_inputs(model, dict(input_shapes or {}))
    check_runtime_parameters(model, opset)
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:
        raise InvalidModelError(f"ONNX shape inference failed: {e}") from e
    inputs = tuple(
        TensorInfo(vi.name, tuple(int(d) for d in _dims(vi)),  # type: ignore[arg-type]
                   _dtype(vi, logical))
        for vi in inferred.graph.input
    )
    outputs = []
    for vi in inferred.graph.output:
        dims = _dims(vi)
        outputs.append(TensorInfo(vi.name, tuple(d if isinstance(d, int) else -1 for d in dims)
                                  if dims != [None] else (), _dtype(vi, logical)))
    return ValidatedModel(
        model=inferred,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        opset=opset,
        inputs=inputs,
        outputs=tuple(outputs),
        notes=tuple(notes),
    )
