"""GPTQ weight rounding: lower layer error than nearest rounding, on the grid every backend's quantizer reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeship.backends.base import CalibrationSet
from edgeship.backends.onnxruntime import OnnxRuntimeBackend, quantize_qdq, unquantize_outputs
from edgeship.backends.rounding import (
    BLOCK,
    WEIGHT_ROUNDING_FILE,
    WeightGrid,
    _hessians,
    _im2col,
    eligible_layers,
    gptq,
    round_weights,
    weights_alone,
)
from edgeship.backends.sensitivity import fake_quantize, run_onnx
from edgeship.recipe import OnnxRuntimeConfig

QMAX = 127


def small_net(path: Path) -> Path:
    """stem (3×3, stride 2, SAME_UPPER) → Relu → depthwise 3×3 → Relu → pointwise 1×1 → mean → Gemm: the layer kinds of
    a mobile network, with weights wide enough that nearest rounding loses signal."""
    rng = np.random.default_rng(0)
    weights = {"w_stem": rng.normal(0, 0.4, (8, 3, 3, 3)), "w_dw": rng.normal(0, 0.5, (8, 1, 3, 3)),
               "w_pw": rng.normal(0, 0.3, (16, 8, 1, 1)), "w_fc": rng.normal(0, 0.3, (5, 16)), "b_fc": np.zeros(5)}
    weights["w_dw"][:, 0, 0, 0] = 3.0  # one large tap per channel coarsens the grid of the others
    nodes = [helper.make_node("Conv", ["input", "w_stem"], ["s"], name="stem", strides=[2, 2], auto_pad="SAME_UPPER", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["s"], ["sr"], name="r1"),
             helper.make_node("Conv", ["sr", "w_dw"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["d"], ["dr"], name="r2"),
             helper.make_node("Conv", ["dr", "w_pw"], ["p"], name="pw", kernel_shape=[1, 1]),
             helper.make_node("ReduceMean", ["p"], ["m"], name="pool", axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "w_fc", "b_fc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def net(tmp_path: Path) -> Path:
    return small_net(tmp_path / "net.onnx")


@pytest.fixture
def samples() -> np.ndarray:
    """Smooth, correlated images (neighbouring pixels alike), as real photographs are: where GPTQ has something to use."""
    rng = np.random.default_rng(1)
    coarse = rng.normal(size=(48, 3, 4, 4)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 3, axis=2), 3, axis=3) + 0.05 * rng.normal(size=(48, 3, 12, 12)).astype(np.float32)


def test_patches_times_weights_is_the_convolution(net: Path, samples: np.ndarray) -> None:
    """The columns the statistics come from are the convolution's own: strides, SAME padding and groups included."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    model = onnx.load(str(net))
    dw_input = np.abs(samples[:4, :, ::2, ::2].repeat(3, axis=1)[:, :8])
    inputs = {"stem": samples[:4], "dw": dw_input, "pw": dw_input}  # pw: the pointwise path, pixels as patches
    for node in (n for n in model.graph.node if n.name in inputs):
        weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == node.input[1]))
        x = inputs[node.name]
        single = helper.make_model(helper.make_graph([node], "one", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)],
                                                     [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
                                                     [numpy_helper.from_array(weight, node.input[1])]),
                                   opset_imports=[helper.make_opsetid("", 17)])
        single.ir_version = 8
        expected = ort.InferenceSession(single.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {node.input[0]: x})[0]
        columns = _im2col(torch.from_numpy(x), node, F).numpy()  # (groups, N·L, K)
        groups = columns.shape[0]
        w = weight.reshape(groups, weight.shape[0] // groups, -1)
        got = np.einsum("gnk,gok->gon", columns, w).reshape(weight.shape[0], x.shape[0], -1).transpose(1, 0, 2)
        np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-4, atol=1e-4)


