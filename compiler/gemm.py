"""A register-blocked GEMM schedule, offered to the schedule search as extra candidates next to
MetaSchedule's samples (as :mod:`compiler.depthwise` is for depthwise convolutions).

Every 1x1 convolution (NHWC), dense layer and batched matmul is a GEMM: ``C[m, n] = sum_k
A[m, k] B[k, n]`` with M the spatial positions (or rows), N the output channels and K the input
channels. MetaSchedule's CPU space tiles it at random, and its samples rarely land on what a BLAS
micro-kernel does: on AVX2 (16 vector registers) the best of 16 samples of MobileNetV2's
56x56x144 -> 24 projection took 0.51 ms, onnxruntime's MLAS kernel 0.24 ms in the model. This
template writes the micro-kernel's loop nest:

- per tile of ``mr`` rows x ``nv`` vectors of columns (parallel over all tiles), the ``mr * nv``
  accumulators live in registers (the tile's slice of the output is all the intermediate buffer
  needs once the epilogue is computed per tile, and the unrolled loops index it with constants);
- for each k: ``mr`` broadcasts of A, ``nv`` vector loads of B, ``mr * nv`` FMAs;
- the fused epilogue (bias, residual add, clip) then writes the tile out;
- B (the weight) is prepacked to the read order by MetaSchedule's own post-processors.

A convolution is the same GEMM with K = (window rows, window columns, input channels): those
three stay loops (fused, every A index would be divided out of one counter), a stem's few input
channels are unrolled, and a padded input is padded once, in a parallel loop of its own (inlined,
every A load in the inner loop would test the border). Measured on ResNet-18's strided 3x3
convolutions (AVX2, 1 thread, alone): 56x56x64 -> 28x28x128 2.99 ms with the window fused and the
padding inlined, 1.44 ms so (onnxruntime's kernel in the model: 1.24 ms); the 7x7 stem 7.9 -> 3.0
ms (2.7); the model went from 1.01x to 0.90x of onnxruntime's time at 2 threads.

Tile shapes are those whose accumulators, B vectors and the A broadcast fit the target's vector
registers (16 on AVX2, 32 on AVX-512 and AArch64 NEON) with enough independent FMAs to hide their
latency; each is timed like any candidate (and checked against the unscheduled function), so a
shape that does not suit a task only costs its timing. Measured on MobileNetV2's 1x1
convolutions (AVX2, 1 thread, best of 16 samples -> best template shape): 56x56x144 -> 24 0.51 ->
0.23 ms, 14x14x576 -> 96 0.38 -> 0.26 ms, 7x7x320 -> 1280 (+ ReLU6) 0.87 -> 0.50 ms.
"""

from __future__ import annotations

from typing import Any

from .templates import postprocessed

__all__ = ["candidates", "tile_shapes"]

_SPATIAL, _REDUCE = 0, 2  # tirx IterVar kinds


def tile_shapes(lanes: int, registers: int, m_inner: int, m: int, n: int) -> list[tuple[int, int]]:
    """(rows, column vectors) tiles, most FMAs per load first, for a GEMM of ``m`` rows (the
    innermost row loop ``m_inner`` long) and ``n`` columns: ``rows * vectors`` accumulators plus
    ``vectors`` B loads plus one A broadcast fit ``registers``, at least 6 accumulators (an
    FMA's latency times the FMA ports), ``vectors * lanes`` divides ``n``, and either ``rows``
    divides ``m`` and tiles whole rows of the innermost loop (or whole multiples of it, so the
    epilogue's region is a box) or the last tile is exactly one row short (7x7 = 49 rows in
    5-row tiles: 10 accumulators instead of the 7 of 7x1; MobileNetV2's 7x7x960 -> 320 0.39 ->
    0.31 ms, onnxruntime 0.34 ms). One row (a GEMV) gets the widest tiles that fit: MobileNetV2's
    1280 -> 1000 classifier alone 0.19 ms with 1 vector, 0.08-0.09 ms with 5 or 25."""
    if m == 1:  # a GEMV (a classifier's dense layer): bound by streaming B, wide tiles
        wide = [(1, nv) for nv in range(4, registers - 1) if n % (nv * lanes) == 0]
        return sorted(wide, key=lambda s: -s[1])[:2]
    out = []
    for nv in range(1, 5):
        if n % (nv * lanes):
            continue
        for mr in range(1, 29):
            acc = mr * nv
            if acc < 6 or acc + nv + 1 > registers or mr > m:
                continue
            if m % mr == 0 and (m_inner % mr == 0 or mr % m_inner == 0):
                out.append((mr, nv))
            elif m % mr == mr - 1 and mr > 2:
                # the last tile is one row short: that row is guarded, the others stay in
                # registers (with 2+ guarded rows, their accumulators stayed in memory: 3x
                # slower); the epilogue then runs after all tiles
                out.append((mr, nv))
    # an FMA needs its A broadcast and B vector loaded: most FMAs per load first
    return sorted(out, key=lambda s: (-s[0] * s[1] / (s[0] + s[1]), -s[0] * s[1]))


