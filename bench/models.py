"""Benchmark model set, generated as ONNX with ``onnx.helper`` and seeded random weights.

Real architectures, random weights (fine for speed measurements):

* ``mobilenetv2``  — MobileNetV2 1.0, 224x224, ReLU6 as ``Clip``, BN folded into conv bias
  (what ``torch.onnx.export`` in eval mode produces).
* ``resnet18``     — ResNet-18, 224x224, BasicBlocks, BN folded.
* ``transformer``  — 4-layer post-LN transformer encoder, d=256, seq=128, 4 heads, FFN 1024,
  ``LayerNormalization``, MatMul/Softmax attention, exact (erf) GELU.
* ``kws_dscnn``    — keyword-spotting DS-CNN-S (Zhang et al. "Hello Edge"), input 1x1x49x10 MFCC,
  explicit ``BatchNormalization`` nodes (as many TF/Keras→ONNX exports keep them), 12 classes.

``build_model(name)`` returns a checked ``onnx.ModelProto`` (opset 17). Same name → same bytes.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MODELS = ["mobilenetv2", "resnet18", "transformer", "kws_dscnn"]

__all__ = ["MODELS", "OPSET", "build_model", "input_feed"]


class _Graph:
    """Tiny helper that accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, arr: np.ndarray, prefix: str = "w") -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name("n_" + op), **attrs))
        return outs[0] if n_out == 1 else outs

    # --- layers -------------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int | tuple[int, int], stride: int | tuple[int, int] = 1,
             group: int = 1, pad: tuple[int, int, int, int] | None = None, bias: bool = True) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if pad is None:
            pad = (kh // 2, kw // 2, kh // 2, kw // 2)
        fan_in = cin // group * kh * kw
        w = self.rng.standard_normal((cout, cin // group, kh, kw)) * np.sqrt(2.0 / fan_in)
        w = w.astype(np.float32)
        ins = [x, self.const(w)]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.01).astype(np.float32), "b"))
        return self.node("Conv", ins, kernel_shape=[kh, kw], strides=[sh, sw], pads=list(pad), group=group,
                         dilations=[1, 1])

    def bn(self, x: str, c: int) -> str:
        scale = (1.0 + 0.1 * self.rng.standard_normal(c)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(c)).astype(np.float32)
        mean = (0.1 * self.rng.standard_normal(c)).astype(np.float32)
        var = (0.5 + self.rng.random(c)).astype(np.float32)
        return self.node("BatchNormalization", [x, self.const(scale, "bn_s"), self.const(b, "bn_b"),
                                                self.const(mean, "bn_m"), self.const(var, "bn_v")],
                         epsilon=1e-5)

    def relu6(self, x: str) -> str:
        lo = self.const(np.array(0.0, np.float32), "lo")
        hi = self.const(np.array(6.0, np.float32), "hi")
        return self.node("Clip", [x, lo, hi])

    def linear(self, x: str, din: int, dout: int) -> str:
        w = (self.rng.standard_normal((din, dout)) / np.sqrt(din)).astype(np.float32)
        b = (self.rng.standard_normal(dout) * 0.01).astype(np.float32)
        return self.node("Add", [self.node("MatMul", [x, self.const(w)]), self.const(b, "b")])

    def gemm(self, x: str, din: int, dout: int) -> str:
        w = (self.rng.standard_normal((dout, din)) / np.sqrt(din)).astype(np.float32)
        b = (self.rng.standard_normal(dout) * 0.01).astype(np.float32)
        return self.node("Gemm", [x, self.const(w), self.const(b, "b")], transB=1)

    def layernorm(self, x: str, d: int) -> str:
        g = (1.0 + 0.05 * self.rng.standard_normal(d)).astype(np.float32)
        b = (0.05 * self.rng.standard_normal(d)).astype(np.float32)
        return self.node("LayerNormalization", [x, self.const(g, "ln_g"), self.const(b, "ln_b")],
                         axis=-1, epsilon=1e-5)

    def shape_const(self, vals: list[int]) -> str:
        return self.const(np.array(vals, np.int64), "shape")

    def finish(self, name: str, inp: tuple[str, list[int]], out: tuple[str, list[int]]) -> onnx.ModelProto:
        # rename the last node output to the graph output name
        last = out[0]
        self.nodes.append(helper.make_node("Identity", [last], ["output"], name="output_identity"))
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, out[1])],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgeforge-bench")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def mobilenetv2() -> onnx.ModelProto:
    g = _Graph(_seed("mobilenetv2"))
    x = g.relu6(g.conv("input", 3, 32, 3, 2))
    cin = 32
    # (expansion t, out channels c, repeats n, first stride s)
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            y = x
            if t != 1:
                y = g.relu6(g.conv(y, cin, hid, 1))
            y = g.relu6(g.conv(y, hid, hid, 3, stride, group=hid))
            y = g.conv(y, hid, c, 1)
            if stride == 1 and cin == c:
                y = g.node("Add", [x, y])
            x, cin = y, c
    x = g.relu6(g.conv(x, cin, 1280, 1))
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    x = g.gemm(x, 1280, 1000)
    return g.finish("mobilenetv2", ("input", [1, 3, 224, 224]), (x, [1, 1000]))


