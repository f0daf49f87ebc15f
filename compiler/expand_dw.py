"""Expand + depthwise fusion: a 1x1 convolution whose only consumer is a 3x3 depthwise convolution
(MobileNetV2's expand -> depthwise, the inverted residual block), computed by one hand-written
kernel that never writes the expanded tensor to memory.

Why: separately, the expand convolution writes a 6x-expanded tensor (MobileNetV2: 112x112x96 =
4.8 MB, 56x56x144 = 1.8 MB) that the depthwise convolution reads back. Neither fits in L2, so in
the model both kernels wait on memory: the depthwise 56x56x144 took 0.234 ms in the model against
0.088 ms timed alone (onnxruntime's: 0.166 ms), and the 112x112x96 stride-2 one 0.277 against
0.092 ms. Here each band of output rows keeps the last 3 expanded rows in a ring buffer (3 x W x E
floats: 19-44 KB): every expanded row is computed once (stride 1: one new row per output row;
stride 2: two), its bias and clamp applied, and read three times by the depthwise taps while it is
in L1/L2. Timed alone, 56x56x24 -> 144 stride 1 took 0.28 ms fused; 112x112x16 -> 96 stride 2
0.51 ms (about 90-100 GFLOP/s on this AVX-512 core).

The rewrite (``rewrite``) works on NHWC relax graphs before legalization:

    y = clamp(depthwise3x3(clamp(conv1x1(x, W1) * s1 + t1, lo1, hi1), Wd) * s2 + t2, lo2, hi2)

where each ``* s + t`` is any chain of add/subtract/multiply/divide by per-channel constants (a
folded batch norm, a bias) and each clamp any ReLU/ReLU6/maximum/minimum; the scales are folded into
the weights. It applies to batch 1, float32, constant weights, channels a multiple of the target's
vector lanes, an output width with a divisor from 4 to 8, and an expanded tensor of at least
``MIN_BYTES`` (0: every such pair). A first version fused only tensors of 1 MiB and more (the
ones that leave L2; MobileNetV2's first 3 pairs), on the guess that the searched schedules of
the separate kernels win when the tensor stays in cache. Measured, fusing all 16 pairs was
faster (same runs: 0.89x against 0.94x of onnxruntime's time at 1 thread, 0.87x against 0.96x
at 2 threads, where it also saves 13 fork/joins of the thread pool; KWS DS-CNN 0.85x against
0.87x), so the threshold is 0. The kernel is marked scheduled: the schedule search leaves it
alone (MobileNetV2 has 19 tasks to search instead of 34).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["kernel", "rewrite"]

MIN_BYTES = 0
# Below this many FLOPs a pair runs on one thread: waking the thread pool's workers costs 3 us
# (spinning) to 22-42 us (sleeping) here, and a 1 MFLOP pair (KWS DS-CNN's 25x5x64) takes ~10 us.
# With every pair on 2 threads KWS ran at 1.07x of onnxruntime's time at 2 threads (0.74x before
# the fusion). MobileNetV2's smallest pair has 9.6 MFLOP.
PARALLEL_FLOPS = 4_000_000
_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")
_CLAMP = ("relax.nn.relu", "relax.maximum", "relax.minimum")
_F32_MAX = float(np.finfo(np.float32).max)


def kernel(h: int, w: int, c: int, e: int, stride: int, lo1: float, hi1: float, lo2: float,
           hi2: float, *, lanes: int = 16, bands: int = 1, groups: int = 1, wt: int = 4,
           wo_t: int = 7, nv: int = 1) -> Any:
    """The fused PrimFunc ``(x (1,h,w,c), w1 (c,e), b1 (e), wd (3,3,e), bd (e)) -> y``:
    ``e1 = clamp(x @ w1 + b1, lo1, hi1)`` (never stored whole), ``y = clamp(dw3x3(pad1(e1), wd) +
    bd, lo2, hi2)`` with the given stride.

    Parallel over ``bands`` bands of output rows x ``groups`` slices of the channels, each with
    its own 3-row ring buffer (a band recomputes the expanded row above it; channel slices
    share nothing). ``wt`` pixels x ``nv`` vectors of ``lanes`` channels per expand accumulator
    tile; ``wo_t`` pixels per depthwise tile (must divide the output width)."""
    from tvm.script import tirx as T

    s = stride
    oh, ow = (h - 1) // s + 1, (w - 1) // s + 1
    if e % (lanes * groups * nv) or ow % wo_t:
        raise ValueError(f"channels {e} / output width {ow} do not tile by {lanes}x{groups} / "
                         f"{wo_t}")
    wp, eg = w + 2, e // groups  # ring width (zero column each side), channels per slice
    rows = -(-oh // bands)
    nwt, ncb = -(-w // wt), eg // lanes
    nl = nv * lanes  # channels per expand tile
    lo1, hi1, lo2, hi2 = (float(v) for v in (lo1, hi1, lo2, hi2))

    @T.prim_func(s_tir=True)
    def expand_dw(x: T.Buffer((1, h, w, c), "float32"), w1: T.Buffer((c, e), "float32"),
                  b1: T.Buffer((e,), "float32"), wd: T.Buffer((3, 3, e), "float32"),
                  bd: T.Buffer((e,), "float32"), y: T.Buffer((1, oh, ow, e), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        with T.sblock("root"), T.sblock("expand_dw"):  # one opaque block (layout passes want one)
            T.reads(x[0, 0:h, 0:w, 0:c], w1[0:c, 0:e], b1[0:e], wd[0:3, 0:3, 0:e], bd[0:e])
            T.writes(y[0, 0:oh, 0:ow, 0:e])
            for t in T.parallel(bands * groups):
                band = t // groups
                c0 = (t % groups) * eg  # first channel of this slice
                ring = T.alloc_buffer((3, wp, eg), "float32")  # row r in slot (r + 1) % 3
                for r, ch in T.grid(3, eg):
                    ring[r, 0, ch] = T.float32(0)
                    ring[r, wp - 1, ch] = T.float32(0)
                for step in range(rows * s + 2):
                    ih = band * rows * s - 1 + step  # the expanded row this step computes
                    if ih >= 0 and ih < h:
                        for wo, cb in T.grid(nwt, ncb // nv):
                            acc = T.alloc_buffer((wt, nl), "float32", scope="local")
                            for p in T.unroll(wt):
                                for j in T.unroll(nv):
                                    for v in T.vectorized(lanes):
                                        acc[p, j * lanes + v] = T.float32(0)
                            for k in range(c):
                                for p in T.unroll(wt):
                                    for j in T.unroll(nv):
                                        for v in T.vectorized(lanes):
                                            if wo * wt + p < w:
                                                acc[p, j * lanes + v] = acc[p, j * lanes + v] + x[
                                                    0, ih, T.min(wo * wt + p, w - 1), k] * w1[
                                                    k, c0 + cb * nl + j * lanes + v]
                            for p in T.unroll(wt):
                                for v in T.vectorized(nl):
                                    if wo * wt + p < w:
                                        ring[(ih + 1) % 3, wo * wt + p + 1, cb * nl + v] = \
                                            T.min(T.max(acc[p, v] + b1[c0 + cb * nl + v],
                                                        T.float32(lo1)), T.float32(hi1))
                    else:  # the zero padding above and below
                        for col, ch in T.grid(wp, eg):
                            ring[(ih + 1) % 3, col, ch] = T.float32(0)
                    # output row o reads expanded rows o*s-1 .. o*s+1: ready once ih = o*s+1
                    o = (ih - 1) // s
                    if (ih - 1) % s == 0 and ih >= 1 + band * rows * s and o < oh \
                            and o < (band + 1) * rows:
                        for owo, cb in T.grid(ow // wo_t, ncb):
                            acc2 = T.alloc_buffer((wo_t, lanes), "float32", scope="local")
                            for p in T.unroll(wo_t):
                                for v in T.vectorized(lanes):
                                    acc2[p, v] = T.float32(0)
                            for ry in range(3):
                                for rx in T.unroll(3):
                                    for p in T.unroll(wo_t):
                                        for v in T.vectorized(lanes):
                                            acc2[p, v] = acc2[p, v] + ring[
                                                (ih - 1 + ry) % 3, (owo * wo_t + p) * s + rx,
                                                cb * lanes + v] * wd[ry, rx, c0 + cb * lanes + v]
                            for p in T.unroll(wo_t):
                                for v in T.vectorized(lanes):
                                    y[0, o, owo * wo_t + p, c0 + cb * lanes + v] = T.min(
                                        T.max(acc2[p, v] + bd[c0 + cb * lanes + v],
                                              T.float32(lo2)), T.float32(hi2))

    return expand_dw


def _const_vector(expr: Any, e: int) -> np.ndarray | None:
    """A constant's value as a float64 vector over the ``e`` channels (scalar or per channel,
    broadcast over NHWC's leading axes); None otherwise."""
    from tvm.ir import GenericConst as Constant

    if not isinstance(expr, Constant) or str(expr.value.dtype) != "float32":
        return None
    v = expr.value.numpy().astype(np.float64)
    if v.size == 1:
        return np.full(e, float(v.reshape(())))
    if v.shape[-1] == e and v.size == e:
        return v.reshape(e)
    return None


