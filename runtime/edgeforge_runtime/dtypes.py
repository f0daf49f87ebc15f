"""Tensor dtypes at the artifact boundary: the manifest's *logical* dtype of each input and
output, and the *storage* dtype the compiled library takes and returns (FORMAT.md §3.3).

Ordinary dtypes are their own storage. The low-bit dtypes have no TVM/DLPack type that the
compiled code can use, so the library sees one element per byte, as ml_dtypes stores them:

* float8 (``float8_e4m3fn``, ``float8_e4m3fnuz``, ``float8_e5m2``, ``float8_e5m2fnuz``,
  ``float8_e8m0fnu``) and ``float4_e2m1fn``: the **bit pattern** in a ``uint8`` (float4 in the
  low four bits, the high four zero);
* ``int4``/``int2``: the **value** in an ``int8``; ``uint4``/``uint2``: the value in a ``uint8``
  (ml_dtypes keeps only the low bits of the byte, so the runtime converts values, not bytes).

``bfloat16`` is a TVM dtype and stays one in the library; numpy has no bfloat16 and DLPack
exporters refuse ml_dtypes' one, so the runtime moves its bytes through a ``uint16`` view.

Arrays of the logical dtypes are ml_dtypes arrays: ml_dtypes is an optional dependency
(``pip install 'edgeforge-runtime[lowbit]'``), imported only by artifacts that need it.
"""

from __future__ import annotations

from typing import Any

from .exceptions import MissingDependencyError

__all__ = [
    "LOWBIT_STORAGE",
    "ML_DTYPES",
    "from_storage",
    "ml_dtypes_module",
    "needs_ml_dtypes",
    "storage_dtype",
    "to_storage",
]

#: Low-bit logical dtype → the library's storage dtype.
LOWBIT_STORAGE: dict[str, str] = {
    "float8_e4m3fn": "uint8", "float8_e4m3fnuz": "uint8", "float8_e5m2": "uint8",
    "float8_e5m2fnuz": "uint8", "float8_e8m0fnu": "uint8", "float4_e2m1fn": "uint8",
    "int4": "int8", "uint4": "uint8", "int2": "int8", "uint2": "uint8",
}
_INTEGER = frozenset({"int4", "uint4", "int2", "uint2"})
#: Logical dtypes whose numpy arrays are ml_dtypes arrays.
ML_DTYPES = frozenset(LOWBIT_STORAGE) | {"bfloat16"}

_EXTRA_HINT = "pip install 'edgeforge-runtime[lowbit]' (it adds ml_dtypes)"


def needs_ml_dtypes(dtypes: Any) -> list[str]:
    """The dtypes among ``dtypes`` whose arrays are ml_dtypes arrays, sorted."""
    return sorted(set(dtypes) & ML_DTYPES)


def ml_dtypes_module(why: str = "") -> Any:
    """Import ml_dtypes, or raise :class:`MissingDependencyError` naming the extra."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise MissingDependencyError(
            f"ml_dtypes is not installed{' (' + why + ')' if why else ''}; {_EXTRA_HINT}"
        ) from e
    return ml_dtypes


def storage_dtype(dtype: str) -> str:
    """The dtype the compiled library uses for a tensor of logical ``dtype``."""
    return LOWBIT_STORAGE.get(dtype, dtype)


def to_storage(array: Any, dtype: str) -> Any:
    """``array`` (of logical ``dtype``) as the library's storage array: a view for the float
    formats, a value conversion (a small copy) for int4/uint4/int2/uint2."""
    storage = LOWBIT_STORAGE.get(dtype)
    if storage is None:
        return array
    if dtype in _INTEGER:
        return array.astype(storage)
    return array.view(storage)


def from_storage(array: Any, dtype: str) -> Any:
    """The library's storage array as an array of logical ``dtype`` (inverse of
    :func:`to_storage`; a view for the float formats)."""
    if dtype not in LOWBIT_STORAGE:
        return array
    target = getattr(ml_dtypes_module(f"the model returns {dtype} tensors"), dtype)
    if dtype in _INTEGER:
        return array.astype(target)
    return array.view(target)