def test_gptq_lowers_every_layers_output_error_on_the_backends_grid(net: Path, samples: np.ndarray) -> None:
    model, record = round_weights(net, samples)
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(net)).graph.initializer}
    rounded = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert [row["node"] for row in record["layers"]] == ["stem", "dw", "pw", "fc"] and not record["skipped"]
    for row in record["layers"]:
        assert row["gptq_error"] < row["nearest_error"] and row["chosen"] == "gptq", row
        w, r = original[row["weight"]], rounded[row["weight"]]
        scale = np.abs(w.reshape(len(w), -1)).max(1) / QMAX
        assert np.array_equal(fake_quantize(r), r), "a max-abs per-channel quantizer reads back the same values"
        assert np.allclose(np.abs(r.reshape(len(r), -1)).max(1), QMAX * scale, rtol=1e-6), "each channel keeps its scale"
        assert not np.array_equal(r, fake_quantize(w)), "GPTQ chose other integers than nearest rounding"
    assert record["median_error_ratio"] < 1


def column_by_column(weight: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """GPTQ as the paper writes it, one group and one column at a time, every later column updated at each step: the
    reference the batched, blocked implementation must reproduce."""
    groups = hessian.shape[0]
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    scale = np.abs(flat).max(1) / QMAX
    per_group = len(flat) // groups
    out = np.empty_like(flat)
    for g in range(groups):
        w, h, s = flat[g * per_group : (g + 1) * per_group].copy(), hessian[g].copy(), scale[g * per_group : (g + 1) * per_group]
        order = np.argsort(-np.diag(h), kind="stable")
        w, h = w[:, order], h[np.ix_(order, order)]
        movable = np.ones_like(w, dtype=bool)
        movable[np.arange(len(w)), np.abs(w).argmax(1)] = False
        h += 0.01 * np.mean(np.diag(h)) * np.eye(len(h))
        factor = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H⁻¹
        q = np.empty_like(w)
        for j in range(w.shape[1]):
            q[:, j] = np.clip(np.round(w[:, j] / s), -QMAX, QMAX)
            error = (w[:, j] - q[:, j] * s) / factor[j, j]
            w[:, j + 1 :] -= error[:, None] * factor[j, j + 1 :][None, :] * movable[:, j + 1 :]
        out[g * per_group : (g + 1) * per_group] = q[:, np.argsort(order)] * s[:, None]
    return out.reshape(weight.shape).astype(np.float32)


@pytest.mark.parametrize("shape, groups", [((24, 3 * BLOCK + 5), 1), ((48, 1, 3, 3), 48), ((12, 4, 3, 3), 3)],
                         ids=["wider than three blocks", "depthwise", "grouped"])
def test_gptq_is_the_column_by_column_algorithm(shape: tuple[int, ...], groups: int) -> None:
    rng = np.random.default_rng(2)
    weight = rng.normal(0, 0.3, shape).astype(np.float32)
    width = int(np.prod(shape[1:]))
    inputs = rng.normal(size=(groups, 4 * width, width)) @ rng.normal(size=(groups, width, width))  # correlated inputs
    hessian = np.einsum("gni,gnj->gij", inputs, inputs)
    rounded, nearest_error, gptq_error = gptq(weight, hessian)
    np.testing.assert_allclose(rounded, column_by_column(weight, hessian), rtol=0, atol=1e-7)
    assert gptq_error < nearest_error


def test_kept_layers_and_shared_weights_are_not_rounded(net: Path, samples: np.ndarray) -> None:
    model, record = round_weights(net, samples, keep=["dw"])
    assert record["skipped"] == {"dw": "kept in float"} and record["kept_float"] == ["dw"]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert np.array_equal(weights["w_dw"], numpy_helper.to_array(next(i for i in onnx.load(str(net)).graph.initializer
                                                                       if i.name == "w_dw")))
    shared = onnx.load(str(net))
    shared.graph.node.append(helper.make_node("Conv", ["input", "w_stem"], ["extra"], name="twin", strides=[2, 2],
                                              auto_pad="SAME_UPPER", kernel_shape=[3, 3]))
    _, skipped = eligible_layers(shared, set())
    assert skipped == {"stem": "weight shared with another node", "twin": "weight shared with another node"}


def test_statistics_come_from_the_samples_given(net: Path, samples: np.ndarray) -> None:
    one = _hessians(str(net), samples[:8])
    two = _hessians(str(net), samples[8:16])
    assert set(one) == {"stem", "dw", "pw", "fc"}
    assert one["dw"].shape == (8, 9, 9) and one["stem"].shape == (1, 27, 27) and one["fc"].shape == (1, 16, 16)
    assert not np.allclose(one["pw"], two["pw"])


@pytest.mark.parametrize("reduce_range, qmax", [(False, QMAX), (True, 64)], ids=["8-bit", "reduce_range"])
def test_onnxruntime_int8_stores_the_gptq_integers(net: Path, samples: np.ndarray, tmp_path: Path, reduce_range: bool, qmax: int) -> None:
    """ONNX Runtime's quantizer re-derives each scale from the rounded weights and lands on the integers GPTQ chose, on
    the grid it quantizes to: 7 bits (±64) with ``reduce_range``."""
    out = tmp_path / "gptq"
    out.mkdir()
    cfg = OnnxRuntimeConfig(reduce_range=reduce_range, weight_rounding="gptq")
    engine = OnnxRuntimeBackend()._build_int8(net, CalibrationSet(samples, "t"), cfg, out)
    model, _ = round_weights(net, samples, grid=WeightGrid(qmax))
    rounded = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(engine)).graph.initializer}
    for name in ("w_stem", "w_dw", "w_pw", "w_fc"):
        w = rounded[name]
        scale = np.abs(w.reshape(len(w), -1)).max(1) / qmax
        expected = np.round(w.reshape(len(w), -1) / scale[:, None]).reshape(w.shape)
        np.testing.assert_array_equal(stored[f"{name}_quantized"].astype(np.float32), expected)
        assert np.abs(expected).max() == qmax
    record = json.loads((out / WEIGHT_ROUNDING_FILE).read_text())
    assert [row["weight"] for row in record["layers"]] == ["w_stem", "w_dw", "w_pw", "w_fc"]
    assert {row["qmax"] for row in record["layers"]} == {qmax}
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", WEIGHT_ROUNDING_FILE]


