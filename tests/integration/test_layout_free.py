"""Only float constants are layout-free in the scheduled CPU build (compiler.optimize).

MetaSchedule's RewriteLayout packs a layout-free buffer assuming one load reads it. TVM's own
``gather_nd`` reads its constant index tensor once per coordinate; packed, it lost a
coordinate (MiniLM-L6 int8's attention mask came back rotated by 64 tokens). The converter
no longer emits gather_nd for constant indices (tests/integration/test_gathernd.py); this
test keeps TVM's gather_nd itself, written as relax, so the build's own guard is what is tested.
"""

from __future__ import annotations

import numpy as np


def _gather_module(n: int = 128):
    import tvm
    from tvm import relax

    idx = np.stack([np.zeros(n, np.int64), np.arange(n)], -1).reshape(1, 1, 1, n, 2)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, n), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.gather_nd(x, relax.const(idx, "int64")))
            out = bb.emit_output(relax.op.add(y, relax.const(np.float32(1.0))))
        bb.emit_func_output(out)
    return bb.get(), tvm


def test_integer_constants_are_not_layout_free():
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from compiler.optimize import DEFAULT_OPTIONS, _canon_target, _preprocess

    mod, tvm = _gather_module()
    target = _canon_target(tvm.target.Target("llvm"))
    prepared = _preprocess(mod, target, {**DEFAULT_OPTIONS, "layout": None})
    gathers = [f for gv, f in prepared.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and "gather_nd" in gv.name_hint]
    assert gathers, list(prepared.functions.keys())
    for f in gathers:
        args = ArgInfo.from_prim_func(f)
        assert [str(a.dtype) for a in args][:2] == ["float32", "int64"]
        free = f.attrs.get("layout_free_buffers", []) if f.attrs is not None else []
        assert 1 not in [int(i) for i in free]  # the int64 indices


def test_tvm_gather_nd_with_constant_indices_is_right_when_scheduled():
    from tvm import relax

    from compiler.optimize import build_cpu

    mod, tvm = _gather_module()
    ex = build_cpu(mod, tvm.target.Target("llvm"), options={"measure": False, "candidates": 1})
    x = np.arange(128, dtype=np.float32).reshape(1, 128)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got.reshape(-1), x.reshape(-1) + 1)
