"""A hand-written schedule for NHWC depthwise convolutions, offered to the schedule search as
extra candidates next to MetaSchedule's samples.

MetaSchedule's default CPU space tiles a depthwise convolution like any reduction, and its
samples read the input more than once or vectorise across a split of the channels that the
weights do not follow. Measured on MobileNetV2's 3x3 depthwise at 56x56x144 (fused with bias
and ReLU6, 1 thread, AVX-512): the best of 24 samples took 0.26 ms; this schedule, after
MetaSchedule's own post-processors (which prepack the weights to the read order), 0.10-0.13 ms.

The loop nest, per output row (parallel): width tiles of ``wi`` pixels x channel blocks of one
vector; in each, the ``wi`` accumulator vectors are set to zero, the 3x3 taps (``rx``
unrolled) add into them, and the fused epilogue (bias, clip, ...) writes the tile out. Input
padding is read in place (inlined). Every input row is read by 3 output rows while it is in
cache, every output element written once.
"""

from __future__ import annotations

from typing import Any

from .templates import postprocessed

__all__ = ["candidates"]

_BLOCK = "group_conv2d_nhwc"


def _schedule(tmod, wi: int, lanes: int):
    from tvm.s_tir import Schedule

    sch = Schedule(tmod, debug_mask="none")
    conv = sch.get_sblock(_BLOCK)
    # the fused elementwise epilogue becomes one block, computed per tile
    cons = sch.get_consumers(conv)
    if len(cons) != 1:
        return None
    last = cons[0]
    while True:
        nxt = sch.get_consumers(last)
        if not nxt:
            break
        if len(nxt) != 1:
            return None
        sch.compute_inline(last)
        last = nxt[0]
    n, h, w, c, ry, rx, rc = sch.get_loops(conv)
    width, chans, mult = (int(sch.get(x).extent) for x in (w, c, rc))
    if mult != 1 or chans % lanes:
        return None
    wi = max(d for d in range(1, wi + 1) if width % d == 0)
    wo, wi_ = sch.split(w, [None, wi])
    co, ci = sch.split(c, [None, lanes])
    sch.reorder(n, h, wo, co, ry, rx, rc, wi_, ci)
    sch.reverse_compute_at(last, co)
    for pad in sch.get_producers(conv):
        if "pad" in sch.get(pad).name_hint:
            sch.compute_inline(pad)
    sch.parallel(sch.fuse(n, h))
    sch.unroll(rx)
    sch.unroll(wi_)
    sch.vectorize(ci)
    init = sch.decompose_reduction(conv, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(last)[-1])
    return sch


def candidates(tmod, postprocs, lanes: int) -> list[Any]:
    """Schedules of ``tmod`` (one fused TIR function) from the depthwise template, one per
    width tile, post-processed; empty when ``tmod`` is not an NHWC depthwise convolution with
    channels a multiple of ``lanes`` (float32 vector lanes of the target) and a fused epilogue."""
    from tvm.s_tir import Schedule

    try:
        Schedule(tmod, debug_mask="none").get_sblock(_BLOCK)
    except Exception:  # no such block: not a (legalized) NHWC group convolution
        return []
    return postprocessed((4, 7, 8, 14), lambda wi: _schedule(tmod, wi, lanes), postprocs,
                         "depthwise")