@pytest.mark.parametrize("method", ["nearest", "gptq"])
@pytest.mark.parametrize("reduce_range", [False, True], ids=["8-bit", "reduce_range"])
def test_the_weights_alone_are_the_values_the_engine_stores(net: Path, samples: np.ndarray, tmp_path: Path, method: str,
                                                            reduce_range: bool) -> None:
    """``weights_alone``, which the search scores beside the fully quantized engine, holds each layer's weights as the
    engine dequantizes them (its integers times its scales), and every other value as in the FP32 model."""
    cfg = OnnxRuntimeConfig(reduce_range=reduce_range, weight_rounding=method)
    engine = OnnxRuntimeBackend()._build_int8(net, CalibrationSet(samples, "t"), cfg, tmp_path)
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(engine)).graph.initializer}
    model, layers = weights_alone(net, CalibrationSet(samples, "t"), method, WeightGrid(64 if reduce_range else QMAX))
    alone = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(net)).graph.initializer}
    assert layers == 4 and set(alone) == set(original)
    for name, value in alone.items():
        if name in ("w_stem", "w_dw", "w_pw", "w_fc"):
            dequantized = stored[f"{name}_quantized"].astype(np.float32) * stored[f"{name}_scale"].reshape(-1, *[1] * (value.ndim - 1))
            np.testing.assert_allclose(value, dequantized, rtol=1e-6, atol=0)
            assert not np.array_equal(value, original[name])
        else:
            np.testing.assert_array_equal(value, original[name])


def test_gptq_on_the_quantizers_grid_beats_gptq_rounded_again(net: Path, samples: np.ndarray, tmp_path: Path) -> None:
    """With 7-bit weights, GPTQ's integers for the 8-bit grid are rounded again by the quantizer, and most of what GPTQ
    chose is lost: rounded on the quantizer's own grid, the engine follows FP32 closer."""
    reference = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"]).run(None, {"input": samples})[0]
    errors = {}
    for name, grid in (("8-bit grid", WeightGrid()), ("7-bit grid", WeightGrid(64))):
        source, target = tmp_path / f"{name}.onnx", tmp_path / f"{name}.int8.onnx"
        onnx.save(round_weights(net, samples, grid=grid)[0], str(source))
        quantize_qdq(source, target, CalibrationSet(samples, "t"), method="minmax", per_channel=True, activation_type="uint8",
                     reduce_range=True)
        got = run_onnx(onnx.load(str(target)), samples)
        errors[name] = float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
    assert errors["7-bit grid"] < errors["8-bit grid"], errors


