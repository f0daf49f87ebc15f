"""ONNX operator converters that TVM 0.27's relax frontend lacks, registered by edgeforge.

TVM's converter table is built by ``onnx_frontend._get_convert_map()``; :func:`install` wraps
that function so the table also holds the converters below. No TVM fork: the frontend finds
them like its own. ``EXTRA_OPS`` is importable without TVM, so the pre-flight operator check
(:mod:`compiler.validation`) knows about them before any compile time is spent.

Recurrent layers (LSTM, GRU, RNN) are unrolled over the (static) sequence length: the input
projection of all time steps is one matmul, each step adds the recurrent matmul and the gates.
"""

from __future__ import annotations

from typing import Any

from . import converters_extra

__all__ = ["EXTRA_OPS", "install", "materialize_zero_size", "stack"]

EXTRA_OPS = frozenset({"LSTM", "GRU", "RNN", "Celu", "Swish", "CumProd", "LpNormalization",
                       "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss",
                       "RotaryEmbedding"}) | converters_extra.OPS
#: Operators TVM converts, whose converters edgeforge wraps to cover more of the ONNX spec:
#: ai.onnx Attention (opset 23+: heads from the input shapes, GQA, causal, masks, past KV,
#: sliding windows, nonpad_kv_seqlen, softcap, softmax_precision),
#: LayerNormalization (the Mean and InvStdDev outputs), Resize/Upsample (axes, antialias,
#: keep_aspect_ratio_policy, half_pixel_symmetric, scales that do not divide the size).
WRAPPED_OPS = frozenset({"Clip", "Attention", "LayerNormalization", "Resize", "Upsample", "OneHot", "Pow",
                         "Compress", "IsInf", "BitShift", "Mod", "RMSNormalization",
                         "BatchNormalization", "ReduceMax", "ReduceMin", "Softmax", "MatMul",
                         "Elu", "NonMaxSuppression", "EyeLike", "SpaceToDepth",
                         "ConvTranspose", "MaxPool", "Unsqueeze", "OptionalHasElement",
                         "MaxUnpool", "QuantizeLinear", "DequantizeLinear", "Reshape",
                         "Split", "Conv", "TopK", "RoiAlign", "GatherND"})

_installed: dict[str, bool] = {}


def install() -> None:
    """Register the extra converters with TVM's ONNX frontend (idempotent)."""
    if _installed.get("done"):
        return
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    original = fe._get_convert_map
    extra = {**_converters(fe.OnnxOpConverter), **converters_extra.converters(fe.OnnxOpConverter)}
    wrapped = _wrappers(fe.OnnxOpConverter, original())

    def convert_map() -> dict[str, Any]:
        table = original()
        for name, conv in extra.items():
            table.setdefault(name, conv)
        table.update(wrapped)
        return table

    fe._get_convert_map = convert_map
    _installed["done"] = True
    _installed["original"] = original


def rewrite_functions(mod: Any, mutator: Any) -> Any:
    """``mod`` with every relax function visited by ``mutator`` (a ``PyExprMutator`` built on
    ``mod``)."""
    from tvm import relax

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def replace_calls(mod: Any, plan: Any, replace: Any) -> tuple[Any, int]:
    """``mod`` with the calls chosen by ``plan`` replaced, and what they left unused removed;
    (module, number of calls replaced). ``plan(func)`` maps calls of a relax function to what
    ``replace(mutator, p)`` needs to build each one's replacement (visiting its arguments with
    ``mutator.visit_expr``, emitting with ``mutator.builder_``). ``mod`` itself when nothing is
    chosen."""
    from tvm import relax
    from tvm.relax import PyExprMutator, expr_functor

    todo: dict = {}
    for _, func in mod.functions.items():
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            todo.update(plan(func))
    if not todo:
        return mod, 0
    count = 0

    @expr_functor.mutator
    class _Replace(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call):  # type: ignore[no-untyped-def]
            nonlocal count
            p = next((v for k, v in todo.items() if k.same_as(call)), None)
            if p is None:
                return super().visit_call_(call)
            count += 1
            return replace(self, p)

    out = rewrite_functions(mod, _Replace(mod))
    return relax.transform.DeadCodeElimination()(out), count


def nhwc_conv_weight(call: Any) -> list[int] | None:
    """The OHWI weight shape of ``call`` when it is a ``relax.nn.conv2d`` with NHWC data, a
    constant float32 weight, float32 data and output and dilation 1 (what the NHWC rewrites of
    ``compiler.winograd`` and ``compiler.expand_dw`` start from); None otherwise."""
    from tvm.ir import Call
    from tvm.ir import GenericConst as Constant

    if not isinstance(call, Call) or getattr(call.op, "name", "") != "relax.nn.conv2d":
        return None
    at = call.attrs
    if (str(at.data_layout) != "NHWC" or str(at.kernel_layout) != "OHWI"
            or str(at.out_layout) not in ("NHWC", "") or [int(d) for d in at.dilation] != [1, 1]
            or (at.out_dtype is not None and str(at.out_dtype) not in ("", "float32", "void"))):
        return None
    x, w = call.args
    if not isinstance(w, Constant) or str(w.value.dtype) != "float32" \
            or str(getattr(x.ty, "dtype", "")) != "float32":
        return None
    return [int(d) for d in w.value.shape]


def materialize_zero_size(mod: Any) -> Any:
    """Replace every zero-size tensor (a constant, or an operator call whose static shape has a
    0) by an uninitialised ``R.builtin.alloc_tensor`` of that shape: there is nothing to
    compute or to store. Without this, ``FoldConstant`` turns them into zero-size constants,
    and TVM 0.27's loader rejects an exported library holding one whose first dimension is not
    0 ("Invalid DLTensor file format": it checks the empty read only when ``shape[0] == 0``)."""
    from tvm import ir, relax
    from tvm.ir.prim.expr import IntImm
    from tvm.relax.expr_functor import PyExprMutator, mutator
    from tvm.relax.op.builtin import alloc_tensor

    def empty(ty: Any) -> Any:
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            return None
        dims = getattr(ty.shape, "values", None)
        if dims is None or not any(isinstance(d, IntImm) and int(d) == 0 for d in dims):
            return None
        if not all(isinstance(d, IntImm) for d in dims):
            return None
        return alloc_tensor(relax.ShapeExpr([int(d) for d in dims]), str(ty.dtype), 0)

    @mutator
    class ZeroSize(PyExprMutator):  # type: ignore[misc]
        def visit_generic_const_(self, op):  # type: ignore[no-untyped-def]
            alloc = empty(op.ty)
            return op if alloc is None else alloc

        def visit_call_(self, op):  # type: ignore[no-untyped-def]
            if isinstance(op.op, ir.Op) and op.op.name != "relax.builtin.alloc_tensor":
                alloc = empty(op.ty)
                if alloc is not None:
                    return alloc
            return super().visit_call_(op)

    return rewrite_functions(mod, ZeroSize(mod))


def stack(tensors: Any, axis: int = 0) -> Any:
    """``R.stack(tensors, axis)`` spelled ``R.concat`` of ``R.expand_dims``: what every converter
    here uses. TVM 0.27's layout inference for ``relax.stack`` (``InferLayoutStack``) names the
    new axis by inserting "S" into the input's layout ("AB" -> "SAB"), a layout that matches no
    initial layout, so ``ConvertLayout`` fails on any module that holds a stack ("Index -1 out of
    bounds 3", "tvm::String index out of bounds"), even one whose inputs keep their layout; the
    CPU build then gives up NHWC for the whole model (ddddocr-old: its DynamicQuantizeLSTM
    stacks the hidden states). ``expand_dims`` and ``concat`` infer layouts correctly and
    legalize to the same copy."""
    from tvm.relax import op as R

    return R.concat([R.expand_dims(t, axis) for t in tensors], axis=axis)


def tvm_only_convert_map() -> Any:
    """TVM's own converter table function (for comparisons against raw TVM), or None when
    :func:`install` has not run in this process."""
    return _installed.get("original")


class ConverterError(ValueError):
    """The node uses a variant of the operator the converter does not implement."""


