"""Fast CPU build recipe for TVM 0.27 relax modules (llvm targets: x86_64, aarch64, armv7).

``tvm.compile(mod, target)`` with its default pipeline does no operator fusion and leaves every TIR
function unscheduled (no parallelism, no tiling, little vectorisation) for CPU targets. ``build_cpu``
instead:

1. runs inference simplifications, converts 2-D convolutions to NHWC (``layout``), rewrites
   float32 3x3 stride-1 convolutions as Winograd F(4x4, 3x3), or F(2x2, 3x3) on small feature
   maps (``winograd``, compiler.winograd), and fuses (``DecomposeOpsForInference``,
   ``ConvertLayout``, ``LegalizeOps``, ``FoldConstant``, ``FuseOps``/``FuseTIR``); weights
   are marked layout-free (``prepack``),
2. gives every fused TIR function a schedule without a tuning run: seeded samples of MetaSchedule's
   default design space for the target, post-processed; when the target's code runs on this machine
   samples are built into one module per task and timed in-process, the fastest kept (a first
   round for every task, then more where the expected gain is largest, ranked by an XGBoost cost
   model trained on the candidates timed so far; bounded by ``budget_s``); cross targets keep the
   first sample (nothing executed). The winners are checked for correct results; with several
   threads (``refine_s``), they are re-chosen by their time inside the compiled model
   (compiler.inmodel: alone, a kernel runs with its buffers in cache and the pool's workers
   awake; in the model it does not).
   Committed to an in-memory database and applied with
   ``MetaScheduleApplyDatabase``; functions with no design space keep the default lowering,
3. optionally (``tune_trials > 0``) tunes with MetaSchedule, persisting a ``JSONDatabase`` in
   ``database_dir`` so tuned layers are reused across models and runs,
4. with ``prepack``, splits the weight-layout rewrites the schedules chose into their own
   functions and folds them (weights are embedded constants: the artifact carries them packed),
5. finishes with ``tvm.compile``'s default relax and TIR pipelines.

Heavy imports (tvm) happen inside the functions.
"""

from __future__ import annotations

import logging
import os
import pathlib
import random
import sys
import time
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import tvm

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPTIONS", "auto_refine_s", "build_cpu", "schedule_entry", "stub_tensor_intrin"]

# Intrinsic families that register TVMScript prim_funcs on import of ``tvm.s_tir.tensor_intrin``.
# Parsing all of them costs 68-86 s; an fp32 CPU build needs none of the GPU/DSP ones.
_INTRIN_FAMILIES = ("cuda", "rocm", "hexagon", "metal", "riscv_cpu", "arm_cpu", "x86")
_PKG = "tvm.s_tir.tensor_intrin"

DEFAULT_OPTIONS: dict[str, Any] = {
    "fuse": True,             # FuseOps/FuseTIR (tvm.compile's CPU default does no fusion)
    "schedule": "ms-sample",  # "none" | "dlight" | "ms-sample"
    "candidates": 64,         # at most this many schedules sampled and timed per task
    "first_round": 8,         # samples per task in the first round (fewer for small tasks)
    "min_gain": 0.005,        # stop when the last 12 rounds gained less than this share of time
    "measure": "auto",        # time candidates: auto = when the target runs on this host
    "cost_model": True,       # rank fresh samples with an XGBoost cost model before timing
    "budget_s": 240.0,        # seconds of sampling + timing per build (then 1 sample per task)
    "build_timeout_s": 30.0,  # LLVM time allowed per 4 candidates built (one alone: half)
    "cold_weight": 0.0,       # candidate cost = (1-w) warm + w cold (buffers flushed) time
    "refine_s": "auto",       # seconds to re-choose winners by their time in the model; "auto":
                              # REFINE_AUTO_S with several threads, 0 (off) with one
    "layout": "auto",         # "auto" (NHWC when the model has a 2-D convolution) | "NHWC" | None
    "prepack": True,          # schedules may rewrite weight layouts; folded at compile time
    "fast_math": True,        # float32 erf/tanh/softmax with vectorisable polynomials (<= 6e-7)
    "winograd": True,         # NHWC float32 3x3 stride-1 convs as Winograd F(m x m, 3x3): True
                              # picks m per layer (winograd.choose_tile), an int forces it
    "depthwise": True,        # NHWC depthwise convolutions also get compiler.depthwise's schedules
    "gemm": True,             # GEMM-shaped functions also get compiler.gemm's register-blocked ones
    "expand_dw": True,        # 1x1 conv -> 3x3 depthwise pairs as one kernel (compiler.expand_dw);
                              # an int: only where the expanded tensor has at least that many bytes
    "attention": True,        # 4-D matmuls read/write through their transposes (compiler.attention)
    "combine_projections": True,  # with it, the Q/K/V projections of one input as one matmul
    "rowwise": True,          # softmax-like functions also get compiler.rowwise's schedules
    "serial": True,           # winners under SERIAL_MAX_S are also timed with their parallel loops
                              # serial, and run that way when it is faster (_try_serial)
    "seed": 0,
}


def _is_arm(target) -> bool:
    triple = str(target.attrs.get("mtriple", "")) if target is not None else ""
    return triple.startswith(("aarch64", "arm")) or "arm_cpu" in [str(k) for k in target.keys]


# MetaSchedule's x86 and ARM rules look their dot-product intrinsics up by name (x86 imports in 0.5 s,
# arm_cpu in 2.4 s): keep both, so that one process can build for several targets; stub the rest.
_KEEP = ("x86", "arm_cpu")


def _keep_families(target) -> tuple[str, ...]:
    return _KEEP


def stub_tensor_intrin(keep: tuple[str, ...] | set[str] = ("x86", "arm_cpu")) -> None:
    """Register empty modules for tensor-intrinsic families not in ``keep``.

    Must run before anything imports ``tvm.s_tir.tensor_intrin`` (MetaSchedule does so in
    ``TuneContext`` and in every builder worker). Safe to call repeatedly.
    """
    for fam in _INTRIN_FAMILIES:
        name = f"{_PKG}.{fam}"
        if fam in keep or name in sys.modules:
            continue
        mod = types.ModuleType(name)
        mod.__doc__ = "edgeforge stub: intrinsic family not needed for this build"
        sys.modules[name] = mod


def _stub_x86_only() -> None:  # builder/runner initializer (module level: picklable by reference)
    stub_tensor_intrin(("x86",))


def _stub_arm_only() -> None:
    stub_tensor_intrin(("arm_cpu",))


def _canon_target(target) -> tvm.target.Target:
    import tvm

    if isinstance(target, (dict, str)):
        return tvm.target.Target(target)
    return target


