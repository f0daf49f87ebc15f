"""More ONNX operator converters registered by edgeforge (a second table, beside
:mod:`compiler.converters`): newer-opset, quantized, signal and image operators.

``OPS`` is importable without TVM (the pre-flight check reads it); :func:`converters` builds the
converter classes against TVM's ``OnnxOpConverter`` base and is called by
:func:`compiler.converters.install`.
"""

from __future__ import annotations

__all__ = ["OPS", "converters"]

OPS: frozenset[str] = frozenset()


def converters(base: type) -> dict[str, type]:
    """Converter classes by ONNX operator name (subclasses of TVM's ``OnnxOpConverter``)."""
    del base
    return {}