def resnet18() -> onnx.ModelProto:
    g = _Graph(_seed("resnet18"))
    x = g.node("Relu", [g.conv("input", 3, 64, 7, 2)])
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, c in enumerate([64, 128, 256, 512]):
        for i in range(2):
            stride = 2 if (stage > 0 and i == 0) else 1
            y = g.node("Relu", [g.conv(x, cin, c, 3, stride)])
            y = g.conv(y, c, c, 3, 1)
            sc = x if (stride == 1 and cin == c) else g.conv(x, cin, c, 1, stride)
            x = g.node("Relu", [g.node("Add", [y, sc])])
            cin = c
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    x = g.gemm(x, 512, 1000)
    return g.finish("resnet18", ("input", [1, 3, 224, 224]), (x, [1, 1000]))


def transformer(layers: int = 4, d: int = 256, seq: int = 128, heads: int = 4,
                ffn: int = 1024) -> onnx.ModelProto:
    g = _Graph(_seed("transformer"))
    hd = d // heads
    x = "input"
    for _ in range(layers):
        q = g.linear(x, d, d)
        k = g.linear(x, d, d)
        v = g.linear(x, d, d)
        split = g.shape_const([1, seq, heads, hd])
        q = g.node("Transpose", [g.node("Reshape", [q, split])], perm=[0, 2, 1, 3])   # 1,h,s,hd
        k = g.node("Transpose", [g.node("Reshape", [k, split])], perm=[0, 2, 3, 1])   # 1,h,hd,s
        v = g.node("Transpose", [g.node("Reshape", [v, split])], perm=[0, 2, 1, 3])   # 1,h,s,hd
        scores = g.node("MatMul", [q, k])
        scores = g.node("Mul", [scores, g.const(np.array(1.0 / np.sqrt(hd), np.float32), "scale")])
        probs = g.node("Softmax", [scores], axis=-1)
        ctx = g.node("MatMul", [probs, v])                                          # 1,h,s,hd
        ctx = g.node("Reshape", [g.node("Transpose", [ctx], perm=[0, 2, 1, 3]), g.shape_const([1, seq, d])])
        attn = g.linear(ctx, d, d)
        x = g.layernorm(g.node("Add", [x, attn]), d)
        h = g.linear(x, d, ffn)
        # exact GELU: 0.5 * h * (1 + erf(h / sqrt(2)))  (Gelu op is opset 20)
        e = g.node("Erf", [g.node("Div", [h, g.const(np.array(np.sqrt(2.0), np.float32), "sqrt2")])])
        e = g.node("Add", [e, g.const(np.array(1.0, np.float32), "one")])
        h = g.node("Mul", [g.node("Mul", [h, e]), g.const(np.array(0.5, np.float32), "half")])
        h = g.linear(h, ffn, d)
        x = g.layernorm(g.node("Add", [x, h]), d)
    return g.finish("transformer", ("input", [1, seq, d]), (x, [1, seq, d]))


def kws_dscnn(classes: int = 12, ch: int = 64) -> onnx.ModelProto:
    g = _Graph(_seed("kws_dscnn"))
    # first conv 10x4, stride 2, 'same'-style padding as in the ARM ML-KWS DS-CNN
    x = g.conv("input", 1, ch, (10, 4), (2, 2), pad=(4, 1, 5, 2), bias=False)
    x = g.node("Relu", [g.bn(x, ch)])
    for _ in range(4):
        x = g.node("Relu", [g.bn(g.conv(x, ch, ch, 3, 1, group=ch, bias=False), ch)])
        x = g.node("Relu", [g.bn(g.conv(x, ch, ch, 1, bias=False), ch)])
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    x = g.gemm(x, ch, classes)
    return g.finish("kws_dscnn", ("input", [1, 1, 49, 10]), (x, [1, classes]))


_BUILDERS = {"mobilenetv2": mobilenetv2, "resnet18": resnet18, "transformer": transformer,
             "kws_dscnn": kws_dscnn}

def count_flops(model: onnx.ModelProto) -> int:
    """2 x the multiply-accumulates of a model's Conv, MatMul and Gemm nodes, from its inferred
    shapes (what roofline statements count; elementwise work is left out)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out:
            continue
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # [C_out, C_in / group, kh, kw]
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes[node.input[0]]
            trans_a = node.op_type == "Gemm" and any(
                at.name == "transA" and at.i for at in node.attribute)
            total += 2 * int(np.prod(out)) * (a[0] if trans_a else a[-1])
    return total


def build_model(name: str) -> onnx.ModelProto:
    """Build one benchmark model by name (see ``MODELS``)."""
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}") from None


def input_feed(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 inputs for every graph input that is not an initializer."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feed[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feed