def _num_cores(target) -> int:
    n = target.attrs.get("num-cores", None)
    if n is not None and int(n) > 0:
        return int(n)
    env = os.environ.get("TVM_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


def _ms_target(target):
    """MetaSchedule needs ``num-cores`` on llvm targets (it sizes parallel loops with it)."""
    import tvm

    if target.attrs.get("num-cores", None):
        return target
    cfg = dict(target.export())
    cfg["num-cores"] = _num_cores(target)
    return tvm.target.Target(cfg)


def _has_conv2d(mod) -> bool:
    import tvm
    from tvm import relax

    found = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
                and expr.op.name == "relax.nn.conv2d" and str(expr.attrs.data_layout) == "NCHW":
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def _layout(mod, opts) -> str | None:
    layout = opts.get("layout")
    if layout == "auto":
        # NHWC: channels innermost, the layout MetaSchedule's CPU rules vectorise best (measured:
        # KWS 2.79x -> 1.46x, MobileNetV2 3.18x -> 2.39x of onnxruntime's time with prepack).
        return "NHWC" if _has_conv2d(mod) else None
    return layout


def _fast_math(mod):
    """float32 ``erf``, ``tanh`` and ``softmax`` with TVM's polynomial ``fast_erf``/``fast_tanh``/
    ``fast_exp`` (measured on [-10, 10]: <= 4.2e-7 absolute for erf and tanh, <= 5.7e-7 relative
    for exp; softmax's exponents are <= 0, where fast_exp's clamping at +-88.4 cannot overflow).
    libm's ``erff``/``expf`` are calls per element that LLVM cannot vectorise: in the
    transformer's FFN (matmul + exact GELU) erff made the layer 4x slower than the same matmul
    without it (10.5 vs 2.5 ms a call). General ``exp`` is left alone: its overflow to inf above
    88.7 is observable."""
    import tvm
    from tvm import topi
    from tvm.relax import PyExprMutator, expr_functor

    from .converters import rewrite_functions

    fast = {"relax.erf": topi.fast_erf, "relax.tanh": topi.fast_tanh,
            "relax.nn.softmax": topi.nn.fast_softmax}

    @expr_functor.mutator
    class _FastMath(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call):  # type: ignore[no-untyped-def]
            if isinstance(call.op, tvm.ir.Op) and call.op.name in fast \
                    and str(getattr(call.args[0].ty, "dtype", "")) == "float32":
                args = [self.visit_expr(call.args[0])]
                if call.op.name == "relax.nn.softmax":
                    args.append(int(call.attrs.axis))
                return self.builder_.call_te(fast[call.op.name], *args)
            return super().visit_call_(call)

    return rewrite_functions(mod, _FastMath(mod))


def _stack_as_concat(mod):
    """``relax.stack`` as ``concat`` of ``expand_dims`` (``compiler.converters.stack``): TVM 0.27's
    layout inference for stack writes a layout ("SAB") that matches no initial layout, and
    ConvertLayout then fails for the whole module ("Invalid SLayout: can't find S in source
    layout", "tvm::String index out of bounds"). edgeforge's converters emit no stack; TVM's own
    ONNX frontend does (variadic Max/Min/Sum/Mean: a conv followed by Max(a, b, c) fell back to
    NCHW)."""
    import tvm
    from tvm import relax
    from tvm.relax import PyExprMutator, expr_functor

    from .converters import rewrite_functions, stack

    @expr_functor.mutator
    class _Stack(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call):  # type: ignore[no-untyped-def]
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.stack":
                tup = self.visit_expr(call.args[0])
                items = (list(tup.fields) if isinstance(tup, relax.Tuple) else
                         [relax.TupleGetItem(tup, i) for i in range(len(tup.ty.fields))])
                axis = call.attrs.axis
                return stack(items, 0 if axis is None else int(axis))
            return super().visit_call_(call)

    return rewrite_functions(mod, _Stack(mod))


def _unit_permutes_as_reshapes(mod):
    """A ``permute_dims`` that only moves axes of extent 1 keeps every element where it is: it
    becomes a reshape, which the VM runs as a view instead of a copy kernel (the layout
    conversion's transposes of a 1-channel input, or of a pooled 1x1xC tensor back to NCHW,
    cost a kernel launch each: KWS's model runs in ~100 us)."""
    import tvm
    from tvm import relax
    from tvm.relax import PyExprMutator, expr_functor

    from .converters import rewrite_functions

    @expr_functor.mutator
    class _Permute(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call):  # type: ignore[no-untyped-def]
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name == "relax.permute_dims"):
                return call
            shape = getattr(call.args[0].ty, "shape", None)
            out = getattr(call.ty, "shape", None)
            if not isinstance(shape, relax.ShapeExpr) or not isinstance(out, relax.ShapeExpr):
                return call
            try:
                dims = [int(d) for d in shape.values]
            except TypeError:  # symbolic
                return call
            axes = call.attrs.axes
            axes = list(range(len(dims)))[::-1] if axes is None else [int(a) for a in axes]
            moved = [a for a in axes if dims[a] != 1]
            if moved != sorted(moved):
                return call
            return relax.op.reshape(call.args[0], out)

    return rewrite_functions(mod, _Permute(mod))


