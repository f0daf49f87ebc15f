import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import samples
from compiler.exceptions import (
    CorruptModelError,
    DynamicShapeError,
    ExternalDataError,
    InvalidModelError,
    ModelTooLargeError,
    NotOnnxError,
    OpsetError,
    SpecError,
    UnsupportedOperatorError,
)
from compiler.spec import parse_input_shape
from compiler.validation import validate_model


def test_valid_model_reports_io(tiny_model):
    v = validate_model(tiny_model)
    assert [(t.name, t.shape, t.dtype) for t in v.inputs] == [("input", (1, 3, 8, 8), "float32")]
    assert [(t.name, t.dtype) for t in v.outputs] == [("probs", "float32")]
    assert v.opset == 17 and len(v.sha256) == 64 and v.size == len(tiny_model)


def test_not_onnx():
    with pytest.raises(NotOnnxError, match="not an ONNX model"):
        validate_model(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(NotOnnxError, match="empty"):
        validate_model(b"")


def test_truncated_protobuf(tiny_model):
    with pytest.raises(CorruptModelError, match="truncated or damaged"):
        validate_model(tiny_model[: len(tiny_model) // 2])


def test_oversized_model(tiny_model):
    with pytest.raises(ModelTooLargeError, match="over the limit of 100 bytes"):
        validate_model(tiny_model, max_bytes=100)


def test_unsupported_operators_are_all_listed():
    with pytest.raises(UnsupportedOperatorError) as e:
        validate_model(samples.unsupported_ops_model())
    msg = str(e.value)
    assert "3 node(s) use 2 operator(s)" in msg
    assert "ai.onnx::Bernoulli (1 node): bernoulli_a" in msg
    assert "ai.onnx::RandomUniformLike (2 nodes): rand_1, rand_2" in msg
    assert "ok_relu" not in msg
    assert {n for _, n, _ in e.value.nodes} == {"bernoulli_a", "rand_1", "rand_2"}


def test_dynamic_input_needs_a_shape():
    data = samples.dynamic_batch_cnn()
    with pytest.raises(DynamicShapeError) as e:
        validate_model(data)
    assert "image ['N', 3, 8, 8]" in str(e.value)
    assert "--input-shape image=1,3,8,8" in str(e.value)
    v = validate_model(data, {"image": [2, 3, 8, 8]})
    assert v.inputs[0].shape == (2, 3, 8, 8)


def test_shape_spec_conflicts_and_unknown_inputs(tiny_model):
    with pytest.raises(SpecError, match="conflicts"):
        validate_model(tiny_model, {"input": [1, 3, 9, 9]})
    with pytest.raises(SpecError, match="does not have"):
        validate_model(tiny_model, {"nope": [1]})
    with pytest.raises(SpecError, match="rank"):
        validate_model(tiny_model, {"input": [1, 3]})


def test_external_data_is_refused(tiny_model):
    m = onnx.load_from_string(tiny_model)
    t = m.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(ExternalDataError, match="external data"):
        validate_model(m.SerializeToString())


def _relu_model(opset: int) -> bytes:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m.SerializeToString()


def test_opset_range():
    validate_model(_relu_model(13))
    too_new = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(OpsetError, match=f"opset {too_new} is outside"):
        validate_model(_relu_model(too_new))


def test_old_opsets_are_converted_and_recorded():
    """Below opset 7 the model is converted with onnx.version_converter (as the error message
    used to tell the user to do), and the conversion is recorded."""
    v = validate_model(_relu_model(5))
    assert v.opset == 7
    assert any("converted from opset 5 to 7" in n for n in v.notes)
    assert validate_model(_relu_model(13)).notes == ()


def test_checker_failure_is_invalid_model():
    g = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(__import__("numpy").zeros(1, "float32"), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    with pytest.raises(InvalidModelError, match="ONNX checker"):
        validate_model(m.SerializeToString())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("input=1,3,224,224", ("input", [1, 3, 224, 224])), ("x:2x3", ("x", [2, 3])),
     (" a = 4 ", ("a", [4]))],
)
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["input", "input=", "input=1,-3", "input=0,3", "=1,2"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(SpecError):
        parse_input_shape(text)


def _resize_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    scales = helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="nearest")
    graph = helper.make_graph([node], "g", [x, scales], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


def test_runtime_parameter_inputs_are_named():
    with pytest.raises(UnsupportedOperatorError) as e:
        validate_model(_resize_model())
    assert "ai.onnx::Resize (up): input 'scales' must be a constant" in str(e.value)
    v = validate_model(_resize_model(), constant_inputs={"scales": [1.0, 1.0, 2.0, 2.0]})
    assert [t.name for t in v.inputs] == ["x"]


def test_data_dependent_graph_outputs_are_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1, "n"])
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="nz")], "g", [x], [y])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    with pytest.raises(UnsupportedOperatorError, match=r"NonZero \(nz\): its output shape depends"):
        validate_model(data)


