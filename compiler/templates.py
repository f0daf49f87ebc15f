"""What the hand-written schedule templates (:mod:`compiler.depthwise`, :mod:`compiler.gemm`)
share: turning their variants into distinct, post-processed candidates for the search."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["postprocessed"]


def postprocessed(variants: Iterable[Any], make: Callable[[Any], Any], postprocs: Any,
                  what: str) -> list[Any]:
    """``make(v)`` for each variant, post-processed by MetaSchedule's ``postprocs`` (which
    prepack the weights to the read order), without duplicates; a variant whose schedule is
    None, fails or is refused by a post-processor is left out (the search has its samples)."""
    out, seen = [], set()
    for v in variants:
        try:
            sch = make(v)
            if sch is None or not all(p.apply(sch) for p in postprocs):
                continue
        except Exception as e:  # not the pattern after all
            logger.debug("%s template (%s) does not apply: %s", what, v,
                         str(e).splitlines()[0] if str(e) else type(e).__name__)
            continue
        key = str(sch.mod)
        if key not in seen:
            seen.add(key)
            out.append(sch)
    return out
