"""More ONNX operator converters registered by edgeforge (a second table, beside
:mod:`compiler.converters`): newer-opset, quantized, signal and image operators.

``OPS`` is importable without TVM (the pre-flight check reads it); :func:`converters` builds the
converter classes against TVM's ``OnnxOpConverter`` base and is called by
:func:`compiler.converters.install`.

Everything here needs static shapes. Parameters that decide shapes (window sizes, DFT lengths,
crop shapes, Col2Im's image and block shapes, STFT's frame step) must be constants (initializers,
``Constant`` nodes or the compile spec's ``constant_inputs``); a node whose parameter is a
runtime input is refused with an error naming it. Recurrences (Scan, Loop with a constant trip
count, LinearAttention, DynamicQuantizeLSTM) are unrolled over their static length; subgraphs
(Scan/Loop bodies, FlexAttention's score_mod/prob_mod) are folded with the ONNX pre-pass and
converted inline. Signal transforms (DFT, STFT) are matmuls with constant cosine/sine
matrices, which suits the short frames of audio front-ends. Quantized operators (ConvInteger,
QLinearConv, QLinearMatMul, DynamicQuantizeLSTM) compute in int32 and round half to even.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DOMAINS", "ML_OPS", "OPS", "TRAINING_OPS", "converters"]

#: Classic-ML operators (skl2onnx exports): the ai.onnx.ml domain.
ML_OPS: frozenset[str] = frozenset({
    "ArrayFeatureExtractor", "Binarizer", "LabelEncoder", "LinearRegressor", "Normalizer",
    "Scaler", "TreeEnsemble", "TreeEnsembleClassifier", "TreeEnsembleRegressor"})
#: Optimizer update steps: the ai.onnx.preview.training domain.
TRAINING_OPS: frozenset[str] = frozenset({"Adagrad", "Adam", "Momentum"})
OPS: frozenset[str] = frozenset({
    "BitCast", "BlackmanWindow", "CausalConvWithState", "CenterCropPad", "Col2Im", "ConvInteger",
    "DFT", "DeformConv", "Det", "DynamicQuantizeLSTM", "FlexAttention", "HammingWindow", "HannWindow",
    "LinearAttention", "Loop", "MelWeightMatrix", "QLinearConv", "QLinearMatMul",
    "ReverseSequence", "STFT", "Scan", "SwiGLU", "TensorScatter", "TfIdfVectorizer",
}) | ML_OPS | TRAINING_OPS
#: Operators of OPS that live in another ONNX domain than ai.onnx (the pre-flight must accept
#: ``domain::op`` for these).
DOMAINS: dict[str, str] = {"FlexAttention": "ai.onnx.preview",
                           **{op: "ai.onnx.preview.training" for op in TRAINING_OPS},
                           **{op: "ai.onnx.ml" for op in ML_OPS}}

# ONNX TensorProto data types → TVM dtype names (those the runtime can hand over).
_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
           9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def converters(base: type) -> dict[str, type]:
    """Converter classes by ONNX operator name (subclasses of TVM's ``OnnxOpConverter``)."""
    import numpy as np
    from tvm import relax, topi
    from tvm.ir import GenericConst as Constant
    from tvm.relax import op as R
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    from .converters import ConverterError, stack

    class _WithOpset(base):  # type: ignore[misc, valid-type]
        """A converter whose ``_convert`` takes the model's opset (one body for all versions)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                return cls._convert(bb, inputs, attr, params, opset)
            return convert

    def shape_of(bb: Any, x: Any) -> list[int]:
        try:
            return [int(d) for d in bb.normalize(x).ty.shape.values]
        except (TypeError, AttributeError) as e:
            raise ConverterError("the input shapes must be static") from e

    def dtype_of(bb: Any, x: Any) -> str:
        return str(bb.normalize(x).ty.dtype)

    def opt(inputs: list[Any], i: int) -> Any:
        return inputs[i] if len(inputs) > i and inputs[i] is not None else None

    def text(attr: dict[str, Any], name: str, default: str) -> str:
        v = attr.get(name, default)
        return v.decode() if isinstance(v, bytes) else str(v)

    def constant(op: str, what: str, x: Any, params: Any) -> Any:
        """The numpy value of a constant input, or a clear error naming the operator."""
        if x is None:
            return None
        c = fe.get_constant(x, params)
        if isinstance(c, Constant):
            return c.value.numpy()
        raise ConverterError(f"{op}: the {what} input must be a constant (an initializer, a "
                             "Constant node or a compile-spec constant_input); it is a runtime "
                             "input here")

    def dtype_attr(op: str, code: int) -> str:
        if code not in _DTYPES:
            raise ConverterError(f"{op}: data type {code} is not supported")
        return _DTYPES[code]

    def const(value: Any, dtype: str) -> Any:
        return relax.const(np.asarray(value).astype(dtype), dtype)

    # ---------------------------------------------------------------- elementwise / simple

    class SwiGLU(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            a, b = inputs[0], inputs[1]
            dtype = dtype_of(bb, a)
            alpha = float(attr.get("alpha", 1.0))
            gate = R.sigmoid(R.multiply(const(alpha, dtype), a)) if alpha != 1.0 else R.sigmoid(a)
            return R.multiply(R.multiply(a, gate), b)

    class BitCast(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            src, dst = dtype_of(bb, x), dtype_attr("BitCast", int(attr["to"]))
            if src == dst:
                return x
            bits = {"bool": 8, "bfloat16": 16}
            sb = bits.get(src) or int("".join(c for c in src if c.isdigit()))
            db = bits.get(dst) or int("".join(c for c in dst if c.isdigit()))
            if sb != db:
                raise ConverterError(f"BitCast: {src} and {dst} differ in width")
            if src == "bool" or dst == "bool":  # one byte holding 0 or 1
                return R.astype(x, dst)
            return bb.call_te(topi.reinterpret, x, dst)

    def window(op: str, inputs: list[Any], attr: dict[str, Any], params: Any,
               fn: Any) -> Any:
        size = int(constant(op, "size", inputs[0], params).reshape(-1)[0])
        periodic = int(attr.get("periodic", 1))
        dtype = dtype_attr(op, int(attr.get("output_datatype", 1)))
        n = np.arange(size, dtype=np.float64)
        denom = size if periodic else size - 1
        return const(fn(n, denom), dtype)

    class HannWindow(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            return window("HannWindow", inputs, attr, params,
                          lambda n, d: np.sin(n * np.pi / d) ** 2)

    class HammingWindow(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            a = 25.0 / 46.0
            return window("HammingWindow", inputs, attr, params,
                          lambda n, d: a - (1 - a) * np.cos(2 * np.pi * n / d))

    class BlackmanWindow(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            return window("BlackmanWindow", inputs, attr, params,
                          lambda n, d: 0.42 - 0.5 * np.cos(2 * np.pi * n / d)
                          + 0.08 * np.cos(4 * np.pi * n / d))

    class MelWeightMatrix(base):  # type: ignore[misc, valid-type]
        """Triangular mel filters; the bin edges may be runtime values (computed in-graph)."""

        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            op = "MelWeightMatrix"
            mels = int(constant(op, "num_mel_bins", inputs[0], params).reshape(-1)[0])
            dft = int(constant(op, "dft_length", inputs[1], params).reshape(-1)[0])
            rate, low, high = inputs[2], inputs[3], inputs[4]
            dtype = dtype_attr(op, int(attr.get("output_datatype", 1)))
            spec = dft // 2 + 1
            f64 = "float64"
            rate, low, high = (R.astype(v, f64) for v in (rate, low, high))

            def to_mel(hz: Any) -> Any:
                return R.multiply(const(2595.0 / math.log(10), f64),
                                  R.log(R.add(const(1.0, f64), R.divide(hz, const(700.0, f64)))))

            lo_mel, hi_mel = to_mel(low), to_mel(high)
            step = R.divide(R.subtract(hi_mel, lo_mel), const(mels + 2, f64))
            mel = R.add(R.multiply(const(np.arange(mels + 2), f64), step), lo_mel)
            hz = R.multiply(const(700.0, f64),
                            R.subtract(R.exp(R.multiply(mel, const(math.log(10) / 2595, f64))),
                                       const(1.0, f64)))
            bins = R.floor(R.divide(R.multiply(const(dft + 1, f64), hz), rate))
            bins = bb.emit(bins)
            left, center, right = (R.take(bins, const(np.arange(mels) + i, "int64"), axis=0)
                                   for i in range(3))  # [mels] each
            j = const(np.arange(spec).reshape(spec, 1), f64)  # [spec, 1]
            zero, one = const(0.0, f64), const(1.0, f64)
            rise_den = R.subtract(center, left)
            rise = R.where(R.logical_and(R.greater_equal(j, left), R.less_equal(j, center)),
                           R.divide(R.subtract(j, left), R.maximum(rise_den, one)), zero)
            rise = R.where(R.equal(rise_den, zero),
                           R.where(R.equal(j, center), one, zero), rise)
            fall_den = R.subtract(right, center)
            in_fall = R.logical_and(R.logical_and(R.greater_equal(j, center), R.less(j, right)),
                                    R.greater(fall_den, zero))
            fall = R.divide(R.subtract(right, j), R.maximum(fall_den, one))
            return R.astype(R.where(in_fall, fall, rise), dtype)

    class Det(base):  # type: ignore[misc, valid-type]
        """Determinant by cofactor expansion (square matrices up to 4×4)."""

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = bb.normalize(inputs[0])
            shape = shape_of(bb, x)
            n = shape[-1]
            if len(shape) < 2 or shape[-2] != n or n > 4:
                raise ConverterError(f"Det: only square matrices up to 4x4 are supported, got "
                                     f"{shape}")
            r = len(shape)

            def el(i: int, j: int) -> Any:
                e = R.strided_slice(x, [r - 2, r - 1], [i, j], [i + 1, j + 1])
                return bb.emit(R.squeeze(e, [r - 2, r - 1]))

            elems = {(i, j): el(i, j) for i in range(n) for j in range(n)}

            def det(rows: list[int], cols: list[int]) -> Any:
                if len(rows) == 1:
                    return elems[(rows[0], cols[0])]
                total = None
                for k, c in enumerate(cols):
                    term = R.multiply(elems[(rows[0], c)],
                                      det(rows[1:], cols[:k] + cols[k + 1:]))
                    total = term if total is None else (
                        R.subtract(total, term) if k % 2 else R.add(total, term))
                return bb.emit(total)

            return det(list(range(n)), list(range(n)))

    # ---------------------------------------------------------------- shape manipulation

    class CenterCropPad(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v18(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            target = [int(v) for v in constant("CenterCropPad", "shape", inputs[1], params)]
            shape = shape_of(bb, x)
            rank = len(shape)
            axes = [a % rank for a in attr.get("axes", range(rank))]
            for a, want in zip(axes, target):
                dim = shape[a]
                if want < dim:
                    start = (dim - want) // 2
                    x = R.strided_slice(x, [a], [start], [start + want])
                elif want > dim:
                    before = (want - dim) // 2
                    pads = [0] * (2 * rank)
                    pads[2 * a], pads[2 * a + 1] = before, want - dim - before
                    x = R.nn.pad(x, pads)
            return x

    class ReverseSequence(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, lens = inputs[0], inputs[1]
            shape = shape_of(bb, x)
            rank = len(shape)
            b_ax, t_ax = int(attr.get("batch_axis", 1)), int(attr.get("time_axis", 0))
            steps = shape[t_ax]
            bshape = [1] * rank
            bshape[b_ax] = shape[b_ax]
            tshape = [1] * rank
            tshape[t_ax] = steps
            lens = R.reshape(R.astype(lens, "int64"), bshape)
            t = const(np.arange(steps).reshape(tshape), "int64")
            idx = R.where(R.less(t, lens), R.subtract(R.subtract(lens, const(1, "int64")), t), t)
            idx = R.broadcast_to(idx, shape)
            return R.gather_elements(x, idx, axis=t_ax)

    class TensorScatter(base):  # type: ignore[misc, valid-type]
        """Write ``update`` into a KV cache at per-batch positions (runtime indices work)."""

        @classmethod
        def _impl_v24(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            cache, update, idx = inputs[0], inputs[1], opt(inputs, 2)
            cshape, ushape = shape_of(bb, cache), shape_of(bb, update)
            rank = len(cshape)
            axis = int(attr.get("axis", -2)) % rank
            if axis == 0:
                raise ConverterError("TensorScatter: axis must not be the batch axis")
            mode = text(attr, "mode", "linear")
            batch, seq, max_seq = cshape[0], ushape[axis], cshape[axis]
            if idx is None:
                idx = R.zeros((batch,), "int64")
            bshape = [batch] + [1] * (rank - 1)
            sshape = [1] * rank
            sshape[axis] = seq
            pos = R.add(R.reshape(R.astype(idx, "int64"), bshape),
                        const(np.arange(seq).reshape(sshape), "int64"))
            if mode == "circular":
                pos = R.floor_mod(pos, const(max_seq, "int64"))
            elif mode != "linear":
                raise ConverterError(f"TensorScatter: mode {mode!r} is not supported")
            pos = R.broadcast_to(pos, ushape)
            return R.scatter_elements(cache, pos, update, axis=axis)

    class Col2Im(base):  # type: ignore[misc, valid-type]
        """Scatter-add of sliding blocks; the index map is computed at compile time."""

        @classmethod
        def _impl_v18(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            image = [int(v) for v in constant("Col2Im", "image_shape", inputs[1], params)]
            block = [int(v) for v in constant("Col2Im", "block_shape", inputs[2], params)]
            nd = len(image)
            dil = list(attr.get("dilations", [1] * nd))
            pads = list(attr.get("pads", [0] * 2 * nd))
            strides = list(attr.get("strides", [1] * nd))
            n, ck, length = shape_of(bb, x)
            kernel = int(np.prod(block))
            c = ck // kernel
            cols = [(image[i] + pads[i] + pads[i + nd] - dil[i] * (block[i] - 1) - 1)
                    // strides[i] + 1 for i in range(nd)]
            if int(np.prod(cols)) != length:
                raise ConverterError(f"Col2Im: {length} blocks do not fit image {image}")
            pixels = int(np.prod(image))
            # target pixel of every (kernel offset, block) pair; out-of-image → a spare slot
            offs = np.stack(np.unravel_index(np.arange(kernel), block), 1)  # [K, nd]
            pos = np.stack(np.unravel_index(np.arange(length), cols), 1)  # [L, nd]
            coord = (pos[None, :, :] * np.array(strides) - np.array(pads[:nd])
                     + offs[:, None, :] * np.array(dil))  # [K, L, nd]
            inside = np.all((coord >= 0) & (coord < np.array(image)), axis=-1)
            flat = np.ravel_multi_index(tuple(np.clip(coord, 0, np.array(image) - 1)
                                              .transpose(2, 0, 1)), image)
            flat = np.where(inside, flat, pixels).reshape(1, 1, kernel * length)
            index = const(np.broadcast_to(flat, (n, c, kernel * length)), "int64")
            data = R.reshape(x, (n, c, kernel * length))
            out = R.zeros((n, c, pixels + 1), dtype_of(bb, x))
            out = R.scatter_elements(out, index, data, axis=2, reduction="add")
            out = R.strided_slice(out, [2], [0], [pixels])
            return R.reshape(out, (n, c, *image))

    class TfIdfVectorizer(base):  # type: ignore[misc, valid-type]
        """N-gram counts over integer token ids (pool_int64s; string pools are refused): for
        every pool n-gram and skip distance, windowed comparisons summed over positions."""

        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            op = "TfIdfVectorizer"
            if "pool_int64s" not in attr:
                raise ConverterError(f"{op}: string pools are not supported (pool_int64s only)")
            x = inputs[0]
            shape = shape_of(bb, x)
            if len(shape) not in (1, 2):
                raise ConverterError(f"{op}: the input must be [C] or [N, C]")
            if len(shape) == 1:
                x = R.expand_dims(x, 0)
            c = shape[-1]
            x = bb.normalize(R.astype(x, "int64"))
            pool = [int(v) for v in attr["pool_int64s"]]
            starts = [int(v) for v in attr["ngram_counts"]] + [len(pool)]
            indexes = [int(v) for v in attr["ngram_indexes"]]
            lo, hi = int(attr["min_gram_length"]), int(attr["max_gram_length"])
            max_skip = int(attr["max_skip_count"])
            out_size = max(indexes) + 1
            grams: dict[int, list[tuple[int, list[int]]]] = {}  # length → [(gram id, ids)]
            gid = 0
            for k in range(len(starts) - 1):
                n = k + 1
                seg = pool[starts[k]:starts[k + 1]]
                for j in range(0, len(seg), n):
                    grams.setdefault(n, []).append((gid, seg[j:j + n]))
                    gid += 1
            counts = None
            for n, items in sorted(grams.items()):
                if not lo <= n <= hi:
                    continue
                table = np.array([g for _, g in items], dtype=np.int64)  # [G, n]
                onehot = np.zeros((len(items), out_size), dtype=np.float32)
                for row, (i, _) in enumerate(items):
                    onehot[row, indexes[i]] += 1
                for d in (range(1, max_skip + 2) if n > 1 else [1]):
                    positions = c - (n - 1) * d
                    if positions <= 0:
                        continue
                    hit = None
                    for k in range(n):
                        win = R.strided_slice(x, [1], [k * d], [k * d + positions])  # [N, P]
                        eq = R.equal(R.expand_dims(win, 1),
                                     const(table[:, k].reshape(1, -1, 1), "int64"))  # [N, G, P]
                        hit = eq if hit is None else R.logical_and(hit, eq)
                    per_gram = R.sum(R.astype(hit, "float32"), axis=[2])  # [N, G]
                    term = R.matmul(per_gram, const(onehot, "float32"))
                    counts = term if counts is None else R.add(counts, term)
            if counts is None:
                counts = R.zeros((1 if len(shape) == 1 else shape[0], out_size), "float32")
            mode = text(attr, "mode", "TF")
            weights = attr.get("weights")
            w = const(np.array(weights, dtype=np.float32).reshape(1, -1), "float32") \
                if weights else None
            if mode == "IDF":
                present = R.astype(R.greater(counts, const(0.0, "float32")), "float32")
                counts = R.multiply(present, w) if w is not None else present
            elif mode == "TFIDF":
                counts = R.multiply(counts, w) if w is not None else counts
            elif mode != "TF":
                raise ConverterError(f"{op}: mode {mode!r} is not supported")
            return R.squeeze(counts, [0]) if len(shape) == 1 else counts

    # ---------------------------------------------------------------- convolution family

    def tvm_conv(bb: Any, x: Any, w: Any, bias: Any, attr: dict[str, Any], params: Any,
                 opset: int) -> Any:
        conv = fe._get_convert_map()["Conv"].get_converter(opset)
        attr = {k: v for k, v in attr.items() if k != "tvm_custom"}
        return conv(bb, fe.onnx_input([x, w, bias]), attr, params)

    def zp_sub(bb: Any, x: Any, zp: Any, channel_axis: int | None, rank: int) -> Any:
        x = R.astype(x, "int32")
        if zp is None:
            return x
        zp = bb.normalize(R.astype(zp, "int32"))
        if channel_axis is not None and len(shape_of(bb, zp)) == 1:
            shape = [1] * rank
            shape[channel_axis] = -1
            zp = R.reshape(zp, shape)
        return R.subtract(x, zp)

    class ConvInteger(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, w = inputs[0], inputs[1]
            rank = len(shape_of(bb, x))
            xi = bb.normalize(zp_sub(bb, x, opt(inputs, 2), None, rank))
            wi = bb.normalize(zp_sub(bb, w, opt(inputs, 3), 0, rank))
            return tvm_conv(bb, xi, wi, None, attr, params, 11)

    def requantize(bb: Any, acc: Any, scale: Any, y_zp: Any, out_dtype: str) -> Any:
        y = R.multiply(R.astype(acc, "float32"), R.astype(scale, "float32"))
        if y_zp is not None:
            y = R.add(y, R.astype(y_zp, "float32"))
        info = np.iinfo(out_dtype)
        return R.astype(R.clip(R.round(y), int(info.min), int(info.max)), out_dtype)

    class QLinearConv(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, xs, xz, w, ws, wz, ys, yz = (opt(inputs, i) for i in range(8))
            bias = opt(inputs, 8)
            rank = len(shape_of(bb, x))
            xi = bb.normalize(zp_sub(bb, x, xz, None, rank))
            wi = bb.normalize(zp_sub(bb, w, wz, 0, rank))
            acc = tvm_conv(bb, xi, wi, None if bias is None else R.astype(bias, "int32"),
                           attr, params, 11)
            ws = bb.normalize(ws)
            if len(shape_of(bb, ws)) == 1 and shape_of(bb, ws)[0] > 1:
                ws = R.reshape(ws, [1, -1] + [1] * (rank - 2))
            scale = R.divide(R.multiply(xs, ws), ys)
            out_dtype = dtype_of(bb, yz if yz is not None else x)
            return requantize(bb, acc, scale, yz, out_dtype)

    class QLinearMatMul(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            a, a_s, a_z, b, b_s, b_z, y_s, y_z = (opt(inputs, i) for i in range(8))

            def per_row(v: Any) -> Any:  # 1-D a_scale / a_zero_point: one value per row of a
                if v is not None and len(shape_of(bb, v)) == 1 and shape_of(bb, v)[0] > 1:
                    return R.reshape(v, (-1, 1))
                return v

            a_s, a_z = per_row(a_s), per_row(a_z)
            acc = R.matmul(zp_sub(bb, a, a_z, None, 0), zp_sub(bb, b, b_z, None, 0),
                           out_dtype="int32")
            scale = R.divide(R.multiply(a_s, b_s), y_s)
            out_dtype = dtype_of(bb, y_z if y_z is not None else a)
            return requantize(bb, acc, scale, y_z, out_dtype)

    class CausalConvWithState(base):  # type: ignore[misc, valid-type]
        """Depthwise causal conv1d with a carried state (Mamba-style), optional SiLU."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, w, bias, past = inputs[0], inputs[1], opt(inputs, 2), opt(inputs, 3)
            b, c, _ = shape_of(bb, x)
            k = shape_of(bb, w)[2]
            dtype = dtype_of(bb, x)
            act = text(attr, "activation", "none")
            if act not in ("none", "silu", "swish"):
                raise ConverterError(f"CausalConvWithState: activation {act!r} is not supported")
            if past is None:
                past = R.zeros((b, c, k - 1), dtype)
            padded = bb.normalize(R.concat([past, x], axis=2) if k > 1 else x)
            total = shape_of(bb, padded)[2]
            # Half precision: accumulate in float32, round the conv output once (as ONNX does).
            f32 = "float32"
            wide = dtype in ("float16", "bfloat16")
            y = R.nn.conv1d(R.astype(padded, f32) if wide else padded,
                            R.astype(w, f32) if wide else w, groups=c)
            if bias is not None:
                y = R.add(y, R.reshape(R.astype(bias, f32) if wide else bias, (1, c, 1)))
            if wide:
                y = R.astype(y, dtype)
            if act != "none":
                y32 = R.astype(y, f32) if wide else y
                y = R.multiply(y32, R.sigmoid(y32))
                y = R.astype(y, dtype) if wide else y
            # the last k-1 steps (an empty slice of the runtime input when k == 1)
            state = R.strided_slice(padded, [2], [total - (k - 1)], [total])
            return relax.Tuple([y, state])

    class DeformConv(base):  # type: ignore[misc, valid-type]
        """Deformable 2-D convolution: bilinear sampling at offset positions (gathers), then a
        grouped matmul with the weights."""

        @classmethod
        def _impl_v19(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, w, offset = inputs[0], inputs[1], inputs[2]
            bias, mask = opt(inputs, 3), opt(inputs, 4)
            if len(shape_of(bb, x)) != 4:
                raise ConverterError("DeformConv: only 2-D convolution is supported")
            n, c, h, wd = shape_of(bb, x)
            oc, cpg, kh, kw = shape_of(bb, w)
            _, _, oh, ow = shape_of(bb, offset)
            dtype = dtype_of(bb, x)
            group = int(attr.get("group", 1))
            og = int(attr.get("offset_group", 1))
            sh, sw = attr.get("strides", (1, 1))
            dh, dw = attr.get("dilations", (1, 1))
            ph, pw = list(attr.get("pads", (0, 0, 0, 0)))[:2]
            kk = kh * kw
            # base sampling positions [kk, oh, ow]
            ki, kj = np.unravel_index(np.arange(kk), (kh, kw))
            base_y = (np.arange(oh)[None, :, None] * sh - ph + ki[:, None, None] * dh)
            base_x = (np.arange(ow)[None, None, :] * sw - pw + kj[:, None, None] * dw)
            off = R.reshape(offset, (n, og, kk, 2, oh, ow))
            py = R.add(R.squeeze(R.strided_slice(off, [3], [0], [1]), [3]),
                       const(np.broadcast_to(base_y, (kk, oh, ow)), dtype))  # [n, og, kk, oh, ow]
            px = R.add(R.squeeze(R.strided_slice(off, [3], [1], [2]), [3]),
                       const(np.broadcast_to(base_x, (kk, oh, ow)), dtype))
            y0, x0 = R.floor(py), R.floor(px)
            ly, lx = R.subtract(py, y0), R.subtract(px, x0)
            one = const(1.0, dtype)
            flat = R.reshape(x, (n, og, c // og, h * wd))
            sampled = None
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                yy = R.add(y0, const(float(dy), dtype))
                xx = R.add(x0, const(float(dx), dtype))
                wy = ly if dy else R.subtract(one, ly)
                wx = lx if dx else R.subtract(one, lx)
                valid = R.logical_and(
                    R.logical_and(R.greater_equal(yy, const(0.0, dtype)),
                                  R.less(yy, const(float(h), dtype))),
                    R.logical_and(R.greater_equal(xx, const(0.0, dtype)),
                                  R.less(xx, const(float(wd), dtype))))
                weight = R.where(valid, R.multiply(wy, wx), const(0.0, dtype))
                yi = R.clip(R.astype(yy, "int64"), 0, h - 1)
                xi = R.clip(R.astype(xx, "int64"), 0, wd - 1)
                idx = R.reshape(R.add(R.multiply(yi, const(wd, "int64")), xi),
                                (n, og, 1, kk * oh * ow))
                idx = R.broadcast_to(idx, (n, og, c // og, kk * oh * ow))
                vals = R.gather_elements(flat, idx, axis=3)  # [n, og, c/og, kk*oh*ow]
                term = R.multiply(vals, R.reshape(weight, (n, og, 1, kk * oh * ow)))
                sampled = term if sampled is None else R.add(sampled, term)
            if mask is not None:
                sampled = R.multiply(sampled, R.reshape(mask, (n, og, 1, kk * oh * ow)))
            cols = R.reshape(sampled, (n, group, (c // group) * kk, oh * ow))
            wm = R.reshape(w, (1, group, oc // group, cpg * kk))
            y = R.reshape(R.matmul(wm, cols), (n, oc, oh, ow))
            if bias is not None:
                y = R.add(y, R.reshape(bias, (1, oc, 1, 1)))
            return y

    def dynamic_quantize(bb: Any, a: Any) -> tuple[Any, Any]:
        """onnxruntime's dynamic uint8 quantization of a whole float tensor (as
        DynamicQuantizeLinear): returns (q - zero_point as int32, scale)."""
        f32 = "float32"
        zero = const(0.0, f32)
        lo = R.minimum(R.min(a), zero)
        hi = R.maximum(R.max(a), zero)
        scale = bb.emit(R.where(R.equal(hi, lo), const(1.0, f32),
                                R.divide(R.subtract(hi, lo), const(255.0, f32))))
        zp = R.round(R.clip(R.subtract(zero, R.divide(lo, scale)), 0, 255))
        q = R.clip(R.add(R.round(R.divide(a, scale)), zp), 0, 255)
        return bb.emit(R.astype(R.subtract(q, zp), "int32")), scale

    class DynamicQuantizeLSTM(base):  # type: ignore[misc, valid-type]
        """com.microsoft DynamicQuantizeLSTM (onnxruntime's quantized LSTM): int8/uint8 weights
        W [D, in, 4H] and R [D, H, 4H] with per-direction or per-column scales; like
        onnxruntime, the activations entering each matmul (all steps of X at once, then the
        hidden state at each step) are quantized to uint8 on the fly and multiplied in int32;
        bit-exact with onnxruntime for batch 1. For larger batches onnxruntime quantizes the
        hidden state per chunk of rows (one chunk per thread), here the whole batch at once.
        Unrolled over the static sequence length; default activations, no clip."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            op = "DynamicQuantizeLSTM"
            x, w, r = (bb.normalize(i) for i in inputs[:3])
            b, lens, h0, c0, peep = (opt(inputs, i) for i in range(3, 8))
            w_s, w_z, r_s, r_z = (opt(inputs, i) for i in (8, 9, 10, 11))
            if w_s is None or r_s is None:
                raise ConverterError(f"{op}: W_scale and R_scale are required")
            if attr.get("activations") or attr.get("clip") is not None \
                    or int(attr.get("input_forget", 0)) or int(attr.get("layout", 0)):
                raise ConverterError(f"{op}: only default activations, no clip, no "
                                     "input_forget and layout 0 are supported")
            seq, batch, _ = shape_of(bb, x)
            if lens is not None:
                lv = constant(op, "sequence_lens", lens, params)
                if not (lv == seq).all():
                    raise ConverterError(f"{op}: variable sequence_lens are not supported")
            dirs = shape_of(bb, w)[0]
            hidden = int(attr["hidden_size"])
            direction = text(attr, "direction", "forward")
            f32 = "float32"

            def per_dir(t: Any, d: int) -> Any:
                return R.squeeze(R.strided_slice(t, [0], [d], [d + 1]), [0])

            def weights(q: Any, scale: Any, zp: Any, d: int) -> tuple[Any, Any]:
                wi = R.astype(per_dir(q, d), "int32")
                if zp is not None:  # onnxruntime uses one zero point per direction
                    z = bb.normalize(R.astype(per_dir(zp, d), "int32"))
                    if shape_of(bb, z):
                        z = R.strided_slice(z, [0], [0], [1])
                    wi = R.subtract(wi, z)
                return bb.emit(wi), bb.emit(R.astype(per_dir(scale, d), f32))

            xq, xs = dynamic_quantize(bb, R.reshape(x, (seq * batch, -1)))
            ys, hs_final, cs_final = [], [], []
            for d in range(dirs):
                reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
                wq, ws = weights(w, w_s, w_z, d)
                rq, rs = weights(r, r_s, r_z, d)
                xw = R.multiply(R.astype(R.matmul(xq, wq, out_dtype="int32"), f32),
                                R.multiply(xs, ws))
                if b is not None:
                    bd = per_dir(b, d)
                    xw = R.add(xw, R.add(R.strided_slice(bd, [0], [0], [4 * hidden]),
                                         R.strided_slice(bd, [0], [4 * hidden], [8 * hidden])))
                xw = bb.emit(R.reshape(xw, (seq, batch, 4 * hidden)))
                h = per_dir(h0, d) if h0 is not None else R.zeros((batch, hidden), f32)
                c = per_dir(c0, d) if c0 is not None else R.zeros((batch, hidden), f32)
                pd = per_dir(peep, d) if peep is not None else None
                out: dict[int, Any] = {}
                for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
                    hq, hsc = dynamic_quantize(bb, h)
                    rec = R.multiply(R.astype(R.matmul(hq, rq, out_dtype="int32"), f32),
                                     R.multiply(hsc, rs))
                    g = bb.emit(R.add(R.squeeze(R.strided_slice(xw, [0], [t], [t + 1]), [0]),
                                      rec))
                    i_, o_, f_, c_ = (R.strided_slice(g, [1], [k * hidden], [(k + 1) * hidden])
                                      for k in range(4))
                    if pd is not None:
                        p_i, p_o, p_f = (R.strided_slice(pd, [0], [k * hidden],
                                                         [(k + 1) * hidden]) for k in range(3))
                        i_ = R.add(i_, R.multiply(p_i, c))
                        f_ = R.add(f_, R.multiply(p_f, c))
                    c = bb.emit(R.add(R.multiply(R.sigmoid(f_), c),
                                      R.multiply(R.sigmoid(i_), R.tanh(c_))))
                    if pd is not None:
                        o_ = R.add(o_, R.multiply(p_o, c))
                    h = bb.emit(R.multiply(R.sigmoid(o_), R.tanh(c)))
                    out[t] = h
                ys.append(stack([out[t] for t in range(seq)], axis=0))  # [seq, batch, H]
                hs_final.append(h)
                cs_final.append(c)
            return relax.Tuple([stack(ys, axis=1), stack(hs_final, axis=0),
                                stack(cs_final, axis=0)])

    # ---------------------------------------------------------------- attention-like

    class LinearAttention(base):  # type: ignore[misc, valid-type]
        """Recurrent linear attention (linear / gated / delta / gated_delta), unrolled over the
        static sequence length, accumulated in float32."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            q, k, v = inputs[0], inputs[1], inputs[2]
            past, decay, beta = opt(inputs, 3), opt(inputs, 4), opt(inputs, 5)
            rule = text(attr, "update_rule", "gated_delta")
            if rule not in ("linear", "gated", "delta", "gated_delta"):
                raise ConverterError(f"LinearAttention: update_rule {rule!r} is not supported")
            qh, kvh = int(attr.get("q_num_heads", 0)), int(attr.get("kv_num_heads", 0))
            if qh <= 0 or kvh <= 0 or qh % kvh:
                raise ConverterError("LinearAttention: q_num_heads must be a positive multiple "
                                     "of kv_num_heads")
            gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
            if (gating and decay is None) or (delta and beta is None):
                raise ConverterError(f"LinearAttention: update_rule {rule!r} needs its inputs")
            b, t, qd = shape_of(bb, q)
            dk, dv = qd // qh, shape_of(bb, v)[2] // kvh
            out_dtype = dtype_of(bb, q)
            state_dtype = dtype_of(bb, past) if past is not None else out_dtype
            f32 = "float32"

            def heads(x: Any, nh: int) -> Any:  # [B, T, H*D] → [B, H, T, D] float32
                bx, tx, hd = shape_of(bb, x)
                y = R.permute_dims(R.reshape(x, (bx, tx, nh, hd // nh)), [0, 2, 1, 3])
                return bb.emit(R.astype(y, f32) if dtype_of(bb, x) != f32 else y)

            q4, k4, v4 = heads(q, qh), heads(k, kvh), heads(v, kvh)
            if gating:
                if shape_of(bb, decay)[2] == kvh:
                    g4 = bb.emit(R.astype(R.permute_dims(R.reshape(decay, (b, t, kvh, 1)),
                                                         [0, 2, 1, 3]), f32))
                else:
                    g4 = heads(decay, kvh)
                g4 = bb.emit(R.exp(g4))
            if delta:
                bl = shape_of(bb, beta)[2]
                b4 = bb.emit(R.astype(R.permute_dims(R.reshape(beta, (b, t, bl, 1)),
                                                     [0, 2, 1, 3]), f32))
            state = (R.astype(past, f32) if past is not None
                     else R.zeros((b, kvh, dk, dv), f32))
            scale = float(attr.get("scale", 0.0) or 0.0) or 1.0 / math.sqrt(dk)
            group = qh // kvh

            def step(x: Any, i: int) -> Any:  # [B, H, T, D] → [B, H, D]
                return R.squeeze(R.strided_slice(x, [2], [i], [i + 1]), [2])

            outs = []
            for i in range(t):
                k_t, v_t = step(k4, i), step(v4, i)
                if gating:
                    state = R.multiply(state, R.expand_dims(step(g4, i), -1))
                if delta:
                    got = R.squeeze(R.matmul(R.expand_dims(k_t, 2), state), [2])
                    v_t = R.multiply(step(b4, i), R.subtract(v_t, got))
                state = bb.emit(R.add(state, R.multiply(R.expand_dims(k_t, -1),
                                                        R.expand_dims(v_t, 2))))
                read = R.repeat(state, group, axis=1) if group > 1 else state
                o = R.matmul(R.expand_dims(step(q4, i), 2), read)  # [B, Hq, 1, dv]
                outs.append(bb.emit(R.multiply(o, const(scale, f32))))
            y = R.concat(outs, axis=2) if len(outs) > 1 else outs[0]  # [B, Hq, T, dv]
            y = R.reshape(R.permute_dims(y, [0, 2, 1, 3]), (b, t, qh * dv))
            if out_dtype != f32:
                y = R.astype(y, out_dtype)
            if state_dtype != f32:
                state = R.astype(state, state_dtype)
            return relax.Tuple([y, state])

    class FlexAttention(_WithOpset):  # type: ignore[misc, valid-type]
        """ai.onnx.preview FlexAttention: scaled dot-product attention whose scores and
        probabilities may pass through user subgraphs (score_mod, prob_mod), converted inline."""

        @classmethod
        def _convert(cls, bb, inputs, attr, params, opset):  # type: ignore[no-untyped-def]
            q, k, v = (bb.normalize(i) for i in inputs[:3])
            if any(len(shape_of(bb, t)) != 4 for t in (q, k, v)):
                raise ConverterError("FlexAttention: Q, K and V must be rank 4")
            hq, e = shape_of(bb, q)[1], shape_of(bb, q)[3]
            hkv = shape_of(bb, k)[1]
            if hq != hkv:
                if hq % hkv:
                    raise ConverterError("FlexAttention: q heads must be a multiple of kv heads")
                k, v = R.repeat(k, hq // hkv, axis=1), R.repeat(v, hq // hkv, axis=1)
            dtype, vdtype = dtype_of(bb, q), dtype_of(bb, v)
            scale = attr.get("scale")
            scale = 1.0 / math.sqrt(e) if scale is None else float(scale)
            root = const(np.sqrt(np.float32(scale)), dtype)
            scores = R.matmul(R.multiply(q, root),
                              R.permute_dims(R.multiply(k, root), [0, 1, 3, 2]))
            if "softmax_precision" in attr:
                compute = dtype_attr("FlexAttention", int(attr["softmax_precision"]))
            else:
                compute = "float32" if dtype in ("float16", "bfloat16") else dtype
            scores = bb.normalize(R.astype(scores, compute) if compute != dtype else scores)

            def mod(name: str, x: Any) -> Any:
                graph = attr.get(name)
                if graph is None:
                    return x
                out = run_graph(bb, graph, {graph.input[0].name: x}, params, opset)[0]
                out = bb.normalize(out)
                return R.astype(out, compute) if dtype_of(bb, out) != compute else out

            scores = mod("score_mod", scores)
            probs = bb.normalize(R.nn.softmax(scores, axis=-1))
            probs = mod("prob_mod", probs)
            vv = R.astype(v, compute) if vdtype != compute else v
            y = R.matmul(probs, vv)
            return R.astype(y, vdtype) if vdtype != compute else y

    # ---------------------------------------------------------------- signal processing

    def move_last(bb: Any, x: Any, axis: int) -> tuple[Any, list[int]]:
        rank = len(shape_of(bb, x))
        perm = [i for i in range(rank) if i != axis] + [axis]
        return R.permute_dims(x, perm), perm

    def dft_core(bb: Any, re: Any, im: Any, length: int, inverse: bool, onesided: bool,
                 dtype: str) -> tuple[Any, Any | None]:
        """DFT over the last axis of ``re`` (+ ``im``); returns (re, im) or (real, None) for
        an inverse one-sided transform."""
        n = shape_of(bb, re)[-1]
        if inverse and onesided:  # irfft: Hermitian half spectrum → real signal
            m = min(n, length // 2 + 1)
            k = np.arange(m)[:, None]
            t = np.arange(length)[None, :]
            wgt = np.where((k == 0) | ((length % 2 == 0) & (k == length // 2)), 1.0, 2.0)
            ang = 2 * np.pi * k * t / length
            cr, ci = wgt * np.cos(ang) / length, -wgt * np.sin(ang) / length
            re = R.strided_slice(re, [len(shape_of(bb, re)) - 1], [0], [m]) if m < n else re
            out = R.matmul(re, const(cr, dtype))
            if im is not None:
                im = R.strided_slice(im, [len(shape_of(bb, im)) - 1], [0], [m]) if m < n else im
                out = R.add(out, R.matmul(im, const(ci, dtype)))
            return out, None
        m = min(n, length)
        bins = length // 2 + 1 if onesided and not inverse else length
        j = np.arange(m)[:, None]
        k = np.arange(bins)[None, :]
        ang = 2 * np.pi * ((j * k) % length) / length
        cos, sin = np.cos(ang), np.sin(ang)
        if inverse:
            cos, sin = cos / length, -sin / length  # e^{+iθ}/L = cos/L - i(-sin/L)
        last = len(shape_of(bb, re)) - 1
        if m < n:
            re = R.strided_slice(re, [last], [0], [m])
            im = None if im is None else R.strided_slice(im, [last], [0], [m])
        c, s = const(cos, dtype), const(sin, dtype)
        # (a + ib)(cos - i sin) = a cos + b sin + i(b cos - a sin)
        out_re = R.matmul(re, c)
        out_im = R.negative(R.matmul(re, s))
        if im is not None:
            out_re = R.add(out_re, R.matmul(im, s))
            out_im = R.add(out_im, R.matmul(im, c))
        return out_re, out_im

    def split_complex(bb: Any, x: Any) -> tuple[Any, Any | None]:
        shape = shape_of(bb, x)
        last = len(shape) - 1
        re = R.squeeze(R.strided_slice(x, [last], [0], [1]), [last])
        if shape[-1] == 1:
            return bb.normalize(re), None
        if shape[-1] != 2:
            raise ConverterError("the last dimension of a DFT/STFT signal must be 1 or 2")
        return bb.normalize(re), bb.normalize(R.squeeze(R.strided_slice(x, [last], [1], [2]),
                                                        [last]))

    def dft(bb: Any, x: Any, length: Any, axis: int, attr: dict[str, Any], params: Any) -> Any:
        shape = shape_of(bb, x)
        rank = len(shape)
        axis = axis % rank
        if axis == rank - 1:
            raise ConverterError("DFT: the axis must not be the last (complex) dimension")
        inverse, onesided = bool(int(attr.get("inverse", 0))), bool(int(attr.get("onesided", 0)))
        if length is not None:
            length = int(constant("DFT", "dft_length", length, params).reshape(-1)[0])
        elif inverse and onesided:
            length = 2 * (shape[axis] - 1)
        else:
            length = shape[axis]
        dtype = dtype_of(bb, x)
        re, im = split_complex(bb, x)
        re, perm = move_last(bb, re, axis)
        im = None if im is None else move_last(bb, im, axis)[0]
        out_re, out_im = dft_core(bb, bb.normalize(re), None if im is None else bb.normalize(im),
                                  length, inverse, onesided, dtype)
        parts = [out_re] if out_im is None else [out_re, out_im]
        y = stack(parts, axis=rank - 1)  # [..., (axis moved last), c]
        back = [*np.argsort(perm), rank - 1]
        return R.permute_dims(y, [int(i) for i in back])

    class DFT(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            return dft(bb, inputs[0], opt(inputs, 1), int(attr.get("axis", 1)), attr, params)

        @classmethod
        def _impl_v20(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            axis_in = opt(inputs, 2)
            axis = -2 if axis_in is None else int(
                constant("DFT", "axis", axis_in, params).reshape(-1)[0])
            return dft(bb, inputs[0], opt(inputs, 1), axis, attr, params)

    class STFT(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v17(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, window_in, flen_in = inputs[0], opt(inputs, 2), opt(inputs, 3)
            step = int(constant("STFT", "frame_step", inputs[1], params).reshape(-1)[0])
            shape = shape_of(bb, x)
            if len(shape) != 3:
                raise ConverterError("STFT: the signal must be [batch, length, 1 or 2]")
            dtype = dtype_of(bb, x)
            if flen_in is not None:
                flen = int(constant("STFT", "frame_length", flen_in, params).reshape(-1)[0])
            elif window_in is not None:
                flen = shape_of(bb, window_in)[0]
            else:
                flen = shape[1]
            frames = 1 + (shape[1] - flen) // step
            onesided = bool(int(attr.get("onesided", 1)))
            idx = np.arange(frames)[:, None] * step + np.arange(flen)[None, :]
            framed = R.take(x, const(idx, "int64"), axis=1)  # [B, frames, flen, c]
            re, im = split_complex(bb, framed)  # [B, frames, flen]
            if window_in is not None:
                re = R.multiply(re, window_in)
                im = None if im is None else R.multiply(im, window_in)
            out_re, out_im = dft_core(bb, bb.normalize(re),
                                      None if im is None else bb.normalize(im), flen, False,
                                      onesided, dtype)
            return stack([out_re, out_im], axis=3)

    # ---------------------------------------------------------------- control flow

    fold_cache: dict[tuple[Any, ...], Any] = {}

    def fold_body(bb: Any, graph: Any, bound: dict[str, Any], env: dict[str, Any],
                  opset: int) -> Any:
        """The subgraph with everything that only depends on shapes and constants folded
        (edgeforge's ONNX pre-pass on a model made of it), so that e.g. ``Shape → Range`` of
        a static tensor becomes a constant instead of a symbolic-length tensor."""
        import onnx
        from onnx import helper, numpy_helper

        from .prepasses import fold_constants

        def info(name: str, value: Any) -> Any:
            ty = bb.normalize(value).ty
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(str(ty.dtype)))
            return helper.make_tensor_value_info(name, elem, shape_of(bb, value))

        produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
        outer = sorted({i for n in graph.node for i in n.input} - produced - set(bound))
        values = {**{n: env[n] for n in outer if n and n in env}, **bound}
        inputs, inits, key = [], list(graph.initializer), [id(graph)]
        try:
            for name, value in values.items():
                if isinstance(value, Constant):  # e.g. a Loop's iteration number
                    array = value.value.numpy()
                    inits.append(numpy_helper.from_array(array, name))
                    key.append((name, array.tobytes(), str(array.dtype), array.shape))
                else:
                    inputs.append(info(name, value))
                    key.append((name, tuple(shape_of(bb, value)), dtype_of(bb, value)))
            cache_key = tuple(key)
            if cache_key in fold_cache:
                return fold_cache[cache_key]
            g = helper.make_graph(list(graph.node), "body", inputs, list(graph.output), inits)
            model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
            model.ir_version = onnx.IR_VERSION
            folded, _ = fold_constants(model)
            fold_cache[cache_key] = folded.graph
            return folded.graph
        except Exception:  # folding is an optimisation: keep the graph as it is
            return graph

    def run_graph(bb: Any, graph: Any, bound: dict[str, Any], params: Any, opset: int
                  ) -> list[Any]:
        """Convert a subgraph (a Scan/Loop body, a FlexAttention modifier) inline, with
        ``bound`` for its inputs and the enclosing graph's values visible; returns its
        outputs."""
        from onnx import numpy_helper

        table = fe._get_convert_map()
        outer = params[0]
        env: dict[str, Any] = dict(outer)
        graph = fold_body(bb, graph, bound, env, opset)
        for init in graph.initializer:
            env[init.name] = relax.const(numpy_helper.to_array(init))
        env.update(bound)
        scope = [env, params[1]]
        for node in graph.node:
            if node.op_type not in table:
                raise ConverterError(f"loop body operator {node.op_type} is not supported")
            attr = fe.ONNXGraphImporter._parse_attr(None, node.attribute)
            attr["tvm_custom"] = {"name": node.name, "num_outputs": len(node.output)}
            ins = fe.onnx_input([env[i] if i else None for i in node.input])
            out = table[node.op_type].get_converter(opset)(bb, ins, attr, scope)
            if isinstance(out, relax.Expr):
                out = bb.normalize(out)
            if not isinstance(out, relax.Tuple) and isinstance(out.ty, relax.TupleType):
                out = relax.Tuple([bb.emit(relax.TupleGetItem(out, i))
                                   for i in range(len(out.ty.fields))])
            if len(node.output) == 1:
                env[node.output[0]] = out[0] if isinstance(out, relax.Tuple) else out
            else:
                for i, name in enumerate(node.output):
                    if name:
                        env[name] = out[i]
        return [env[o.name] for o in graph.output]

    def scan_loop(bb: Any, body: Any, states: list[Any], scans: list[Any], in_axes: list[int],
                  in_dirs: list[int], out_axes: list[int], out_dirs: list[int], params: Any,
                  opset: int) -> list[Any]:
        names = [i.name for i in body.input]
        n_state = len(states)
        steps = {shape_of(bb, s)[a] for s, a in zip(scans, in_axes)}
        if len(steps) != 1:
            raise ConverterError("Scan: scan inputs have different lengths")
        count = steps.pop()
        per_step: list[list[Any]] = []
        for it in range(count):
            bound = dict(zip(names[:n_state], states))
            for j, (s, a, d) in enumerate(zip(scans, in_axes, in_dirs)):
                i = count - 1 - it if d else it
                bound[names[n_state + j]] = bb.emit(
                    R.squeeze(R.strided_slice(s, [a], [i], [i + 1]), [a]))
            outs = run_graph(bb, body, bound, params, opset)
            states = outs[:n_state]
            per_step.append(outs[n_state:])
        results = list(states)
        for j in range(len(per_step[0]) if per_step else 0):
            seq = [step[j] for step in per_step]
            if out_dirs[j]:
                seq = seq[::-1]
            rank = len(shape_of(bb, seq[0])) + 1
            results.append(stack(seq, axis=out_axes[j] % rank))
        return results

    class Scan(_WithOpset):  # type: ignore[misc, valid-type]
        """Scan unrolled over the static length of its scan inputs."""

        @classmethod
        def _convert(cls, bb, inputs, attr, params, opset):  # type: ignore[no-untyped-def]
            body = attr["body"]
            m = int(attr["num_scan_inputs"])
            if opset < 9:  # Scan-8: [sequence_lens], batch axis 0, scan axis 1
                lens, rest = inputs[0], [bb.normalize(i) for i in list(inputs)[1:]]
                states, scans = rest[:len(rest) - m], rest[len(rest) - m:]
                if lens is not None:
                    lv = constant("Scan", "sequence_lens", lens, params)
                    if not (lv == shape_of(bb, scans[0])[1]).all():
                        raise ConverterError("Scan: variable sequence_lens are not supported")
                dirs = list(attr.get("directions", [0] * m))
                batch = shape_of(bb, (states + scans)[0])[0]
                per_batch = []
                for bi in range(batch):
                    def row(x: Any, bi: int = bi) -> Any:
                        return bb.emit(R.squeeze(R.strided_slice(x, [0], [bi], [bi + 1]), [0]))
                    n_out = len(body.output) - len(states)
                    per_batch.append(scan_loop(bb, body, [row(s) for s in states],
                                               [row(s) for s in scans], [0] * m, dirs,
                                               [0] * n_out, [0] * n_out, params, opset))
                return relax.Tuple([stack([pb[j] for pb in per_batch], axis=0)
                                    for j in range(len(per_batch[0]))])
            ins = [bb.normalize(i) for i in inputs]
            states, scans = ins[:len(ins) - m], ins[len(ins) - m:]
            n_out = len(body.output) - len(states)
            in_axes = [int(a) % len(shape_of(bb, s))
                       for a, s in zip(attr.get("scan_input_axes", [0] * m), scans)]
            out = scan_loop(bb, body, states, scans, in_axes,
                            list(attr.get("scan_input_directions", [0] * m)),
                            list(attr.get("scan_output_axes", [0] * n_out)),
                            list(attr.get("scan_output_directions", [0] * n_out)), params, opset)
            return relax.Tuple(out) if len(out) > 1 else out[0]

    #: Longest Loop unrolled at compile time.
    max_unroll = 4096

    class Loop(_WithOpset):  # type: ignore[misc, valid-type]
        """Loop unrolled at compile time: the trip count and the initial condition must be
        constants and the body must keep the condition unchanged (``cond_out = cond_in`` or a
        constant true), i.e. a for-loop; data-dependent while-loops are refused."""

        @classmethod
        def _convert(cls, bb, inputs, attr, params, opset):  # type: ignore[no-untyped-def]
            body = attr["body"]
            trip_in, cond_in = opt(inputs, 0), opt(inputs, 1)
            if trip_in is None:
                raise ConverterError("Loop: a loop without a trip count (a while-loop) is not "
                                     "supported")
            trips = int(constant("Loop", "trip count (M)", trip_in, params).reshape(-1)[0])
            cond = True if cond_in is None else bool(
                constant("Loop", "cond", cond_in, params).reshape(-1)[0])
            b_in = [i.name for i in body.input]
            b_out = [o.name for o in body.output]
            keeps = b_out[0] == b_in[1] or any(
                n.op_type == "Identity" and list(n.input) == [b_in[1]] and n.output[0] == b_out[0]
                for n in body.node)
            if not keeps:
                from onnx import numpy_helper

                for n in body.node:
                    if n.op_type == "Constant" and n.output[0] == b_out[0]:
                        keeps = bool(numpy_helper.to_array(n.attribute[0].t).reshape(-1)[0])
            if not keeps:
                raise ConverterError("Loop: the body computes its condition (a data-dependent "
                                     "while-loop); only for-loops are unrolled")
            if not cond:
                trips = 0
            if trips > max_unroll:
                raise ConverterError(f"Loop: {trips} iterations is over the unroll limit "
                                     f"({max_unroll})")
            carried = [bb.normalize(v) for v in list(inputs)[2:]]
            n_carried = len(carried)
            if trips == 0:
                if len(b_out) - 1 > n_carried:
                    raise ConverterError("Loop: zero iterations with scan outputs")
                return relax.Tuple(carried) if len(carried) > 1 else carried[0]
            cond_v = relax.const(True, "bool")
            per_step = []
            for i in range(trips):
                bound = {b_in[0]: relax.const(np.int64(i), "int64"), b_in[1]: cond_v,
                         **dict(zip(b_in[2:], carried))}
                outs = run_graph(bb, body, bound, params, opset)
                carried = [bb.normalize(o) for o in outs[1:1 + n_carried]]
                per_step.append(outs[1 + n_carried:])
            results = list(carried)
            for j in range(len(per_step[0])):
                results.append(stack([step[j] for step in per_step], axis=0))
            return relax.Tuple(results) if len(results) > 1 else results[0]



    # ---------------------------------------------------------------- optimizers
    # (ai.onnx.preview.training: one update step; several tensors share R and T)

    def optimizer_step(bb: Any, op: str, inputs: list[Any], groups: int, step: Any) -> Any:
        """Split ``[R, T, X..., G..., (V...), (H...)]`` into per-tensor groups, run ``step``
        (in float64, as ONNX's reference mixes float32 with int64 T and float attributes) and
        return the outputs grouped by kind: all new X, then all new V/H."""
        f64 = "float64"
        r = R.astype(inputs[0], f64)
        t = R.astype(inputs[1], f64)
        rest = list(inputs)[2:]
        n = len(rest) // groups
        if not n or n * groups != len(rest):
            raise ConverterError(f"{op}: expected {groups} inputs per optimized tensor")
        outs: list[list[Any]] = []
        for i in range(n):
            parts = [rest[k * n + i] for k in range(groups)]
            new = step(r, t, *[R.astype(v, f64) for v in parts])
            outs.append([bb.normalize(R.astype(v, dtype_of(bb, parts[j])))
                         for j, v in enumerate(new)])
        return relax.Tuple([o[k] for k in range(len(outs[0])) for o in outs])

    def scalar(v: float) -> Any:
        return const(v, "float64")

    class Adagrad(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            decay, eps = float(attr.get("decay_factor", 0.0)), float(attr.get("epsilon", 0.0))
            norm = float(attr.get("norm_coefficient", 0.0))

            def step(r, t, x, g, h):  # type: ignore[no-untyped-def]
                rate = R.divide(r, R.add(scalar(1.0), R.multiply(t, scalar(decay))))
                gr = R.add(R.multiply(scalar(norm), x), g)
                h_new = bb.normalize(R.add(h, R.multiply(gr, gr)))
                x_new = R.subtract(x, R.divide(R.multiply(rate, gr),
                                               R.add(R.sqrt(h_new), scalar(eps))))
                return [x_new, h_new]

            return optimizer_step(bb, "Adagrad", inputs, 3, step)

    class Adam(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            alpha, beta = float(attr.get("alpha", 0.9)), float(attr.get("beta", 0.999))
            eps = float(attr.get("epsilon", 0.0))
            norm = float(attr.get("norm_coefficient", 0.0))
            post = float(attr.get("norm_coefficient_post", 0.0))

            def step(r, t, x, g, v, h):  # type: ignore[no-untyped-def]
                gr = bb.normalize(R.add(R.multiply(scalar(norm), x), g))
                v_new = bb.normalize(R.add(R.multiply(scalar(alpha), v),
                                           R.multiply(scalar(1 - alpha), gr)))
                h_new = bb.normalize(R.add(R.multiply(scalar(beta), h),
                                           R.multiply(scalar(1 - beta), R.multiply(gr, gr))))
                corrected = R.divide(
                    R.multiply(r, R.sqrt(R.subtract(scalar(1.0), R.power(scalar(beta), t)))),
                    R.subtract(scalar(1.0), R.power(scalar(alpha), t)))
                rate = R.where(R.greater(t, scalar(0.0)), corrected, r)
                x_new = R.subtract(x, R.multiply(rate, R.divide(
                    v_new, R.add(R.sqrt(h_new), scalar(eps)))))
                return [R.multiply(scalar(1 - post), x_new), v_new, h_new]

            return optimizer_step(bb, "Adam", inputs, 4, step)

    class Momentum(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            alpha, beta = float(attr["alpha"]), float(attr["beta"])
            norm = float(attr["norm_coefficient"])
            mode = text(attr, "mode", "standard")
            if mode not in ("standard", "nesterov"):
                raise ConverterError(f"Momentum: mode {mode!r} is not supported")

            def step(r, t, x, g, v):  # type: ignore[no-untyped-def]
                gr = bb.normalize(R.add(R.multiply(scalar(norm), x), g))
                b = R.where(R.greater(t, scalar(0.0)), scalar(beta), scalar(1.0))
                v_new = bb.normalize(R.add(R.multiply(scalar(alpha), v), R.multiply(b, gr)))
                move = v_new if mode == "standard" else R.add(gr, R.multiply(scalar(alpha),
                                                                             v_new))
                return [R.subtract(x, R.multiply(r, move)), v_new]

            return optimizer_step(bb, "Momentum", inputs, 3, step)

    # ---------------------------------------------------------------- classic ML (ai.onnx.ml)

    def ml_attr_array(attr: dict[str, Any], *names: str) -> Any:
        """The first present attribute of ``names`` as a numpy array (lists or tensors)."""
        from onnx import numpy_helper

        for name in names:
            v = attr.get(name)
            if v is None:
                continue
            if hasattr(v, "data_type"):  # a TensorProto
                return numpy_helper.to_array(v)
            if isinstance(v, (tuple, list)) and v and isinstance(v[0], bytes):
                return np.array([x.decode() for x in v], dtype=object)
            return np.asarray(v)
        return None

    def as_float(bb: Any, x: Any, rows: bool = False) -> tuple[Any, str]:
        """``x`` in its float dtype (float32 for other dtypes), a 1-D ``x`` as one row when
        ``rows``; and that dtype."""
        dtype = dtype_of(bb, x)
        cd = dtype if dtype in ("float32", "float64") else "float32"
        if cd != dtype:
            x = R.astype(x, cd)
        if rows and len(shape_of(bb, x)) == 1:
            x = R.reshape(x, (1, -1))
        return bb.normalize(x), cd

    def post_transform(op: str, y: Any, how: Any) -> Any:
        how = how.decode() if isinstance(how, bytes) else how
        if how in (None, 0, "NONE"):
            return y
        if how in (1, "SOFTMAX"):
            return R.nn.softmax(y, axis=-1)
        if how in (2, "LOGISTIC"):
            return R.sigmoid(y)
        raise ConverterError(f"{op}: post_transform {how!r} is not supported")

    class Binarizer(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            dtype = dtype_of(bb, x)
            return R.astype(R.greater(x, const(float(attr.get("threshold", 0.0)), dtype)), dtype)

    class ArrayFeatureExtractor(base):  # type: ignore[misc, valid-type]
        """``X[..., indices]`` (a 1-D X gives one row, as onnxruntime does)."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, idx = inputs[0], inputs[1]
            shape = shape_of(bb, x)
            n = int(np.prod(shape_of(bb, idx)))
            idx = R.reshape(idx, (n,))
            if dtype_of(bb, idx) != "int64":
                idx = R.astype(idx, "int64")
            y = R.take(x, idx, axis=len(shape) - 1)
            return R.reshape(y, (1, n)) if len(shape) == 1 else y

    class Scaler(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            xc, cd = as_float(bb, inputs[0])
            offset = ml_attr_array(attr, "offset")
            scale = ml_attr_array(attr, "scale")
            if offset is not None:
                xc = R.subtract(xc, const(offset, cd))
            if scale is not None:
                xc = R.multiply(xc, const(scale, cd))
            return xc

    class Normalizer(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, cd = as_float(bb, inputs[0], rows=True)
            norm = text(attr, "norm", "MAX")
            if norm == "MAX":
                div = R.max(R.abs(x), axis=1, keepdims=True)
            elif norm == "L1":
                div = R.sum(R.abs(x), axis=1, keepdims=True)
            elif norm == "L2":
                div = R.sqrt(R.sum(R.multiply(x, x), axis=1, keepdims=True))
            else:
                raise ConverterError(f"Normalizer: norm {norm!r} is not supported")
            tiny = const(1e-30, cd)
            return R.divide(x, R.where(R.less(div, tiny), tiny, div))  # NaN rows stay NaN

    class LinearRegressor(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, cd = as_float(bb, inputs[0], rows=True)
            targets = int(attr.get("targets", 1))
            coef = ml_attr_array(attr, "coefficients").reshape(targets, -1).T
            y = R.matmul(x, const(coef, cd))
            intercepts = ml_attr_array(attr, "intercepts")
            if intercepts is not None:
                y = R.add(y, const(intercepts, cd))
            return post_transform("LinearRegressor", y, attr.get("post_transform"))

    class LabelEncoder(base):  # type: ignore[misc, valid-type]
        """Numeric keys and values (strings cannot cross the runtime boundary): an exact
        comparison with each key, the default elsewhere."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            keys = ml_attr_array(attr, "keys_tensor", "keys_floats", "keys_int64s",
                                 "keys_strings")
            values = ml_attr_array(attr, "values_tensor", "values_floats", "values_int64s",
                                   "values_strings")
            if keys is None or values is None:
                raise ConverterError("LabelEncoder: keys and values are required")
            if keys.dtype == object or values.dtype == object:
                raise ConverterError("LabelEncoder: string keys or values are not supported")
            if "default_tensor" in attr:
                default = ml_attr_array(attr, "default_tensor").reshape(-1)[0]
            elif "values_floats" in attr:
                default = np.float32(attr.get("default_float", -0.0))
            else:
                default = np.int64(attr.get("default_int64", -1))
            if "values_floats" in attr:
                values = values.astype(np.float32)
            elif "values_int64s" in attr:
                values = values.astype(np.int64)
            out_dtype = str(values.dtype)
            xdtype = dtype_of(bb, x)
            keys = keys.astype(xdtype)
            y: Any = const(default, out_dtype)
            # the first key wins on duplicates (a dict built in order keeps the last: reverse)
            for k, v in reversed(list(zip(keys.tolist(), values.tolist()))):
                hit = R.equal(x, const(k, xdtype))
                if isinstance(k, float) and math.isnan(k):
                    hit = R.isnan(x)
                y = R.where(hit, const(v, out_dtype), y)
            return R.broadcast_to(y, shape_of(bb, x)) if isinstance(y, Constant) else y

    #: ai.onnx.ml TreeEnsemble node modes.
    leq, lt, gte, gt, eq, neq, member, leaf = range(8)
    legacy_modes = {"BRANCH_LEQ": leq, "BRANCH_LT": lt, "BRANCH_GTE": gte, "BRANCH_GT": gt,
                    "BRANCH_EQ": eq, "BRANCH_NEQ": neq, "LEAF": leaf}

    def tree_traversal(bb: Any, op: str, x: Any, tables: dict[str, Any], roots: list[int],
                       weights: Any, has: Any, aggregate: str, base_values: Any,
                       how: Any) -> Any:
        """Tree ensemble inference by traversal: one index per (sample, tree), moved to the
        true/false child ``depth`` times (leaves point at themselves), then the leaves'
        per-target weights (``weights``/``has``: [nodes, targets]) aggregated over trees."""
        x, cd = as_float(bb, x, rows=True)
        n, n_trees = shape_of(bb, x)[0], len(roots)
        modes = tables["modes"]
        true_ids, false_ids = tables["true"], tables["false"]
        depth = 0
        for r in roots:  # longest root-to-leaf path (the tables are acyclic)
            todo = [(r, 0)]
            while todo:
                i, d = todo.pop()
                if modes[i] == leaf:
                    depth = max(depth, d)
                    continue
                if d > len(modes):
                    raise ConverterError(f"{op}: the trees contain a cycle")
                todo += [(int(true_ids[i]), d + 1), (int(false_ids[i]), d + 1)]
        members = tables.get("members")
        mtt = tables.get("missing_true")
        used_modes = sorted({int(m) for m in modes if m != leaf})
        idx: Any = R.broadcast_to(const(np.asarray(roots, "int64").reshape(1, n_trees),
                                        "int64"), (n, n_trees))
        feat_t, split_t = const(tables["features"], "int64"), const(tables["splits"], cd)
        mode_t, true_t, false_t = (const(modes, "int64"), const(true_ids, "int64"),
                                   const(false_ids, "int64"))
        for _ in range(depth):
            idx = bb.normalize(idx)
            xv = bb.normalize(R.gather_elements(x, R.take(feat_t, idx, axis=0), axis=1))
            split = bb.normalize(R.take(split_t, idx, axis=0))
            compare = {leq: R.less_equal, lt: R.less, gte: R.greater_equal, gt: R.greater,
                       eq: R.equal, neq: R.not_equal}
            decision: Any = None
            for m in used_modes:
                if m == member:
                    sets = R.take(const(members, cd), idx, axis=0)  # [n, trees, max set]
                    d = R.max(R.astype(R.equal(R.expand_dims(xv, 2), sets), "int8"), axis=2)
                    d = R.astype(d, "bool")
                else:
                    d = compare[m](xv, split)
                if decision is None:
                    decision = d
                else:
                    decision = R.where(R.equal(R.take(mode_t, idx, axis=0),
                                               const(m, "int64")), d, decision)
            if mtt is not None and mtt.any():
                missing = R.logical_and(R.isnan(xv),
                                        R.take(const(mtt, "bool"), idx, axis=0))
                decision = R.logical_or(decision, missing)
            idx = R.where(decision, R.take(true_t, idx, axis=0), R.take(false_t, idx, axis=0))
        idx = bb.normalize(idx)
        contrib = bb.normalize(R.take(const(weights, cd), idx, axis=0))  # [n, trees, targets]
        if aggregate in ("SUM", "AVERAGE"):
            y = R.sum(contrib, axis=1)
            if aggregate == "AVERAGE":
                y = R.divide(y, const(float(n_trees), cd))
        elif aggregate in ("MIN", "MAX"):
            hit = R.take(const(has, "bool"), idx, axis=0)
            info = np.finfo(cd)
            init = const(info.max if aggregate == "MIN" else info.min, cd)
            masked = R.where(hit, contrib, init)
            y = R.min(masked, axis=1) if aggregate == "MIN" else R.max(masked, axis=1)
        else:
            raise ConverterError(f"{op}: aggregate_function {aggregate!r} is not supported")
        if base_values is not None and len(base_values):
            y = R.add(y, const(np.asarray(base_values).astype(cd), cd))
        return post_transform(op, y, how)

    class TreeEnsemble(base):  # type: ignore[misc, valid-type]
        """ai.onnx.ml TreeEnsemble (opset 5): leaves are appended after the nodes."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            op = "TreeEnsemble"
            splits = ml_attr_array(attr, "nodes_splits")
            n_nodes = len(splits)
            lw = ml_attr_array(attr, "leaf_weights")
            lt_ids = np.asarray(attr["leaf_targetids"], "int64")
            n_leaves, n_targets = len(lw), int(attr["n_targets"])

            def child(ids: str, leafs: str) -> Any:
                is_leaf = np.asarray(attr[leafs], "int64").astype(bool)
                c = np.asarray(attr[ids], "int64")
                return np.where(is_leaf, c + n_nodes, c)

            k = n_nodes + n_leaves
            ids = np.arange(k, dtype="int64")
            true_ids = np.concatenate([child("nodes_truenodeids", "nodes_trueleafs"),
                                       ids[n_nodes:]])
            false_ids = np.concatenate([child("nodes_falsenodeids", "nodes_falseleafs"),
                                        ids[n_nodes:]])
            modes = np.concatenate([ml_attr_array(attr, "nodes_modes").astype("int64"),
                                    np.full(n_leaves, leaf, "int64")])
            features = np.concatenate([np.asarray(attr["nodes_featureids"], "int64"),
                                       np.zeros(n_leaves, "int64")])
            splits = np.concatenate([np.nan_to_num(splits.astype(np.float64)),
                                     np.zeros(n_leaves)])
            mtt = attr.get("nodes_missing_value_tracks_true")
            mtt = None if mtt is None else np.concatenate(
                [np.asarray(mtt, "int64").astype(bool), np.zeros(n_leaves, bool)])
            members = None
            if (modes == member).any():
                values = list(ml_attr_array(attr, "membership_values").astype(np.float64))
                sets: list[list[float]] = [[] for _ in range(k)]
                for i in range(n_nodes):  # each member node takes the next NaN-ended run
                    if modes[i] == member:
                        while values and not np.isnan(values[0]):
                            sets[i].append(values.pop(0))
                        if values:
                            values.pop(0)
                width = max(1, max(len(v) for v in sets))
                members = np.full((k, width), np.nan)
                for i, v in enumerate(sets):
                    members[i, :len(v)] = v
            weights = np.zeros((k, n_targets))
            has = np.zeros((k, n_targets), bool)
            for i in range(n_leaves):
                weights[n_nodes + i, lt_ids[i]] += lw[i]
                has[n_nodes + i, lt_ids[i]] = True
            roots = []
            for r in attr["tree_roots"]:
                r = int(r)
                degenerate = (attr["nodes_trueleafs"][r] and attr["nodes_falseleafs"][r]
                              and attr["nodes_truenodeids"][r] == attr["nodes_falsenodeids"][r])
                roots.append(n_nodes + r if degenerate else r)
            aggregate = ["AVERAGE", "SUM", "MIN", "MAX"][int(attr.get("aggregate_function", 1))]
            how = int(attr.get("post_transform", 0))
            if how not in (0, 1, 2):
                raise ConverterError(f"{op}: post_transform {how} is not supported")
            tables = {"features": features, "splits": splits, "modes": modes,
                      "true": true_ids, "false": false_ids, "members": members,
                      "missing_true": mtt}
            return tree_traversal(bb, op, inputs[0], tables, roots, weights, has, aggregate,
                                  None, how)

    def legacy_forest(op: str, attr: dict[str, Any], kind: str, n_out: int
                      ) -> tuple[dict[str, Any], list[int], Any, Any]:
        """The traversal tables, roots and per-node weights [nodes, n_out] of the pre-opset-5
        tree ensembles (node ids per tree; ``kind``: "target" or "class" weights; a leaf may
        carry several)."""
        tree_ids = np.asarray(attr["nodes_treeids"], "int64")
        node_ids = np.asarray(attr["nodes_nodeids"], "int64")
        index = {(int(t), int(nid)): i for i, (t, nid) in enumerate(zip(tree_ids, node_ids))}
        modes_s = [m.decode() if isinstance(m, bytes) else m for m in attr["nodes_modes"]]
        if any(m not in legacy_modes for m in modes_s):
            raise ConverterError(f"{op}: node modes {sorted(set(modes_s))} are not supported")
        modes = np.asarray([legacy_modes[m] for m in modes_s], "int64")
        k = len(modes)

        def child(name: str) -> Any:
            ids = np.asarray(attr.get(name, [0] * k), "int64")
            return np.asarray([index[(int(t), int(c))] if modes[i] != leaf else i
                               for i, (t, c) in enumerate(zip(tree_ids, ids))], "int64")

        true_ids, false_ids = child("nodes_truenodeids"), child("nodes_falsenodeids")
        children = {int(c) for i in range(k) if modes[i] != leaf
                    for c in (true_ids[i], false_ids[i])}
        roots = [i for i in range(k) if i not in children]
        splits = ml_attr_array(attr, "nodes_values_as_tensor", "nodes_values")
        mtt = attr.get("nodes_missing_value_tracks_true")
        w = ml_attr_array(attr, f"{kind}_weights_as_tensor", f"{kind}_weights")
        weights = np.zeros((k, n_out))
        has = np.zeros((k, n_out), bool)
        for t, nid, oid, v in zip(attr[f"{kind}_treeids"], attr[f"{kind}_nodeids"],
                                  attr[f"{kind}_ids"], w):
            weights[index[(int(t), int(nid))], int(oid)] += v
            has[index[(int(t), int(nid))], int(oid)] = True
        tables = {"features": np.asarray(attr["nodes_featureids"], "int64"),
                  "splits": np.asarray(splits, np.float64), "modes": modes,
                  "true": true_ids, "false": false_ids,
                  "missing_true": None if mtt is None else np.asarray(mtt).astype(bool)}
        return tables, roots, weights, has

    class TreeEnsembleRegressor(base):  # type: ignore[misc, valid-type]
        """ai.onnx.ml TreeEnsembleRegressor (opsets 1-3, what skl2onnx writes)."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            op = "TreeEnsembleRegressor"
            tables, roots, weights, has = legacy_forest(op, attr, "target",
                                                        int(attr.get("n_targets", 1)))
            base_values = ml_attr_array(attr, "base_values_as_tensor", "base_values")
            return tree_traversal(bb, op, inputs[0], tables, roots, weights, has,
                                  text(attr, "aggregate_function", "SUM"), base_values,
                                  attr.get("post_transform"))

    class TreeEnsembleClassifier(base):  # type: ignore[misc, valid-type]
        """ai.onnx.ml TreeEnsembleClassifier (opsets 1-3) with integer class labels (string
        labels cannot cross the runtime boundary): summed class weights, ONNX's binary rule
        (one weighted class: the other's score is 1 - p, or -p before a transform), post
        transform, argmax label, as ONNX's reference (onnxruntime leaves a class that no leaf
        on a sample's paths weights out of its argmax: labels differ when every weighted class
        scores below 0). Outputs (label int64 [N], scores float32 [N, classes])."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            op = "TreeEnsembleClassifier"
            if "classlabels_int64s" not in attr:
                raise ConverterError(f"{op}: string class labels are not supported (use "
                                     "integer labels)")
            labels = np.asarray(attr["classlabels_int64s"], "int64")
            n = len(labels)
            tables, roots, weights, has = legacy_forest(op, attr, "class", max(n, 1))
            base_values = ml_attr_array(attr, "base_values_as_tensor", "base_values")
            scores = bb.normalize(tree_traversal(bb, op, inputs[0], tables, roots, weights,
                                                 has, "SUM", base_values, None))
            scores = bb.normalize(R.astype(scores, "float32"))
            how = text(attr, "post_transform", "NONE")
            if len(set(attr["class_ids"])) == 1:  # binary
                first = R.strided_slice(scores, [1], [0], [1])
                other = (R.subtract(const(1.0, "float32"), first) if how in ("NONE", "PROBIT")
                         else R.negative(first))
                scores = bb.normalize(R.concat([other, first], axis=1))
                if n == 1 and int(labels[0]) != 1:
                    raise ConverterError(f"{op}: a single class label must be 1")
                labels = np.asarray([0, 1], "int64") if n == 1 else labels
            scores = bb.normalize(post_transform(op, scores, how))
            best = R.argmax(scores, axis=1)
            return relax.Tuple([bb.normalize(R.take(const(labels, "int64"), best, axis=0)),
                                scores])

    table = {
        "BitCast": BitCast, "BlackmanWindow": BlackmanWindow,
        "CausalConvWithState": CausalConvWithState, "CenterCropPad": CenterCropPad,
        "Col2Im": Col2Im, "ConvInteger": ConvInteger, "DFT": DFT, "DeformConv": DeformConv, "Det": Det,
        "DynamicQuantizeLSTM": DynamicQuantizeLSTM, "FlexAttention": FlexAttention,
        "HammingWindow": HammingWindow, "HannWindow": HannWindow,
        "LinearAttention": LinearAttention, "Loop": Loop, "MelWeightMatrix": MelWeightMatrix,
        "QLinearConv": QLinearConv, "QLinearMatMul": QLinearMatMul,
        "ReverseSequence": ReverseSequence, "STFT": STFT, "Scan": Scan, "SwiGLU": SwiGLU,
        "TensorScatter": TensorScatter, "TfIdfVectorizer": TfIdfVectorizer,
        "Adagrad": Adagrad, "Adam": Adam, "Momentum": Momentum,
        "ArrayFeatureExtractor": ArrayFeatureExtractor, "Binarizer": Binarizer,
        "LabelEncoder": LabelEncoder, "LinearRegressor": LinearRegressor,
        "Normalizer": Normalizer, "Scaler": Scaler, "TreeEnsemble": TreeEnsemble,
        "TreeEnsembleRegressor": TreeEnsembleRegressor,
        "TreeEnsembleClassifier": TreeEnsembleClassifier,
    }
    assert set(table) == OPS
    return table