def _lowbit_model() -> bytes:
    """float8 input, an int4 initializer (ONNX packs two per byte), int4 output."""
    import ml_dtypes
    import numpy as np

    w = numpy_helper.from_array(np.array([-8, 7, -1], ml_dtypes.int4), "w")
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]),
             helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["xf", "wf"], ["y"]),
             helper.make_node("Cast", ["y"], ["q"], to=TensorProto.INT4)]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT8E4M3FN, [3])],
                          [helper.make_tensor_value_info("q", TensorProto.INT4, [3])],
                          [w, numpy_helper.from_array(np.array(2.0, np.float32), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m.SerializeToString()


def test_low_bit_types_are_lowered_to_storage_with_logical_dtypes_recorded():
    import numpy as np

    v = validate_model(_lowbit_model())
    assert [(t.name, t.dtype) for t in v.inputs] == [("x", "float8_e4m3fn")]
    assert [(t.name, t.dtype) for t in v.outputs] == [("q", "int4")]
    g = v.model.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert g.output[0].type.tensor_type.elem_type == TensorProto.INT8
    w = next(t for t in g.initializer if t.name == "w")
    np.testing.assert_array_equal(numpy_helper.to_array(w), np.array([-8, 7, -1], np.int8))
    ops = [(n.domain, n.op_type) for n in g.node]
    assert ops == [("ai.edgeforge", "EdgeforgeLowBitDequantize"),
                   ("ai.edgeforge", "EdgeforgeLowBitCast"), ("", "Add"),
                   ("ai.edgeforge", "EdgeforgeLowBitCast")]
    assert any("3 low-bit conversion node(s)" in n for n in v.notes)


def test_optional_tensor_inputs_become_tensor_inputs():
    vi = helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])
    opt = onnx.ValueInfoProto(name="o")
    opt.type.optional_type.elem_type.CopyFrom(vi.type)
    g = helper.make_graph([helper.make_node("OptionalGetElement", ["o"], ["y"])], "g", [opt],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    v = validate_model(m.SerializeToString())
    assert [(t.name, t.shape, t.dtype) for t in v.inputs] == [("o", (4,), "float32")]
    assert any("always present" in n for n in v.notes)


def test_low_bit_types_in_subgraphs_are_refused_by_node():
    branch = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["b"], to=TensorProto.FLOAT8E5M2),
         helper.make_node("Cast", ["b"], ["y_then"], to=TensorProto.FLOAT)], "then", [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2])])
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="branchy", then_branch=branch,
                          else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    with pytest.raises(InvalidModelError, match=r"branchy \(If\): low-bit types inside subgraphs"):
        validate_model(m.SerializeToString())


def test_models_importing_only_other_domains_get_a_default_opset():
    """ai.onnx.ml-only exports have no ai.onnx node: the default import is added, and noted."""
    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    v = validate_model(m.SerializeToString())
    assert v.opset == onnx.defs.onnx_opset_version()
    assert any("imports only ai.onnx.ml" in n for n in v.notes)
    with pytest.raises(OpsetError, match="no default-domain"):
        m2 = helper.make_model(g, opset_imports=[])
        m2.ir_version = 8
        validate_model(m2.SerializeToString())