def _preprocess(mod, target, opts):
    import tvm
    from tvm import relax

    if opts.get("fast_math", True):
        mod = _fast_math(mod)

    seq = [
        # conv2d -> batch_norm (explicit BatchNormalization nodes, as TF/Keras exports keep them):
        # the normalisation folded into the convolution's weight and a bias; decomposed, it
        # stayed a subtract/divide/multiply/add epilogue on every output element
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.FoldConstant(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
    ]
    layout = _layout(mod, opts)
    if layout:
        mod = _stack_as_concat(mod)
        # TVM 0.27 rejects "default" as the kernel layout ("invalid factor size 0"): name it.
        kernel = {"NHWC": "OHWI", "NCHW": "OIHW"}.get(layout, "OIHW")
        # conv2d_transpose would follow its NHWC producer, but TVM 0.27 legalizes it in NCHW only
        # (left unlegalized, VM codegen fails and the whole scheduled build with it: PP-OCRv4 det).
        seq.append(relax.transform.ConvertLayout({"relax.nn.conv2d": [layout, kernel],
                                                  "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}))
        seq.append(relax.transform.FoldConstant())
    with target:
        mod = tvm.transform.Sequential(seq)(mod)
    seq = []
    mod = _unit_permutes_as_reshapes(mod)
    if opts.get("attention", True):
        from . import attention

        if opts.get("combine_projections", True):
            mod, _ = attention.combine_projections(mod)
        mod, _ = attention.rewrite(mod)
    if layout == "NHWC":
        if opts.get("expand_dw", True):
            from . import expand_dw

            edw = opts["expand_dw"]
            mod, _ = expand_dw.rewrite(mod, _f32_lanes(target), _num_cores(target),
                                       None if edw is True else int(edw),
                                       _vector_registers(target))
        if opts.get("winograd", True):
            from . import winograd

            wg = opts["winograd"]
            mod, _ = winograd.rewrite(mod, None if wg is True else int(wg))
    seq += [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
    if opts.get("fuse", True):
        seq += [relax.transform.FuseOps(), relax.transform.FuseTIR()]
    if opts.get("prepack"):
        # Weights become "layout free": a schedule may pick the layout it reads best (MetaSchedule's
        # RewriteLayout postproc); the rewrite is split off and folded at compile time (_finish).
        seq += [relax.transform.AttachAttrLayoutFreeBuffers(),
                tvm.transform.module_pass(_float_layout_free_only, 0, "FloatLayoutFreeOnly")]
    seq += [relax.transform.DeadCodeElimination()]
    with target:
        return tvm.transform.Sequential(seq)(mod)


def _float_layout_free_only(mod, _ctx):
    """Only float weights stay layout-free. MetaSchedule's RewriteLayout assumes a layout-free
    buffer is read by one load; TVM's gather_nd reads its constant index tensor once per
    coordinate, and the packed layout it chose dropped a coordinate (MiniLM-L6 int8's attention
    mask came back rotated by 64 tokens). Integer constants are mostly indices and shapes;
    quantized integer weights lose prepacking with them (not measured: correctness first). The
    schedule check cannot catch such a rewrite: it feeds zeros to integer arguments."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    updates = {}
    for gv, f in mod.functions.items():
        if not isinstance(f, tvm.tirx.PrimFunc) or f.attrs is None:
            continue
        idx = f.attrs.get("layout_free_buffers", None)
        if idx is None:
            continue
        args = ArgInfo.from_prim_func(f)
        keep = [int(i) for i in idx
                if str(getattr(args[int(i)], "dtype", "")).startswith(("float", "bfloat"))]
        if len(keep) != len(idx):
            updates[gv] = f.with_attr("layout_free_buffers", keep)
    for gv, f in updates.items():
        mod[gv] = f
    return mod


def _task_args(mod, dev):
    import numpy as np
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    args = []
    for info in ArgInfo.from_entry_func(mod, remove_preproc=True):
        shape = [int(x) for x in info.shape]
        args.append(tvm.runtime.tensor(np.zeros(shape, dtype=str(info.dtype)), dev))
    return args


# instruction-set features (LLVM names) that decide whether the generated kernels run; tuning hints
# such as ermsb or fast-* are ignored, and so are the crypto extensions (aes, sha, pclmul, gfni,
# crypto): tensor kernels never use them, and LLVM's CPU models disagree on them (its neoverse-v2,
# Graviton4, lacks aes/sha2 that cortex-a72 has, which would leave rpi4 builds untimed there)
_ISA_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "bmi", "amx", "popcnt", "lzcnt", "movbe", "adx",
                 "neon", "sve", "dotprod", "i8mm", "bf16", "fp16", "fullfp16", "fp-armv8")


def _isa_features(target) -> set[str]:
    from tvm.target import codegen

    feats = codegen.llvm_get_cpu_features(target)
    return {str(f) for f in feats if str(f).startswith(_ISA_PREFIXES)}


def _f32_lanes(target) -> int:
    """float32 lanes of the target's widest vector registers (AVX-512: 16, AVX: 8, else 4)."""
    feats = _isa_features(target)
    return 16 if "avx512f" in feats else 8 if {"avx", "avx2"} & feats else 4


def _vector_registers(target) -> int:
    """Architectural vector registers (AVX-512 and AArch64: 32; AVX/AVX2, SSE, 32-bit NEON: 16)."""
    triple = str(target.attrs.get("mtriple", ""))
    return 32 if _f32_lanes(target) == 16 or triple.startswith("aarch64") else 16


def _runnable_on_host(target) -> bool:
    """True when code for ``target`` can be executed on this machine (to time candidates)."""
    import platform

    import tvm
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    host_arch = platform.machine().lower()
    arch = triple.split("-")[0].lower()
    same = (arch == host_arch or {arch, host_arch} <= {"x86_64", "amd64"}
            or {arch, host_arch} <= {"aarch64", "arm64"})
    if not same:
        return False
    try:
        host = tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())})
        missing = _isa_features(target) - _isa_features(host)
    except Exception as e:
        logger.debug("cannot compare CPU features: %s", e)
        return False
    if missing:
        logger.info("target needs CPU features this host lacks (%s): candidates are not timed",
                    ", ".join(sorted(missing)[:6]))
        return False
    return True


def _resample(space_trace, tmod, postprocs, seed):
    """Re-run a design-space trace with fresh random decisions, then the postprocessors."""
    from tvm.s_tir import Schedule
    from tvm.s_tir.schedule import Trace

    sch = Schedule(tmod, seed=seed, debug_mask="none")
    Trace(space_trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
    if not all(p.apply(sch) for p in postprocs):
        return None
    return sch


class _TaskSampler:
    """Distinct post-processed schedules for one task, drawn from MetaSchedule's design space in
    a deterministic sequence (sample ``k`` uses seed ``seed + 104729 (k + 1)``); ``draw`` can be
    called again for more."""

    def __init__(self, task, target, seed: int) -> None:
        from tvm.s_tir import meta_schedule as ms

        self.task, self.seed, self.k = task, seed, 0
        self.tmod = task.dispatched[0]
        ctx = ms.TuneContext(mod=self.tmod, target=target, space_generator="post-order-apply",
                             task_name=task.task_name, rand_state=seed, num_threads=1)
        self.ctx = ctx
        self.spaces = ctx.generate_design_space()
        self.postprocs = ctx.space_generator.postprocs
        self.seen: set[str] = set()
        self.exhausted = False

    def draw(self, n: int) -> list:
        out = []
        for _ in range(4 * n):
            if len(out) >= n:
                break
            k, self.k = self.k, self.k + 1
            space = self.spaces[k % len(self.spaces)]
            try:
                sch = _resample(space.trace, self.tmod, self.postprocs,
                                (self.seed + 104729 * (k + 1)) & 0x7FFFFFFF)
            except Exception as e:
                logger.debug("task %s: sample %d failed: %s", self.task.task_name, k, e)
                continue
            if sch is None:
                continue
            key = str(k % len(self.spaces)) + str([str(d) for d in sch.trace.decisions.values()])
            if key in self.seen:
                continue
            self.seen.add(key)
            out.append(sch)
        if len(out) < n:
            self.exhausted = True  # a small space: few distinct schedules are left
        return out


class _CostModel:
    """Ranks fresh samples before any is built: MetaSchedule's XGBoost cost model on its
    per-store features, trained on every candidate timed so far in this build (all tasks: it
    learns what this CPU rewards, e.g. which loop is vectorised, in throughput relative to the
    task's best). Timing costs 0.3-0.5 s per candidate (LLVM build + runs); drawing and
    featurising one costs about 10 ms, so ``oversample`` x more samples are drawn and only the
    best-ranked are timed, plus one drawn at random (exploration; and a model that misleads
    cannot starve a task). Until ``warmup`` candidates are timed the ranking is random.

    Measured on MobileNetV2's 1x1 convolutions: random samples of MetaSchedule's space spread
    7x (median 0.88 ms, best 0.12 ms of 200), so a filter pays where timing is the cost.
    """

    def __init__(self, seed: int, warmup: int = 64, oversample: int = 4) -> None:
        from tvm.s_tir import meta_schedule as ms

        self.model = ms.cost_model.XGBModel(
            config=ms.cost_model.xgb_model.XGBConfig(seed=seed & 0x7FFFFFFF),
            num_warmup_samples=warmup, verbose_eval=0, adaptive_training=True,
            num_tuning_cores=os.cpu_count() or 1)  # (None would need psutil)
        self.oversample = oversample
        self.timed = 0
        self.warmup = warmup
        self.rng = random.Random(seed)

    @staticmethod
    def _candidates(scheds) -> list:
        from tvm.s_tir import meta_schedule as ms

        return [ms.MeasureCandidate(s, ms.arg_info.ArgInfo.from_prim_func(
            next(iter(s.mod.functions.values())))) for s in scheds]

    def pick(self, sampler: _TaskSampler, n: int) -> list:
        """``n`` schedules of ``sampler``'s task to time."""
        if self.timed < self.warmup or n < 2:
            return sampler.draw(n)
        pool = sampler.draw(n * self.oversample)
        if len(pool) <= n:
            return pool
        scores = self.model.predict(sampler.ctx, self._candidates(pool))
        order = sorted(range(len(pool)), key=lambda k: -scores[k])
        chosen, rest = order[: n - 1], order[n - 1:]
        chosen.append(self.rng.choice(rest))
        return [pool[k] for k in chosen]

    def update(self, sampler: _TaskSampler, scheds: list, costs: list[float]) -> None:
        import math

        from tvm.s_tir import meta_schedule as ms

        results = [ms.runner.RunnerResult([c], None) if math.isfinite(c)
                   else ms.runner.RunnerResult(None, "failed") for c in costs]
        self.model.update(sampler.ctx, self._candidates(scheds), results)
        self.timed += len(scheds)


def _build_isolated(mod, target, timeout_s: float, out_path: str | None = None) -> bool:
    """Build ``mod`` for ``target`` in a forked child (and export it to ``out_path``); False when
    that fails or takes longer than ``timeout_s``.

    LLVM's time on a sampled schedule is unbounded: a 196,608-element max reduction of a real
    quantized model (ddddocr) with one sampled unroll setting did not finish in 5 minutes, where
    its siblings build in 0.03 s. A hung build must cost a candidate, not the compile.
    """
    return _build_many([mod], target, timeout_s, [out_path])[0]


def _build_many(mods: list, target, timeout_s: float, out_paths: list) -> list[bool]:
    """:func:`_build_isolated` for several modules at once: one forked child each, all running
    together (the build machine's cores: LLVM is most of a candidate's cost), each killed when
    ``timeout_s`` has passed since the start."""
    import select
    import signal

    import tvm

    if not hasattr(os, "fork"):  # pragma: no cover - Linux builds only
        for mod, out_path in zip(mods, out_paths):
            lib = tvm.tirx.build(mod, target)
            if out_path:
                lib.export_library(out_path)
        return [True] * len(mods)
    children: dict[int, tuple[int, int]] = {}  # read fd -> (pid, index)
    for k, (mod, out_path) in enumerate(zip(mods, out_paths)):
        # The child holds the pipe's write end until it exits: the parent wakes at once on EOF.
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(rfd)
                lib = tvm.tirx.build(mod, target)
                if out_path:
                    lib.export_library(out_path)
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        children[rfd] = (pid, k)
    ok = [False] * len(mods)
    deadline = time.monotonic() + max(0.0, timeout_s)
    try:
        while children:
            ready, _, _ = select.select(list(children), [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for rfd in ready:
                pid, k = children.pop(rfd)
                os.close(rfd)
                _, status = os.waitpid(pid, 0)
                ok[k] = os.waitstatus_to_exitcode(status) == 0
    finally:
        for rfd, (pid, _) in children.items():  # past the deadline
            os.close(rfd)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return ok


def _build_workers() -> int:
    """Parallel candidate builds: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _time_candidates(cands, target, name, build_timeout_s: float = 30.0,
                     cold_weight: float = 0.0):
    """Build all candidates of one task into one LLVM module and time each; seconds per candidate
    (inf for one that does not build in time: ``build_timeout_s`` per 4 candidates in the batch,
    half of it alone; or that fails to run).

    A candidate that rewrites a weight's layout (prepack) is timed without its rewrite block and
    with the weight already in its layout, as it runs once the rewrite is folded: its arguments'
    shapes are that candidate's own.
    """
    import tempfile

    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    funcs, argsets = {}, []
    dev = tvm.cpu()
    for k, sch in enumerate(cands):
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(sch.mod)
        gv = next(iter(mod.functions.keys()))
        funcs[f"cand{k}"] = mod[gv].with_attr("global_symbol", f"cand{k}")
        argsets.append(_task_args(sch.mod, dev))
    libs: dict[int, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeforge-cand-") as tmp:
        # One module per core (each child builds its share), built at the same time.
        parts = min(_build_workers(), len(cands))
        groups = [list(range(len(cands)))[p::parts] for p in range(parts)]
        paths = [os.path.join(tmp, f"part{p}.so") for p in range(parts)]
        limit = build_timeout_s * max(1.0, max(len(g) for g in groups) / 4)
        built = _build_many([tvm.IRModule({f"cand{k}": funcs[f"cand{k}"] for k in g})
                             for g in groups], target, limit, paths)
        retry = []
        for g, path, ok in zip(groups, paths, built):
            if ok:
                lib = tvm.runtime.load_module(path)
                libs.update(dict.fromkeys(g, lib))
            else:
                retry += g
        if retry:  # one of them hangs LLVM: keep those that build on their own
            logger.info("task %s: candidates did not build within %.0f s; building them one by one",
                        name, limit)
            for c in range(0, len(retry), parts):
                chunk = retry[c:c + parts]
                ones = [os.path.join(tmp, f"cand{k}.so") for k in chunk]
                built = _build_many([tvm.IRModule({f"cand{k}": funcs[f"cand{k}"]})
                                     for k in chunk], target, build_timeout_s / 2, ones)
                for k, one, ok in zip(chunk, ones, built):
                    if ok:
                        libs[k] = tvm.runtime.load_module(one)
    costs = []
    for k in range(len(cands)):
        if k not in libs:
            costs.append(float("inf"))
            continue
        try:
            f = libs[k].time_evaluator(f"cand{k}", dev, number=1, repeat=3, min_repeat_ms=10)
            warm = float(f(*argsets[k]).median)
            cold = _time_cold(libs[k][f"cand{k}"], argsets[k]) if cold_weight > 0 else 0.0
            costs.append((1.0 - cold_weight) * warm + cold_weight * cold)
        except Exception as e:
            logger.debug("task %s candidate %d failed to run: %s", name, k, e)
            costs.append(float("inf"))
    return costs


def _time_cold(func, args, runs: int = 5) -> float:
    """Median seconds of ``func(*args)`` with every argument flushed from the caches first.

    In a model, a kernel's weights were last read one inference ago and its output buffer was
    last touched several layers ago: neither is in cache, and the input is only partly. Timed
    warm (the same buffers again and again), schedules that read their data more than once look
    best: the warm winner of MobileNetV2's depthwise 56x56x144 took 0.24 ms warm and 0.86 ms
    with its buffers evicted; another sample took 0.27 ms warm and 0.47 ms evicted (and the
    winner ran 0.52 ms in the model, against 0.20 ms for onnxruntime's kernel)."""
    import statistics

    import tvm

    flush = tvm.get_global_func("cache_flush_cpu_non_first_arg")  # flushes args[1:] (clflush)
    times = []
    for _ in range(runs):
        flush(None, *args)
        t = time.perf_counter()
        func(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _run_outputs(lib, args, dev) -> list:
    import tvm

    fresh = [tvm.runtime.tensor(a, dev) for a in args]
    lib["main"](*fresh)
    return [t.numpy() for t in fresh]


def _same_results(tfunc_mod, sch, target, ref_cache: dict, tmp: str, timeout_s: float) -> bool:
    """Whether the scheduled function computes what the unscheduled one does, on the same inputs
    (random floats; zeros for integer arguments, which are valid indices).

    MetaSchedule assumes its schedules are correct by construction; TVM 0.27 is not always: a
    sampled schedule of a fused Winograd inverse + bias + ReLU (7x7x512, ResNet-18) wrote wrong
    values (max abs error 22) and, being the fastest, was picked. So is every winner checked."""
    import numpy as np
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm_ffi import structural_hash

    dev = tvm.cpu()
    key = structural_hash(tfunc_mod)  # not id(): TVM hands out a new wrapper per access
    if key not in ref_cache:
        infos = ArgInfo.from_entry_func(tfunc_mod, remove_preproc=False)
        rng = np.random.default_rng(0)
        args = []
        for info in infos:
            shape, dtype = [int(x) for x in info.shape], str(info.dtype)
            args.append(rng.standard_normal(shape).astype(dtype) if dtype.startswith(("float",
                        "bfloat")) else np.zeros(shape, dtype))
        path = os.path.join(tmp, f"ref{len(ref_cache)}.so")
        ref = None
        if _build_isolated(tfunc_mod, target, timeout_s, path):
            try:
                ref = _run_outputs(tvm.runtime.load_module(path), args, dev)
            except Exception as e:
                logger.debug("reference run failed: %s", e)
        ref_cache[key] = (args, ref)
    args, ref = ref_cache[key]
    if ref is None:
        return True  # nothing to compare with: the model-level verification still applies
    path = os.path.join(tmp, f"cand{len(os.listdir(tmp))}.so")  # dlopen caches by path
    if not _build_isolated(sch.mod, target, timeout_s, path):
        return False
    try:
        got = _run_outputs(tvm.runtime.load_module(path), args, dev)
    except Exception:
        return False
    for a, b in zip(got, ref):
        if a.dtype.kind == "f":
            scale = float(np.nanmax(np.abs(b))) if b.size and np.isfinite(b).any() else 1.0
            if not np.allclose(a, b, rtol=1e-3, atol=1e-4 * max(scale, 1.0), equal_nan=True):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


def _verify_winners(tasks, best, ranked, target, timeout_s: float, untimed) -> int:
    """Replace every winner that computes wrong results by the fastest timed candidate that does
    not, then by a fresh untimed sample (up to 3), then by the default lowering; untimed winners
    (a spent budget leaves 1 sample per task) are checked too. Returns the number refused."""
    import tempfile

    wrong = 0
    ref_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgeforge-check-") as tmp:
        for i in list(best):
            mod = tasks[i].dispatched[0]
            sch, cost = best[i]
            options = (sorted(ranked.get(i, []), key=lambda r: (r[0], r[1]))[:6]
                       if cost is not None else [(None, 0, sch)])
            for c, _, cand in options:
                if _same_results(mod, cand, target, ref_cache, tmp, timeout_s):
                    best[i] = (cand, c)
                    break
                wrong += 1
                logger.warning("task %s: a schedule computes wrong results (a TVM scheduling "
                               "bug); refused", tasks[i].task_name)
            else:
                del best[i]
                for _ in range(3):
                    untimed(i, [])
                    if i not in best:
                        break
                    if _same_results(mod, best[i][0], target, ref_cache, tmp, timeout_s):
                        break
                    wrong += 1
                    del best[i]  # and the default lowering if none of 3 samples is right
    return wrong


# Winners faster than this are re-timed with their parallel loops serial (_try_serial).
SERIAL_MAX_S = 1e-3


def _try_serial(tasks, best, ranked, target, timeout_s: float) -> int:
    """Time every fast winner against itself with its parallel loops serial
    (:func:`compiler.pool.serial_variant`); the serial one is kept when it is faster than the
    parallel one plus the pool's wake-up cost in this process (:func:`compiler.pool.wake_cost_s`:
    ~28 us on 2 cores with workers that sleep between kernels, ~2 us with spinning ones; timed
    alone, back to back, a parallel kernel hides most of it). Winners untimed because their
    design space has one schedule are tried too. Returns the number of serial winners."""
    from . import pool

    pairs = []
    for i, (sch, cost) in best.items():
        if cost is not None and cost > SERIAL_MAX_S:
            continue
        try:
            serial = pool.serial_variant(sch, tasks[i].dispatched[0])
        except Exception as e:  # a trace that does not replay without them: keep the winner
            logger.debug("task %s: no serial variant (%s)", tasks[i].task_name, e)
            continue
        if serial is not None:
            pairs.append((i, sch, serial))
    if not pairs:
        return 0
    wake_s = pool.wake_cost_s()
    costs = _time_candidates([c for _, a, b in pairs for c in (a, b)], target, "serial",
                             timeout_s)
    n = 0
    for k, (i, _, serial) in enumerate(pairs):
        par_s, ser_s = costs[2 * k] + wake_s, costs[2 * k + 1]
        logger.debug("task %s: serial %.1f us, parallel %.1f us + %.1f us to wake the pool",
                     tasks[i].task_name, ser_s * 1e6, costs[2 * k] * 1e6, wake_s * 1e6)
        if ser_s < par_s:
            n += 1
            # in the search's terms when it timed the winner (the pair was timed side by side)
            cost = best[i][1]
            best[i] = (serial, ser_s * cost / costs[2 * k] if cost is not None else ser_s)
            ranked.setdefault(i, []).append((best[i][1], -1, serial))
    return n


def _task_flops(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0])) * max(1, int(task.weight))
    except Exception:
        return 1.0


def schedule_entry(task, source: str, trace=None, cost_s: float | None = None) -> dict[str, Any]:
    """What the manifest records of one scheduled function: the task, its workload (structural
    hash of the TIR function, as MetaSchedule keys its database), where its schedule came from
    (``database``: a tuning-database record; ``timed``: the fastest of the sampled candidates
    timed here; ``sampled``: the first seeded sample, untimed) and the schedule's digest."""
    import hashlib

    from tvm_ffi import structural_hash

    entry: dict[str, Any] = {
        "task": str(task.task_name),
        "workload": f"{structural_hash(task.dispatched[0]) & 0xFFFFFFFFFFFFFFFF:016x}",
        "source": source,
    }
    if trace is not None:
        entry["schedule"] = hashlib.sha256(str(trace).encode()).hexdigest()[:16]
    if cost_s is not None:
        entry["cost_us"] = round(cost_s * 1e6, 2)
    return entry


def _database_entries(mod, target, db) -> list[dict[str, Any]]:
    """The database records that ``MetaScheduleApplyDatabase`` will apply to ``mod``."""
    from tvm.s_tir import meta_schedule as ms

    out = []
    for task in ms.relax_integration.extract_tasks(mod, target):
        try:
            rec = db.query_tuning_record(task.dispatched[0], target, task.task_name)
        except Exception:  # an unreadable record is not applied either
            rec = None
        if rec is not None:
            cost = (sum(float(x) for x in rec.run_secs) / len(rec.run_secs)
                    if rec.run_secs else None)
            out.append(schedule_entry(task, "database", rec.trace, cost))
    return out


def _record_replays(mod, trace, target, tfunc) -> bool:
    """Whether a record of ``trace`` survives a JSONDatabase round trip (written, then loaded,
    which replays it), in a scratch database."""
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="edgeforge-db-") as tmp:
        try:
            db = ms.database.JSONDatabase(work_dir=tmp, allow_missing=True)
            db.commit_tuning_record(ms.database.TuningRecord(
                trace, db.commit_workload(mod), [1.0], target,
                ms.arg_info.ArgInfo.from_prim_func(tfunc)))
            return len(ms.database.JSONDatabase(work_dir=tmp, allow_missing=False)) == 1
        except Exception as e:
            logger.debug("record does not replay: %s", str(e).splitlines()[-1][:200])
            return False


def _sample_database(mod, target, opts, measure: bool, persist=None, entries=None,
                     refine=None):
    """Seeded schedules per task from MetaSchedule's default space.

    Without ``measure`` the first valid sample is kept (nothing is executed: cross targets).
    With it, a search timed in-process on this machine, in two rounds:

    1. every task gets ``first_round`` samples (fewer for tasks with a small share of the model's
       FLOPs, never fewer than 3), built together and timed; the fastest is kept;
    2. while ``budget_s`` lasts, the task with the largest expected gain (best time x calls /
       samples timed so far) gets ``first_round`` more samples, up to ``candidates`` per task;
       the search stops early when the last 12 rounds gained less than ``min_gain`` of the
       model's estimated time.

    Once ``_CostModel``'s warm-up is timed (``cost_model``, on by default when xgboost is
    installed), each round draws 4x the samples and times the ones the model ranks best.

    ``entries`` receives a :func:`schedule_entry` per scheduled task. ``refine(tasks, best,
    ranked)``, when given, re-chooses the checked winners (:func:`_refine_in_model`).
    """
    import math

    from tvm.s_tir import meta_schedule as ms

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    seed = int(opts.get("seed", 0))
    kmax = max(1, int(opts.get("candidates", 1))) if measure else 1
    k1 = min(kmax, max(1, int(opts.get("first_round", 8))))
    budget_s = float(opts.get("budget_s", 1e9))
    min_gain = float(opts.get("min_gain", 0.0))
    build_timeout_s = float(opts.get("build_timeout_s", 30.0))
    cold_weight = float(opts.get("cold_weight", 0.0))
    t_start = time.perf_counter()
    tasks = ms.relax_integration.extract_tasks(mod, target)
    flops = [_task_flops(t) for t in tasks]
    total = sum(flops) or 1.0
    n_fail = n_timed = 0
    best: dict[int, tuple[Any, float | None]] = {}  # task -> (schedule, seconds per call)
    ranked: dict[int, list[tuple[float, int, Any]]] = {}  # task -> every timed (cost, #, schedule)
    samplers: dict[int, _TaskSampler] = {}
    drawn: dict[int, int] = {}
    templates: dict[int, list] = {}  # hand-written candidates (compiler.depthwise, compiler.gemm)
    lanes = _f32_lanes(target) if measure else 4
    model = None
    if measure and opts.get("cost_model", True):
        try:
            import xgboost  # noqa: F401  (the `tune` extra)

            model = _CostModel(seed)
        except ImportError:
            logger.info("xgboost is not installed (pip install 'edgeforge[tune]'): candidates "
                        "are timed in random order")

    def untimed(i: int, cands: list) -> None:
        """The first sample LLVM builds within the time limit (checked in a child process)."""
        for sch in cands + samplers[i].draw(2):
            if _build_isolated(sch.mod, target, build_timeout_s):
                best[i] = (sch, None)
                return
        logger.info("task %s: no sample builds within %.0f s: default lowering kept",
                    tasks[i].task_name, build_timeout_s)

    def search(i: int, n: int) -> None:
        nonlocal n_timed, model
        cands = model.pick(samplers[i], n) if model is not None else samplers[i].draw(n)
        cands = templates.pop(i, []) + cands  # timed with the first samples
        drawn[i] = drawn.get(i, 0) + len(cands)
        if not cands:
            return
        if not measure or (len(cands) == 1 and i not in best):
            if i not in best:
                untimed(i, cands)  # nothing to compare a single sample with
            return
        try:
            costs = _time_candidates(cands, target, tasks[i].task_name, build_timeout_s,
                                        cold_weight)
        except Exception as e:
            logger.info("task %s: timing candidates failed (%s)", tasks[i].task_name,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            costs = [float("inf")] * len(cands)
        if model is not None:
            try:
                model.update(samplers[i], cands, costs)
            except Exception as e:  # the model only ranks: a failure must not cost the search
                logger.info("cost model update failed (%s): random samples from here",
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                model = None
        n_timed += len(cands)
        ranked.setdefault(i, []).extend(
            (c, n_timed + k, sch) for k, (c, sch) in enumerate(zip(costs, cands)) if math.isfinite(c))
        j = min(range(len(costs)), key=costs.__getitem__)
        old = best.get(i, (None, None))[1]
        if math.isfinite(costs[j]) and (old is None or costs[j] < old):
            best[i] = (cands[j], costs[j])
        elif i not in best:
            untimed(i, [])  # none of these built or ran: fresh samples

    # round 1, heaviest tasks first so that a time budget is spent where it matters
    for i in sorted(range(len(tasks)), key=lambda i: -flops[i]):
        task = tasks[i]
        tfunc = next(iter(task.dispatched[0].functions.values()))
        if tfunc.attrs is not None and tfunc.attrs.get("tirx.is_scheduled", False):
            continue  # already scheduled from the persistent database
        try:
            samplers[i] = _TaskSampler(task, target, (seed * 1_000_003 + i * 7919 + 1) & 0x7FFFFFFF)
        except Exception as e:
            logger.info("task %s: no design space (%s): default lowering kept", task.task_name,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            n_fail += 1
            continue
        # spent budget: the seeded sample, untimed (reproducible without a budget), and no
        # templates but the Winograd transforms' (below)
        spent = time.perf_counter() - t_start > budget_s
        if measure and not spent and opts.get("depthwise", True):
            from . import depthwise

            templates[i] = depthwise.candidates(task.dispatched[0], samplers[i].postprocs, lanes)
        if measure and not spent and opts.get("gemm", True):
            from . import gemm

            templates.setdefault(i, []).extend(gemm.candidates(
                task.dispatched[0], samplers[i].postprocs, lanes, _vector_registers(target)))
        if measure and not spent and opts.get("rowwise", True):
            from . import rowwise

            templates.setdefault(i, []).extend(rowwise.candidates(
                task.dispatched[0], samplers[i].postprocs, lanes))
        if opts.get("winograd", True):
            from . import winograd

            # offered untimed too (cross-compiled targets): MetaSchedule's samples of the
            # transforms leave their select chains unfolded (56 ms against 0.14 ms)
            templates.setdefault(i, []).extend(winograd.candidates(
                task.dispatched[0], samplers[i].postprocs, lanes))
        # At least 3 timed samples even for small tasks: FLOP share misjudges memory-bound ones
        # (a LayerNorm with 1 untimed sample took 79% of the transformer's run time).
        n = 1 if spent else max(min(3, k1), min(k1, math.ceil(k1 * flops[i] / total * len(tasks))))
        search(i, n)
        if i not in best:
            n_fail += 1
    rounds1 = n_timed

    # round 2: more samples where the model spends its time
    def weight(i: int) -> int:
        return max(1, int(tasks[i].weight))

    gains: list[float] = []
    while measure and time.perf_counter() - t_start < budget_s:
        open_ = [i for i in best if best[i][1] is not None and drawn[i] < kmax
                 and not samplers[i].exhausted]
        if not open_:
            break
        model_s = sum(c * weight(i) for i, (_, c) in best.items() if c is not None)
        # The best of n random samples is beaten by the next one with probability 1/(n+1):
        # expected gain ~ cost / samples so far (pure cost kept hammering plateaued heavy tasks
        # while a 1x1 convolution with 8 samples ran at 3x onnxruntime's time).
        i = max(open_, key=lambda i: best[i][1] * weight(i) / drawn[i])
        before = best[i][1] * weight(i)
        search(i, min(k1, kmax - drawn[i]))
        gains.append((before - best[i][1] * weight(i)) / max(model_s, 1e-12))
        if len(gains) >= 12 and sum(gains[-12:]) < min_gain:
            break

    for i in sorted(best, key=lambda i: -(best[i][1] or 0) * weight(i)):
        logger.debug("task %s: x%d, %d timed, best %s", tasks[i].task_name, weight(i),
                     drawn.get(i, 0), f"{best[i][1] * 1e3:.3f} ms" if best[i][1] else "untimed")
    refined: set[int] = set()
    n_serial = 0
    if measure and opts.get("serial", True) and budget_s > 0:  # no budget: nothing is timed
        n_serial = _try_serial(tasks, best, ranked, target, build_timeout_s)
    if measure:
        n_wrong = _verify_winners(tasks, best, ranked, target, build_timeout_s, untimed)
        if refine is not None and any(c is not None for _, c in best.values()):
            try:
                new = refine(tasks, best, ranked)
                refined = {i for i in new if new[i][0] is not best[i][0]}
                best = new
            except Exception as e:  # a refinement only re-ranks: it must not cost the build
                logger.warning("in-model selection failed (%s); the search's winners are kept",
                               str(e).splitlines()[0] if str(e) else type(e).__name__)
    db = _memory_database(tasks, {i: sch for i, (sch, _) in best.items()}, target)
    for i, (sch, cost) in best.items():
        task = tasks[i]
        if entries is not None:
            source = "in-model" if i in refined else "timed" if cost is not None else "sampled"
            entries.append(schedule_entry(task, source, sch.trace, cost))
        if persist is not None and cost is not None:
            try:  # measured: share it with later builds (other models with the same layer too)
                tfunc = next(iter(task.dispatched[0].functions.values()))
                # Only records that replay: loading a JSONDatabase replays every trace, and one
                # that does not (seen: a prepacked NHWC conv whose trace replays with an extra
                # loop) makes the whole database unreadable.
                if not _record_replays(task.dispatched[0], sch.trace, target, tfunc):
                    logger.info("schedule of %s not stored: its trace does not replay",
                                task.task_name)
                    continue
                pwl = persist.commit_workload(task.dispatched[0])
                persist.commit_tuning_record(ms.database.TuningRecord(
                    sch.trace, pwl, [cost], target, ms.arg_info.ArgInfo.from_prim_func(tfunc)))
            except Exception as e:
                logger.info("schedule of %s not stored in the database: %s", task.task_name,
                            str(e).splitlines()[-1][:200] if str(e) else type(e).__name__)
    logger.info("schedules: %d tasks scheduled (%d candidates timed, %d in round 2, %d wrong "
                "ones refused, %d serial), %d left to default lowering, %.1f s", len(best), n_timed,
                n_timed - rounds1, n_wrong if measure else 0, n_serial, n_fail,
                time.perf_counter() - t_start)
    return db


def _memory_database(tasks, choice: dict, target):
    """An in-memory MetaSchedule database with ``choice``'s schedule (task -> schedule) per task."""
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.MemoryDatabase()
    for i, sch in choice.items():
        wl = db.commit_workload(tasks[i].dispatched[0])
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [1.0], target, None))
    return db


def _compile_scheduled(mod, target, mst, db, prepack: bool):
    """Apply ``db``'s schedules to ``mod``, then :func:`_finish`."""
    from tvm import relax

    with mst, db:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    return _finish(mod, target, prepack)


def _finish(mod, target, prepack: bool):
    """Fold the prepacked weights (with ``prepack``), compile."""
    import tvm
    from tvm import relax

    if prepack:
        # Split each scheduled weight-layout rewrite into its own function and fold it: weights
        # are constants embedded in the module, so the artifact carries them prepacked.
        with target:
            mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                            relax.transform.FoldConstant()])(mod)
    return tvm.compile(mod, target=target)


def _refine_in_model(mod, target, mst, opts, tasks, best, ranked, out: dict):
    """:func:`compiler.inmodel.refine` over the search's results, the alternatives for a task
    ranked by their cold time; ``out["executable"]`` receives
    the model compiled with the returned choice (``out["summary"]``: what was tried)."""
    import tempfile

    import tvm

    from . import inmodel

    def compile_fn(choice: dict) -> Any:
        return _compile_scheduled(mod, target, mst, _memory_database(tasks, choice, mst),
                                  bool(opts.get("prepack")))

    timed = [i for i, (_, c) in best.items() if c is not None]
    build_timeout_s = float(opts.get("build_timeout_s", 30.0))

    def alternatives(i: int) -> list:
        """The task's next 8 timed candidates within 2.5x of its winner alone, ranked by their
        time with buffers flushed (:func:`_time_cold`; neither warm nor cold is the model, but
        the in-model winners ranked better cold than warm); the best 4."""
        near = [sch for c, _, sch in sorted(ranked.get(i, []), key=lambda r: r[:2])
                if sch is not best[i][0] and c <= 2.5 * best[i][1]][:8]
        if len(near) <= 4:
            return near
        cold = _time_candidates(near, mst, tasks[i].task_name, build_timeout_s, 1.0)
        return [near[k] for k in sorted(range(len(near)), key=cold.__getitem__)][:4]

    isolated = {i: best[i][1] * max(1, int(tasks[i].weight)) for i in timed}
    costs = {i: {id(sch): c for c, _, sch in ranked.get(i, [])} for i in timed}
    ref_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgeforge-inmodel-") as tmp:
        choice, ex, summary = inmodel.refine(
            {i: sch for i, (sch, _) in best.items()}, alternatives, isolated,
            {i: str(tasks[i].task_name) for i in timed}, compile_fn,
            lambda i, sch: _same_results(tasks[i].dispatched[0], sch, mst, ref_cache, tmp,
                                         build_timeout_s),
            inmodel.model_inputs(mod["main"], tvm.cpu()), float(opts["refine_s"]))
    out["executable"], out["summary"] = ex, summary
    logger.info("in-model selection: %s", summary)
    return {i: (sch, costs.get(i, {}).get(id(sch), best[i][1])) for i, sch in choice.items()}


# In-model selection's time with several threads (refine_s "auto"). Same-process A/B at 2 threads
# (znver3): MobileNetV2 0.90x of onnxruntime's time with it against 1.00x without, transformer
# 0.87x against 0.88x, for 40-60 s more compile; the 2-thread search alone picked winners that
# timed fastest alone and ran 1.5x slower in the model. With one thread the search's choice
# holds up (figures repeat within ~3%) and the seconds are not spent.
REFINE_AUTO_S = 60.0


def auto_refine_s(threads: int | None = None) -> float:
    """``refine_s`` for "auto": :data:`REFINE_AUTO_S` when the thread pool (or ``threads``) has
    more than one thread, else 0."""
    if threads is None:
        import tvm

        threads = int(tvm.get_global_func("runtime.NumThreads")())
    return REFINE_AUTO_S if threads > 1 else 0.0


def _apply_dlight(mod, target):
    from tvm.s_tir import dlight as dl

    with target:
        return dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(mod)


# Bumped when the search can find better schedules than the records it stored before: a task
# with a record is not searched again, so without a new database a better search never reaches
# the layers an older one stored (2: the depthwise template; 3: serial variants of small
# winners, _try_serial; 4: the GEMM template; 5: the GEMM template's convolutions with their
# window loops and padding apart, and row tiles one row short of dividing M; 6: a strided B
# operand copied once into column-contiguous order; 7: one-row GEMVs with wide tiles; 8: the
# Winograd transforms with literal coefficients and their template; 9: the row-wise template).
# Old databases stay on disk.
SEARCH_GENERATION = 9


def _target_key(target) -> str:
    """Directory name for a target's schedule database (schedules are target specific, and
    records are kept per search generation)."""
    import hashlib

    cfg = {k: v for k, v in dict(target.export()).items() if k not in ("tag",)}
    cfg["edgeforge.search_generation"] = SEARCH_GENERATION
    return hashlib.sha256(repr(sorted((str(k), str(v)) for k, v in cfg.items())).encode()).hexdigest()[:16]


def _json_database(path: pathlib.Path):
    from tvm.s_tir import meta_schedule as ms

    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(path), allow_missing=True)


def _make_initializer(keep: tuple[str, ...]):
    """Builder/runner worker initializer; a closure so cloudpickle ships it by value (workers need
    not import this package)."""
    families = _INTRIN_FAMILIES
    pkg = _PKG

    def _init() -> None:
        import sys as _sys
        import types as _types

        for fam in families:
            name = f"{pkg}.{fam}"
            if fam not in keep and name not in _sys.modules:
                _sys.modules[name] = _types.ModuleType(name)

    return _init


def _tune(mod, mst, db, trials: int, work_dir: pathlib.Path, keep, seed: int) -> None:
    from tvm.s_tir import meta_schedule as ms

    init = _make_initializer(tuple(keep))
    t0 = time.perf_counter()
    ms.relax_integration.tune_relax(
        mod, params={}, target=mst, work_dir=str(work_dir), max_trials_global=trials,
        num_trials_per_iter=min(64, max(8, trials // 4)),
        builder=ms.builder.LocalBuilder(initializer=init, timeout_sec=120),
        runner=ms.runner.LocalRunner(initializer=init, timeout_sec=60),
        database=db, seed=seed,
    )
    logger.info("MetaSchedule tuning: %d trials in %.1f s", trials, time.perf_counter() - t0)


def _scheduled_count(mod) -> tuple[int, int]:
    import tvm

    n = s = 0
    for f in mod.functions.values():
        if isinstance(f, tvm.tirx.PrimFunc):
            n += 1
            if f.attrs is not None and f.attrs.get("tirx.is_scheduled", False):
                s += 1
    return s, n


def build_cpu(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    *,
    tune_trials: int = 0,
    work_dir: pathlib.Path | None = None,
    database_dir: pathlib.Path | None = None,
    options: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
) -> tvm.relax.Executable:
    """Compile a relax module for an llvm CPU target (x86_64, aarch64, armv7).

    - Fuses operators and schedules every fused TIR function from MetaSchedule's default design space:
      when the target's code runs on this machine, up to ``options["candidates"]`` (default 8) seeded
      samples per task are built and timed in-process and the fastest is kept (about 1-2 minutes for
      a MobileNetV2-sized model on 2 cores, bounded by ``options["budget_s"]``); for cross targets the
      first seeded sample is used (deterministic, nothing executed).
    - ``tune_trials > 0``: MetaSchedule tuning (evolutionary search, xgb cost model) with that many
      trials in total, on this machine (the target must run here).
    - ``database_dir``: a MetaSchedule ``JSONDatabase`` per target under it is read first (layers
      tuned or timed before, by any model, are reused) and receives new tuning/timing results.
    - ``work_dir``: MetaSchedule's logs (a temporary directory if not given).
    - ``report``: a dict that receives the options used and one :func:`schedule_entry` per
      scheduled function (``schedules``), for the artifact's manifest.
    Every TIR function that no schedule applies to keeps the default lowering of ``tvm.compile``.
    """
    import tempfile

    from tvm import relax

    opts = dict(DEFAULT_OPTIONS)
    if options:
        opts.update(options)
    if opts.get("refine_s") == "auto":
        opts["refine_s"] = auto_refine_s()
    target = _canon_target(target)
    if target.kind.name != "llvm":
        raise ValueError(f"build_cpu handles llvm targets only, got {target.kind.name}")
    keep = _keep_families(target)
    stub_tensor_intrin(keep)
    entries: list[dict[str, Any]] = []
    opts["layout"] = _layout(mod, opts)  # "auto" resolved once, on the imported module
    sched = opts.get("schedule", "ms-sample")
    if sched != "ms-sample":
        # The Winograd transforms run fast only with their template (compiler.winograd): under
        # the default lowering their per-index select chains stay unfolded (56 ms for
        # ResNet-18's 56x56x64 data pack against 0.14 ms), so without the search: direct conv.
        opts["winograd"] = False
    if report is not None:
        report["options"] = {k: opts[k] for k in sorted(opts)}
        report["schedules"] = entries
    t0 = time.perf_counter()
    try:
        prepared = _preprocess(mod, target, opts)
    except Exception as e:
        if not opts["layout"]:
            raise
        logger.warning("layout conversion failed (%s); building in the model's own layout",
                       str(e).splitlines()[0] if str(e) else type(e).__name__)
        opts["layout"] = None
        prepared = _preprocess(mod, target, opts)
    if report is not None:
        report["options"]["layout"] = opts["layout"]
    mod = prepared
    t1 = time.perf_counter()
    logger.info("preprocess/fuse: %.1f s, %d TIR functions", t1 - t0, _scheduled_count(mod)[1])
    if sched == "ms-sample":
        mst = _ms_target(target)
        measure = opts.get("measure", "auto")
        runnable = _runnable_on_host(target)
        measure = runnable if measure == "auto" else bool(measure)
        db_json = None
        if database_dir is not None:
            db_path = pathlib.Path(database_dir) / _target_key(mst)
            try:
                db_json = _json_database(db_path)
            except Exception as e:  # a database that does not load must not cost the fast build
                # (JSONDatabase replays every record on load; one that does not replay under
                # this TVM makes all of it unreadable.) It is moved aside, not deleted, and a
                # fresh one takes this build's records: else every later build pays for it too.
                aside = db_path.with_name(f"{db_path.name}.unreadable-{time.time_ns()}")
                logger.warning("tuning database %s is unreadable (%s); moved to %s, building "
                               "with a fresh one", db_path, str(e).splitlines()[-1][:200]
                               if str(e) else type(e).__name__, aside.name)
                try:
                    db_path.rename(aside)
                    db_json = _json_database(db_path)
                except Exception:
                    db_json = None
            if db_json is not None:
                logger.info("schedule database %s (%d records)", db_path, len(db_json))
        if tune_trials > 0:
            if not runnable:
                logger.warning("tune_trials=%d ignored: %s code cannot run on this machine "
                               "(tuning needs an RPC runner on the device)", tune_trials, target)
            else:
                tmp = None
                if work_dir is None:
                    tmp = tempfile.TemporaryDirectory(prefix="edgeforge-ms-")
                wd = pathlib.Path(work_dir) if work_dir is not None else pathlib.Path(tmp.name)
                if db_json is None:
                    db_json = _json_database(wd / "database")
                try:
                    _tune(mod, mst, db_json, tune_trials, wd, keep, int(opts.get("seed", 0)))
                except Exception as e:
                    logger.warning("MetaSchedule tuning failed, using sampled schedules: %s",
                                   str(e).splitlines()[0] if str(e) else type(e).__name__)
                finally:
                    if tmp is not None:
                        tmp.cleanup()
        if db_json is not None and len(db_json) > 0:
            entries.extend(_database_entries(mod, mst, db_json))
            with mst, db_json:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
            logger.info("database schedules applied to %d/%d functions", *_scheduled_count(mod))
        refined: dict[str, Any] = {}

        def refine(tasks, best, ranked, _mod=mod):
            return _refine_in_model(_mod, target, mst, opts, tasks, best, ranked, refined)

        db = _sample_database(mod, mst, opts, measure, db_json if measure else None, entries,
                              refine if measure and float(opts.get("refine_s", 0)) > 0 else None)
        if report is not None and "summary" in refined:
            report["in_model"] = refined["summary"]
        if "executable" in refined:  # compiled with exactly these schedules already
            logger.info("total %.1f s", time.perf_counter() - t0)
            return refined["executable"]
        t3 = time.perf_counter()
        ex = _compile_scheduled(mod, target, mst, db, bool(opts.get("prepack")))
        logger.info("codegen: %.1f s (total %.1f s)", time.perf_counter() - t3,
                    time.perf_counter() - t0)
        return ex
    if sched == "dlight":
        mod = _apply_dlight(mod, target)
    t3 = time.perf_counter()
    ex = _finish(mod, target, bool(opts.get("prepack")))
    logger.info("codegen: %.1f s (total %.1f s)", time.perf_counter() - t3, time.perf_counter() - t0)
    return ex
