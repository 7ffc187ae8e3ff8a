"""Fuse the exact (erf) GELU that PyTorch exports as five nodes into one ONNX ``Gelu``.

PyTorch writes ``gelu(x)`` as ``x * 0.5 * (1 + erf(x / √2))``. TFLite has no builtin ``Erf`` (the converter asks
for Flex ops, which LiteRT's interpreter does not run) but has a builtin ``GELU``; onnx2tf recognises the five nodes
only in one operand order, which the torch.export exporter does not write. One ``Gelu`` node (ONNX opset 20)
converts to the builtin in every order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

GELU_OPSET = 20
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class _Match:
    x: str
    nodes: tuple[onnx.NodeProto, ...]
    output: str


def fuse_erf_gelu(model: onnx.ModelProto) -> int:
    """Replace every erf GELU in ``model``'s main graph by a ``Gelu`` node, in place; return how many. The default
    domain's opset is raised to 20 when a fusion happens (the ops of 18 and 19 keep their meaning there)."""
    graph = model.graph
    constants = _scalar_constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {value.name for value in graph.output}
    producers = {output: node for node in graph.node for output in node.output}

    matches = []
    for node in graph.node:
        if node.op_type == "Erf":
            match = _match(node, producers, consumers, constants, graph_outputs)
            if match is not None:
                matches.append(match)
    if not matches:
        return 0

    replaced = {id(node) for match in matches for node in match.nodes}
    first = {id(match.nodes[0]): match for match in matches}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in first:
            match = first[id(node)]
            kept.append(helper.make_node("Gelu", [match.x], [match.output], name=f"{match.nodes[1].name or match.output}_gelu"))
        elif id(node) not in replaced:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unread_constants(graph, {name for match in matches for node in match.nodes for name in node.input})
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < GELU_OPSET:
            opset.version = GELU_OPSET
    return len(matches)


def _match(erf: onnx.NodeProto, producers: dict[str, onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]],
           constants: dict[str, float], graph_outputs: set[str]) -> _Match | None:
    """The five nodes around ``erf`` when they compute exactly ``gelu(x)`` and nothing else reads their insides."""
    def only_consumer(name: str) -> onnx.NodeProto | None:
        readers = consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in graph_outputs else None

    def other_input(node: onnx.NodeProto, known: str) -> str | None:
        if len(node.input) != 2 or known not in node.input:
            return None
        return node.input[1] if node.input[0] == known else node.input[0]

    scale = producers.get(erf.input[0])
    if scale is None or only_consumer(scale.output[0]) is not erf or len(scale.input) != 2:
        return None
    x, factor = scale.input
    divisor = {"Div": math.sqrt(2.0), "Mul": 1 / math.sqrt(2.0)}.get(scale.op_type)
    if divisor is None or not _is(constants.get(factor), divisor):
        return None
    plus_one = only_consumer(erf.output[0])
    if plus_one is None or plus_one.op_type != "Add" or not _is(constants.get(other_input(plus_one, erf.output[0]) or ""), 1.0):
        return None
    first = only_consumer(plus_one.output[0])
    if first is None or first.op_type != "Mul":
        return None
    second = only_consumer(first.output[0])
    if second is None or second.op_type != "Mul":
        return None
    operands = {other_input(first, plus_one.output[0]), other_input(second, first.output[0])}
    half = next((name for name in operands if name is not None and _is(constants.get(name), 0.5)), None)
    if half is None or operands != {x, half}:
        return None
    return _Match(x=x, nodes=(scale, erf, plus_one, first, second), output=second.output[0])


def _drop_unread_constants(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the initializers among ``candidates`` that no node reads any more (the fused nodes' √2, 1 and ½)."""
    read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    unread = [initializer for initializer in graph.initializer if initializer.name in candidates and initializer.name not in read]
    for initializer in unread:
        graph.initializer.remove(initializer)


def _scalar_constants(graph: onnx.GraphProto) -> dict[str, float]:
    """Names of one-element float constants (initializers and ``Constant`` nodes) and their values."""
    found: dict[str, float] = {}
    for initializer in graph.initializer:
        if initializer.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            array = numpy_helper.to_array(initializer)
            if array.size == 1:
                found[initializer.name] = float(array.reshape(()))
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attribute = node.attribute[0]
            if attribute.name == "value" and attribute.t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                array = numpy_helper.to_array(attribute.t)
                if array.size == 1:
                    found[node.output[0]] = float(array.reshape(()))
            elif attribute.name == "value_float":
                found[node.output[0]] = float(attribute.f)
    return found


def _is(value: float | None, expected: float) -> bool:
    return value is not None and bool(np.isclose(value, expected, rtol=_TOLERANCE, atol=0.0))
