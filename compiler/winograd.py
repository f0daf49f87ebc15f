"""Winograd F(m×m, 3×3) for float32 NHWC 3×3 convolutions with constant weights (CPU builds).

A direct 3×3 convolution costs 9 multiply-adds per output and input channel; Winograd's minimal
filtering computes an m×m output tile from an (m+2)×(m+2) input tile with (m+2)² multiplies per
channel pair: 2.25× fewer for m = 4 (36 vs 144 per 16 outputs), at the price of transforming the
input and output tiles (a few adds per element, memory-bound) and a transformed weight (m+2)²/9 =
4× larger. onnxruntime's MLAS has no Winograd; TVM's relax pipeline does not use TOPI's.

The rewrite replaces ``relax.nn.conv2d`` (NHWC data, OHWI constant kernel, stride 1, dilation 1,
one group, float32) by::

    V = data_pack(x)            # (α, α, P, Ci)   B^T d B per tile, P = tiles of the output
    M = matmul(V, U)            # (α², P, Co)     α² batched GEMMs; U = G g G^T, folded offline
    y = inverse(M)              # (N, H, W, Co)   A^T M A per tile, cropped

``U`` is computed here in float64 and stored as float32 (a compile-time constant, prepacked like
any other weight). ``data_pack`` and ``inverse`` are TE functions whose transforms run as two
separable 1-D passes with the transform matrices' entries as literals (most are 0 or ±1, left
out or added without a multiply). The GEMM is an ordinary relax matmul, which the GEMM template
and MetaSchedule's CPU rules schedule.

The transforms have their own template (``candidates``): parallel over (tile, channel vector),
the tile's loops unrolled so the literals fold, the epilogue (bias, residual, ReLU) inlined into
the inverse. MetaSchedule's samples of them leave the per-index selects unfolded. Measured
(AVX2, 1 thread, alone): ResNet-18's 56x56x64 data pack 0.14 ms and inverse + epilogue 0.12-0.14
ms; with the matrices as a function input and sampled schedules they took 0.50 and 0.47 ms in the
model and did not speed up at 2 threads. ResNet-18: 0.79x -> 0.69x of onnxruntime's time at 1
thread, 1.00x -> 0.81x at 2.

Numerics: the Cook-Toom points (0, ±1, ±1/2, ∞ for m = 4) give errors of a few float32 ulps times
the channel count, the same order as the direct convolution's summation-order differences
(checked against onnxruntime in tests/integration/test_winograd.py).

When it applies (``eligible``): the output must be at least ``min_hw`` on each side (small
feature maps waste most of a 4×4 tile and read a 4× larger weight per output) and the GEMM
must have enough work to amortise the transforms.

The tile size is chosen per convolution (``choose_tile``): the batched GEMM reads its
transformed weight, (m+2)² × Ci × Co floats, once per inference, and a model's weights do not
stay in cache from one inference to the next. With few output tiles the GEMM is bound by that
read, not by its multiply-adds: ResNet-18's 7×7×512 layers have 4 tiles of 4×4, a 37.7 MB
F(4×4) weight, and their GEMMs took 2.35-2.77 ms in the model (about 14 GB/s, this core's
memory bandwidth) against 1.6 ms timed alone with the weight in cache. F(2×2) reads 16.8 MB.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["rewrite", "transform_matrices"]

TILE = 4          # m: outputs per tile side, the largest one chosen
TILES = (2, 4)    # the tile sizes choose_tile picks from
BALANCE = 8.0     # float32 multiply-add FLOPs a core runs per byte it reads from memory (this
                  # x86 core: ~100 GFLOP/s against ~14 GB/s; a Cortex-A72: ~20 against ~4)
MIN_HW = 7        # smallest output side rewritten (7x7x512: 1.6 ms vs 2.9 ms direct)
MIN_CHANNELS = 16  # smallest input and output channel count rewritten
_OUT_ELEMWISE_FUSABLE = 4  # relax's OpPatternKind.kOutEWiseFusable


def transform_matrices(m: int = TILE, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, G) of F(m, r) in float64: A is α×m, B α×α, G α×r (α = m + r - 1), TOPI's points."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    pts = _interpolation_points(m + r - 2)
    a, b, g = _cook_toom_convolution(pts, m, r)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


def choose_tile(n: int, out_hw: tuple[int, int], tiles: tuple[int, ...] = TILES,
                balance: float = BALANCE) -> int:
    """The tile size m whose batched GEMM has the smallest roofline time, max(FLOPs, weight
    bytes x ``balance``), per input x output channel pair (the channel counts cancel): the GEMM
    does 2 (m+2)² P multiply-adds per weight float for P output tiles and reads (m+2)² x 4
    bytes of weight. Ties go to the smaller weight (threads add FLOPs, not bandwidth).
    7x7 -> 2, 14x14 and larger -> 4."""

    def cost(m: int) -> tuple[float, int]:
        alpha2 = (m + 2) ** 2
        p = n * -(-out_hw[0] // m) * -(-out_hw[1] // m)
        return max(2.0 * alpha2 * p, 4.0 * alpha2 * balance), alpha2

    return min(tiles, key=cost)


def _weight_pack(kernel_ohwi: np.ndarray, g: np.ndarray) -> np.ndarray:
    """U[ε·α+ν, ci, co] = Σ G[ε,kh] G[ν,kw] w[co,kh,kw,ci] (float64, then float32)."""
    alpha = g.shape[0]
    w = kernel_ohwi.astype(np.float64)
    u = np.einsum("ek,nl,oklc->enco", g, g, w)
    return np.ascontiguousarray(u.reshape(alpha * alpha, w.shape[3], w.shape[0]), np.float32)


def _combination(coefs: np.ndarray, term: Any) -> Any:
    """``sum_a coefs[a] * term(a)`` as a TIR expression with the (float32) coefficients as
    literals: zero terms left out, +-1 without a multiply."""
    import tvm

    expr = None
    for a, c in enumerate(float(np.float32(v)) for v in coefs):
        if c == 0.0:
            continue
        t = term(a)
        if c not in (1.0, -1.0):
            t = t * tvm.tirx.const(abs(c), "float32")
        if expr is None:
            expr = t if c > 0 else tvm.tirx.const(0.0, "float32") - t
        else:
            expr = expr + t if c > 0 else expr - t
    return expr if expr is not None else tvm.tirx.const(0.0, "float32")


def _per_index(idx: Any, cases: list[Any]) -> Any:
    """``cases[idx]`` as a chain of selects: one case once ``idx`` is a constant (an unrolled
    loop), which the simplifier folds away."""
    import tvm

    expr = cases[-1]
    for j in range(len(cases) - 2, -1, -1):
        expr = tvm.tirx.Select(idx == j, cases[j], expr)
    return expr


def _data_pack_te(x: Any, bmat: np.ndarray, pads: tuple[int, int, int, int],
                  out_hw: tuple[int, int], m: int) -> Any:
    from tvm import te, topi

    n, _, _, ci = (int(d) for d in x.shape)
    alpha = int(bmat.shape[0])
    oh, ow = out_hw
    nh, nw = -(-oh // m), -(-ow // m)
    pt, pl = pads[0], pads[1]
    # zero padding below and right up to where the last tile (stride m, size α) ends: at least the
    # convolution's own bottom/right padding, since need >= out + 2 = in + top + bottom
    need_h, need_w = (nh - 1) * m + alpha, (nw - 1) * m + alpha
    h, w = int(x.shape[1]), int(x.shape[2])
    xp = topi.nn.pad(x, (0, pt, pl, 0), (0, need_h - h - pt, need_w - w - pl, 0),
                     name="wino_pad")
    p_total = n * nh * nw

    def tile(a: Any, b: Any, p: Any, c: Any) -> Any:
        return xp[p // (nh * nw), ((p // nw) % nh) * m + a, (p % nw) * m + b, c]

    # B^T d B as two passes, with B's entries as literals (most are 0 or +-1)
    t1 = te.compute((alpha, alpha, p_total, ci),
                    lambda e, b, p, c: _per_index(e, [
                        _combination(bmat[:, j], lambda a: tile(a, b, p, c))
                        for j in range(alpha)]),
                    name="wino_dpack_rows")
    return te.compute((alpha * alpha, p_total, ci),
                      lambda en, p, c: _per_index(en % alpha, [
                          _combination(bmat[:, j], lambda b: t1[en // alpha, b, p, c])
                          for j in range(alpha)]),
                      name="wino_dpack")


def _inverse_te(mm: Any, amat: np.ndarray, n: int, out_hw: tuple[int, int], m: int) -> Any:
    from tvm import te

    alpha = int(amat.shape[0])
    oh, ow = out_hw
    nh, nw = -(-oh // m), -(-ow // m)
    _, p_total, co = (int(d) for d in mm.shape)
    s1 = te.compute((m, alpha, p_total, co),
                    lambda vh, b, p, c: _per_index(vh, [
                        _combination(amat[:, j], lambda a: mm[a * alpha + b, p, c])
                        for j in range(m)]),
                    name="wino_inv_rows")
    return te.compute(
        (n, oh, ow, co),
        lambda b_, h, w, c: _per_index(w % m, [
            _combination(amat[:, j], lambda rb: s1[h % m, rb, b_ * nh * nw + (h // m) * nw
                                                   + w // m, c])
            for j in range(m)]),
        name="wino_inverse")


def eligible(call: Any, min_hw: int = MIN_HW) -> bool:
    """Whether ``call`` is a conv2d this rewrite handles (see the module docstring)."""
    from .converters import nhwc_conv_weight

    ws = nhwc_conv_weight(call)
    if ws is None or int(call.attrs.groups) != 1 or [int(s) for s in call.attrs.strides] != [1, 1]:
        return False
    if ws[1:3] != [3, 3] or ws[0] < MIN_CHANNELS or ws[3] < MIN_CHANNELS:
        return False
    shape = getattr(call.ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return False
    try:
        dims = [int(d) for d in shape.values]
    except TypeError:  # symbolic
        return False
    return dims[1] >= min_hw and dims[2] >= min_hw


def rewrite(mod: Any, m: int | None = None, min_hw: int = MIN_HW) -> tuple[Any, int]:
    """``mod`` with every eligible conv2d replaced by its Winograd form; (module, count).
    ``m``: the tile size of every rewritten convolution (None: :func:`choose_tile` per layer)."""
    from tvm import relax
    from tvm.relax import PyExprMutator, expr_functor

    from .converters import rewrite_functions

    mats: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if m not in mats:
            mats[m] = transform_matrices(m)
        return mats[m]

    count = 0
    used: dict[int, int] = {}

    @expr_functor.mutator
    class _Winograd(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call):  # type: ignore[no-untyped-def]
            nonlocal count
            call = super().visit_call_(call)
            if not eligible(call, min_hw):
                return call
            x, w = call.args
            dims = [int(d) for d in call.ty.shape.values]
            pads = tuple(int(p) for p in call.attrs.padding)
            mt = m if m is not None else choose_tile(dims[0], (dims[1], dims[2]))
            amat, bmat, g64 = matrices(mt)
            u = _weight_pack(w.value.numpy(), g64)
            bb = self.builder_
            # the matrices are literals of the functions (closures: call_te takes no arrays)
            v = bb.emit(bb.call_te(lambda t: _data_pack_te(t, bmat, pads, (dims[1], dims[2]), mt), x,
                                   primfunc_name_hint="winograd_data_pack"))
            mm = bb.emit(relax.op.matmul(v, relax.const(u)))
            count += 1
            used[mt] = used.get(mt, 0) + 1
            return bb.call_te(lambda t: _inverse_te(t, amat, dims[0], (dims[1], dims[2]), mt), mm,
                              primfunc_name_hint="winograd_inverse")

    out = rewrite_functions(mod, _Winograd(mod))
    if count:
        out = relax.transform.DeadCodeElimination()(out)
        # Both transforms are injective: FuseOps would fuse the data pack into the previous
        # layer's inverse and the inverse into the next elementwise consumer's group (two tilings
        # in one function, which the templates do not schedule). Marked as kernels whose output
        # takes elementwise consumers, as a reduction's does.
        for gv, func in list(out.functions.items()):
            if gv.name_hint.startswith(("winograd_data_pack", "winograd_inverse")):
                out[gv] = func.with_attr("op_pattern", _OUT_ELEMWISE_FUSABLE)
        logger.info("winograd: %d conv2d rewritten (%s)", count,
                    ", ".join(f"{k} as F({t}x{t}, 3x3)" for t, k in sorted(used.items())))
    return out, count


def _vector(extent: int, lanes: int) -> int:
    """Channels per tile: two vectors (a whole 64-byte line on AVX2) when they divide the
    channels, else the widest power of two that does."""
    v = 2 * lanes
    while extent % v:
        v //= 2
    return v


def _unroll_all_vectorize_last(sch: Any, loops: list[Any]) -> None:
    for lp in loops[:-1]:
        if int(sch.get(lp).extent) > 1:
            sch.unroll(lp)
    sch.vectorize(loops[-1])


def _pack_schedule(tmod: Any, lanes: int, inline_pad: bool) -> Any:
    """Data pack: parallel over (tile, channel vector); per tile, the α×α×vector input tile is
    transformed by rows then columns with the loops unrolled, so B's literals fold into adds."""
    from tvm.s_tir import Schedule

    sch = Schedule(tmod, debug_mask="none")
    pad, rows, out = (sch.get_sblock(n) for n in ("wino_pad", "wino_dpack_rows", "wino_dpack"))
    en, p, c = sch.get_loops(out)
    vl = _vector(int(sch.get(c).extent), lanes)
    if inline_pad:
        sch.compute_inline(pad)
    else:  # padded once, in parallel (every load in the transform would test the border)
        pl = sch.get_loops(pad)
        sch.parallel(sch.fuse(*pl[:2]))
        inner = sch.fuse(*pl[2:])
        sch.vectorize(sch.split(inner, [None, lanes])[1])
    co, ci = sch.split(c, [None, vl])
    sch.reorder(p, co, en, ci)
    outer = sch.fuse(p, co)
    sch.compute_at(rows, outer)
    _unroll_all_vectorize_last(sch, sch.get_loops(rows)[1:])
    _unroll_all_vectorize_last(sch, [en, ci])
    sch.parallel(outer)
    return sch


