"""MAC counts from an ONNX graph, checked against counts worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeship.macs import onnx_macs


def _save(tmp_path: Path, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], weights: dict[str, np.ndarray],
          output: str) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_convolutions_and_products_are_counted_per_sample_with_a_dynamic_batch(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    weights = {"w1": np.zeros((16, 3, 3, 3), np.float32),  # 16×8×8 outputs × 3×3×3 = 27,648
               "w2": np.zeros((16, 1, 3, 3), np.float32),  # depthwise, group 16: 16×8×8 × 1×3×3 = 9,216
               "shape": np.array([0, -1], np.int64), "w3": np.zeros((1024, 10), np.float32)}  # Gemm: 10 × 1024 = 10,240
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Relu", ["b"], ["c"]),  # element-wise: not counted
             helper.make_node("Reshape", ["c", "shape"], ["d"]),
             helper.make_node("Gemm", ["d", "w3"], ["y"])]
    assert onnx_macs(_save(tmp_path, nodes, [x], weights, "y")) == 27_648 + 9_216 + 10_240


def test_batched_matmul_counts_every_output_element_times_k(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 32])
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], [x], {"w": np.zeros((32, 5), np.float32)}, "y")
    assert onnx_macs(path) == 4 * 6 * 5 * 32


def test_an_unreadable_file_is_a_value_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.onnx: not a readable ONNX model"):
        onnx_macs(path)


def test_a_sequence_takes_its_length_from_the_feed_and_shapes_onnx_cannot_infer_are_read_off_a_run(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8])
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),  # unknown to ONNX's shape inference
             helper.make_node("MatMul", ["g", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]), path)
    with pytest.raises(ValueError, match="the shape of 'g' cannot be inferred"):
        onnx_macs(path)  # no sample to run it on
    feed = {"x": np.zeros((3, 5, 8), np.float32)}  # the count is per sample: the batch is taken as 1
    assert onnx_macs(path, feed) == 5 * 4 * 8
