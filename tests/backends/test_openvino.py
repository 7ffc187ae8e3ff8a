from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeship.backends import availability
from edgeship.backends.base import CalibrationSet, Precision
from edgeship.recipe import OpenVinoConfig

from backends.contract import BackendContract, onnx_artifact
from conftest import TrainedCnn

pytestmark = pytest.mark.skipif(not availability("openvino").available, reason=f"openvino: {availability('openvino').reason}")


class TestOpenVinoContract(BackendContract):
    backend = "openvino"
    config = OpenVinoConfig()
    runtime_modules = ("openvino", "nncf")


def test_engine_pins_fp32_execution(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """OpenVINO runs f32 models in bf16 by default on CPUs with AVX512-BF16/AMX; an FP32 engine must not."""
    from edgeship.backends.openvino import OpenVinoBackend

    engine = OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.FP32, None, OpenVinoConfig(), tmp_path)
    assert json.loads((tmp_path / "runtime.json").read_text())["INFERENCE_PRECISION_HINT"] == "f32"
    with OpenVinoBackend().runner(engine, threads=1) as runner:
        assert "float32" in runner.describe()["inference_precision_hint"]
        assert runner.describe()["performance_hint"] == "LATENCY"


def test_int8_has_fake_quantize_and_smaller_weights(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    from edgeship.backends.openvino import OpenVinoBackend

    calibration = CalibrationSet(trained_cnn.calibration, "fp")
    fp32 = OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.FP32, None, OpenVinoConfig(), tmp_path / "fp32")
    int8 = OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration,
                                   OpenVinoConfig(subset_size=50, preset="mixed"), tmp_path / "int8")
    assert "FakeQuantize" in int8.read_text() and "FakeQuantize" not in fp32.read_text()
    assert int8.with_suffix(".bin").stat().st_size < 0.5 * fp32.with_suffix(".bin").stat().st_size


def _activation_ranges(engine: Path) -> dict[str, float]:
    """The upper limit of every per-tensor FakeQuantize on an activation (a weight's has one limit per channel)."""
    import openvino as ov

    ranges = {}
    for node in ov.Core().read_model(str(engine)).get_ordered_ops():
        if node.get_type_name() == "FakeQuantize":
            high = node.input_value(2).get_node().get_data()
            if high.size == 1 and node.input_value(0).get_node().get_type_name() != "Constant":
                ranges[node.get_friendly_name()] = float(high.reshape(-1)[0])
    return ranges


def test_calibration_method_sets_the_activation_ranges(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """The global min and max are never narrower than NNCF's default (each sample's min and max, averaged), and on a
    trained model's activations somewhere wider; the histogram's ranges are others again."""
    from edgeship.backends.openvino import OpenVinoBackend

    calibration = CalibrationSet(trained_cnn.calibration, "fp")
    ranges = {method: _activation_ranges(OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration,
                                                                 OpenVinoConfig(subset_size=50, calibration_method=method),
                                                                 tmp_path / method))
              for method in ("mean_minmax", "minmax", "histogram")}
    assert ranges["minmax"].keys() == ranges["mean_minmax"].keys() == ranges["histogram"].keys() and ranges["minmax"]
    assert ranges["histogram"] != ranges["mean_minmax"]
    assert all(ranges["minmax"][name] >= high * (1 - 1e-6) for name, high in ranges["mean_minmax"].items())
    assert any(ranges["minmax"][name] > high * 1.01 for name, high in ranges["mean_minmax"].items())


def test_overflow_fix_halves_the_weights_range(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """``overflow_fix: enable`` (for x86 CPUs without VNNI, whose u8×s8 pair sums saturate) quantizes every weight to half
    the 8-bit range; ``disable`` uses all of it."""
    import openvino as ov

    from edgeship.backends.openvino import OpenVinoBackend

    calibration = CalibrationSet(trained_cnn.calibration, "fp")
    largest = {}
    for fix in ("enable", "disable"):
        engine = OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration,
                                         OpenVinoConfig(subset_size=50, overflow_fix=fix), tmp_path / fix)
        weights = [node.get_data() for node in ov.Core().read_model(engine).get_ops()
                   if node.get_type_name() == "Constant" and node.get_element_type() == ov.Type.i8]
        assert weights, "the IR keeps INT8 weights"
        largest[fix] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest["enable"] <= 64 < largest["disable"], largest



