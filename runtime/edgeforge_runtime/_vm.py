"""Loading the TVM runtime without the TVM compiler, and running a relax VM executable.

Measured recipe (DESIGN.md): import ``tvm_ffi`` (loads libtvm_ffi.so), ``dlopen`` the platform's
``libtvm_runtime.so`` with ``RTLD_GLOBAL`` so its global functions register, then
``tvm_ffi.load_module(library)``, ``vm_load_executable``, ``vm_initialization`` and ``main``.

The platform wheel vendors the runtime part of apache-tvm-ffi in ``_vendor/`` (see
scripts/build_runtime_wheel.sh); a source checkout uses the installed apache-tvm-ffi instead.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .exceptions import AbiMismatchError, DeviceUnavailableError, RuntimeLoadError
from .manifest import RUNTIME_ABI

logger = logging.getLogger(__name__)

__all__ = ["VirtualMachine", "load_runtime", "runtime_library_path", "to_numpy"]

_KDL_CPU, _KDL_CUDA = 1, 2
_POOLED_ALLOCATOR = 2
_ALIGNMENT = 64
_lock = threading.Lock()
_loaded: dict[str, Any] = {}
_VENDOR = Path(__file__).parent / "_vendor"


def _import_tvm_ffi() -> Any:
    """The vendored tvm_ffi when the wheel carries one (it is the pinned ABI), else the installed
    one. A process that already imported tvm_ffi (the compiler's) keeps it."""
    if "tvm_ffi" not in sys.modules and (_VENDOR / "tvm_ffi" / "__init__.py").is_file():
        sys.path.insert(0, str(_VENDOR))
        try:
            import tvm_ffi
        finally:
            sys.path.remove(str(_VENDOR))
        return tvm_ffi
    import tvm_ffi

    return tvm_ffi


def _candidates(name: str) -> list[Path]:
    out: list[Path] = []
    env = os.environ.get("EDGEFORGE_TVM_RUNTIME_DIR")
    if env:
        out.append(Path(env) / name)
    out.append(Path(__file__).parent / "_lib" / name)
    # Development checkouts: the apache-tvm wheel, located without importing tvm.
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        out.extend(Path(p) / "lib" / name for p in spec.submodule_search_locations)
    return out


def runtime_library_path(name: str = "libtvm_runtime.so") -> Path:
    for path in _candidates(name):
        if path.is_file():
            return path
    raise RuntimeLoadError(
        f"{name} was not found (looked in: {', '.join(str(p) for p in _candidates(name))}). "
        "Install the edgeforge-runtime wheel for this platform, or set EDGEFORGE_TVM_RUNTIME_DIR."
    )


def load_runtime() -> Any:
    """Load tvm_ffi and libtvm_runtime.so once per process; return the ``tvm_ffi`` module."""
    with _lock:
        if "ffi" in _loaded:
            return _loaded["ffi"]
        try:
            tvm_ffi = _import_tvm_ffi()
        except ImportError as e:
            raise RuntimeLoadError(
                f"apache-tvm-ffi is not installed ({e}); pip install "
                f"apache-tvm-ffi=={RUNTIME_ABI['tvm_ffi']}"
            ) from e
        version = getattr(tvm_ffi, "__version__", None)
        if version is not None and version != RUNTIME_ABI["tvm_ffi"]:
            raise AbiMismatchError(
                f"apache-tvm-ffi {version} is installed but this runtime needs "
                f"{RUNTIME_ABI['tvm_ffi']} (other versions break the TVM runtime ABI)"
            )
        path = runtime_library_path()
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise RuntimeLoadError(f"cannot load {path}: {e}") from e
        _loaded["ffi"] = tvm_ffi
        return tvm_ffi


def _load_cuda() -> None:
    with _lock:
        if "cuda" in _loaded:
            return
        path = runtime_library_path("libtvm_runtime_cuda.so")
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise DeviceUnavailableError(
                f"the CUDA backend cannot be loaded ({e}). This artifact needs an NVIDIA GPU with "
                "its driver (libcuda.so.1) and the CUDA runtime (libcudart) installed."
            ) from e
        _loaded["cuda"] = True


def set_num_threads(num_threads: int) -> None:
    """Size TVM's CPU thread pool (0 = one per physical core, TVM's default)."""
    ffi = load_runtime()
    ffi.get_global_func("runtime.config_threadpool")(1, int(num_threads))


def _aligned(x: Any) -> Any:
    """TVM kernels assume 64-byte aligned, C-contiguous buffers (they use aligned vector loads);
    numpy gives no such guarantee (arrays from .npz files are often 16-byte aligned). Copy into
    an aligned buffer when needed; also copy read-only arrays (DLPack refuses to export them:
    "Cannot export readonly array")."""
    ctypes_info = getattr(x, "ctypes", None)
    if ctypes_info is None:
        return x
    import numpy as np

    if x.flags["C_CONTIGUOUS"] and x.flags["WRITEABLE"] and ctypes_info.data % _ALIGNMENT == 0:
        return x
    raw = np.empty(x.nbytes + _ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGNMENT
    out = raw[offset : offset + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def _to_tensor(ffi: Any, x: Any) -> Any:
    """A host array as a TVM tensor for the VM: zero-copy through DLPack for ordinary arrays
    (after :func:`_aligned`); a fresh compact tensor for zero-size arrays (numpy gives them
    strides that TVM's compactness check refuses: "expected to be compact array"); bfloat16
    (ml_dtypes, which DLPack exporters refuse) through a ``uint16`` view of the same bytes."""
    dtype = str(getattr(x, "dtype", ""))
    if getattr(x, "size", 1) == 0:
        alloc = ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        return alloc(tuple(x.shape), dtype, ffi.device("cpu", 0), "global")
    if dtype == "bfloat16":
        import numpy as np

        bits = ffi.from_dlpack(_aligned(np.ascontiguousarray(x).view(np.uint16)))
        return ffi.get_global_func("runtime.TVMTensorCreateView")(bits, bits.shape, "bfloat16", 0)
    return ffi.from_dlpack(_aligned(x))


def to_numpy(t: Any) -> Any:
    """A host tensor returned by :meth:`VirtualMachine.run` as a numpy array, zero-copy
    (bfloat16 through a ``uint16`` view, returned as an ml_dtypes array)."""
    import numpy as np

    if str(t.dtype) == "bfloat16":
        from .dtypes import ml_dtypes_module

        ffi = load_runtime()
        bits = ffi.get_global_func("runtime.TVMTensorCreateView")(t, t.shape, "uint16", 0)
        return np.from_dlpack(bits).view(ml_dtypes_module("the model returns bfloat16").bfloat16)
    return np.from_dlpack(t)


class VirtualMachine:
    """A relax VM over one exported library, on one device."""

    def __init__(self, library: str | os.PathLike[str], device: str = "cpu", device_id: int = 0
                 ) -> None:
        ffi = load_runtime()
        self._ffi = ffi
        if device == "cuda":
            _load_cuda()
        elif device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
        self.device_kind = device
        try:
            lib = ffi.load_module(str(Path(library).resolve()))
            self._vm = lib["vm_load_executable"]()
            if device == "cuda":
                self._vm["vm_initialization"](_KDL_CUDA, device_id, _POOLED_ALLOCATOR,
                                              _KDL_CPU, 0, _POOLED_ALLOCATOR)
            else:
                self._vm["vm_initialization"](_KDL_CPU, device_id, _POOLED_ALLOCATOR)
        except Exception as e:  # tvm_ffi raises plain RuntimeError/TVMError subclasses
            if device == "cuda":
                raise DeviceUnavailableError(f"cannot initialise the CUDA device: {e}") from e
            raise RuntimeLoadError(f"cannot load the compiled model {library}: {e}") from e
        self._device = ffi.device(device, device_id)
        self._main = self._vm["main"]
        if device == "cuda":
            self._alloc = ffi.get_global_func("runtime.TVMTensorAllocWithScope")
            self._copy = ffi.get_global_func("runtime.TVMTensorCopyFromTo")

    def _to_device(self, t: Any) -> Any:
        if self.device_kind == "cpu":
            return t
        out = self._alloc(t.shape, t.dtype, self._device, "global")
        self._copy(t, out)
        return out

    def _to_host(self, t: Any) -> Any:
        if self.device_kind == "cpu":
            return t
        out = self._alloc(t.shape, t.dtype, self._ffi.device("cpu", 0), "global")
        self._copy(t, out)
        return out

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """Run ``main`` on numpy arrays (or other DLPack-capable arrays); return DLPack-capable
        host tensors."""
        args = [self._to_device(_to_tensor(self._ffi, x)) for x in inputs]
        result = self._main(*args)
        if isinstance(result, self._ffi.Tensor):
            return [self._to_host(result)]
        return [self._to_host(r) for r in result]
