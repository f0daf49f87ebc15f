"""The register-blocked GEMM schedule (compiler.gemm): offered for GEMM-shaped functions (1x1
convolutions, dense layers with their fused epilogues, GELU's included), and every candidate
computes what the unscheduled function does."""

from __future__ import annotations

import numpy as np
import pytest


def _task(build, name: str):
    """The one task whose name contains ``name`` of the relax function ``build(bb, rng)`` emits,
    through the compiler's preprocessing (NHWC, fusion, layout-free weights)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from compiler.optimize import DEFAULT_OPTIONS, _canon_target, _ms_target, _preprocess, stub_tensor_intrin

    bb = relax.BlockBuilder()
    build(bb, np.random.default_rng(0))
    stub_tensor_intrin(("x86",))
    target = _canon_target(tvm.target.Target("llvm"))
    mst = _ms_target(target)
    opts = {**DEFAULT_OPTIONS, "layout": "NHWC", "winograd": False, "expand_dw": False}
    prepared = _preprocess(bb.get(), target, opts)
    tasks = [t for t in ms.relax_integration.extract_tasks(prepared, mst) if name in t.task_name]
    assert len(tasks) == 1, [t.task_name for t in ms.relax_integration.extract_tasks(prepared, mst)]
    return tasks[0], mst


def _conv1x1(bb, rng, cin=32, cout=24, hw=14, k=1):
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, cin, hw, hw), "float32"))
    r = relax.Var("r", relax.TensorType((1, cout, hw, hw), "float32"))
    w = rng.standard_normal((cout, cin, k, k)).astype("float32")
    b = rng.standard_normal((1, cout, 1, 1)).astype("float32")
    with bb.function("main", [x, r]):
        with bb.dataflow():
            y = relax.op.nn.conv2d(x, relax.const(w), padding=k // 2)
            y = relax.op.clip(relax.op.add(relax.op.add(y, relax.const(b)), r), 0.0, 6.0)
            out = bb.emit_output(y)
        bb.emit_func_output(out)


def _dense_gelu(bb, rng, rows=16, d=32, ffn=48):
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, rows, d), "float32"))
    w = rng.standard_normal((d, ffn)).astype("float32")
    b = rng.standard_normal((ffn,)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            h = relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b))
            e = relax.op.erf(relax.op.multiply(h, relax.const(np.float32(0.7071))))
            y = relax.op.multiply(relax.op.multiply(h, relax.op.add(e, relax.const(np.float32(1)))),
                                  relax.const(np.float32(0.5)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)


def _check(task, mst, cands, tmp_path) -> None:
    from compiler.optimize import _same_results, _time_candidates

    ref_cache: dict = {}
    for sch in cands:
        assert _same_results(task.dispatched[0], sch, mst, ref_cache, str(tmp_path), 30.0)
        assert "layout_rewrite_preproc" in sch.mod.script()  # B prepacked to the read order
    assert all(np.isfinite(_time_candidates(cands, mst, task.task_name)))


@pytest.mark.parametrize("cout", [24, 32])
def test_conv1x1_candidates_compute_the_convolution(tmp_path, cout):
    from compiler import gemm
    from compiler.optimize import _TaskSampler

    task, mst = _task(lambda bb, rng: _conv1x1(bb, rng, cout=cout), "conv")
    cands = gemm.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8, 16)
    # 14x14 rows: tiles of 7 or 14 rows (whole rows of the image), 2 or 14 with 1 vector
    assert len(cands) >= 2
    _check(task, mst, cands, tmp_path)


def test_a_ragged_row_tile_is_guarded(tmp_path):
    """7x7 = 49 rows: 5-row tiles (10 accumulators, against 7 for the 7x1 tile that divides 49)
    leave the last tile one row short; that row is guarded and the epilogue runs after all
    tiles, and the result is still the convolution's."""
    from compiler import gemm
    from compiler.optimize import _TaskSampler

    assert gemm.tile_shapes(8, 16, 7, 49, 16)[0] == (5, 2)
    task, mst = _task(lambda bb, rng: _conv1x1(bb, rng, cout=16, hw=7), "conv")
    cands = gemm.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8, 16)
    ragged = [c for c in cands if "T.where" in c.mod.script()]
    assert ragged  # 5x2 and 10x1
    _check(task, mst, cands, tmp_path)


def _scores(bb, rng, s=16, h=2, d=16):
    from tvm import relax

    q = relax.Var("q", relax.TensorType((1, s, h, d), "float32"))
    k = relax.Var("k", relax.TensorType((1, s, h, d), "float32"))
    with bb.function("main", [q, k]):
        with bb.dataflow():
            y = relax.op.matmul(relax.op.permute_dims(q, [0, 2, 1, 3]),
                                relax.op.permute_dims(k, [0, 2, 3, 1]))
            out = bb.emit_output(relax.op.multiply(y, relax.const(np.float32(0.25))))
        bb.emit_func_output(out)


