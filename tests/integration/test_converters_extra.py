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
    "test_causal_conv_with_state_kernel_size_one_expanded",  # zero-size constant (ZeroPad)
    "test_tril_zero",                       # zero-size constant input (frozen)
]


def test_converters_extra():
    results = run(CASES, jobs=2, timeout=300, raw=False, progress=False)
    assert sorted(r.name for r in results) == sorted(CASES)
    failed = {r.name: f"{r.ours}: {r.detail}" for r in results if r.ours != "pass"}
    assert not failed, failed


def _dq_lstm_model(rng):  # a tiny com.microsoft DynamicQuantizeLSTM, as onnxruntime's quantizer
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    seq, batch, inp, hid, dirs = 5, 1, 4, 3, 2  # batch 1: see DynamicQuantizeLSTM
    # 7-bit weights, as onnxruntime's quantizer writes them with reduce_range: its AVX2 u8s8
    # kernels (VPMADDUBSW) add pairs of u8 x s8 products in saturating int16, and with weights up
    # to 90 (255 x 90 x 2 > 32767) onnxruntime itself was 4e-3 off on an AVX2-only host
    w = rng.integers(-63, 64, (dirs, inp, 4 * hid)).astype(np.int8)
    r = rng.integers(-63, 64, (dirs, hid, 4 * hid)).astype(np.int8)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w, "W"), (r, "R"), (rng.normal(0, 0.1, (dirs, 8 * hid)).astype(np.float32), "B"),
        (np.array([0.011, 0.009], np.float32), "Ws"), (np.zeros(dirs, np.int8), "Wz"),
        (rng.uniform(0.005, 0.02, (dirs, 4 * hid)).astype(np.float32), "Rs"),
        (np.zeros((dirs, 4 * hid), np.int8), "Rz")]]
    node = helper.make_node("DynamicQuantizeLSTM",
                            ["X", "W", "R", "B", "", "", "", "", "Ws", "Wz", "Rs", "Rz"],
                            ["Y", "Yh", "Yc"], domain="com.microsoft",
                            direction="bidirectional", hidden_size=hid)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq, batch, inp])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [seq, dirs, batch, hid]),
         helper.make_tensor_value_info("Yh", TensorProto.FLOAT, [dirs, batch, hid]),
         helper.make_tensor_value_info("Yc", TensorProto.FLOAT, [dirs, batch, hid])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString(), rng.normal(0, 1, (seq, batch, inp)).astype(np.float32)


def test_dynamic_quantize_lstm_matches_onnxruntime(tmp_path):
    """Activations are quantized per matmul exactly as onnxruntime does (the dynamically
    quantized CRNN of the real-model corpus relies on it)."""
    import numpy as np
    import onnxruntime as ort

    from bench.conformance import TARGET
    from compiler._build import BuildRequest, build
    from compiler.prepasses import fold_constants
    from compiler.validation import validate_model
    from edgeforge_runtime._vm import VirtualMachine

    data, x = _dq_lstm_model(np.random.default_rng(0))
    folded, _ = fold_constants(validate_model(data).model)
    out = build(BuildRequest(model_bytes=folded.SerializeToString(), target=TARGET, cc="g++",
                             out_path=str(tmp_path / "m.so"),
                             optimize={"measure": False, "candidates": 1}), lambda _: None)
    actual = [np.from_dlpack(t) for t in VirtualMachine(out.library).run([x])]
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"X": x})
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
