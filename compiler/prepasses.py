"""ONNX-level pre-passes, run once the compile spec has fixed every input shape.

Exported models often compute shapes at run time (``Shape → Gather → Concat → Reshape``) or pass
parameters as tensors (``axes``, ``pads``, ``scales``, ``k``, ``split``); TVM's relax frontend
needs those as constants. With static input shapes they *are* constants, so we fold them:

1. shape inference (``onnx.shape_inference`` with data propagation);
2. ``Shape``/``Size`` of tensors whose shape is static become constants;
3. any node whose inputs are all constants is evaluated with ONNX's reference evaluator (a library
   call) and replaced by an initializer (bounded in size; random ops are never folded);
4. ``If`` nodes whose condition folded to a constant are replaced by the taken branch.

Repeated to a fixpoint. Semantics-preserving by construction: every folded value is what the
node would compute at run time for any input of the fixed shapes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

logger = logging.getLogger(__name__)

__all__ = ["FoldStats", "fold_constants"]

_NEVER_FOLD = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "Dropout", "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty",
    "SequenceInsert", "SequenceAt", "SequenceErase", "SequenceLength", "SplitToSequence",
    "ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement",
})
_MAX_FOLD_ELEMENTS = 1 << 20


@dataclass
class FoldStats:
    folded_nodes: int = 0
    inlined_ifs: int = 0
    rounds: int = 0


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if all(d >= 0 for d in dims):
            out[vi.name] = tuple(dims)
    return out


def _expands_weights(outputs: list[np.ndarray], inputs: list[np.ndarray | None]) -> bool:
    """True when folding would store noticeably more bytes than the node's constant inputs
    (a Cast of int8 weights to float32 is 4x): such chains stay in the graph, and the artifact
    keeps the small weights."""
    out_bytes = sum(v.nbytes for v in outputs)
    in_bytes = sum(v.nbytes for v in inputs if v is not None)
    return out_bytes > (1 << 20) and out_bytes > 1.5 * in_bytes


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None],
              opsets: list[onnx.OperatorSetIdProto]) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    feeds, graph_inputs, inits = {}, [], []
    for name, value in zip(node.input, inputs):
        if not name:
            continue
        inits.append(numpy_helper.from_array(np.asarray(value), name))
    graph = helper.make_graph(
        [node], "fold", graph_inputs,
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output
         if o],
        inits,
    )
    model = helper.make_model(graph, opset_imports=list(opsets))
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:
        logger.debug("not folding %s (%s): %s", node.name, node.op_type, e)
        return None
    return [np.asarray(r) for r in results]


def _inline_if(node: onnx.NodeProto, cond: bool, counter: int) -> list[onnx.NodeProto]:
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
    prefix = f"__ef_if{counter}_"
    local = {v for n in branch.node for v in n.output if v} | {t.name for t in branch.initializer}

    def rename(name: str) -> str:
        return prefix + name if name in local else name

    nodes = []
    for init in branch.initializer:
        arr = numpy_helper.to_array(init)
        nodes.append(helper.make_node("Constant", [], [rename(init.name)],
                                      value=numpy_helper.from_array(arr, rename(init.name))))
    def rename_outer_refs(graph: onnx.GraphProto) -> None:
        """Nested subgraphs may read the branch's values from their outer scope."""
        inner = {v for n in graph.node for v in n.output} | {t.name for t in graph.initializer}
        inner |= {i.name for i in graph.input}
        for sn in graph.node:
            for k, name in enumerate(sn.input):
                if name and name not in inner and name in local:
                    sn.input[k] = prefix + name
            for a in sn.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    rename_outer_refs(sub)

    for n in branch.node:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.name = prefix + (n.name or n.op_type)
        del new.input[:]
        new.input.extend(rename(i) if i else i for i in n.input)
        del new.output[:]
        new.output.extend(rename(o) if o else o for o in n.output)
        for a in new.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                rename_outer_refs(sub)
        nodes.append(new)
    for out_vi, target in zip(branch.output, node.output):
        nodes.append(helper.make_node("Identity", [rename(out_vi.name)], [target],
                                      name=f"{prefix}out_{target}"))
    return nodes