def _epilogue(end: Any, bindings: dict, uses: dict, e: int):
    """Walk back from ``end`` through per-channel affine ops and clamps to a conv2d call:
    (conv call, scale, shift, lo, hi), or None when the chain is anything else or an
    intermediate value has another use."""
    from tvm.ir import Call
    from tvm.relax import Var

    ops = []
    expr = end
    while isinstance(expr, Call) and getattr(expr.op, "name", "") in _AFFINE + _CLAMP:
        ops.append(expr)
        src = expr.args[0]
        if getattr(expr.op, "name", "") in ("relax.add", "relax.multiply") and \
                not isinstance(src, Var) and len(expr.args) > 1:
            src = expr.args[1]  # constant first
        if not isinstance(src, Var) or uses.get(src, 0) != 1 or src not in bindings:
            return None
        expr = bindings[src]
    if not isinstance(expr, Call) or getattr(expr.op, "name", "") != "relax.nn.conv2d":
        return None
    scale, shift = np.ones(e), np.zeros(e)
    lo, hi = -np.inf, np.inf
    for op in reversed(ops):
        name = op.op.name
        if name == "relax.nn.relu":
            lo, hi = max(lo, 0.0), max(hi, 0.0)
            continue
        var_first = isinstance(op.args[0], Var)
        const = _const_vector(op.args[1] if var_first else op.args[0], e)
        if const is None:
            return None
        if name in ("relax.maximum", "relax.minimum"):
            if not np.all(const == const[0]):
                return None
            b = float(const[0])
            lo, hi = (max(lo, b), max(hi, b)) if name == "relax.maximum" else (min(lo, b), min(hi, b))
            continue
        if np.isfinite(lo) or np.isfinite(hi):
            return None  # an affine op after a clamp
        if name == "relax.add":
            shift = shift + const
        elif name == "relax.multiply":
            scale, shift = scale * const, shift * const
        elif name == "relax.subtract" and var_first:
            shift = shift - const
        elif name == "relax.divide" and var_first:
            scale, shift = scale / const, shift / const
        else:
            return None
    lo = max(lo, -_F32_MAX)
    hi = min(hi, _F32_MAX)
    return expr, scale, shift, lo, hi