def test_first_convolutions_are_the_ones_nncf_narrows() -> None:
    """NNCF's ``first_layer_only`` overflow fix narrows the first plain convolution on each path from an input; it walks
    past grouped (depthwise) convolutions and past nodes left in float, as ``first_convolutions`` does."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeship.backends.openvino import first_convolutions

    weights = [numpy_helper.from_array(np.ones(shape, np.float32), name)
               for name, shape in (("w_stem", (4, 3, 3, 3)), ("w_dw", (4, 1, 3, 3)), ("w_pw", (8, 4, 1, 1)), ("w_side", (8, 3, 1, 1)))]
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w_stem"], ["s"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["s", "w_dw"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "w_pw"], ["p"], name="pw"),
             helper.make_node("Conv", ["input", "w_side"], ["q"], name="side"),
             helper.make_node("Add", ["p", "q"], ["out"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])], weights)
    model = helper.make_model(graph)
    assert first_convolutions(model, set()) == ["side", "stem"]
    assert first_convolutions(model, {"stem"}) == ["side", "pw"]


def dequantized_weights(engine: Path) -> list[np.ndarray]:
    """Each INT8 weight of an OpenVINO IR as its integers times its scale (Constant i8 → Convert → Multiply)."""
    import openvino as ov

    out = []
    for node in ov.Core().read_model(engine).get_ops():
        if node.get_type_name() != "Multiply":
            continue
        convert, scale = node.input_value(0).get_node(), node.input_value(1).get_node()
        if convert.get_type_name() == "Convert" and convert.input_value(0).get_node().get_element_type() == ov.Type.i8:
            out.append(convert.input_value(0).get_node().get_data().astype(np.float64) * scale.get_data().astype(np.float64))
    return out


@pytest.mark.parametrize("overflow_fix, rounding", [(None, "gptq"), ("enable", "gptq"), ("disable", "gptq"), (None, "nearest")])
def test_nncf_stores_the_rounded_weights_and_the_search_scores_them_alone(trained_cnn: TrainedCnn, tmp_path: Path,
                                                                          overflow_fix: str | None, rounding: str) -> None:
    """GPTQ rounds each weight on the grid NNCF will put it on, 7 bits where the overflow fix narrows it: NNCF then keeps
    every integer GPTQ chose but each channel's largest weight on a narrowed grid, which sits between two steps. The
    weights a search scores alone (``weights_alone``, nearest rounding too) are those NNCF stores, on the same terms."""
    import onnx
    from onnx import numpy_helper

    from edgeship.backends.openvino import OpenVinoBackend, weight_grid
    from edgeship.backends.rounding import weights_alone

    calibration = CalibrationSet(trained_cnn.calibration, "fp")
    cfg = OpenVinoConfig(subset_size=50, overflow_fix=overflow_fix, weight_rounding=rounding)
    engine = OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration, cfg, tmp_path / "ov")
    grid = weight_grid(trained_cnn.onnx, cfg, [])
    rounded = {init.name: numpy_helper.to_array(init).astype(np.float64)
               for init in weights_alone(trained_cnn.onnx, calibration, rounding, grid)[0].graph.initializer}
    layers = {node.input[1]: node.name for node in onnx.load(str(trained_cnn.onnx)).graph.node if node.op_type in ("Conv", "Gemm")}
    narrowed = 0
    for weight in dequantized_weights(engine):
        name, ours = min(((name, rounded[name]) for name in layers if rounded[name].size == weight.size),
                         key=lambda item: np.abs(item[1].reshape(-1) - weight.reshape(-1)).mean())
        ours, theirs = ours.reshape(len(ours), -1), weight.reshape(len(ours), -1)
        moved = ~np.isclose(ours, theirs, rtol=1e-5, atol=1e-7 * np.abs(ours).max())
        if grid.of(layers[name]) == 127:
            assert not moved.any(), f"{name}: NNCF moved {moved.sum()} of GPTQ's integers"
        else:
            narrowed += 1
            assert (moved <= (np.abs(ours) == np.abs(ours).max(1, keepdims=True))).all(), f"{name}: NNCF moved more than the peaks"
    assert narrowed == len(grid.narrower) == {None: 1, "enable": len(layers), "disable": 0}[overflow_fix]

def test_benchmark_app_cross_check(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    from edgeship.backends.openvino import OpenVinoBackend, benchmark_app

    engine = OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.FP32, None, OpenVinoConfig(), tmp_path)
    result = benchmark_app(engine, threads=1, batch_size=2, input_shape=(1, 28, 28), input_name="input", seconds=1)
    assert result["tool"] == "benchmark_app" and 0 < result["median_ms"] < 100 and result["iterations"] > 10
    assert "-nthreads 1" in result["command"] and "input[2,1,28,28]" in result["command"] and "-infer_precision f32" in result["command"]


def test_benchmark_app_failure_is_reported(tmp_path: Path) -> None:
    from edgeship.backends.openvino import benchmark_app

    broken = tmp_path / "model.xml"
    broken.write_text("<net>not an IR</net>")
    with pytest.raises(RuntimeError, match="benchmark_app exit"):
        benchmark_app(broken, threads=1, batch_size=1, input_shape=(1, 28, 28), input_name="input", seconds=1)


def test_unconvertible_onnx_is_a_build_error(tmp_path: Path) -> None:
    from edgeship.backends.openvino import OpenVinoBackend
    from edgeship.errors import BuildError

    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    (tmp_path / "out").mkdir()
    with pytest.raises(BuildError, match=r"openvino/fp32"):
        OpenVinoBackend().build(onnx_artifact(bogus), Precision.FP32, None, OpenVinoConfig(), tmp_path / "out")


def test_builds_and_runs_offline(trained_cnn: TrainedCnn, no_network: list[object], tmp_path: Path) -> None:
    """convert_model, nncf.quantize and the runner never reach for the network (NNCF and OpenVINO ship telemetry)."""
    from edgeship.backends.openvino import OpenVinoBackend

    calibration = CalibrationSet(trained_cnn.calibration[:32], "fp")
    for precision in Precision:
        (tmp_path / precision).mkdir()
        engine = OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), precision, calibration, OpenVinoConfig(), tmp_path / precision)
        with OpenVinoBackend().runner(engine, threads=1) as runner:
            runner.infer({"input": trained_cnn.evaluation[:2]})
    assert no_network == [], f"tried the network: {no_network}"