def _one_round(model: onnx.ModelProto, stats: FoldStats) -> bool:
    g = model.graph
    shapes = _static_shapes(model)
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: dict[str, onnx.TensorProto] = {}
    changed = False
    for node in g.node:
        value: list[np.ndarray] | None = None
        if node.op_type == "If" and node.input[0] in consts and node.domain in ("", "ai.onnx"):
            cond = bool(np.asarray(consts[node.input[0]]).reshape(-1)[0])
            new_nodes.extend(_inline_if(node, cond, stats.inlined_ifs))
            stats.inlined_ifs += 1
            changed = True
            continue
        # A node producing a graph output stays computed, except Shape/Size: their value
        # depends only on the (fixed) input shapes, and TVM returns them as R.Shape, which is
        # not a tensor output. They become Constant nodes that keep the output's name.
        shape_out = (node.op_type in ("Shape", "Size") and node.input[0] in shapes
                     and any(o in graph_outputs for o in node.output))
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NEVER_FOLD
                    and not _has_subgraph(node)
                    and (shape_out or not any(o in graph_outputs for o in node.output)))
        if foldable:
            if node.op_type == "Shape" and node.input[0] in shapes:
                shape = np.array(shapes[node.input[0]], dtype=np.int64)
                attrs = {a.name: a.i for a in node.attribute}
                start, end = attrs.get("start", 0), attrs.get("end", len(shape))
                value = [shape[start:end]]
            elif node.op_type == "Size" and node.input[0] in shapes:
                value = [np.array(int(np.prod(shapes[node.input[0]])), dtype=np.int64)]
            elif node.op_type == "Constant" or all(not i or i in consts for i in node.input):
                value = _evaluate(node, [consts.get(i) for i in node.input], model.opset_import)
        if value is not None and _expands_weights(value, [consts.get(i) for i in node.input]):
            value = None  # e.g. int8 weights dequantized to float: keep them small, compute late
        if value is not None and shape_out:
            new_nodes.append(helper.make_node(
                "Constant", [], [node.output[0]], name=node.name or f"{node.op_type}_folded",
                value=numpy_helper.from_array(value[0], node.output[0])))
            stats.folded_nodes += 1
            changed = True
            continue
        if value is not None and len(value) == len([o for o in node.output if o]) and all(
                v.size <= _MAX_FOLD_ELEMENTS for v in value):
            for name, v in zip([o for o in node.output if o], value):
                consts[name] = v
                new_inits[name] = numpy_helper.from_array(v, name)
            stats.folded_nodes += 1
            changed = True
            continue
        new_nodes.append(node)
    if not changed:
        return False
    used = {i for n in new_nodes for i in n.input} | graph_outputs
    for n in new_nodes:  # names used inside subgraphs (outer-scope references)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used |= {i for sn in sub.node for i in sn.input}
    kept = [t for t in g.initializer if t.name in used]
    kept += [t for name, t in new_inits.items() if name in used]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(kept)
    known = {t.name for t in kept} | {i.name for i in g.input} | {o for n in new_nodes for o in n.output}
    keep_vi = [vi for vi in g.value_info if vi.name in known]
    del g.value_info[:]
    g.value_info.extend(keep_vi)
    return True


def fold_constants(model: onnx.ModelProto, max_rounds: int = 8) -> tuple[onnx.ModelProto, FoldStats]:
    """Return a folded copy of ``model`` (inputs must have static shapes) and what was done."""
    stats = FoldStats()
    current = onnx.ModelProto()
    current.CopyFrom(model)
    for _ in range(max_rounds):
        try:
            current = shape_inference.infer_shapes(current, strict_mode=False, data_prop=True)
        except Exception as e:
            logger.debug("shape inference failed during folding: %s", e)
        stats.rounds += 1
        if not _one_round(current, stats):
            break
    return current, stats
