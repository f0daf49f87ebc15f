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
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["rewrite"]

_PERMUTE = "relax.permute_dims"
_MATMUL = "relax.matmul"


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


def _at(x: Any, perm: list[int], idx: list[Any]) -> Any:
    """``permute_dims(x, perm)[idx]``, read from ``x``."""
    src: list[Any] = [None] * len(perm)
    for k, p in enumerate(perm):
        src[p] = idx[k]
    return x[tuple(src)]


def _matmul_te(a: Any, perm_a: list[int], b: Any, perm_b: list[int], perm_out: list[int]) -> Any:
    """``permute_dims(matmul(permute_dims(a, perm_a), permute_dims(b, perm_b)), perm_out)`` for
    4-D ``a`` and ``b``, as one compute."""
    from tvm import te

    sa = [a.shape[p] for p in perm_a]
    sb = [b.shape[p] for p in perm_b]
    sm = [sa[0], sa[1], sa[2], sb[3]]
    r = te.reduce_axis((0, sa[3]), name="r")

    def value(*t: Any) -> Any:
        m: list[Any] = [None] * 4
        for k, p in enumerate(perm_out):
            m[p] = t[k]
        return te.sum(_at(a, perm_a, [m[0], m[1], m[2], r]) * _at(b, perm_b, [m[0], m[1], r, m[3]]),
                      axis=r)

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

        def operand(x: Any) -> tuple[Any, list[int]]:
            """The tensor a 4-D operand is a permutation of (through any chain of permute_dims),
            and the composed permutation."""
            perm = identity
            while isinstance(x, Var) and isinstance(bindings.get(x), Call) \
                    and getattr(bindings[x].op, "name", "") == _PERMUTE:
                inner = bindings[x]
                p = _perm(inner, 4)
                perm = [p[k] for k in perm]
                x = inner.args[0]
            return x, perm

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
            (a, pa), (b, pb) = operand(value.args[0]), operand(value.args[1])
            da, db = _dims(value.args[0]), _dims(value.args[1])
            if da is None or db is None or da[:2] != db[:2]:  # no broadcast over the batch
                continue
            out, po = value, identity
            users = [v for v, e in bindings.items() if isinstance(e, Call)
                     and getattr(e.op, "name", "") == _PERMUTE and e.args[0].same_as(var)]
            if uses.get(var) == 1 and len(users) == 1:
                out, po = bindings[users[0]], _perm(bindings[users[0]], 4)
            if pa == identity and pb == identity and po == identity:
                continue
            todo[out] = (a, pa, b, pb, po)
        return todo

    def fold(m: Any, p: tuple) -> Any:
        a, pa, b, pb, po = p
        return m.builder_.call_te(_matmul_te, m.visit_expr(a), pa, m.visit_expr(b), pb, po,
                                  primfunc_name_hint="attention_matmul")

    out, count = replace_calls(mod, plan, fold)
    if count:
        logger.info("attention: %d batched matmuls read/write through their transposes", count)
    return out, count