def _gemm_block(sch: Any) -> Any | None:
    """The one reduction block of a fused function, when its loops are its spatial iterators
    then its reduction ones (what legalized conv2d/matmul/dense blocks are)."""
    blocks = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
              if any(int(v.iter_type) == _REDUCE for v in sch.get(b).iter_vars)]
    if len(blocks) != 1:
        return None
    kinds = [int(v.iter_type) for v in sch.get(blocks[0]).iter_vars]
    ns = kinds.index(_REDUCE)
    if ns < 2 or any(k != _SPATIAL for k in kinds[:ns]) or any(k != _REDUCE for k in kinds[ns:]):
        return None
    if len(sch.get_loops(blocks[0])) != len(kinds):
        return None
    block = sch.get(blocks[0])
    ins = {str(r.source.name) for r in block.reads} - {str(w.source.name) for w in block.writes}
    if len(ins) < 2:  # a pooling, a mean, an argmax: one input, no product
        return None
    return blocks[0]


def _empty_pad(sch: Any, pad: Any) -> bool:
    """Whether a pad block copies its input unchanged (a 1x1 convolution's)."""
    blk = sch.get(pad)
    return [int(d) for d in blk.reads[0].source.shape] == [int(d) for d in blk.writes[0].source.shape]


def _permutation(order: list[int]) -> Any:
    """An index map that reorders a buffer's axes to ``order``."""
    return lambda *axes: [axes[i] for i in order]


def _pack_strided_b(sch: Any, blk: Any, col: int, weights: set[str]) -> None:
    """When B is read across its columns with a stride (attention's ``Q K^T`` reads K[j, d]
    along j, a row of K apart), copy it once, at the start of the function, into a buffer
    whose last axis is the column axis: every B vector load is then contiguous instead of
    ``lanes`` scalar loads. Activations only (a weight is prepacked by MetaSchedule's
    post-processors anyway)."""
    block = sch.get(blk)
    col_var = block.iter_vars[col].var
    for idx, region in enumerate(block.reads):
        if str(region.source.name) in weights:
            continue
        starts = [r.min for r in region.region]
        pos = [i for i, e in enumerate(starts) if e.same_as(col_var)]
        if len(pos) != 1 or pos[0] == len(starts) - 1:
            continue
        ndim, p = len(starts), pos[0]
        order = [i for i in range(ndim) if i != p] + [p]
        cache = sch.cache_read(blk, idx, "global")
        sch.transform_layout(cache, ("write", 0), _permutation(order))
        # copied in the new layout's order: contiguous writes, and the strided reads of one
        # column pass hit the cache lines the previous one brought in
        loops = sch.get_loops(cache)
        sch.reorder(*[loops[i] for i in order])
        return