def _static(shape: Any) -> list[int] | None:
    try:
        return [int(d) for d in shape.values]
    except (AttributeError, TypeError):
        return None


def _conv_ok(call: Any, groups_full: bool) -> tuple[list[int], list[int]] | None:
    """(input dims, weight dims) of a batch-1 NHWC/OHWI float32 conv2d with a constant weight
    (``converters.nhwc_conv_weight``): depthwise (groups = channels) or not (groups = 1)."""
    from .converters import nhwc_conv_weight

    wd = nhwc_conv_weight(call)
    xd = _static(getattr(call.args[0].ty, "shape", None)) if wd is not None else None
    if xd is None or len(xd) != 4 or xd[0] != 1:
        return None
    groups = int(call.attrs.groups)
    if not (groups == xd[3] > 1 if groups_full else groups == 1):
        return None
    return xd, wd


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, cap + 1) if n % d == 0)


def expand_tile(w: int, blocks: int, registers: int) -> tuple[int, int]:
    """(pixels, vectors) of the expand's accumulator tile for rows ``w`` pixels wide and
    ``blocks`` vectors of channels (per thread's slice), on a target with ``registers`` vector
    registers: the least estimated time per expanded row, ``ceil(w / pixels) * (blocks /
    vectors)`` tiles each costing per input channel the most of its FMAs, its loads (``pixels``
    broadcasts + ``vectors`` weight vectors; two of either per cycle) and 8 (an FMA's latency
    times the FMA ports: fewer accumulators leave the ports idle); ties go to tiles without a
    ragged end, then to more accumulators; at least 3 pixels and at most 3 vectors (2 x 4 tiles
    measured 15-20% slower than 4 x 3 or 5 x 2 on 14-wide rows). Measured on AVX2 (1 thread,
    against 7 or 4 pixels x 1 vector before): KWS's 25x5x64 pair 0.026 -> 0.015 ms (5 x 2),
    MobileNetV2's 14x14x96 -> 576 0.345 -> 0.293 ms (5 x 2), 56x56x24 -> 144 0.400 -> 0.382 ms
    (4 x 3)."""
    best: tuple[tuple[float, int, int], tuple[int, int]] | None = None
    for nv in range(1, 4):  # 2 x 4 estimated well and measured 20% slower than 5 x 2 or 7 x 1
        if blocks % nv:
            continue
        for wt in range(3, 9):
            if wt * nv + nv + 1 > registers:
                continue
            cost = -(-w // wt) * (blocks // nv) * max(wt * nv, wt + nv, 8)
            key = (cost, w % wt != 0, -wt * nv)
            if best is None or key < best[0]:
                best = (key, (wt, nv))
    return best[1] if best else (4, 1)


def rewrite(mod: Any, lanes: int, bands: int = 1, min_bytes: int | None = None,
            registers: int = 16) -> tuple[Any, int]:
    """``mod`` with every eligible expand -> depthwise pair (see the module docstring) replaced by
    a call of :func:`kernel`; (module, count). ``min_bytes``: smallest expanded tensor fused
    (default ``MIN_BYTES``); ``registers``: the target's vector registers (sizes the expand's
    accumulator tile, :func:`expand_tile`)."""
    if min_bytes is None:
        min_bytes = MIN_BYTES
    from tvm import relax
    from tvm.ir import Call
    from tvm.relax import Var

    from .converters import replace_calls

    def plan(func: Any) -> dict:
        """End call of each fusable chain -> what to emit for it."""
        bindings: dict = {}
        uses: dict = {}
        consumers: dict = {}

        def count_uses(expr: Any, user: Any) -> None:
            if isinstance(expr, Var):
                uses[expr] = uses.get(expr, 0) + 1
                consumers.setdefault(expr, []).append(user)
            elif isinstance(expr, Call):
                for a in expr.args:
                    count_uses(a, expr)
            elif isinstance(expr, relax.Tuple):
                for a in expr.fields:
                    count_uses(a, expr)
            elif isinstance(expr, relax.TupleGetItem):
                count_uses(expr.tuple_value, expr)

        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    bindings[b.var] = b.value
                    count_uses(b.value, b.value)
        count_uses(func.body.body, None)
        out = {}
        for var, value in bindings.items():
            dims = _static(getattr(value.ty, "shape", None)) if isinstance(value, Call) else None
            if dims is None or len(dims) != 4:
                continue
            nxt = consumers.get(var, [])
            if len(nxt) == 1 and isinstance(nxt[0], Call) \
                    and getattr(nxt[0].op, "name", "") in _AFFINE + _CLAMP \
                    and _epilogue(nxt[0], bindings, uses, dims[3]) is not None:
                continue  # not the end of the chain: its consumer extends it
            tail = _epilogue(value, bindings, uses, dims[3])
            if tail is None:
                continue
            dw, s2, t2, lo2, hi2 = tail
            dwd = _conv_ok(dw, groups_full=True)
            if dwd is None or dwd[1][1:] != [3, 3, 1] \
                    or [int(p) for p in dw.attrs.padding] != [1] * 4:
                continue
            stride = [int(s) for s in dw.attrs.strides]
            mid = dw.args[0]
            if stride not in ([1, 1], [2, 2]) or not isinstance(mid, Var) \
                    or uses.get(mid) != 1 or mid not in bindings:
                continue
            head = _epilogue(bindings[mid], bindings, uses, dwd[0][3])
            if head is None:
                continue
            ex, s1, t1, lo1, hi1 = head
            exd = _conv_ok(ex, groups_full=False)
            if exd is None or exd[1][1:3] != [1, 1] \
                    or [int(p) for p in ex.attrs.padding] != [0] * 4 \
                    or [int(s) for s in ex.attrs.strides] != [1, 1]:
                continue
            (_, h, w, c), ch = exd[0], exd[1][0]
            if ch % lanes or h * w * ch * 4 < min_bytes:
                continue
            wo_t = _largest_divisor(dims[2], 8)
            if wo_t < 4:
                continue
            w1 = ex.args[1].value.numpy().astype(np.float64).reshape(ch, c).T * s1
            wdw = dw.args[1].value.numpy().astype(np.float64).reshape(ch, 3, 3) \
                .transpose(1, 2, 0) * s2
            out[value] = dict(x=ex.args[0], h=h, w=w, c=c, e=ch, s=stride[0], oh=dims[1],
                              ow=dims[2], w1=w1, b1=t1, wd=wdw, bd=t2, lo1=lo1, hi1=hi1, lo2=lo2,
                              hi2=hi2, wo_t=wo_t)
        return out

    def fuse(m: Any, p: dict) -> Any:
        # threads split the channels when they divide evenly (nothing recomputed), else rows;
        # one thread below PARALLEL_FLOPS (waking the pool costs more than it saves)
        flops = 2 * p["h"] * p["w"] * p["c"] * p["e"] + 18 * p["oh"] * p["ow"] * p["e"]
        threads = bands if flops >= PARALLEL_FLOPS else 1
        groups = threads if (p["e"] // lanes) % threads == 0 else 1
        wt, nv = expand_tile(p["w"], p["e"] // groups // lanes, registers)
        prim = kernel(p["h"], p["w"], p["c"], p["e"], p["s"], p["lo1"], p["hi1"], p["lo2"],
                      p["hi2"], lanes=lanes, bands=min(threads // groups, p["oh"]),
                      groups=groups, wt=wt, wo_t=p["wo_t"], nv=nv)
        gv = m.builder_.add_func(prim.without_attr("global_symbol"), "expand_dw")
        consts = [relax.const(np.ascontiguousarray(p[k], np.float32))
                  for k in ("w1", "b1", "wd", "bd")]
        return relax.call_tir(gv, [m.visit_expr(p["x"]), *consts],
                              relax.TensorType((1, p["oh"], p["ow"], p["e"]), "float32"))

    out, count = replace_calls(mod, plan, fuse)
    if count:
        logger.info("expand+depthwise: %d pairs fused", count)
    return out, count

