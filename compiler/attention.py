"""Transposes folded into the batched matmuls of attention.

Multi-head attention, as ONNX exporters write it, splits Q, K and V into heads with
``Reshape [b, s, h, d] -> Transpose``, multiplies ``Q K^T`` and ``P V`` as 4-D batched MatMuls,
and merges the heads back with ``Transpose -> Reshape``. Compiled as written, every Transpose is
a kernel that copies a tensor: 4 per layer in the benchmark's transformer encoder (d=256, s=128),
and the one of K (``[0, 2, 3, 1]``, to ``[b, h, d, s]``) is a real transpose, 31-42 us per call
on this machine against 2 us for the others (copies of contiguous rows); waking the thread pool
for each cost ~20 us more at 2 threads.

Here a 4-D ``matmul`` whose operands are ``permute_dims`` of 4-D tensors, or whose only use is a
``permute_dims``, becomes one TE function that reads its operands through those permutations and
writes its result in the permuted order: ``scores[n, h, i, j] = sum_r Q4[n, i, h, r] *
K4[n, j, h, r]`` with ``Q4``/``K4`` the reshaped (not transposed) projections. What is left of
the head split and merge are reshapes, which TVM compiles to views. MetaSchedule schedules the
new function as any other matmul (it is one, with permuted indices).

Before that, :func:`combine_projections` makes the Q, K and V projections of one input one
matmul with the three weights side by side, and each projection a column slice of its result;
the fold reads a head split of such a slice straight from the combined tensor
(``Q4[n, i, h, r] = QKV[n, i, h * hd + r]``, K and V at their column offsets), so the slices
never become copies. One 128x256x768 GEMM instead of three 128x256x256 ones: the thread pool is
woken once instead of three times, and the wider GEMM parallelises better (alone at 2 threads on
znver3, a 256-wide projection ran 1.43x faster than on one thread, the 1024-wide FFN 1.9x).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["combine_projections", "rewrite"]

_PERMUTE = "relax.permute_dims"
_MATMUL = "relax.matmul"
_RESHAPE = "relax.reshape"
_SLICE = "relax.strided_slice"
_ADD = "relax.add"


def _dims(expr: Any) -> list[int] | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    try:
        return [int(d) for d in shape.values]
    except TypeError:  # symbolic
        return None


def _perm(call: Any, rank: int) -> list[int]:
    axes = call.attrs.axes
    return list(range(rank))[::-1] if axes is None else [int(a) for a in axes]


def _column_slice(call: Any) -> tuple[Any, int] | None:
    """(tensor, offset) when ``call`` is a ``strided_slice`` of a 3-D tensor's last axis with
    stride 1 and static bounds; None otherwise."""
    dims = _dims(call.args[0])
    try:
        axes, begin = ([int(f) for f in call.args[k].fields] for k in (1, 2))
        strides = [int(f) for f in call.args[4].fields] if len(call.args) > 4 else [1]
    except (TypeError, AttributeError):  # symbolic bounds
        return None
    if dims is None or len(dims) != 3 or len(axes) != 1 or axes[0] % 3 != 2 \
            or strides != [1] or not 0 <= begin[0] < dims[2]:
        return None
    return call.args[0], begin[0]


def _shape4(x: Any, view: tuple) -> list[Any]:
    """The 4-D shape an operand is read as: its own, or ``[b, s, heads, hd]`` of a split view."""
    if not view:
        return list(x.shape)
    _, heads, hd = view
    return [x.shape[0], x.shape[1], heads, hd]


def _at(x: Any, perm: list[int], idx: list[Any], view: tuple = ()) -> Any:
    """``permute_dims(v, perm)[idx]``, read from ``x``: ``v`` is ``x`` itself, or with a
    ``view`` ``(offset, heads, hd)`` the heads of a column range of 3-D ``x``:
    ``v[n, i, h, r] = x[n, i, offset + h * hd + r]``."""
    src: list[Any] = [None] * len(perm)
    for k, p in enumerate(perm):
        src[p] = idx[k]
    if not view:
        return x[tuple(src)]
    offset, _, hd = view
    return x[src[0], src[1], offset + src[2] * hd + src[3]]


def _matmul_te(a: Any, perm_a: list[int], b: Any, perm_b: list[int], perm_out: list[int],
               view_a: tuple = (), view_b: tuple = ()) -> Any:
    """``permute_dims(matmul(permute_dims(a, perm_a), permute_dims(b, perm_b)), perm_out)`` for
    4-D ``a`` and ``b`` (or 3-D ones read through a view, see :func:`_at`), as one compute."""
    from tvm import te

    sa = [_shape4(a, view_a)[p] for p in perm_a]
    sb = [_shape4(b, view_b)[p] for p in perm_b]
    sm = [sa[0], sa[1], sa[2], sb[3]]
    r = te.reduce_axis((0, sa[3]), name="r")

    def value(*t: Any) -> Any:
        m: list[Any] = [None] * 4
        for k, p in enumerate(perm_out):
            m[p] = t[k]
        return te.sum(_at(a, perm_a, [m[0], m[1], m[2], r], view_a)
                      * _at(b, perm_b, [m[0], m[1], r, m[3]], view_b), axis=r)

    return te.compute([sm[p] for p in perm_out], value, name="attention_matmul")


def rewrite(mod: Any) -> tuple[Any, int]:
    """``mod`` with every 4-D float32 batched matmul that reads or feeds a ``permute_dims``
    computed through the permutation instead (see the module docstring); (module, count)."""
    from tvm import relax
    from tvm.ir import Call
    from tvm.relax import Var

    from .converters import replace_calls

    identity = [0, 1, 2, 3]

    def plan(func: Any) -> dict:
        """Call to replace -> (base a, perm a, base b, perm b, output perm)."""
        bindings: dict = {}
        uses: dict = {}

        def count_uses(expr: Any) -> None:
            if isinstance(expr, Var):
                uses[expr] = uses.get(expr, 0) + 1
            elif isinstance(expr, Call):
                for a in expr.args:
                    count_uses(a)
            elif isinstance(expr, relax.Tuple):
                for a in expr.fields:
                    count_uses(a)
            elif isinstance(expr, relax.TupleGetItem):
                count_uses(expr.tuple_value)

        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    bindings[b.var] = b.value
                    count_uses(b.value)
        count_uses(func.body.body)

        def op_of(x: Any) -> str:
            return (getattr(bindings[x].op, "name", "") if isinstance(x, Var)
                    and isinstance(bindings.get(x), Call) else "")

        def operand(x: Any) -> tuple[Any, list[int], tuple]:
            """The tensor a 4-D operand is a permutation of (through any chain of permute_dims),
            the composed permutation, and the view it is read through: ``()``, or ``(offset,
            heads, hd)`` when that tensor is the head split (a reshape ``[b, s, n] -> [b, s,
            heads, hd]``) of a column slice ``[offset, offset + n)`` of a 3-D tensor, such as
            one projection's share of :func:`combine_projections`'s matmul."""
            perm = identity
            while op_of(x) == _PERMUTE:
                inner = bindings[x]
                p = _perm(inner, 4)
                perm = [p[k] for k in perm]
                x = inner.args[0]
            if op_of(x) == _RESHAPE and op_of(bindings[x].args[0]) == _SLICE:
                split = _column_slice(bindings[bindings[x].args[0]])
                d3, d4 = _dims(bindings[x].args[0]), _dims(x)
                if split is not None and d3 is not None and d4 is not None and len(d3) == 3 \
                        and len(d4) == 4 and d4[:2] == d3[:2] and d4[2] * d4[3] == d3[2]:
                    base, offset = split
                    return base, perm, (offset, d4[2], d4[3])
            return x, perm, ()

        def float4(expr: Any) -> bool:
            dims = _dims(expr)
            return dims is not None and len(dims) == 4 \
                and str(getattr(expr.ty, "dtype", "")) == "float32"

        todo: dict = {}
        for var, value in bindings.items():
            if not isinstance(value, Call) or getattr(value.op, "name", "") != _MATMUL:
                continue
            if not (float4(value) and float4(value.args[0]) and float4(value.args[1])):
                continue
            (a, pa, va), (b, pb, vb) = operand(value.args[0]), operand(value.args[1])
            da, db = _dims(value.args[0]), _dims(value.args[1])
            if da is None or db is None or da[:2] != db[:2]:  # no broadcast over the batch
                continue
            out, po = value, identity
            users = [v for v, e in bindings.items() if isinstance(e, Call)
                     and getattr(e.op, "name", "") == _PERMUTE and e.args[0].same_as(var)]
            if uses.get(var) == 1 and len(users) == 1:
                out, po = bindings[users[0]], _perm(bindings[users[0]], 4)
            if pa == identity and pb == identity and po == identity and not va and not vb:
                continue
            todo[out] = (a, pa, b, pb, po, va, vb)
        return todo

    def fold(m: Any, p: tuple) -> Any:
        a, pa, b, pb, po, va, vb = p
        return m.builder_.call_te(_matmul_te, m.visit_expr(a), pa, m.visit_expr(b), pb, po,
                                  va, vb, primfunc_name_hint="attention_matmul")

    out, count = replace_calls(mod, plan, fold)
    if count:
        logger.info("attention: %d batched matmuls read/write through their transposes", count)
    return out, count


def combine_projections(mod: Any) -> tuple[Any, int]:
    """The projections of one input that are split into heads, as one matmul; (module, number
    of projections combined).

    Chosen: two or more ``matmul(x, W_i)`` (+ ``b_i``) of one 3-D float32 input in one dataflow
    block, each ``W_i`` a constant ``[K, N_i]`` (``b_i`` a constant ``[N_i]``, or none), each
    result used only by reshapes into heads ``[b, s, h, N_i / h]`` that only permutes and
    batched matmuls read (multi-head attention's Q, K and V). They become one matmul with the
    weights side by side, and each result a column slice of it, which :func:`rewrite` reads
    through: no copy is left, and the pool is woken once instead of three times. The
    benchmark's encoder at 2 threads (znver3): the 128x256x256 projections took 0.19-0.22 ms each
    in the model (0.125 ms alone, 0.18 ms on one thread), onnxruntime's 0.14 ms.
    """
    import numpy as np
    from tvm import relax
    from tvm.ir import Call
    from tvm.ir import GenericConst as Constant
    from tvm.relax import Var

    from .converters import replace_calls

    def plan_block(block: Any) -> dict:
        todo: dict = {}
        bindings = {b.var: b.value for b in block.bindings if isinstance(b, relax.VarBinding)}
        users: dict = {}
        for var, value in bindings.items():
            args = (value.args if isinstance(value, Call) else
                    value.fields if isinstance(value, relax.Tuple) else [])
            for a in args:
                if isinstance(a, Var):
                    users.setdefault(a, []).append(var)

        def name(v: Any) -> str:
            e = bindings.get(v)
            return getattr(e.op, "name", "") if isinstance(e, Call) else ""

        def heads_only(v: Any) -> bool:
            """Every use of ``v`` a reshape into 4-D heads read only by permutes/matmuls
            (all within the block: dataflow vars)."""
            uses = users.get(v, [])
            if not uses or not isinstance(v, relax.DataflowVar):
                return False
            for u in uses:
                d3, d4 = _dims(v), _dims(u)
                if name(u) != _RESHAPE or not isinstance(u, relax.DataflowVar) \
                        or d3 is None or d4 is None or len(d4) != 4 \
                        or d4[:2] != d3[:2] or d4[2] * d4[3] != d3[2]:
                    return False
                if not users.get(u) or not all(name(w) in (_PERMUTE, _MATMUL)
                                               for w in users[u]):
                    return False
            return True

        groups: dict = {}
        for var, value in bindings.items():
            if name(var) != _MATMUL:
                continue
            x, w = value.args
            dx = _dims(x)
            if not isinstance(w, Constant) or str(w.value.dtype) != "float32" \
                    or len(w.value.shape) != 2 or dx is None or len(dx) != 3 \
                    or str(getattr(x.ty, "dtype", "")) != "float32" \
                    or not isinstance(x, Var):
                continue
            out, bias = var, None
            uses = users.get(var, [])
            if len(uses) == 1 and name(uses[0]) == _ADD:
                other = [a for a in bindings[uses[0]].args if not a.same_as(var)]
                if len(other) == 1 and isinstance(other[0], Constant) \
                        and tuple(other[0].value.shape) in ((w.value.shape[1],),
                                                            (1, 1, w.value.shape[1])):
                    out, bias = uses[0], other[0].value
            if heads_only(out):
                groups.setdefault(x, []).append((out, w.value, bias))
        for x, members in groups.items():
            if len(members) < 2:
                continue
            # the weights are copied out of the module only for the projections combined
            weight = np.concatenate([m[1].numpy() for m in members], axis=1)
            bias = None
            if any(m[2] is not None for m in members):
                bias = np.concatenate([m[2].numpy().reshape(-1) if m[2] is not None else
                                       np.zeros(m[1].shape[1], np.float32) for m in members])
            shared = {"x": x, "weight": weight, "bias": bias, "var": None}
            offset = 0
            for out, w, _ in members:
                todo[bindings[out]] = (shared, offset, w.shape[1])
                offset += w.shape[1]

        return todo

    def plan(func: Any) -> dict:
        todo: dict = {}
        for block in func.body.blocks:
            todo.update(plan_block(block))
        return todo

    def replace(m: Any, p: tuple) -> Any:
        shared, offset, n = p
        if shared["var"] is None:
            y = m.builder_.emit(relax.op.matmul(m.visit_expr(shared["x"]),
                                                relax.const(shared["weight"])))
            if shared["bias"] is not None:
                y = m.builder_.emit(relax.op.add(y, relax.const(shared["bias"])))
            shared["var"] = y
        return relax.op.strided_slice(shared["var"], axes=[2], begin=[offset],
                                      end=[offset + n])

    out, count = replace_calls(mod, plan, replace)
    if count:
        logger.info("attention: %d projections combined into wider matmuls", count)
    return out, count