def _schedule(tmod: Any, mr: int, nv: int, lanes: int) -> Any | None:
    from tvm.s_tir import Schedule

    sch = Schedule(tmod, debug_mask="none")
    blk = _gemm_block(sch)
    if blk is None:
        return None
    ns = [int(v.iter_type) for v in sch.get(blk).iter_vars].index(_REDUCE)  # spatial iterators
    for p in sch.get_producers(blk):
        if "pad" in sch.get(p).name_hint:
            if _empty_pad(sch, p):
                sch.compute_inline(p)
            else:  # padded once, in parallel, not tested per A load in the inner loop
                pl = sch.get_loops(p)
                sch.parallel(sch.fuse(*pl[:2]))
                inner = sch.fuse(*pl[2:]) if len(pl) > 3 else pl[-1]
                if int(sch.get(inner).extent) % lanes == 0:
                    sch.vectorize(sch.split(inner, [None, lanes])[1])
    func = tmod["main"]
    weights = {str(func.params[int(i)].name) for i in func.attrs.get("layout_free_buffers", [])}
    _pack_strided_b(sch, blk, ns - 1, weights)
    # the fused elementwise epilogue (a chain, or a DAG such as GELU's) becomes one block,
    # computed per tile: everything after the GEMM but the function's output is inlined
    after = sch.get_child_blocks(sch.get_sblock("root"))
    after = after[[sch.get(b).same_as(sch.get(blk)) for b in after].index(True) + 1:]
    for b in after[:-1]:
        sch.compute_inline(b)
    last = after[-1] if after else None
    loops = sch.get_loops(blk)
    rows, col, red = loops[: ns - 1], loops[ns - 1], loops[ns:]
    m = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    ragged = int(sch.get(m).extent) % mr != 0  # the last row tile is cut (guarded rows)
    # a convolution's window loops stay loops (fused, every A index would be divided out)
    mo, mi = sch.split(m, [None, mr])
    no, ni, nl = sch.split(col, [None, nv, lanes])
    # column panels outside: one panel of B (K x nv vectors) stays in cache over all row tiles
    # (the row-major order measured the same on MobileNetV2's 1x1 convolutions)
    sch.reorder(no, mo, *red, mi, ni, nl)
    k = red[0]
    if len(red) > 1 and int(sch.get(red[-1]).extent) <= 4:  # a stem's few input channels
        sch.unroll(red[-1])
    tile = sch.fuse(no, mo)
    if last is not None and not ragged:
        sch.reverse_compute_at(last, tile)
    sch.unroll(mi)
    sch.unroll(ni)
    sch.vectorize(nl)
    sch.parallel(tile)
    init = sch.decompose_reduction(blk, k)
    sch.vectorize(sch.get_loops(init)[-1])
    if last is not None and ragged:  # a box per tile no more: after all tiles, in parallel
        outer = sch.get_loops(last)
        sch.parallel(sch.fuse(*outer[:-1]) if len(outer) > 2 else outer[0])
        sch.vectorize(sch.split(outer[-1], [None, lanes])[1])
    elif last is not None:
        inner = sch.get_loops(last)[1:]
        _, vec = sch.split(sch.fuse(*inner) if len(inner) > 1 else inner[0], [None, lanes])
        sch.vectorize(vec)
    return sch


def candidates(tmod: Any, postprocs: Any, lanes: int, registers: int, limit: int = 8) -> list[Any]:
    """Schedules of ``tmod`` (one fused TIR function) from the GEMM template, post-processed, for
    up to ``limit`` tile shapes (:func:`tile_shapes`); empty when
    ``tmod`` is not one GEMM-shaped reduction with an elementwise epilogue whose sizes fit."""
    from tvm.s_tir import Schedule

    try:
        sch = Schedule(tmod, debug_mask="none")
        blk = _gemm_block(sch)
        if blk is None:
            return []
        loops = sch.get_loops(blk)
        ns = [int(v.iter_type) for v in sch.get(blk).iter_vars].index(_REDUCE)
        ext = [int(sch.get(x).extent) for x in loops[:ns]]
    except Exception:  # symbolic extents, no root block, ...: the search has its samples
        return []
    m = 1
    for e in ext[:-1]:
        m *= e
    shapes = tile_shapes(lanes, registers, ext[-2], m, ext[-1])[:limit]
    return postprocessed(shapes, lambda s: _schedule(tmod, s[0], s[1], lanes), postprocs, "GEMM")