def test_attention_scores_read_k_through_a_packed_copy(tmp_path):
    """``Q K^T`` reads K[j, d] along j, a row apart: K is copied once into [h, d, j] order, so
    the template's B vector loads are contiguous (attention's transposes are folded into the
    matmul, compiler.attention)."""
    from compiler import gemm
    from compiler.optimize import _same_results, _TaskSampler

    task, mst = _task(_scores, "attention_matmul")
    cands = gemm.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8, 16)
    assert cands
    for sch in cands:
        assert 'T.sblock("k_global")' in sch.mod.script()
    ref_cache: dict = {}
    for sch in cands:
        assert _same_results(task.dispatched[0], sch, mst, ref_cache, str(tmp_path), 30.0)


def test_one_row_is_a_gemv_with_wide_tiles(tmp_path):
    """A classifier's dense layer (one row): tiles of one row and as many column vectors as fit,
    streaming B; every candidate computes the layer."""
    from compiler import gemm
    from compiler.optimize import _TaskSampler

    assert gemm.tile_shapes(8, 16, 1, 1, 1000) == [(1, 5)]  # MobileNetV2's classifier
    task, mst = _task(lambda bb, rng: _dense_gelu(bb, rng, rows=1, ffn=48), "matmul")
    cands = gemm.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8, 16)
    assert len(cands) == 1  # 48 columns: 6 vectors
    _check(task, mst, cands, tmp_path)


def test_dense_with_a_gelu_epilogue(tmp_path):
    from compiler import gemm
    from compiler.optimize import _TaskSampler

    task, mst = _task(_dense_gelu, "matmul")
    assert "erf" in task.task_name  # the whole GELU is fused into the matmul's function
    cands = gemm.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8, 16)
    assert len(cands) >= 2
    _check(task, mst, cands, tmp_path)


def _conv_relu(bb, rng, cin, cout, hw, k, stride):
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, cin, hw, hw), "float32"))
    w = rng.standard_normal((cout, cin, k, k)).astype("float32")
    b = rng.standard_normal((1, cout, 1, 1)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=k // 2)
            out = bb.emit_output(relax.op.nn.relu(relax.op.add(y, relax.const(b))))
        bb.emit_func_output(out)


@pytest.mark.parametrize(("cin", "k", "stride"), [(8, 3, 1), (8, 3, 2), (3, 7, 2)],
                         ids=["3x3", "3x3-stride2", "7x7-stride2-rgb"])
def test_padded_convolutions_are_gemms_too(tmp_path, cin, k, stride):
    """A padded convolution is padded once, in its own parallel loop (not tested per A load in
    the inner loop), and its window loops stay loops (fused, every A index is a division); a
    stem's 3 input channels are unrolled."""
    from compiler import gemm
    from compiler.optimize import _TaskSampler

    task, mst = _task(lambda bb, rng: _conv_relu(bb, rng, cin, 16, 14, k, stride), "conv")
    cands = gemm.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8, 16)
    assert cands
    for sch in cands:
        script = sch.mod.script()
        assert 'T.sblock("pad_temp")' in script
        update = script[script.index('T.sblock("conv2d_nhwc_update")'):]
        assert "if_then_else" not in update.split("T.sblock(", 2)[1]
    _check(task, mst, cands, tmp_path)


def test_tile_shapes_fit_the_registers():
    from compiler.gemm import tile_shapes

    shapes = tile_shapes(8, 16, 56, 56 * 56, 24)  # AVX2, MobileNetV2's 56x56 -> 24 projection
    assert shapes[0] == (4, 3)  # 12 FMAs for 7 loads per k
    for mr, nv in shapes:
        assert mr * nv + nv + 1 <= 16 and 24 % (nv * 8) == 0 and 3136 % mr == 0
        assert 56 % mr == 0 or mr % 56 == 0
    assert (8, 3) in tile_shapes(16, 32, 56, 56 * 56, 48)  # AVX-512 has 32 registers
    assert tile_shapes(8, 16, 7, 49, 12) == []  # 12 columns: no whole vector of 8


def test_not_offered_for_pooling_or_elementwise():
    from tvm import relax

    from compiler import gemm
    from compiler.optimize import _TaskSampler

    def pool(bb, rng):
        x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.nn.max_pool2d(relax.op.nn.relu(x), 2, 2))
            bb.emit_func_output(out)

    task, mst = _task(pool, "pool")
    assert gemm.candidates(task.dispatched[0], _TaskSampler(task, mst, 1).postprocs, 8, 16) == []
