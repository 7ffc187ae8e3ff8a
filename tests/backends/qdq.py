"""A Q/DQ model whose integer arithmetic saturates on x86 CPUs without VNNI, for tests of what runs it as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 64
OUTPUT_SCALE = 16384.0
# every input 255 (uint8), every weight 127: the 1×1 convolution sums 64 × 255 × 127 = 2,072,640, which quantizes to
# 127 × 16384; ONNX Runtime's u8s8 kernels on x86 without VNNI add the products in pairs into int16 (VPMADDUBSW) and
# saturate each pair at 32,767, giving 32 × 32,767 = 1,048,544 → 64 × 16384
EXACT = 127 * OUTPUT_SCALE
SATURATED = 64 * OUTPUT_SCALE


def saturating_qdq_conv(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The model, written to ``path``, and the feed whose exact output is ``EXACT``."""
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "x_scale"), numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
             numpy_helper.from_array(np.full((1, CHANNELS, 1, 1), 127, np.int8), "w"),
             numpy_helper.from_array(np.array([1.0], np.float32), "w_scale"), numpy_helper.from_array(np.array([0], np.int8), "w_zero"),
             numpy_helper.from_array(np.array(OUTPUT_SCALE, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["conv"], name="conv"),
             helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["output"])]
    graph = helper.make_graph(nodes, "saturating", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, CHANNELS, 1, 1])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    path.write_bytes(model.SerializeToString())
    return path, {"input": np.full((1, CHANNELS, 1, 1), 255.0, np.float32)}
