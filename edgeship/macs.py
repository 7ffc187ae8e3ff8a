"""Multiply-accumulates per sample of an ONNX model, from its graph alone: what an engine's achieved rate is computed
from. Counted from the FP32 ONNX (every engine of a run computes the same products at its own precision), so the count
does not depend on how a backend fused or quantized the graph.

Counted: ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul`` and their integer forms. Element-wise work (activations,
additions, normalization) is not counted: it is memory-bound, and MAC counts in the field (Torch-Pruning's, fvcore's)
leave it out too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

CONVOLUTIONS = {"Conv", "ConvInteger", "QLinearConv"}
PRODUCTS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}


def onnx_macs(path: Path, feed: Mapping[str, np.ndarray] | None = None) -> int:
    """MACs of one sample through the model at ``path``. Symbolic dimensions (a dynamic batch, a sequence) take their
    sizes from ``feed`` (one sample, as the engines are timed: a sentence's 128 tokens), else 1. Where ONNX's shape
    inference cannot follow the graph (a transformer's exported normalisation, say) and ``feed`` is given, the shapes
    of the counted nodes are read off one run of the model on ONNX Runtime. ``ValueError`` when the file is not a
    readable ONNX model or a counted node's shapes cannot be found."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError…
        raise ValueError(f"{path}: not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for value in model.graph.input:
        given = feed.get(value.name) if feed is not None else None
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_value = 1 if given is None or axis == 0 else int(given.shape[axis])
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):  # no shape: unknown
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    counted = [node for node in inferred.graph.node if node.op_type in CONVOLUTIONS or node.op_type == "ConvTranspose"
               or node.op_type in PRODUCTS]
    unknown = [name for node in counted for name in _needed(node) if name not in shapes]
    if unknown and feed is not None:
        shapes.update(_observed_shapes(model, {name: array[:1] for name, array in feed.items()}, list(dict.fromkeys(unknown))))
    return int(sum(_node_macs(node, shapes) for node in counted))


def _needed(node: object) -> list[str]:
    """The tensors a counted node's MACs are computed from: its input, its weight and its output."""
    op, inputs = node.op_type, list(node.input)  # type: ignore[attr-defined]
    return [inputs[0], inputs[3 if op in ("QLinearConv", "QLinearMatMul") else 1], node.output[0]]  # type: ignore[attr-defined]


def _observed_shapes(model: Any, feed: Mapping[str, np.ndarray], names: list[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of ``names`` in one run of ``model`` on ONNX Runtime (each marked as a graph output)."""
    import onnx
    import onnxruntime as ort

    graph_inputs = {value.name for value in model.graph.input} | {tensor.name for tensor in model.graph.initializer}
    probed = [name for name in names if name not in graph_inputs]
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    del marked.graph.output[:]
    marked.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in probed)
    try:
        session = ort.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(probed, dict(feed))
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime fails in many ways; the count is then unknown, not wrong
        raise ValueError(f"the shapes of the counted nodes cannot be inferred, nor read off a run ({type(exc).__name__})") from None
    return {name: tuple(value.shape) for name, value in zip(probed, values, strict=True)}


def _node_macs(node: object, shapes: dict[str, tuple[int, ...]]) -> int:
    op = node.op_type  # type: ignore[attr-defined]
    needed = _needed(node)
    missing = [name for name in needed if name not in shapes]
    if missing:
        raise ValueError(f"{op} node {node.name!r}: the shape of {missing[0]!r} cannot be inferred")  # type: ignore[attr-defined]
    x, w, y = (shapes[name] for name in needed)
    if op in CONVOLUTIONS:  # weight (C_out, C_in / group, k...): each output element takes C_in / group × k... MACs
        return int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":  # weight (C_in, C_out / group, k...): each input element feeds C_out / group × k... outputs
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)  # type: ignore[attr-defined]
        k = x[0] if trans_a else x[-1]
        return int(np.prod(y, dtype=np.int64)) * int(k)
    return int(np.prod(y, dtype=np.int64)) * int(x[-1])  # MatMul: every output element is a dot product over K