def test_a_half_integer_grid_keeps_each_channels_peak(net: Path, samples: np.ndarray) -> None:
    """NNCF's overflow fix puts weights on steps of max|w| / 63.5: every other weight lands on a step, and the largest,
    which sets the scale, stays where it is (the quantizer rounds it itself)."""
    model, record = round_weights(net, samples, grid=WeightGrid(narrower=(("stem", 63.5),)))
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(net)).graph.initializer}
    rounded = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    w, r = original["w_stem"].reshape(8, -1), rounded["w_stem"].reshape(8, -1)
    peaks = np.abs(w) == np.abs(w).max(1, keepdims=True)
    np.testing.assert_array_equal(r[peaks], w[peaks])
    steps = r / (np.abs(w).max(1, keepdims=True) / 63.5)
    np.testing.assert_allclose(steps[~peaks], np.round(steps[~peaks]), atol=1e-4)
    assert np.abs(np.round(steps[~peaks])).max() <= 63
    assert {row["node"]: row["qmax"] for row in record["layers"]} == {"stem": 63.5, "dw": QMAX, "pw": QMAX, "fc": QMAX}


def test_gptq_int8_follows_fp32_closer_than_nearest(net: Path, samples: np.ndarray, tmp_path: Path) -> None:
    reference = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"]).run(None, {"input": samples})[0]
    errors = {}
    for method in ("nearest", "gptq"):
        out = tmp_path / method
        out.mkdir()
        engine = OnnxRuntimeBackend()._build_int8(net, CalibrationSet(samples, "t"),
                                                OnnxRuntimeConfig(reduce_range=False, weight_rounding=method), out)
        got = run_onnx(onnx.load(str(engine)), samples)  # its Q/DQ as written: the rounding's error, not this CPU's kernels
        errors[method] = float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
    assert errors["gptq"] < errors["nearest"], errors


def test_float_outputs_leave_the_logits_unquantized(net: Path, samples: np.ndarray, tmp_path: Path) -> None:
    producers = {}
    for float_outputs in (False, True):
        out = tmp_path / str(float_outputs)
        out.mkdir()
        engine = OnnxRuntimeBackend()._build_int8(net, CalibrationSet(samples, "t"),
                                                OnnxRuntimeConfig(reduce_range=False, float_outputs=float_outputs), out)
        graph = onnx.load(str(engine)).graph
        producers[float_outputs] = next(node.op_type for node in graph.node if "logits" in node.output)
        ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"]).run(None, {"input": samples[:2]})
    assert producers == {False: "DequantizeLinear", True: "Gemm"}
    assert unquantize_outputs(onnx.load(str(tmp_path / "True" / "model.int8.onnx"))) == 0, "nothing left to change"


def test_a_layer_gptq_does_not_help_keeps_nearest_rounding(net: Path, samples: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeship.backends.rounding as rounding

    real = rounding.gptq

    def worse_on_dw(weight: np.ndarray, hessian: np.ndarray, qmax: float) -> tuple[np.ndarray, float, float]:
        rounded, before, after = real(weight, hessian, qmax)
        return (rounded, before, before * 1.5) if weight.shape[1] == 1 else (rounded, before, after)

    monkeypatch.setattr(rounding, "gptq", worse_on_dw)
    model, record = round_weights(net, samples)
    chosen = {row["node"]: row["chosen"] for row in record["layers"]}
    assert chosen == {"stem": "gptq", "dw": "nearest", "pw": "gptq", "fc": "gptq"}
    original = numpy_helper.to_array(next(i for i in onnx.load(str(net)).graph.initializer if i.name == "w_dw"))
    assert np.array_equal(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_dw")), fake_quantize(original))
