"""A fast slice of the ONNX node-test conformance run (bench/conformance.py) as a regression
guard: each case goes through edgeforge's real compile path and must match ONNX's expected
outputs. The full run (`python -m bench.conformance`) is a command; its summary is in README."""

from __future__ import annotations

from bench.conformance import run

CASES = [
    "test_relu",
    "test_conv_with_strides_padding",
    "test_reshape_reordered_all_dims",   # shape from an input: frozen via constant_inputs
    "test_reduce_sum_default_axes_keepdims_example",
    "test_lstm_defaults",                # edgeforge converter
    "test_gru_with_initial_bias",        # edgeforge converter
    "test_simple_rnn_defaults",          # edgeforge converter
    "test_celu",                         # edgeforge converter
    "test_sce_NCd1_mean_weight_negative_ii",  # edgeforge converter (loss, ignore_index)
    "test_cumprod_1d_reverse_exclusive", # edgeforge converter
    "test_attention_4d",                 # edgeforge's ai.onnx Attention
    "test_attention_4d_gqa",
    "test_attention_local_window_with_past",  # sliding window, cache offset
    "test_attention_4d_causal_nonpad_batch_prefill",  # nonpad_kv_seqlen
    "test_attention_4d_softcap_neginf_mask_poison",
    "test_attention_causal_boolmask_nan_robustness_expanded",  # ReduceMax over only -inf
    "test_attention_4d_fp16",            # half precision computed in float32
    "test_attention_4d_fp16_expanded",   # float16 MatMul/Softmax
    "test_nonmaxsuppression_iou_threshold_boundary",  # IoU == threshold is kept (ONNX)
    "test_spacetodepth_crd_mode_example",
    "test_convtranspose_output_shape",
    "test_maxpool_with_argmax_2d_precomputed_pads",  # Indices output
    "test_affine_grid_2d_expanded",      # scalar Unsqueeze axes
    "test_quantizelinear_blocked_asymmetric",  # blocked quantization
    "test_dequantizelinear_blocked",
    "test_layer_normalization_4d_axis1", # Mean/InvStdDev outputs
    "test_softmax_axis_1",
    "test_matmul_2d",
    "test_gather_0",
    "test_resize_downsample_scales_linear_antialias",  # separable resize (float scales frozen)
    "test_resize_upsample_sizes_nearest_axes_2_3",
    "test_resize_downsample_scales_cubic",  # scale * size not an integer
    "test_upsample_nearest",
    "test_shape_start_1",                # Shape as a graph output: folded to a Constant
    "test_onehot_with_axis",
    "test_pow_types_float32_int32",
    "test_compress_0",                   # constant condition: static take
    "test_bitshift_right_int32_shift_ge_width",
    "test_mod_float_edge_cases_fmod_0_float32",
    "test_rms_normalization_2d_axis0",
    "test_batchnorm_example_training_mode",
    "test_reshape_allowzero_reordered",  # allowzero, a 0 in a frozen shape: zero-size output
    "test_split_zero_size_splits_opset18",  # empty pieces: one slice each
    "test_attention_4d_causal_fp16_expanded",  # float16 Softmax rounded step by step
    "test_causal_conv_with_state_silu_fp16_expanded",  # float16 Conv in float32
    "test_top_k_uint64",                 # sorted as int64, sign bit flipped
    "test_maxunpool_export_with_output_shape",  # indices against the inferred shape, padded
    "test_roialign_mode_max",            # max of the weighted corners (ONNX's reference)
]


def test_conformance_subset():
    results = run(CASES, jobs=2, timeout=300, raw=False, progress=False)
    assert sorted(r.name for r in results) == sorted(CASES)
    failed = {r.name: f"{r.ours}: {r.detail}" for r in results if r.ours != "pass"}
    assert not failed, failed
