"""ONNX node tests for the converters in compiler/converters_extra.py, through edgeforge's real
compile path (bench/conformance.py): each case must match ONNX's expected outputs."""

from __future__ import annotations

from bench.conformance import run

CASES = [
    "test_bitcast_float32_to_int32",
    "test_swiglu_alpha",
    "test_hannwindow_symmetric",            # size frozen through constant_inputs
    "test_melweightmatrix",
    "test_center_crop_pad_crop_and_pad",
    "test_reversesequence_batch",           # runtime sequence_lens
    "test_tensorscatter_circular",          # runtime write_indices
    "test_col2im_pads",
    "test_convinteger_with_padding",
    "test_qlinearconv",
    "test_qlinearmatmul_3D_uint8_float16",
    "test_causal_conv_with_state_with_bias_and_past_state",
    "test_causal_conv_with_state_silu_fp16",
    "test_deform_conv_with_mask_bias",
    "test_linear_attention_gated_delta_gqa",
    "test_linear_attention_decode_step",
    "test_linear_attention_gated_expanded",  # the function body: a Scan
    "test_dft_irfft",
    "test_dft_inverse_opset19",
    "test_stft_with_window",
    "test_scan9_multi_state",
    "test_scan_sum",                        # Scan-8 (batch axis)
    "test_range_int32_type_negative_delta_expanded",  # Loop, constant trip count
    "test_tfidfvectorizer_tf_batch_uniandbigrams_skip5",
]


def test_converters_extra():
    results = run(CASES, jobs=2, timeout=300, raw=False, progress=False)
    assert sorted(r.name for r in results) == sorted(CASES)
    failed = {r.name: f"{r.ours}: {r.detail}" for r in results if r.ours != "pass"}
    assert not failed, failed
