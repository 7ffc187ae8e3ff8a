"""Weight-only INT8 sensitivity and the layers ``keep_float`` leaves in float."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeship.backends.base import CalibrationSet
from edgeship.backends.onnxruntime import OnnxRuntimeBackend
from edgeship.backends.sensitivity import FLOAT_LAYERS_FILE, fake_quantize, float_layers, rank
from edgeship.recipe import OnnxRuntimeConfig


def two_convs(path: Path) -> Path:
    """conv_a (plain weights) → Relu → conv_b, whose kernels have one huge tap beside small ones that carry the signal:
    INT8 with one scale per channel rounds the small ones away, so conv_b is the sensitive layer."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32)
    b = rng.normal(0, 1.0, (4, 4, 3, 3)).astype(np.float32)
    b[:, :, 0, 0] = 0.0
    b[:, 0, 0, 0] = 400.0  # one outlier per output channel, on an input channel that is zero after the Relu below
    a[0] = -np.abs(a[0])   # conv_a channel 0 is negative on positive inputs: the Relu zeroes it
    nodes = [helper.make_node("Conv", ["input", "wa"], ["ya"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ya"], ["ra"], name="relu"),
             helper.make_node("Conv", ["ra", "wb"], ["logits"], name="conv_b", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [numpy_helper.from_array(a, "wa"), numpy_helper.from_array(b, "wb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def samples() -> np.ndarray:
    return np.abs(np.random.default_rng(1).normal(size=(16, 1, 8, 8))).astype(np.float32)


def test_fake_quantize_is_per_channel_symmetric_int8() -> None:
    weight = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    weight[2] = 0.0
    rounded = fake_quantize(weight)
    scale = np.abs(weight.reshape(3, -1)).max(1) / 127
    assert np.all(np.abs(rounded - weight).reshape(3, -1).max(1) <= scale / 2 + 1e-7)
    assert np.array_equal(rounded[2], weight[2])
    assert len(np.unique(np.round(rounded[0] / scale[0]))) <= 255


def test_the_layer_with_an_outlier_tap_ranks_first(tmp_path: Path, samples: np.ndarray) -> None:
    ranking = rank(two_convs(tmp_path / "m.onnx"), samples)
    assert [row["node"] for row in ranking] == ["conv_b", "conv_a"]
    assert ranking[0]["cosine"] < ranking[1]["cosine"] <= 1.0


def test_a_kept_layer_takes_the_convolution_feeding_it(tmp_path: Path, samples: np.ndarray) -> None:
    chosen = float_layers(two_convs(tmp_path / "m.onnx"), samples, 1)
    assert chosen["count"] == 1 and chosen["nodes"] == ["conv_a", "conv_b"]  # conv_a feeds conv_b through the Relu
    assert chosen["ranking"][0]["node"] == "conv_b" and chosen["samples"] == 16


def test_onnxruntime_int8_leaves_the_kept_layers_unquantized(tmp_path: Path, samples: np.ndarray) -> None:
    source = two_convs(tmp_path / "m.onnx")
    calibration = CalibrationSet(samples, "test")

    def quantized_weights(keep: int) -> set[str]:
        out = tmp_path / f"keep{keep}"
        out.mkdir()
        engine = OnnxRuntimeBackend()._build_int8(source, calibration, OnnxRuntimeConfig(reduce_range=False, keep_float=keep), out)
        graph = onnx.load(str(engine)).graph
        dequantized = [node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"]  # int8 weights are stored quantized
        return {weight for weight in ("wa", "wb") if any(name.startswith(weight) for name in dequantized)}

    assert quantized_weights(0) == {"wa", "wb"}
    assert quantized_weights(1) == set()
    assert json.loads((tmp_path / "keep1" / FLOAT_LAYERS_FILE).read_text())["nodes"] == ["conv_a", "conv_b"]
    assert not (tmp_path / "keep0" / FLOAT_LAYERS_FILE).exists()


def test_a_qdq_model_is_scored_as_written_not_by_this_cpus_integer_kernels(tmp_path: Path) -> None:
    """The ranking scores Q/DQ models with ``run_onnx_outputs``: dequantize, the float op, quantize, the arithmetic every
    backend's quantization means. ONNX Runtime's fused u8s8 kernels saturate this model on x86 CPUs without VNNI (64 × 16384
    instead of 127 × 16384), so there this fails unless the Q/DQ run as written; elsewhere both ways give the exact value."""
    from edgeship.backends.sensitivity import run_onnx_outputs

    from backends.qdq import EXACT, saturating_qdq_conv

    path, feed = saturating_qdq_conv(tmp_path / "saturating.onnx")
    (output,) = run_onnx_outputs(onnx.load(str(path)), feed)
    assert output.item() == EXACT
