"""A schedule for row-wise functions (softmax, log-softmax, normalisations over the last axis),
offered to the schedule search as extra candidates next to MetaSchedule's samples (as
:mod:`compiler.gemm` is for GEMMs).

Such a function is a few blocks over the same rows, each either elementwise along the last axis
or a reduction of it (softmax: the row's max, exp(x - max), the row's sum, the division).
MetaSchedule's CPU space schedules each block on its own, and its samples leave the reductions
scalar (a chain of dependent adds per row). Here:

- one parallel loop over all rows; every intermediate is computed per row, inside it (the row
  stays in L1 from one block to the next);
- an elementwise intermediate read by one block only is inlined into it (softmax's ``x - max``);
- each reduction is split into ``lanes`` partial results (``rfactor``), vectorised, and the
  partials reduced at the end of the row: independent vector maxima and sums instead of one
  dependent chain;
- the elementwise blocks are vectorised along the row.

Measured on the transformer's softmax (4 heads x 128 x 128, AVX2, alone): 50 us at 1 thread, 40
us at 2, against 68 and 96 us for the best of 8 MetaSchedule samples (onnxruntime's kernel in the
model: 57 and 37 us).
"""

from __future__ import annotations

from typing import Any

from .templates import postprocessed

__all__ = ["candidates"]

_REDUCE = 2  # tirx IterVar kind


def _is_reduction(sch: Any, blk: Any) -> bool:
    return any(int(v.iter_type) == _REDUCE for v in sch.get(blk).iter_vars)


def _row_extents(sch: Any) -> list[int] | None:
    """The row extents shared by every block (all loops but the last), when every block is one
    loop nest over the rows and the last axis, and at least one reduces that axis; else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) < 2:
        return None
    rows = None
    reduces = False
    for blk in blocks:
        loops = sch.get_loops(blk)
        kinds = [int(v.iter_type) for v in sch.get(blk).iter_vars]
        if len(loops) != len(kinds) or len(loops) < 2:
            return None
        if any(k != 0 for k in kinds[:-1]) or kinds[-1] not in (0, _REDUCE):
            return None
        reduces |= kinds[-1] == _REDUCE
        ext = [int(sch.get(lp).extent) for lp in loops[:-1]]
        if rows is None:
            rows = ext
        elif ext != rows:
            return None
    return rows if reduces else None


def _schedule(tmod: Any, lanes: int, vector_reduce: bool) -> Any | None:
    from tvm.s_tir import Schedule

    sch = Schedule(tmod, debug_mask="none")
    rows = _row_extents(sch)
    if rows is None:
        return None
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    for blk in blocks[:-1]:
        if not _is_reduction(sch, blk) and len(sch.get_consumers(blk)) == 1:
            sch.compute_inline(blk)
    partial = []
    if vector_reduce:
        for blk in sch.get_child_blocks(sch.get_sblock("root"))[:-1]:
            if _is_reduction(sch, blk):
                k = sch.get_loops(blk)[-1]
                if int(sch.get(k).extent) % lanes:  # a guarded split: rfactor got it wrong
                    return None
                _, ki = sch.split(k, [None, lanes])
                partial.append(str(sch.get(sch.rfactor(ki, 0)).name_hint))
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    loops = sch.get_loops(blocks[-1])
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    sch.parallel(row)  # before the reductions are decomposed (then no longer parallelisable)
    for blk in reversed(blocks[:-1]):
        sch.compute_at(blk, row)
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        inner = sch.get_loops(blk)[1:]
        if str(sch.get(blk).name_hint) in partial:
            # (partial, k) -> k outside, the partials as one vector
            vec, k = inner[-2], inner[-1]
            sch.reorder(k, vec)
            sch.vectorize(vec)
            init = sch.decompose_reduction(blk, k)
            sch.vectorize(sch.get_loops(init)[-1])
        elif _is_reduction(sch, blk):
            if vector_reduce:  # the lanes partials of the row
                sch.unroll(inner[-1])
        else:
            sch.vectorize(sch.split(inner[-1], [None, lanes])[1])
    return sch


def candidates(tmod: Any, postprocs: Any, lanes: int) -> list[Any]:
    """Schedules of ``tmod`` (one fused TIR function) from this template, with vectorised
    reductions and with scalar ones, post-processed; empty when ``tmod`` is not row-wise."""
    return postprocessed((True, False), lambda v: _schedule(tmod, lanes, v), postprocs,
                         "row-wise")
