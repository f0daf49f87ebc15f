"""The TVM work of one build: ONNX → relax → tvm.compile → export. Runs inside the compile
worker process (:mod:`compiler.worker`), never in the caller's process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import CompileError

logger = logging.getLogger(__name__)

__all__ = ["BuildRequest", "BuildResult", "build", "warm_up"]


@dataclass(frozen=True)
class BuildRequest:
    model_bytes: bytes
    target: dict[str, Any]
    cc: str
    out_path: str
    cuda_arch: str | None = None
    opt_level: int = 3
    tune_trials: int = 0
    database_dir: str | None = None
    #: Overrides of compiler.optimize.DEFAULT_OPTIONS (e.g. {"measure": False} for fast builds).
    optimize: dict[str, Any] | None = None


@dataclass
class BuildResult:
    library: str
    outputs: list[tuple[list[int], str]]
    timings: dict[str, float] = field(default_factory=dict)
    kernels: str | None = None
    notes: list[str] = field(default_factory=list)
    #: CPU builds: the schedule options and one entry per scheduled function (optimize.build_cpu).
    schedule: dict[str, Any] = field(default_factory=dict)


def warm_up() -> None:
    """Pay ``import tvm`` and the frontend import once per worker."""
    import tvm  # noqa: F401
    from tvm.relax.frontend import onnx as _  # noqa: F401


def _struct_outputs(mod: Any) -> list[tuple[list[int], str]]:
    ret = mod["main"].ret_ty
    infos = list(ret.fields) if hasattr(ret, "fields") else [ret]
    out = []
    for info in infos:
        if getattr(info, "shape", None) is None or not hasattr(info.shape, "values"):
            raise CompileError(f"model output of type {info} is not a tensor with a known shape")
        dims = []
        for d in info.shape.values:
            if not hasattr(d, "value"):
                raise CompileError(
                    f"an output has a data-dependent shape ({info.shape}); edgeforge artifacts "
                    "need static output shapes"
                )
            dims.append(int(d.value))
        out.append((dims, str(info.dtype)))
    return out


def build(req: BuildRequest, progress: Callable[[str], None]) -> BuildResult:
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.support import cc

    from . import lowbit
    from .converters import install as install_converters
    from .converters import materialize_zero_size

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress("import")
    model = onnx.load_from_string(req.model_bytes)
    install_converters()
    lowbit.install()  # extends the table install_converters() set up
    try:
        mod = materialize_zero_size(
            from_onnx(model, shape_dict=_zero_dim_shapes(model), keep_params_in_input=False))
    except Exception as e:  # the frontend raises many types; all mean "cannot import this graph"
        raise CompileError(f"TVM's ONNX frontend could not import the model: {_first_line(e)}"
                           ) from e
    outputs = _struct_outputs(mod)
    timings["import_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    progress("compile")
    target = tvm.target.Target(req.target)
    notes: list[str] = []
    schedule: dict[str, Any] = {}
    try:
        if req.cuda_arch:
            from .cuda import enable_aot_cuda

            enable_aot_cuda(req.cuda_arch)
            with target:
                executable = tvm.compile(mod, target=target)
        else:
            from .optimize import build_cpu

            try:
                executable = build_cpu(
                    mod, target, tune_trials=req.tune_trials,
                    database_dir=Path(req.database_dir) if req.database_dir else None,
                    options=req.optimize, report=schedule,
                )
            except Exception as e:  # a scheduling bug must not cost the user the artifact
                note = (f"the scheduled CPU build failed ({_first_line(e)}); built with TVM's "
                        "default pipeline instead (slower code)")
                logger.warning(note)
                notes.append(note)
                schedule = {}
                executable = tvm.compile(mod, target=target)
    except CompileError:
        raise
    except Exception as e:
        from .exceptions import EdgeforgeError

        if isinstance(e, EdgeforgeError):
            raise
        raise CompileError(f"TVM failed to compile the model for {req.target.get('kind')}: "
                           f"{_first_line(e)}") from e
    timings["compile_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    progress("export")
    out = Path(req.out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        executable.export_library(str(out), fcompile=cc.cross_compiler(req.cc))
    except Exception as e:
        raise CompileError(f"linking the library with {req.cc} failed: {_first_line(e)}") from e
    timings["export_s"] = time.perf_counter() - t2
    return BuildResult(library=str(out), outputs=outputs, timings=timings,
                       kernels="fatbin" if req.cuda_arch else None, notes=notes,
                       schedule=schedule)


def _zero_dim_shapes(model: Any) -> dict[str, list[int]]:
    """Static shapes of the graph inputs with a zero dimension: TVM's frontend reads
    ``dim_value == 0`` as "unknown" and makes it a symbolic dimension, whose kernels then never
    initialise the outputs of reductions over it (edgeforge fixes every input shape before the
    build, so 0 means an empty tensor)."""
    out: dict[str, list[int]] = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if any(d.HasField("dim_value") and d.dim_value == 0 for d in dims) and all(
                d.HasField("dim_value") for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # TVM errors put the message last, after a C++ traceback.
    for ln in reversed(lines):
        if not ln.lstrip().startswith(("File ", "at ", "0:", "1:", "  ")):
            return f"{type(e).__name__}: {ln.strip()}"[:1000]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:1000]