def _converters(base: type) -> dict[str, type]:
    from tvm import relax
    from tvm.ir import GenericConst as Constant
    from tvm.relax import op as R
    from tvm.relax.frontend.onnx.onnx_frontend import get_constant

    def const(value: float, dtype: str) -> Any:
        return relax.const(value, dtype)

    def static_shape(x: Any) -> list[int]:
        return [int(d) for d in x.ty.shape.values]

    def take(x: Any, i: int, axis: int = 0) -> Any:
        return R.squeeze(R.strided_slice(x, [axis], [i], [i + 1]), [axis])

    def opt(inputs: list[Any], i: int) -> Any:
        return inputs[i] if len(inputs) > i and inputs[i] is not None else None

    def activation(spec: tuple[str, float | None, float | None], x: Any, dtype: str) -> Any:
        name, alpha, beta = spec
        name = name.lower()
        if name == "sigmoid":
            return R.sigmoid(x)
        if name == "tanh":
            return R.tanh(x)
        if name == "relu":
            return R.nn.relu(x)
        if name == "hardsigmoid":
            a, b = (0.2 if alpha is None else alpha), (0.5 if beta is None else beta)
            return R.clip(R.add(R.multiply(const(a, dtype), x), const(b, dtype)), 0, 1)
        if name == "leakyrelu":
            return R.nn.leakyrelu(x, 0.01 if alpha is None else alpha)
        raise ConverterError(f"recurrent activation {name!r} is not supported")

    def rnn_common(bb: Any, inputs: list[Any], attr: dict[str, Any], gates: int, kind: str,
                   params: Any = None):  # type: ignore[no-untyped-def]
        x, w, r = (bb.normalize(i) for i in inputs[:3])
        b, seq_lens = opt(inputs, 3), opt(inputs, 4)
        if seq_lens is not None:
            seq_lens = get_constant(seq_lens, params)
        if seq_lens is not None:
            if not isinstance(seq_lens, Constant):
                raise ConverterError(f"{kind}: sequence_lens must be a constant")
            lens = seq_lens.value.numpy()
            seq_axis = 1 if attr.get("layout", 0) else 0
            if not (lens == static_shape(x)[seq_axis]).all():
                raise ConverterError(f"{kind}: variable sequence_lens are not supported")
        if attr.get("clip") is not None:
            raise ConverterError(f"{kind}: the clip attribute is not supported")
        layout = int(attr.get("layout", 0))
        if layout == 1:
            x = bb.normalize(R.permute_dims(x, [1, 0, 2]))
        seq, batch, _ = static_shape(x)
        dirs, gh, _ = static_shape(w)
        hidden = gh // gates
        direction = attr.get("direction", "forward")
        if isinstance(direction, bytes):
            direction = direction.decode()
        dtype = x.ty.dtype
        return x, w, r, b, layout, seq, batch, dirs, hidden, direction, dtype

    def run_directions(seq: int, dirs: int, direction: str, step_fn):  # type: ignore[no-untyped-def]
        per_dir = []
        for d in range(dirs):
            reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
            order = range(seq - 1, -1, -1) if reverse else range(seq)
            per_dir.append(step_fn(d, list(order)))
        return per_dir

    def finish(per_dir: list[tuple[list[Any], list[Any]]], seq: int, layout: int) -> list[Any]:
        """per_dir: [(h per time step in time order, [final states])] → Y, Y_h(, Y_c)."""
        ys = []
        for hs, _ in per_dir:
            ys.append(stack(hs, axis=0))  # [seq, batch, H]
        y = stack(ys, axis=1)  # [seq, dirs, batch, H]
        finals = []
        for k in range(len(per_dir[0][1])):
            finals.append(stack([states[k] for _, states in per_dir], axis=0))
        if layout == 1:
            y = R.permute_dims(y, [2, 0, 1, 3])
            finals = [R.permute_dims(f, [1, 0, 2]) for f in finals]
        return [y, *finals]

    def initial(inputs: list[Any], i: int, d: int, batch: int, hidden: int, dtype: str,
                layout: int) -> Any:
        v = opt(inputs, i)
        if v is None:
            return R.zeros((batch, hidden), dtype)
        if layout == 1:
            v = R.permute_dims(v, [1, 0, 2])
        return take(v, d)

    def projections(x: Any, w: Any, r: Any, b: Any, d: int, seq: int, batch: int, gh: int,
                    dtype: str) -> tuple[Any, Any, Any | None]:
        wd, rd = take(w, d), take(r, d)  # [G*H, in], [G*H, H]
        xw = R.matmul(R.reshape(x, (seq * batch, -1)), R.permute_dims(wd, [1, 0]))
        bias_r = None
        if b is not None:
            bd = take(b, d)  # [2*G*H]
            bw = R.strided_slice(bd, [0], [0], [gh])
            bias_r = R.strided_slice(bd, [0], [gh], [2 * gh])
            xw = R.add(xw, bw)
        xw = R.reshape(xw, (seq, batch, gh))
        return xw, R.permute_dims(rd, [1, 0]), bias_r

    def acts(attr: dict[str, Any], n: int, defaults: list[str], d: int):  # type: ignore[no-untyped-def]
        names = [a.decode() if isinstance(a, bytes) else a for a in attr.get("activations", [])]
        names = names[d * n:(d + 1) * n] if len(names) >= (d + 1) * n else defaults
        alphas = list(attr.get("activation_alpha", [])) or [None] * len(names)
        betas = list(attr.get("activation_beta", [])) or [None] * len(names)
        return [(names[i], alphas[i] if i < len(alphas) else None,
                 betas[i] if i < len(betas) else None) for i in range(n)]

    class LSTM(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, w, r, b, layout, seq, batch, dirs, hidden, direction, dtype = rnn_common(
                bb, inputs, attr, 4, "LSTM", params)
            if int(attr.get("input_forget", 0)):
                raise ConverterError("LSTM: input_forget=1 is not supported")
            peep = opt(inputs, 7)

            def step_fn(d: int, order: list[int]):  # type: ignore[no-untyped-def]
                xw, rt, bias_r = projections(x, w, r, b, d, seq, batch, 4 * hidden, dtype)
                f_act, g_act, h_act = acts(attr, 3, ["Sigmoid", "Tanh", "Tanh"], d)
                h = initial(inputs, 5, d, batch, hidden, dtype, layout)
                c = initial(inputs, 6, d, batch, hidden, dtype, layout)
                pd = take(peep, d) if peep is not None else None
                hs: dict[int, Any] = {}
                for t in order:
                    g = R.add(take(xw, t), R.matmul(h, rt))
                    if bias_r is not None:
                        g = R.add(g, bias_r)
                    g = bb.emit(g)
                    i_, o_, f_, c_ = (R.strided_slice(g, [1], [k * hidden], [(k + 1) * hidden])
                                      for k in range(4))
                    if pd is not None:
                        p_i, p_o, p_f = (R.strided_slice(pd, [0], [k * hidden], [(k + 1) * hidden])
                                         for k in range(3))
                        i_ = R.add(i_, R.multiply(p_i, c))
                        f_ = R.add(f_, R.multiply(p_f, c))
                    i_ = activation(f_act, i_, dtype)
                    f_ = activation(f_act, f_, dtype)
                    c = bb.emit(R.add(R.multiply(f_, c), R.multiply(i_, activation(g_act, c_, dtype))))
                    if pd is not None:
                        o_ = R.add(o_, R.multiply(p_o, c))
                    o_ = activation(f_act, o_, dtype)
                    h = bb.emit(R.multiply(o_, activation(h_act, c, dtype)))
                    hs[t] = h
                return [hs[t] for t in range(seq)], [h, c]

            return relax.Tuple(finish(run_directions(seq, dirs, direction, step_fn), seq, layout))

    class GRU(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, w, r, b, layout, seq, batch, dirs, hidden, direction, dtype = rnn_common(
                bb, inputs, attr, 3, "GRU", params)
            lbr = int(attr.get("linear_before_reset", 0))

            def step_fn(d: int, order: list[int]):  # type: ignore[no-untyped-def]
                xw, rt, bias_r = projections(x, w, r, b, d, seq, batch, 3 * hidden, dtype)
                f_act, g_act = acts(attr, 2, ["Sigmoid", "Tanh"], d)
                h = initial(inputs, 5, d, batch, hidden, dtype, layout)
                rz_t = R.strided_slice(rt, [1], [0], [2 * hidden])
                rh_t = R.strided_slice(rt, [1], [2 * hidden], [3 * hidden])
                rb_zr = rb_h = None
                if bias_r is not None:
                    rb_zr = R.strided_slice(bias_r, [0], [0], [2 * hidden])
                    rb_h = R.strided_slice(bias_r, [0], [2 * hidden], [3 * hidden])
                hs: dict[int, Any] = {}
                for t in order:
                    xt = take(xw, t)
                    x_zr = R.strided_slice(xt, [1], [0], [2 * hidden])
                    x_h = R.strided_slice(xt, [1], [2 * hidden], [3 * hidden])
                    zr = R.add(x_zr, R.matmul(h, rz_t))
                    if rb_zr is not None:
                        zr = R.add(zr, rb_zr)
                    zr = bb.emit(activation(f_act, zr, dtype))
                    z = R.strided_slice(zr, [1], [0], [hidden])
                    rg = R.strided_slice(zr, [1], [hidden], [2 * hidden])
                    if lbr:
                        hr = R.matmul(h, rh_t)
                        if rb_h is not None:
                            hr = R.add(hr, rb_h)
                        cand = R.add(x_h, R.multiply(rg, hr))
                    else:
                        cand = R.add(x_h, R.matmul(R.multiply(rg, h), rh_t))
                        if rb_h is not None:
                            cand = R.add(cand, rb_h)
                    cand = activation(g_act, cand, dtype)
                    one = const(1.0, dtype)
                    h = bb.emit(R.add(R.multiply(R.subtract(one, z), cand), R.multiply(z, h)))
                    hs[t] = h
                return [hs[t] for t in range(seq)], [h]

            return relax.Tuple(finish(run_directions(seq, dirs, direction, step_fn), seq, layout))

    class RNN(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v7(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, w, r, b, layout, seq, batch, dirs, hidden, direction, dtype = rnn_common(
                bb, inputs, attr, 1, "RNN", params)

            def step_fn(d: int, order: list[int]):  # type: ignore[no-untyped-def]
                xw, rt, bias_r = projections(x, w, r, b, d, seq, batch, hidden, dtype)
                [f_act] = acts(attr, 1, ["Tanh"], d)
                h = initial(inputs, 5, d, batch, hidden, dtype, layout)
                hs: dict[int, Any] = {}
                for t in order:
                    g = R.add(take(xw, t), R.matmul(h, rt))
                    if bias_r is not None:
                        g = R.add(g, bias_r)
                    h = bb.emit(activation(f_act, g, dtype))
                    hs[t] = h
                return [hs[t] for t in range(seq)], [h]

            return relax.Tuple(finish(run_directions(seq, dirs, direction, step_fn), seq, layout))

    class Celu(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v12(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            dtype = x.ty.dtype
            alpha = const(float(attr.get("alpha", 1.0)), dtype)
            neg = R.multiply(alpha, R.subtract(R.exp(R.divide(x, alpha)), const(1.0, dtype)))
            return R.add(R.nn.relu(x), R.minimum(const(0.0, dtype), neg))

    class Swish(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v24(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            alpha = const(float(attr.get("alpha", 1.0)), x.ty.dtype)
            return R.multiply(x, R.sigmoid(R.multiply(alpha, x)))

    class CumProd(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, axis_in = inputs[0], get_constant(inputs[1], params)
            if not isinstance(axis_in, Constant):
                raise ConverterError("CumProd: the axis input must be a constant")
            axis = int(axis_in.value.numpy().reshape(-1)[0])
            reverse = int(attr.get("reverse", 0))
            if reverse:
                x = R.flip(x, axis)
            out = R.cumprod(x, axis, exclusive=bool(int(attr.get("exclusive", 0))))
            return R.flip(out, axis) if reverse else out

    class LpNormalization(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            axis, p = int(attr.get("axis", -1)), int(attr.get("p", 2))
            if p == 1:
                norm = R.sum(R.abs(x), [axis], keepdims=True)
            elif p == 2:
                norm = R.sqrt(R.sum(R.multiply(x, x), [axis], keepdims=True))
            else:
                raise ConverterError(f"LpNormalization: p={p} is not supported (1 or 2)")
            # An all-zero slice stays zero (ONNX), not 0/0.
            zero = const(0.0, x.ty.dtype)
            return R.divide(x, R.where(R.equal(norm, zero), const(1.0, x.ty.dtype), norm))

    def nll(bb: Any, logp: Any, target: Any, weight: Any, attr: dict[str, Any]) -> Any:
        """ONNX NegativeLogLikelihoodLoss on log-probabilities ``logp`` [N, C, d...]."""
        reduction = attr.get("reduction", b"mean")
        reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
        dtype = str(bb.normalize(logp).ty.dtype)
        tdtype = str(bb.normalize(target).ty.dtype)
        ignore = attr.get("ignore_index")
        safe_t = target
        keep = None
        if ignore is not None:
            ii = relax.const(int(ignore), tdtype)
            keep = R.astype(R.not_equal(target, ii), dtype)
            safe_t = R.where(R.equal(target, ii), relax.const(0, tdtype), target)
        picked = R.squeeze(R.gather_elements(logp, R.expand_dims(safe_t, 1), axis=1), [1])
        w = R.take(weight, safe_t, axis=0) if weight is not None else None
        if keep is not None:
            w = keep if w is None else R.multiply(w, keep)
        loss = R.negative(picked) if w is None else R.negative(R.multiply(picked, w))
        if reduction == "none":
            return loss
        if reduction == "sum":
            return R.sum(loss)
        if reduction != "mean":
            raise ConverterError(f"loss reduction {reduction!r} is not supported")
        return R.mean(loss) if w is None else R.divide(R.sum(loss), R.sum(w))

    class NegativeLogLikelihoodLoss(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v12(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            return nll(bb, inputs[0], inputs[1], opt(inputs, 2), attr)

    class SoftmaxCrossEntropyLoss(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v12(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            logp = bb.normalize(R.nn.log_softmax(inputs[0], axis=1))
            return relax.Tuple([nll(bb, logp, inputs[1], opt(inputs, 2), attr), logp])

    class RotaryEmbedding(base):  # type: ignore[misc, valid-type]
        """ai.onnx RotaryEmbedding (opset 23)."""

        @classmethod
        def _impl_v23(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x, cos, sin = (bb.normalize(i) for i in inputs[:3])
            pos = opt(inputs, 3)
            shape = static_shape(x)
            if len(shape) == 4:  # [batch, heads, seq, head] → [batch, seq, heads, head]
                b, nh, sq, hd = shape
                xs = R.permute_dims(x, [0, 2, 1, 3])
            else:
                nh = int(attr.get("num_heads", 0))
                if not nh:
                    raise ConverterError("RotaryEmbedding: 3-D input needs num_heads")
                b, sq, hidden = shape
                hd = hidden // nh
                xs = R.reshape(x, (b, sq, nh, hd))
            rot = int(attr.get("rotary_embedding_dim", 0)) or hd
            if pos is not None:
                cos, sin = R.take(cos, pos, axis=0), R.take(sin, pos, axis=0)
            cos, sin = R.expand_dims(cos, 2), R.expand_dims(sin, 2)  # [b, s, 1, rot/2]
            x_rot = R.strided_slice(xs, [3], [0], [rot])
            if int(attr.get("interleaved", 0)):
                x1 = R.strided_slice(x_rot, [3], [0], [rot], [2])
                x2 = R.strided_slice(x_rot, [3], [1], [rot], [2])
            else:
                x1 = R.strided_slice(x_rot, [3], [0], [rot // 2])
                x2 = R.strided_slice(x_rot, [3], [rot // 2], [rot])
            real = R.subtract(R.multiply(cos, x1), R.multiply(sin, x2))
            imag = R.add(R.multiply(sin, x1), R.multiply(cos, x2))
            if int(attr.get("interleaved", 0)):
                out = R.reshape(stack([real, imag], axis=4), (b, sq, nh, rot))
            else:
                out = R.concat([real, imag], axis=3)
            if rot < hd:
                out = R.concat([out, R.strided_slice(xs, [3], [rot], [hd])], axis=3)
            if len(shape) == 4:
                return R.permute_dims(out, [0, 2, 1, 3])
            return R.reshape(out, (b, sq, nh * hd))

    return {"LSTM": LSTM, "GRU": GRU, "RNN": RNN, "Celu": Celu, "Swish": Swish,
            "CumProd": CumProd, "LpNormalization": LpNormalization,
            "RotaryEmbedding": RotaryEmbedding,
            "NegativeLogLikelihoodLoss": NegativeLogLikelihoodLoss,
            "SoftmaxCrossEntropyLoss": SoftmaxCrossEntropyLoss}


def _wrappers(base: type, tvm_table: dict[str, Any]) -> dict[str, type]:
    import math

    from tvm import relax
    from tvm.ir import GenericConst
    from tvm.relax import op as R
    from tvm.relax.frontend.onnx.onnx_frontend import get_constant

    tvm_attention = tvm_table["Attention"]
    tvm_layernorm = tvm_table["LayerNormalization"]
    tvm_resize = tvm_table["Resize"]

    def shape_of(bb: Any, x: Any) -> list[int]:
        return [int(d) for d in bb.normalize(x).ty.shape.values]

    def dtype_of(bb: Any, x: Any) -> str:
        return str(bb.normalize(x).ty.dtype)

    class Clip(base):  # type: ignore[misc, valid-type]
        """Constant bounds become relax ``maximum``/``minimum`` with scalar constants instead of
        TVM's ``emit_te(topi.maximum)``: relax ops fuse into the producing convolution and follow
        it through ``ConvertLayout`` to NHWC, where TE calls are opaque to both (MobileNetV2's
        ReLU6 cost a transpose pair per block). Exported bounds are often shape [1]: a 1-element
        bound is the scalar it holds. A NaN bound means unbounded (ONNX). Run-time bounds go to
        TVM's converter."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Clip"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                x = inputs[0]
                if opset < 11:
                    bounds = [attr.get("min"), attr.get("max")]
                else:
                    bounds = [inputs[i] if len(inputs) > i else None for i in (1, 2)]
                values = []
                for b in bounds:
                    if b is None or isinstance(b, (int, float)):
                        values.append(b)
                    elif isinstance(b, GenericConst) and b.value.numpy().size == 1:
                        values.append(b.value.numpy().reshape(()).item())
                    else:
                        return inner(bb, inputs, attr, params)
                dtype = dtype_of(bb, x)
                out = x
                for v, op in zip(values, (R.maximum, R.minimum)):
                    if v is not None and not (isinstance(v, float) and math.isnan(v)):
                        out = bb.emit(op(out, relax.const(v, dtype)))
                return out

            return convert

    class Attention(base):  # type: ignore[misc, valid-type]
        """ai.onnx Attention (opset 23/24); com.microsoft Attention (num_heads) goes to TVM."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if "num_heads" in attr:
                    return tvm_attention.get_converter(opset)(bb, inputs, attr, params)
                return cls._onnx(bb, inputs, attr)
            return convert

        @classmethod
        def _onnx(cls, bb, inputs, attr):  # type: ignore[no-untyped-def]
            """Follows ONNX's reference (onnx/reference/ops/op_attention.py) step by step."""
            import numpy as np

            def opt(i: int) -> Any:
                return inputs[i] if len(inputs) > i and inputs[i] is not None else None

            known = {"is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode", "scale",
                     "softcap", "softmax_precision", "left_window_size", "right_window_size",
                     "tvm_custom"}
            unknown = sorted(set(attr) - known)
            if unknown:
                raise ConverterError(f"Attention: attributes {unknown} are not supported")
            q, k, v = inputs[0], inputs[1], inputs[2]
            mask, past_k, past_v, nonpad = opt(3), opt(4), opt(5), opt(6)
            dtype = dtype_of(bb, q)
            three_d = len(shape_of(bb, q)) == 3

            def heads_4d(x: Any, n: Any) -> Any:
                b, s_, hidden = shape_of(bb, x)
                if not n:
                    raise ConverterError("Attention: 3-D inputs need q_num_heads/kv_num_heads")
                return bb.normalize(R.permute_dims(R.reshape(x, (b, s_, int(n), hidden // int(n))),
                                                   [0, 2, 1, 3]))

            if three_d:
                q = heads_4d(q, attr.get("q_num_heads"))
                k = heads_4d(k, attr.get("kv_num_heads"))
                v = heads_4d(v, attr.get("kv_num_heads"))
            past_len = shape_of(bb, past_k)[2] if past_k is not None else 0
            if past_k is not None:
                k = bb.normalize(R.concat([past_k, k], axis=2))
            if past_v is not None:
                v = bb.normalize(R.concat([past_v, v], axis=2))
            present_k, present_v = k, v
            io_dtype = dtype
            if dtype in ("float16", "bfloat16"):
                # Half precision: compute in float32 and round once at the end (TVM's half
                # kernels round every intermediate and drift past one ulp from ONNX's result).
                dtype = "float32"
                q, k, v = (bb.normalize(R.astype(t, dtype)) for t in (q, k, v))
                if mask is not None and dtype_of(bb, mask) != "bool":
                    mask = bb.normalize(R.astype(mask, dtype))
            b, qh, sq, hd = shape_of(bb, q)
            kh, skv = shape_of(bb, k)[1], shape_of(bb, k)[2]
            scale = attr.get("scale")
            scale = float(scale) if scale is not None else 1.0 / math.sqrt(hd)
            root = relax.const(np.sqrt(np.float64(scale)).astype(dtype), dtype)
            neg = relax.const(float("-inf"), dtype)
            zero = relax.const(0.0, dtype)

            def as_bias(m: Any) -> Any:
                return R.where(m, zero, neg) if dtype_of(bb, m) == "bool" else m

            if mask is not None:
                mshape = shape_of(bb, mask)
                if mshape[-1] < skv:  # ONNX pads a short mask with "masked"
                    pad = skv - mshape[-1]
                    fill = (relax.const(np.zeros([*mshape[:-1], pad], dtype=bool))
                            if dtype_of(bb, mask) == "bool" else
                            relax.const(np.full([*mshape[:-1], pad], -np.inf, dtype=dtype)))
                    mask = bb.normalize(R.concat([mask, fill], axis=-1))
            # Per-batch offset of the causal/window frontier: nonpad_kv_seqlen - q_len (an
            # external cache) or the internal cache length.
            ii = relax.const(np.arange(sq, dtype="int64").reshape(sq, 1), "int64")
            jj = relax.const(np.arange(skv, dtype="int64").reshape(1, skv), "int64")
            if nonpad is not None:
                nonpad = bb.normalize(R.astype(nonpad, "int64"))
                off = bb.normalize(R.reshape(R.subtract(nonpad, relax.const(sq, "int64")),
                                             (b, 1, 1, 1)))
            else:
                off = relax.const(past_len, "int64")
            diff = bb.normalize(R.subtract(R.add(ii, off), jj))  # query pos - key pos
            bias = as_bias(mask) if mask is not None else None
            if int(attr.get("is_causal", 0)):
                causal = R.where(R.greater_equal(diff, relax.const(0, "int64")), zero, neg)
                bias = causal if bias is None else R.add(bias, causal)
            left = int(attr.get("left_window_size", -1))
            right = int(attr.get("right_window_size", -1))
            if left >= 0 or right >= 0:
                allowed = None
                if left >= 0:
                    allowed = R.less_equal(diff, relax.const(left, "int64"))
                if right >= 0:
                    r_ok = R.less_equal(R.negative(diff), relax.const(right, "int64"))
                    allowed = r_ok if allowed is None else R.logical_and(allowed, r_ok)
                window = R.where(allowed, zero, neg)
                bias = window if bias is None else R.add(bias, window)
            if nonpad is not None:
                keep = bb.normalize(R.less(jj, R.reshape(nonpad, (b, 1))))
                padm = R.reshape(bb.normalize(R.where(keep, zero, neg)), (b, 1, 1, skv))
                bias = padm if bias is None else R.add(bias, padm)
            if bias is not None:
                bias = bb.normalize(bias)
            if qh != kh:
                if qh % kh:
                    raise ConverterError("Attention: q heads must be a multiple of kv heads")
                k = R.repeat(k, qh // kh, axis=1)
                v = R.repeat(v, qh // kh, axis=1)
            qk = R.matmul(R.multiply(q, root), R.permute_dims(R.multiply(k, root), [0, 1, 3, 2]))
            softcap = float(attr.get("softcap", 0.0) or 0.0)
            if softcap > 0:
                cap = relax.const(softcap, dtype)
                qk = R.multiply(R.tanh(R.divide(qk, cap)), cap)
            qk = bb.normalize(qk)
            scores = qk if bias is None else bb.normalize(R.add(qk, bias))
            sdtype = dtype
            if attr.get("softmax_precision") is not None:
                from onnx import helper

                sdtype = str(helper.tensor_dtype_to_np_dtype(int(attr["softmax_precision"])))
            x = scores if sdtype == dtype else R.astype(scores, sdtype)
            x_max = R.max(x, axis=-1, keepdims=True)
            szero, sone = relax.const(0.0, sdtype), relax.const(1.0, sdtype)
            safe = R.where(R.equal(x_max, relax.const(float("-inf"), sdtype)), szero, x_max)
            e = bb.normalize(R.exp(R.subtract(x, safe)))
            tot = R.sum(e, axis=-1, keepdims=True)
            probs = R.divide(e, R.where(R.equal(tot, szero), sone, tot))
            if bias is not None:  # rows the bias masks entirely are zeros
                dead = R.equal(R.max(bias, axis=-1, keepdims=True), neg)
                probs = R.where(dead, szero, probs)
            if sdtype != dtype:
                probs = R.astype(probs, dtype)
            probs = bb.normalize(probs)
            y = R.matmul(probs, v)
            if three_d:
                vh = shape_of(bb, v)[3]
                y = R.reshape(R.permute_dims(y, [0, 2, 1, 3]), (b, sq, qh * vh))
            mode = int(attr.get("qk_matmul_output_mode", 0))
            qk_out = {2: scores, 3: probs}.get(mode, qk)
            if io_dtype != dtype:
                y, qk_out = R.astype(y, io_dtype), R.astype(qk_out, io_dtype)
            return relax.Tuple([y, present_k, present_v, qk_out])

    class LayerNormalization(base):  # type: ignore[misc, valid-type]
        """TVM's converter returns placeholders for Mean and InvStdDev; compute them."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_layernorm.get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                out = inner(bb, inputs, attr, params)
                if not isinstance(out, relax.Tuple):
                    return out
                x = inputs[0]
                ndim = len(shape_of(bb, x))
                axis = int(attr.get("axis", -1))
                axis = axis + ndim if axis < 0 else axis
                axes = list(range(axis, ndim))
                dtype = dtype_of(bb, x)
                eps = relax.const(float(attr.get("epsilon", 1e-5)), dtype)
                mean = R.mean(x, axes, keepdims=True)
                var = R.mean(R.square(R.subtract(x, mean)), axes, keepdims=True)
                inv_std = R.rsqrt(R.add(var, eps))
                return relax.Tuple([out[0], mean, inv_std])

            return convert

    class Resize(base):  # type: ignore[misc, valid-type]
        """Constant scales/sizes: TVM's converter when it is exact (it derives the coordinate
        transform from the in/out size ratio, ignores ``axes``, ``antialias`` and
        ``keep_aspect_ratio_policy``); otherwise a separable resize whose per-axis matrices are
        ONNX's reference interpolation applied to the identity."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_resize.get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                def const_in(i: int) -> Any:
                    if len(inputs) <= i or inputs[i] is None:
                        return None
                    c = get_constant(inputs[i], params)
                    if not isinstance(c, GenericConst):
                        raise ConverterError(f"Resize: input {i} must be a constant (freeze it "
                                             "with constant_inputs)")
                    return c.value.numpy()

                if opset < 11:
                    roi, scales, sizes = None, const_in(1), None
                else:
                    roi, scales, sizes = const_in(1), const_in(2), const_in(3)
                if scales is not None and scales.size == 0:
                    scales = None
                if sizes is not None and sizes.size == 0:
                    sizes = None
                plan = resize_plan(shape_of(bb, inputs[0]), roi, scales, sizes, attr)
                if plan["tvm_exact"]:
                    return inner(bb, inputs, attr, params)
                return separable_resize(bb, inputs[0], plan, attr)

            return convert

    class Upsample(base):  # type: ignore[misc, valid-type]
        """Upsample (opset 9: scales as an input) = Resize, asymmetric, nearest rounds down."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Upsample"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if opset < 9:
                    return inner(bb, inputs, attr, params)
                c = get_constant(inputs[1], params)
                if not isinstance(c, GenericConst):
                    raise ConverterError("Upsample: scales must be a constant")
                mode = attr.get("mode", b"nearest")
                mode = mode.decode() if isinstance(mode, bytes) else str(mode)
                rattr = {"mode": mode, "coordinate_transformation_mode": "asymmetric",
                         "nearest_mode": "floor"}
                plan = resize_plan(shape_of(bb, inputs[0]), None, c.value.numpy(), None, rattr)
                return separable_resize(bb, inputs[0], plan, rattr)

            return convert

    def const_value(x: Any, params: Any) -> Any:
        c = get_constant(x, params) if isinstance(x, relax.Var) else x
        return c.value.numpy() if isinstance(c, GenericConst) else None

    class OneHot(base):  # type: ignore[misc, valid-type]
        """Constant depth (any numeric dtype); off/on values may be run-time tensors."""

        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            import numpy as np

            indices, values = inputs[0], inputs[2]
            depth = const_value(inputs[1], params)
            if depth is None:
                raise ConverterError("OneHot: depth must be a constant")
            depth = int(np.asarray(depth).reshape(-1)[0])
            ndim = len(shape_of(bb, indices))
            axis = int(attr.get("axis", -1))
            axis = axis + ndim + 1 if axis < 0 else axis
            idtype = dtype_of(bb, indices)
            if idtype.startswith("float"):
                indices = R.astype(indices, "int64")
                idtype = "int64"
            d = relax.const(depth, idtype)
            indices = R.where(R.less(indices, relax.const(0, idtype)), R.add(indices, d), indices)
            shape = [1] * (ndim + 1)
            shape[axis] = depth
            ramp = relax.const(np.arange(depth, dtype=idtype).reshape(shape))
            hit = R.equal(R.expand_dims(indices, axis), ramp)
            off = R.take(values, relax.const(0, "int64"), axis=0)
            on = R.take(values, relax.const(1, "int64"), axis=0)
            return R.where(hit, on, off)

    class Pow(base):  # type: ignore[misc, valid-type]
        """Mixed base/exponent dtypes: the result has the base's dtype (ONNX)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Pow"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                x, y = inputs
                xd, yd = dtype_of(bb, x), dtype_of(bb, y)
                if xd == yd:
                    return inner(bb, inputs, attr, params)
                if xd.startswith("float"):
                    return R.power(x, R.astype(y, xd))
                fd = yd if yd.startswith("float") else "float64"
                return R.astype(R.power(R.astype(x, fd), R.astype(y, fd)), xd)

            return convert

    class Compress(base):  # type: ignore[misc, valid-type]
        """A constant condition gives a static output shape."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Compress"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                import numpy as np

                cond = const_value(inputs[1], params)
                if cond is None:
                    return inner(bb, inputs, attr, params)
                x = inputs[0]
                idx = relax.const(np.nonzero(cond.reshape(-1))[0].astype("int64"))
                axis = attr.get("axis")
                if axis is None:
                    return R.take(R.reshape(x, (-1,)), idx, axis=0)
                return R.take(x, idx, axis=int(axis))

            return convert

    class IsInf(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            pos, neg = int(attr.get("detect_positive", 1)), int(attr.get("detect_negative", 1))
            inf = R.isinf(x)
            zero = relax.const(0, dtype_of(bb, x))
            if pos and neg:
                return inf
            if pos:
                return R.logical_and(inf, R.greater(x, zero))
            if neg:
                return R.logical_and(inf, R.less(x, zero))
            return R.logical_and(inf, R.not_equal(x, x))  # all False

    class BitShift(base):  # type: ignore[misc, valid-type]
        """Shifts by a negative amount or by the bit width or more (ONNX: 0, or -1 for a
        right shift of a negative signed value)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["BitShift"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                x, s = inputs
                if const_value(x, params) is not None and const_value(s, params) is not None:
                    return inner(bb, inputs, attr, params)
                dtype = dtype_of(bb, x)
                width = int("".join(c for c in dtype if c.isdigit()))
                zero = relax.const(0, dtype)
                bad = R.logical_or(R.less(s, zero), R.greater_equal(s, relax.const(width, dtype)))
                safe = R.where(bad, zero, s)
                if _s(attr, "direction", "LEFT") == "LEFT":
                    return R.where(bad, zero, R.left_shift(x, safe))
                fill = zero
                if not dtype.startswith("u"):
                    fill = R.where(R.less(x, zero), relax.const(-1, dtype), zero)
                return R.where(bad, fill, R.right_shift(x, safe))

            return convert

    class Mod(base):  # type: ignore[misc, valid-type]
        """Float fmod=0 (Python/numpy semantics): fmod, then shift towards the divisor's sign
        (keeps -3 mod inf = inf, x mod 0 = nan, where x - floor(x/y)*y gives nan)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Mod"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                x, y = inputs
                dtype = dtype_of(bb, x)
                if int(attr.get("fmod", 0)) or not dtype.startswith("float") or all(
                        const_value(v, params) is not None for v in (x, y)):
                    return inner(bb, inputs, attr, params)
                zero = relax.const(0, dtype)
                r = bb.normalize(R.mod(x, y))
                flip = R.logical_and(R.not_equal(r, zero),
                                     R.logical_xor(R.less(r, zero), R.less(y, zero)))
                return R.where(flip, R.add(r, y), r)

            return convert

    class RMSNormalization(base):  # type: ignore[misc, valid-type]
        """TVM's rms_norm fails to build when every axis is normalized: compute it directly."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["RMSNormalization"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                x, scale = inputs[0], inputs[1]
                ndim = len(shape_of(bb, x))
                axis = int(attr.get("axis", -1))
                axis = axis + ndim if axis < 0 else axis
                if axis != 0:
                    return inner(bb, inputs, attr, params)
                dtype = dtype_of(bb, x)
                cd = "float32" if int(attr.get("stash_type", 1)) == 1 else dtype
                xc = x if cd == dtype else R.astype(x, cd)
                ms = R.mean(R.multiply(xc, xc), list(range(ndim)), keepdims=True)
                eps = relax.const(float(attr.get("epsilon", 1e-5)), cd)
                y = R.multiply(R.multiply(xc, R.rsqrt(R.add(ms, eps))),
                               scale if dtype_of(bb, scale) == cd else R.astype(scale, cd))
                return y if cd == dtype else R.astype(y, dtype)

            return convert

    class BatchNormalization(base):  # type: ignore[misc, valid-type]
        """training_mode=1: batch statistics; ONNX's running statistics are
        ``input * momentum + batch * (1 - momentum)``."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["BatchNormalization"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if not int(attr.get("training_mode", 0)):
                    return inner(bb, inputs, attr, params)
                x, scale, bias, mean, var = inputs[:5]
                dtype = dtype_of(bb, x)
                if dtype != "float32" and dtype != "float64":
                    return inner(bb, inputs, attr, params)
                nd = len(shape_of(bb, x))
                axes = [0, *range(2, nd)]
                bshape = [1, -1] + [1] * (nd - 2)
                mk = bb.normalize(R.mean(x, axes, keepdims=True))
                vk = bb.normalize(R.mean(R.square(R.subtract(x, mk)), axes, keepdims=True))
                m, v = R.squeeze(mk, axes), R.squeeze(vk, axes)
                eps = relax.const(float(attr.get("epsilon", 1e-5)), dtype)
                mom = float(attr.get("momentum", 0.9))
                y = R.add(R.multiply(R.divide(R.subtract(x, mk), R.sqrt(R.add(vk, eps))),
                                     R.reshape(scale, bshape)), R.reshape(bias, bshape))
                a, b = relax.const(mom, dtype), relax.const(1.0 - mom, dtype)
                rm = R.add(R.multiply(mean, a), R.multiply(m, b))
                rv = R.add(R.multiply(var, a), R.multiply(v, b))
                return relax.Tuple([bb.normalize(y), bb.normalize(rm), bb.normalize(rv)])

            return convert

    def reduce_extreme(op: str, sign: float) -> type:
        """TVM's max/min reductions start from the largest finite value, so a max over only
        -inf (or over nothing) gives -FLT_MAX instead of -inf (min: +FLT_MAX for +inf); bool
        inputs do not build. The same reduction over an indicator finds those rows."""

        class Reduce(base):  # type: ignore[misc, valid-type]
            @classmethod
            def get_converter(cls, opset: int) -> Any:
                inner = tvm_table[op].get_converter(opset)

                def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                    x = inputs[0]
                    dtype = dtype_of(bb, x)
                    if dtype == "bool":
                        xi = bb.normalize(R.astype(x, "uint8"))
                        out = bb.normalize(inner(bb, [xi, *inputs[1:]], attr, params))
                        return R.astype(out, "bool")
                    out = inner(bb, inputs, attr, params)
                    if not dtype.startswith("float"):
                        return out
                    out = bb.normalize(out)
                    inf = relax.const(sign * float("inf"), dtype)
                    # max: 0 (or the empty-set start value) iff every element is -inf
                    # min: 1 (or the empty-set start value) iff every element is +inf
                    ind = R.not_equal(x, inf) if sign < 0 else R.equal(x, inf)
                    ind = bb.normalize(R.astype(ind, dtype))
                    probe = bb.normalize(inner(bb, [ind, *inputs[1:]], attr, params))
                    if sign < 0:
                        all_inf = R.less_equal(probe, relax.const(0.0, dtype))
                    else:
                        all_inf = R.greater_equal(probe, relax.const(1.0, dtype))
                    return R.where(all_inf, inf, out)

                return convert

        Reduce.__name__ = op
        return Reduce

    class Softmax(base):  # type: ignore[misc, valid-type]
        """float16 (TVM's half-precision exp/sum drift several ulps): opset 13+ follows ONNX's
        reference step by step, each step computed in float32 and rounded to float16 as numpy
        does (max shift, exp, a sum accumulated in float32, the division); rounding only once
        differs from it by one ulp in places. Opsets < 13 (2-D coercion): float32, rounded once."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Softmax"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                dtype = dtype_of(bb, inputs[0])
                if dtype != "float16":
                    return inner(bb, inputs, attr, params)
                x = bb.normalize(R.astype(inputs[0], "float32"))
                if opset < 13:
                    return R.astype(bb.normalize(inner(bb, [x], attr, params)), dtype)

                def half(v: Any) -> Any:  # round to float16, continue in float32
                    return bb.normalize(R.astype(R.astype(v, dtype), "float32"))

                axis = int(attr.get("axis", -1))
                t = half(R.subtract(x, R.max(x, axis=[axis], keepdims=True)))
                e = half(R.exp(t))
                total = half(R.sum(e, axis=[axis], keepdims=True))
                return R.astype(R.divide(e, total), dtype)

            return convert

    class MatMul(base):  # type: ignore[misc, valid-type]
        """float16: accumulate in float32 (as onnxruntime and numpy do)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["MatMul"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                a, b = inputs
                if dtype_of(bb, a) != "float16" or dtype_of(bb, b) != "float16":
                    return inner(bb, inputs, attr, params)
                return R.astype(R.matmul(a, b, out_dtype="float32"), "float16")

            return convert

    class Conv(base):  # type: ignore[misc, valid-type]
        """float16: computed in float32 and rounded once (TVM's half-precision convolution
        accumulates in float16, several ulps from ONNX's result)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Conv"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if dtype_of(bb, inputs[0]) != "float16":
                    return inner(bb, inputs, attr, params)
                from tvm.relax.frontend.onnx.onnx_frontend import onnx_input

                wide = onnx_input([None if i is None else bb.normalize(R.astype(i, "float32"))
                                   for i in inputs])
                return R.astype(bb.normalize(inner(bb, wide, attr, params)), "float16")

            return convert

    class TopK(base):  # type: ignore[misc, valid-type]
        """uint64 (TVM's sort kernels refuse it): sorted as int64 with the sign bit flipped,
        which keeps the order, and flipped back."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["TopK"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                from tvm import topi

                if dtype_of(bb, inputs[0]) != "uint64":
                    return inner(bb, inputs, attr, params)
                sign = relax.const(-(1 << 63), "int64")
                xi = bb.normalize(R.bitwise_xor(
                    bb.call_te(topi.reinterpret, inputs[0], "int64"), sign))
                out = bb.normalize(inner(bb, [xi, *list(inputs)[1:]], attr, params))
                values = bb.emit(relax.TupleGetItem(out, 0))
                back = bb.call_te(topi.reinterpret, bb.normalize(R.bitwise_xor(values, sign)),
                                  "uint64")
                return relax.Tuple([back, bb.emit(relax.TupleGetItem(out, 1))])

            return convert

    class RoiAlign(base):  # type: ignore[misc, valid-type]
        """mode="max" with a fixed sampling_ratio, as ONNX's reference (and onnxruntime)
        define it: per sample, the largest of the four *weighted* corner values, then the
        largest over the bin's samples (TVM interpolates first)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["RoiAlign"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                import numpy as np

                grid = int(attr.get("sampling_ratio", 0))
                if _s(attr, "mode", "avg") != "max" or grid <= 0:
                    return inner(bb, inputs, attr, params)
                x, rois, batch = inputs[0], inputs[1], inputs[2]
                _, c, h, w = shape_of(bb, x)
                nr = shape_of(bb, rois)[0]
                ph, pw = int(attr.get("output_height", 1)), int(attr.get("output_width", 1))
                default = "half_pixel" if opset >= 16 else "output_half_pixel"
                half = _s(attr, "coordinate_transformation_mode", default) == "half_pixel"
                dtype = dtype_of(bb, x)
                f = "float64" if dtype == "float64" else "float32"

                def k(v: Any) -> Any:
                    return relax.const(np.asarray(v, f), f)

                r = bb.normalize(R.astype(rois, f))
                scale = float(attr.get("spatial_scale", 1.0))
                box = bb.normalize(R.subtract(R.multiply(r, k(scale)), k(0.5 if half else 0.0)))

                def col(i: int) -> Any:
                    return bb.normalize(R.strided_slice(box, [1], [i], [i + 1]))  # [R, 1]

                def axis(start: Any, end: Any, pooled: int, size: int) -> list[Any]:
                    extent = R.subtract(end, start)
                    if not half:
                        extent = R.maximum(extent, k(1.0))
                    bin_ = bb.normalize(R.divide(extent, k(float(pooled))))
                    steps = np.arange(pooled)[:, None] + (np.arange(grid)[None, :] + 0.5) / grid
                    pos = bb.normalize(R.add(start, R.multiply(bin_, k(steps.reshape(1, -1)))))
                    outside = R.logical_or(R.less(pos, k(-1.0)), R.greater(pos, k(float(size))))
                    p = R.maximum(pos, k(0.0))
                    low = bb.normalize(R.floor(p))
                    top = R.greater_equal(low, k(float(size - 1)))
                    low = bb.normalize(R.where(top, k(float(size - 1)), low))
                    p = R.where(top, low, p)
                    high = R.where(top, low, R.add(low, k(1.0)))
                    frac = bb.normalize(R.subtract(p, low))
                    keep = R.astype(R.logical_not(outside), f)
                    return [R.astype(low, "int64"), R.astype(high, "int64"),
                            bb.normalize(R.multiply(R.subtract(k(1.0), frac), keep)),
                            bb.normalize(R.multiply(frac, keep))]  # each [R, pooled * grid]

                y_lo, y_hi, y_wl, y_wh = axis(col(1), col(3), ph, h)
                x_lo, x_hi, x_wl, x_wh = axis(col(0), col(2), pw, w)
                data = bb.normalize(R.reshape(R.take(R.astype(x, f) if f != dtype else x,
                                                     R.astype(batch, "int64"), axis=0),
                                              (nr, c, h * w)))
                sy, sx = ph * grid, pw * grid
                val = None
                for yi, wy, xi, wx in ((y_lo, y_wl, x_lo, x_wl), (y_lo, y_wl, x_hi, x_wh),
                                       (y_hi, y_wh, x_lo, x_wl), (y_hi, y_wh, x_hi, x_wh)):
                    pos = R.add(R.multiply(R.expand_dims(yi, 2), relax.const(w, "int64")),
                                R.expand_dims(xi, 1))  # [R, sy, sx]
                    idx = R.broadcast_to(R.reshape(pos, (nr, 1, sy * sx)), (nr, c, sy * sx))
                    v = R.reshape(R.gather_elements(data, idx, axis=2), (nr, c, sy, sx))
                    wt = R.reshape(R.multiply(R.expand_dims(wy, 2), R.expand_dims(wx, 1)),
                                   (nr, 1, sy, sx))
                    term = bb.normalize(R.multiply(wt, v))
                    val = term if val is None else bb.normalize(R.maximum(val, term))
                y = R.max(R.reshape(val, (nr, c, ph, grid, pw, grid)), axis=[3, 5])
                return y if f == dtype else R.astype(y, dtype)

            return convert

    class Elu(base):  # type: ignore[misc, valid-type]
        """TVM's converter builds float32 constants whatever the input dtype."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            x = inputs[0]
            dtype = dtype_of(bb, x)
            alpha = relax.const(float(attr.get("alpha", 1.0)), dtype)
            neg = R.multiply(alpha, R.subtract(R.exp(x), relax.const(1.0, dtype)))
            return R.where(R.greater(x, relax.const(0.0, dtype)), x, neg)

    class NonMaxSuppression(base):  # type: ignore[misc, valid-type]
        """TVM's converter silently replaces run-time max_output_boxes_per_class, iou_threshold
        and score_threshold by defaults (0 boxes): refuse those instead."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["NonMaxSuppression"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                names = {2: "max_output_boxes_per_class", 3: "iou_threshold",
                         4: "score_threshold"}
                for i, name in names.items():
                    if len(inputs) > i and inputs[i] is not None and const_value(
                            inputs[i], params) is None:
                        raise ConverterError(f"NonMaxSuppression: {name} must be a constant")
                if len(inputs) > 3 and inputs[3] is not None:
                    import numpy as np

                    # ONNX suppresses when IoU > threshold, TVM's kernel when IoU >= threshold:
                    # the next float32 up makes the two agree.
                    t = np.float32(np.asarray(const_value(inputs[3], params)).reshape(-1)[0])
                    up = np.nextafter(t, np.float32(np.inf), dtype=np.float32)
                    inputs = [*inputs[:3], relax.const(np.array([up], np.float32)), *inputs[4:]]
                return inner(bb, inputs, attr, params)

            return convert

    class EyeLike(base):  # type: ignore[misc, valid-type]
        """The dtype attribute may differ from the input's dtype."""

        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            from onnx import helper

            dtype = dtype_of(bb, inputs[0])
            if "dtype" in attr:
                dtype = str(helper.tensor_dtype_to_np_dtype(int(attr["dtype"])))
            return R.eye_like(inputs[0], int(attr.get("k", 0)), dtype)

    class SpaceToDepth(base):  # type: ignore[misc, valid-type]
        """The CRD mode (TVM implements DCR only)."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            bs = int(attr["blocksize"])
            b, c, h, w = shape_of(bb, inputs[0])
            x = R.reshape(inputs[0], (b, c, h // bs, bs, w // bs, bs))
            perm = [0, 1, 3, 5, 2, 4] if _s(attr, "mode", "DCR") == "CRD" else [0, 3, 5, 1, 2, 4]
            return R.reshape(R.permute_dims(x, perm), (b, c * bs * bs, h // bs, w // bs))

    class ConvTranspose(base):  # type: ignore[misc, valid-type]
        """The output_shape attribute (TVM ignores it): pads from ONNX's total-padding rule;
        a negative end pad becomes output_padding."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["ConvTranspose"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if "output_shape" not in attr:
                    return inner(bb, inputs, attr, params)
                attr = dict(attr)
                x_shape, w_shape = shape_of(bb, inputs[0]), shape_of(bb, inputs[1])
                nd = len(x_shape) - 2
                target = [int(v) for v in attr.pop("output_shape")][-nd:]
                strides = list(attr.get("strides", [1] * nd))
                dil = list(attr.get("dilations", [1] * nd))
                outpad = list(attr.get("output_padding", [0] * nd))
                kernel = list(attr.get("kernel_shape", w_shape[2:]))
                upper = _s(attr, "auto_pad", "NOTSET") == "SAME_UPPER"
                attr.pop("auto_pad", None)
                begin, end = [], []
                for i in range(nd):
                    total = (strides[i] * (x_shape[2 + i] - 1) + outpad[i]
                             + (kernel[i] - 1) * dil[i] + 1 - target[i])
                    b_ = total // 2 if upper else total - total // 2
                    e_ = total - b_
                    if b_ < 0:
                        raise ConverterError("ConvTranspose: output_shape larger than this "
                                             "transposed convolution can produce")
                    if e_ < 0:
                        outpad[i] -= e_
                        e_ = 0
                    begin.append(b_)
                    end.append(e_)
                attr["pads"] = begin + end
                attr["output_padding"] = outpad
                return inner(bb, inputs, attr, params)

            return convert

    class MaxPool(base):  # type: ignore[misc, valid-type]
        """The Indices output (TVM returns only the values): per kernel offset, the first
        window position (in scan order) holding the maximum."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["MaxPool"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                import itertools

                import numpy as np

                y = inner(bb, inputs, attr, params)
                if attr.get("tvm_custom", {}).get("num_outputs", 1) < 2:
                    return y
                y = bb.normalize(y)
                x = inputs[0]
                shape, out = shape_of(bb, x), shape_of(bb, y)
                nd = len(shape) - 2
                if _s(attr, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                    raise ConverterError("MaxPool: Indices with auto_pad SAME_* are not supported")
                kernel = list(attr["kernel_shape"])
                strides = list(attr.get("strides", [1] * nd))
                dil = list(attr.get("dilations", [1] * nd))
                pads = list(attr.get("pads", [0] * (2 * nd)))
                if _s(attr, "auto_pad", "NOTSET") == "VALID":
                    pads = [0] * (2 * nd)
                order = int(attr.get("storage_order", 0))
                if order and nd != 2:
                    raise ConverterError("MaxPool: storage_order=1 needs a 2-D pool")
                if order:
                    n_, c_, h_, w_ = shape
                    idx = (np.arange(n_ * c_).reshape(n_, c_, 1, 1) * h_ * w_
                           + np.arange(w_).reshape(1, 1, 1, w_) * h_
                           + np.arange(h_).reshape(1, 1, h_, 1))
                else:
                    idx = np.arange(int(np.prod(shape))).reshape(shape)
                ends = []
                for i in range(nd):
                    need = (out[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1
                    have = shape[2 + i] + pads[i] + pads[nd + i]
                    ends.append(pads[nd + i] + max(0, need - have))
                width = [0, 0, 0, 0]
                for i in range(nd):
                    width += [pads[i], ends[i]]
                dtype = dtype_of(bb, x)
                low = float("-inf") if dtype.startswith("float") else float(
                    np.iinfo(dtype).min)
                xp = bb.normalize(R.nn.pad(x, width, pad_value=low))
                ip = np.pad(idx, [(width[2 * a], width[2 * a + 1]) for a in range(nd + 2)],
                            constant_values=-1).astype("int64")
                res: Any = relax.const(np.full(out, -1, dtype="int64"))
                axes = list(range(2, nd + 2))
                for off in reversed(list(itertools.product(*[range(k) for k in kernel]))):
                    begin = [off[i] * dil[i] for i in range(nd)]
                    end = [begin[i] + (out[2 + i] - 1) * strides[i] + 1 for i in range(nd)]
                    window = R.strided_slice(xp, axes, begin, end, strides)
                    sl = tuple([slice(None), slice(None)] + [
                        slice(begin[i], end[i], strides[i]) for i in range(nd)])
                    res = R.where(R.equal(window, y), relax.const(ip[sl]), res)
                return relax.Tuple([y, bb.normalize(res)])

            return convert

    class Unsqueeze(base):  # type: ignore[misc, valid-type]
        """A scalar axes tensor (onnxruntime accepts it) is one axis."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Unsqueeze"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if opset >= 13 and len(inputs) > 1 and inputs[1] is not None:
                    axes = const_value(inputs[1], params)
                    if axes is not None and axes.ndim == 0:
                        inputs = [inputs[0], relax.const(axes.reshape(1), str(axes.dtype))]
                return inner(bb, inputs, attr, params)

            return convert

    class Reshape(base):  # type: ignore[misc, valid-type]
        """allowzero=1 with a 0 in a constant shape: a zero-size result of a static shape (TVM
        turns the shape into symbolic dimensions, and relax's reshape reads 0 as "copy")."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Reshape"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                import numpy as np

                shape = const_value(inputs[1], params)
                if (not int(attr.get("allowzero", 0)) or shape is None
                        or 0 not in shape.tolist() or isinstance(inputs[0], relax.ShapeExpr)):
                    return inner(bb, inputs, attr, params)
                out = np.empty(shape_of(bb, inputs[0]), dtype="int8").reshape(shape.tolist())
                return R.zeros(out.shape, dtype_of(bb, inputs[0]))

            return convert

    class GatherND(base):  # type: ignore[misc, valid-type]
        """Constant indices (and a static data shape): a ``take`` of one flat index per output
        row on the data reshaped to [rows, *tail], or a plain slice when those rows are
        consecutive (a mask read back in order, as torch's exporter writes attention masks).

        TVM's ``gather_nd`` reads its index tensor through one load per coordinate; with the
        indices a constant, the scheduled build marks that tensor layout-free and MetaSchedule's
        RewriteLayout (which expects one load per layout-free buffer, as a weight has) packed
        it through a non-injective index map: the [1,1,1,128,2] mask indices of MiniLM-L6
        lost half their values and the mask came back rotated by 64 tokens (max abs error 3.84
        with a 0/1 attention mask). Run-time indices go to TVM's converter."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["GatherND"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                import numpy as np

                data, idx = inputs[0], const_value(inputs[1], params)
                dshape = getattr(bb.normalize(data).ty, "shape", None)
                if idx is None or idx.ndim < 1 or dshape is None or not all(
                        hasattr(d, "value") for d in dshape.values):
                    return inner(bb, inputs, attr, params)
                shape = [int(d.value) for d in dshape.values]
                b, m = int(attr.get("batch_dims", 0)), int(idx.shape[-1])
                if (m < 1 or b + m > len(shape) or list(idx.shape[:b]) != shape[:b]
                        or idx.size == 0):
                    return inner(bb, inputs, attr, params)
                coords = np.asarray(idx, np.int64)
                dims = np.asarray(shape[b:b + m], np.int64)
                coords = np.where(coords < 0, coords + dims, coords)
                if ((coords < 0) | (coords >= dims)).any():
                    return inner(bb, inputs, attr, params)  # out of range: TVM's behaviour
                rows_per_batch = int(np.prod(dims))
                flat = coords @ np.cumprod(np.r_[dims[1:], 1][::-1])[::-1].astype(np.int64)
                batch = int(np.prod(shape[:b]))  # 1 when b == 0
                flat = flat + (np.arange(batch, dtype=np.int64) * rows_per_batch).reshape(
                    [*shape[:b], *[1] * (flat.ndim - b)])
                tail = shape[b + m:]
                rows = bb.normalize(R.reshape(data, [batch * rows_per_batch, *tail]))
                out_shape = [*idx.shape[:-1], *tail]
                start = int(flat.min())
                if np.array_equal(flat.ravel(), np.arange(start, start + flat.size)):
                    picked = R.strided_slice(rows, [0], [start], [start + flat.size])
                else:
                    picked = R.take(rows, relax.const(flat.ravel(), "int64"), axis=0)
                return R.reshape(picked, out_shape)

            return convert

    class Split(base):  # type: ignore[misc, valid-type]
        """Constant split sizes holding a 0 (empty outputs): one slice per output (TVM's split
        needs strictly increasing indices)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["Split"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                import numpy as np

                if opset < 13:
                    sizes = attr.get("split")
                else:
                    sizes = (const_value(inputs[1], params)
                             if len(inputs) > 1 and inputs[1] is not None else None)
                if sizes is None or 0 not in np.asarray(sizes).tolist():
                    return inner(bb, inputs, attr, params)
                x = inputs[0]
                axis = int(attr.get("axis", 0)) % len(shape_of(bb, x))
                ends = np.cumsum(np.asarray(sizes, "int64")).tolist()
                return relax.Tuple([bb.normalize(R.strided_slice(x, [axis], [e - n], [e]))
                                    for e, n in zip(ends, np.asarray(sizes).tolist())])

            return convert

    class OptionalHasElement(base):  # type: ignore[misc, valid-type]
        """No input at all is an empty optional."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["OptionalHasElement"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if not inputs or all(i is None for i in inputs):
                    return relax.const(False, "bool")
                return inner(bb, inputs, attr, params)

            return convert

    class MaxUnpool(base):  # type: ignore[misc, valid-type]
        """A constant output_shape (TVM scatters into it, reading the indices against it): as
        ONNX's reference, the indices address the inferred unpooled shape, and the result is
        padded with zeros at the end of each axis up to output_shape."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["MaxUnpool"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                if len(inputs) < 3 or inputs[2] is None:
                    return inner(bb, [*inputs[:2], None], attr, params)
                shape = const_value(inputs[2], params)
                if shape is None:
                    raise ConverterError("MaxUnpool: output_shape must be a constant")
                y = bb.normalize(inner(bb, [*inputs[:2], None], attr, params))
                inferred = shape_of(bb, y)
                target = [int(v) for v in shape.reshape(-1)]
                if len(target) != len(inferred) or any(
                        t < i for t, i in zip(target, inferred)):
                    raise ConverterError(f"MaxUnpool: output_shape {target} is smaller than "
                                         f"the unpooled shape {inferred}")
                if target == inferred:
                    return y
                width = [v for t, i in zip(target, inferred) for v in (0, t - i)]
                return R.nn.pad(y, width)

            return convert

    def blocked(bb: Any, t: Any, axis: int, block: int, n: int) -> Any:
        """Repeat a blocked scale/zero point along ``axis`` to ``n`` elements."""
        t = bb.normalize(R.repeat(t, block, axis=axis))
        return R.strided_slice(t, [axis], [0], [n])

    def quant_axis(bb: Any, x: Any, attr: dict[str, Any]) -> tuple[int, int]:
        nd = len(shape_of(bb, x))
        axis = int(attr.get("axis", 1))
        return (axis + nd if axis < 0 else axis), int(attr.get("block_size", 0))

    class QuantizeLinear(base):  # type: ignore[misc, valid-type]
        """Blocked quantization (block_size > 0): scale/zero point repeated over blocks,
        round half to even, saturate."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["QuantizeLinear"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                import numpy as np
                from onnx import helper

                if not int(attr.get("block_size", 0)):
                    return inner(bb, inputs, attr, params)
                x, scale = inputs[0], inputs[1]
                zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
                axis, block = quant_axis(bb, x, attr)
                n = shape_of(bb, x)[axis]
                out = (str(helper.tensor_dtype_to_np_dtype(int(attr["output_dtype"])))
                       if attr.get("output_dtype") else
                       dtype_of(bb, zp) if zp is not None else "uint8")
                if out not in ("int8", "uint8", "int16", "uint16", "int32", "uint32"):
                    raise ConverterError(f"QuantizeLinear: blocked {out} is not supported")
                fd = dtype_of(bb, x) if dtype_of(bb, x) == "float64" else "float32"
                xf = x if dtype_of(bb, x) == fd else R.astype(x, fd)
                sc = blocked(bb, R.astype(scale, fd), axis, block, n)
                v = bb.normalize(R.divide(xf, sc))
                f = bb.normalize(R.floor(v))
                d = R.subtract(v, f)
                half = relax.const(0.5, fd)
                parity = R.floor_mod(f, relax.const(2.0, fd))  # round half to even
                r = R.where(R.greater(d, half), R.add(f, relax.const(1.0, fd)),
                            R.where(R.less(d, half), f, R.add(f, parity)))
                if zp is not None:
                    r = R.add(r, blocked(bb, R.astype(zp, fd), axis, block, n))
                info = np.iinfo(out)
                return R.astype(R.clip(r, float(info.min), float(info.max)), out)

            return convert

    class DequantizeLinear(base):  # type: ignore[misc, valid-type]
        """Blocked dequantization (block_size > 0)."""

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            inner = tvm_table["DequantizeLinear"].get_converter(opset)

            def convert(bb, inputs, attr, params):  # type: ignore[no-untyped-def]
                from onnx import helper

                if not int(attr.get("block_size", 0)):
                    return inner(bb, inputs, attr, params)
                x, scale = inputs[0], inputs[1]
                zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
                axis, block = quant_axis(bb, x, attr)
                n = shape_of(bb, x)[axis]
                out = (str(helper.tensor_dtype_to_np_dtype(int(attr["output_dtype"])))
                       if attr.get("output_dtype") else dtype_of(bb, scale))
                xf = R.astype(x, "float32")
                if zp is not None:
                    xf = R.subtract(xf, blocked(bb, R.astype(zp, "float32"), axis, block, n))
                y = R.multiply(xf, blocked(bb, R.astype(scale, "float32"), axis, block, n))
                return y if out == "float32" else R.astype(y, out)

            return convert

    return {"Clip": Clip, "Softmax": Softmax, "MatMul": MatMul, "Elu": Elu, "EyeLike": EyeLike,
            "OptionalHasElement": OptionalHasElement, "MaxUnpool": MaxUnpool,
            "QuantizeLinear": QuantizeLinear, "DequantizeLinear": DequantizeLinear,
            "Unsqueeze": Unsqueeze, "Reshape": Reshape, "Split": Split, "Conv": Conv,
            "TopK": TopK, "RoiAlign": RoiAlign, "GatherND": GatherND,
            "MaxPool": MaxPool,
            "ConvTranspose": ConvTranspose,
            "SpaceToDepth": SpaceToDepth,
            "NonMaxSuppression": NonMaxSuppression,
            "ReduceMax": reduce_extreme("ReduceMax", -1.0),
            "ReduceMin": reduce_extreme("ReduceMin", 1.0),
            "Attention": Attention, "LayerNormalization": LayerNormalization, "Resize": Resize,
            "Upsample": Upsample, "OneHot": OneHot, "Pow": Pow, "Compress": Compress,
            "IsInf": IsInf, "BitShift": BitShift, "Mod": Mod,
            "RMSNormalization": RMSNormalization, "BatchNormalization": BatchNormalization}


def _s(attr: dict[str, Any], name: str, default: str) -> str:
    v = attr.get(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def resize_plan(shape: list[int], roi: Any, scales: Any, sizes: Any,
                attr: dict[str, Any]) -> dict[str, Any]:
    """Per-axis (scale, output size, roi) of an ONNX Resize with constant parameters, as ONNX's
    reference computes them, and whether TVM's own converter gives exactly that."""
    import numpy as np

    r = len(shape)
    axes = [int(a) % r for a in attr.get("axes", [])] or None
    policy = _s(attr, "keep_aspect_ratio_policy", "stretch")
    full_roi = None
    if roi is not None and np.asarray(roi).size:
        roi = [float(v) for v in np.asarray(roi).reshape(-1)]
        if axes is not None:
            full_roi = [0.0] * r + [1.0] * r
            for i, d in enumerate(axes):
                full_roi[d], full_roi[r + d] = roi[i], roi[len(axes) + i]
        else:
            full_roi = roi
    resized = axes if axes is not None else list(range(r))
    if sizes is not None:
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        out = list(shape)
        for i, d in enumerate(resized):
            out[d] = sizes[i]
        scale = [out[i] / shape[i] for i in range(r)]
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            sc = pick(scale[d] for d in resized)
            scale = [sc if i in resized else 1.0 for i in range(r)]
            out = [int(sc * shape[i] + 0.5) if i in resized else shape[i] for i in range(r)]
    elif scales is not None:
        vals = [float(v) for v in np.asarray(scales).reshape(-1)]
        scale = [1.0] * r
        for i, d in enumerate(resized):
            scale[d] = vals[i]
        out = [int(scale[i] * shape[i]) for i in range(r)]
    else:
        raise ConverterError("Resize: needs scales or sizes")
    mode = _s(attr, "mode", "nearest")
    coord = _s(attr, "coordinate_transformation_mode", "half_pixel")
    exact_ratio = all(abs(out[i] - scale[i] * shape[i]) < 1e-6 * max(1, out[i]) for i in range(r))
    tvm_exact = (
        r in (3, 4, 5) and axes is None and policy == "stretch"
        and not int(attr.get("antialias", 0)) and scale[0] == 1.0 and scale[1] == 1.0
        and out[0] == shape[0] and out[1] == shape[1] and exact_ratio
        and coord in ("half_pixel", "asymmetric", "pytorch_half_pixel", "tf_crop_and_resize",
                      "align_corners")
        and not (coord in ("align_corners", "pytorch_half_pixel", "tf_crop_and_resize")
                 and any(out[i] == 1 for i in range(2, r)))
        and (full_roi is None or coord == "tf_crop_and_resize")
        and mode in ("nearest", "linear", "cubic")
    )
    return {"shape": list(shape), "out": out, "scale": scale, "roi": full_roi,
            "tvm_exact": tvm_exact}


def resize_matrix(n_in: int, n_out: int, scale: float, roi: list[float] | None,
                  attr: dict[str, Any]) -> tuple[Any, Any]:
    """(matrix [n_out, n_in], extrapolated-row mask or None) of ONNX's 1-D interpolation."""
    import numpy as np
    from onnx.reference.ops import op_resize as ref

    mode = _s(attr, "mode", "nearest")
    coord = _s(attr, "coordinate_transformation_mode", "half_pixel")
    antialias = bool(int(attr.get("antialias", 0)))
    a = float(attr.get("cubic_coeff_a", -0.75))
    if mode == "nearest":
        nearest = _s(attr, "nearest_mode", "round_prefer_floor")

        def coeffs(x, s):  # type: ignore[no-untyped-def]
            return ref._nearest_coeffs(x, mode=nearest)
    elif mode == "cubic":
        fn = ref._cubic_coeffs_antialias if antialias else ref._cubic_coeffs

        def coeffs(x, s):  # type: ignore[no-untyped-def]
            return fn(x, s, A=a)
    elif mode == "linear":
        coeffs = ref._linear_coeffs_antialias if antialias else ref._linear_coeffs
    else:
        raise ConverterError(f"Resize: mode {mode!r} is not supported")
    kw = {"roi": roi, "coordinate_transformation_mode": coord,
          "exclude_outside": bool(int(attr.get("exclude_outside", 0)))}
    m = ref._interpolate_1d_along_axis(np.eye(n_in), 0, scale, n_out, coeffs,
                                       extrapolation_value=0.0, **kw)
    probe = ref._interpolate_1d_along_axis(np.ones((n_in, 1)), 0, scale, n_out, coeffs,
                                           extrapolation_value=np.nan, **kw)
    mask = np.isnan(probe.reshape(-1))
    return np.asarray(m, dtype=np.float64), (mask if mask.any() else None)


def separable_resize(bb: Any, x: Any, plan: dict[str, Any], attr: dict[str, Any]) -> Any:
    import numpy as np
    from tvm import relax
    from tvm.relax import op as R

    shape, out, scale, roi = plan["shape"], plan["out"], plan["scale"], plan["roi"]
    r = len(shape)
    dtype = str(bb.normalize(x).ty.dtype)
    mode = _s(attr, "mode", "nearest")
    if mode != "nearest" and dtype not in ("float16", "float32", "float64"):
        raise ConverterError(f"Resize: {mode} mode on {dtype} is not supported")
    extrapolation = float(attr.get("extrapolation_value", 0.0))
    for ax in range(r):
        axis_roi = None if roi is None else [roi[ax], roi[ax + r]]
        if (abs(scale[ax] - 1.0) < 1e-12 and out[ax] == shape[ax]
                and (axis_roi is None or (axis_roi[0] == 0.0 and axis_roi[1] == 1.0))):
            continue
        m, mask = resize_matrix(shape[ax], out[ax], scale[ax], axis_roi, attr)
        if mode == "nearest":
            idx = np.argmax(m, axis=1).astype("int64")
            x = R.take(x, relax.const(idx), axis=ax)
        else:
            cdtype = "float64" if dtype == "float64" else "float32"
            xc = x if dtype == cdtype else R.astype(x, cdtype)
            perm = [i for i in range(r) if i != ax] + [ax]
            inv = [perm.index(i) for i in range(r)]
            y = R.matmul(R.permute_dims(xc, perm), relax.const(m.T.astype(cdtype)))
            y = R.permute_dims(y, inv)
            x = y if dtype == cdtype else R.astype(y, dtype)
        if mask is not None:
            mshape = [1] * r
            mshape[ax] = out[ax]
            x = R.where(relax.const(mask.reshape(mshape)), relax.const(extrapolation, dtype), x)
        x = bb.normalize(x)
    return x