def _inverse_schedule(tmod: Any, lanes: int) -> Any | None:
    """Inverse: the epilogue (bias, residual, ReLU) inlined into it; parallel over (output tile,
    channel vector), the m×m×vector output tile computed from its α×α×vector input with the
    loops unrolled (A's literals fold), written once through the epilogue."""
    from tvm.s_tir import Schedule

    sch = Schedule(tmod, debug_mask="none")
    rows = sch.get_sblock("wino_inv_rows")
    m = int(sch.get(sch.get_loops(rows)[0]).extent)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    after = blocks[[sch.get(b).same_as(sch.get(rows)) for b in blocks].index(True) + 1:]
    for b in after[:-1]:
        sch.compute_inline(b)
    loops = sch.get_loops(after[-1])
    if len(loops) != 4:
        return None
    b_, h, w, c = loops
    vl = _vector(int(sch.get(c).extent), lanes)
    th, vh = sch.split(h, [None, m])
    tw, vw = sch.split(w, [None, m])
    co, ci = sch.split(c, [None, vl])
    sch.reorder(b_, th, tw, co, vh, vw, ci)
    outer = sch.fuse(b_, th, tw, co)
    sch.compute_at(rows, outer)
    _unroll_all_vectorize_last(sch, sch.get_loops(rows)[1:])
    _unroll_all_vectorize_last(sch, [vh, vw, ci])
    sch.parallel(outer)
    return sch


def candidates(tmod: Any, postprocs: Any, lanes: int) -> list[Any]:
    """Schedules of a Winograd data pack or inverse (with its fused epilogue) for the search,
    next to MetaSchedule's samples; empty for any other function."""
    from .templates import postprocessed

    names = {str(b.name_hint) for b in _blocks(tmod)}
    if "wino_dpack" in names:
        return postprocessed((False, True), lambda v: _pack_schedule(tmod, lanes, v), postprocs,
                             "Winograd data pack")
    if "wino_inv_rows" in names:
        return postprocessed((None,), lambda _: _inverse_schedule(tmod, lanes), postprocs,
                             "Winograd inverse")
    return []


def _blocks(tmod: Any) -> list[Any]:
    from tvm.s_tir import Schedule

    try:
        sch = Schedule(tmod, debug_mask="none")
        return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    except Exception:  # no root block: not a function this module made
        return []
