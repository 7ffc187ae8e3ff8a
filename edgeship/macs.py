"""Multiply-accumulates per sample of an ONNX model, from its graph alone: what an engine's achieved rate is computed
from. Counted from the FP32 ONNX (every engine of a run computes the same products at its own precision), so the count
does not depend on how a backend fused or quantized the graph.

Counted: ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul`` and their integer forms. Element-wise work (activations,
additions, normalization) is not counted: it is memory-bound, and MAC counts in the field (Torch-Pruning's, fvcore's)
leave it out too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONVOLUTIONS = {"Conv", "ConvInteger", "QLinearConv"}
PRODUCTS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}


def onnx_macs(path: Path) -> int:
    """MACs of one sample through the model at ``path``: symbolic dimensions (a dynamic batch, a sequence) are taken as
    1. ``ValueError`` when the file is not a readable ONNX model or a counted node's shapes cannot be inferred."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError…
        raise ValueError(f"{path}: not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    total = 0
    for node in inferred.graph.node:
        if node.op_type in CONVOLUTIONS or node.op_type == "ConvTranspose" or node.op_type in PRODUCTS:
            total += _node_macs(node, shapes)
    return int(total)


def _node_macs(node: object, shapes: dict[str, tuple[int, ...]]) -> int:
    op, inputs, outputs = node.op_type, list(node.input), list(node.output)  # type: ignore[attr-defined]
    weight_index = 3 if op in ("QLinearConv", "QLinearMatMul") else 1
    needed = [inputs[0], inputs[weight_index], outputs[0]]
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
