from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeship.backends.base import CalibrationSet, Precision
from edgeship.backends.onnxruntime import OnnxRuntimeBackend
from edgeship.recipe import OnnxRuntimeConfig

from backends.contract import BackendContract, onnx_artifact, ort_reference
from conftest import TrainedCnn


class TestOnnxRuntimeContract(BackendContract):
    backend = "onnxruntime"
    config = OnnxRuntimeConfig()
    runtime_modules = ("onnxruntime",)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_is_qdq_with_per_channel_weights(method: str, tiny_cnn_onnx: Path, calibration_samples: np.ndarray, tmp_path: Path) -> None:
    calibration = CalibrationSet(calibration_samples[:16], "fp", batch_size=8)
    cfg = OnnxRuntimeConfig(calibration_method=method)
    engine = OnnxRuntimeBackend().build(onnx_artifact(tiny_cnn_onnx), Precision.INT8, calibration, cfg, tmp_path)
    graph = onnx.load(str(engine)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_scales = [i for i in graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
    assert weight_scales, "per-channel weights carry one scale per output channel"
    assert [p.name for p in tmp_path.iterdir()] == [engine.name], "only the engine is left in the output folder"
    batch = calibration_samples[32:48]
    with OnnxRuntimeBackend().runner(engine, threads=1) as runner:
        out = runner.infer({"input": batch})["logits"]
    assert np.isfinite(out).all()
    assert (out.argmax(1) == ort_reference(tiny_cnn_onnx, batch).argmax(1)).mean() >= 0.75


def test_this_environment_holds_one_onnxruntime_distribution() -> None:
    """The tensorrt extras must never bring onnxruntime-gpu beside onnxruntime (ModelOpt's own [onnx] extra would)."""
    from edgeship.backends.onnxruntime import onnxruntime_distributions

    assert [name for name, _ in onnxruntime_distributions()] == ["onnxruntime"]


def test_two_onnxruntime_distributions_make_the_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeship.backends.onnxruntime as ort_module

    monkeypatch.setattr(ort_module, "onnxruntime_distributions", lambda: (("onnxruntime", "1.32.0"), ("onnxruntime-gpu", "1.24.2")))
    state = ort_module.OnnxRuntimeBackend().availability()
    assert not state.available
    assert "2 ONNX Runtime distributions are installed (onnxruntime 1.32.0, onnxruntime-gpu 1.24.2)" in state.reason
    assert state.install == "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime"


@pytest.mark.parametrize(("feeds", "stride"), [(100, 10), (300, 15), (128, 16), (97, 1), (8, 8)])
def test_the_calibrators_read_the_feeds_in_equal_ranges(feeds: int, stride: int) -> None:
    from edgeship.backends.onnxruntime import calibration_stride

    assert calibration_stride(feeds) == stride


def test_min_max_ranges_read_in_ranges_are_the_ranges_read_at_once(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """Reading the calibration feeds a range at a time (what keeps a percentile calibrator's memory bounded) merges
    min/max ranges exactly: the same scales and zero points as reading them all at once."""
    from onnx import numpy_helper

    from edgeship.backends.onnxruntime import quantize_qdq

    calibration = CalibrationSet(trained_cnn.calibration[:48], "c")
    quantized = {}
    for label, extra in (("ranges", {}), ("at_once", {"CalibStridedMinMax": None})):
        target = tmp_path / f"{label}.onnx"
        quantize_qdq(trained_cnn.onnx, target, calibration, method="minmax", per_channel=True, extra_options=extra)
        quantized[label] = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(target)).graph.initializer}
    assert quantized["ranges"].keys() == quantized["at_once"].keys()
    for name, value in quantized["ranges"].items():
        np.testing.assert_array_equal(value, quantized["at_once"][name], err_msg=name)


def test_a_prediction_runs_its_qdq_as_written_and_an_engine_on_the_integer_kernels(tmp_path: Path) -> None:
    """A prepared Q/DQ ONNX that stands in for another runtime's INT8 engine (``mark_simulated``) is scored for that
    runtime's arithmetic; an ONNX Runtime INT8 engine runs as it will be deployed, on this CPU's integer kernels (which on
    x86 without VNNI saturate this model: then the two differ)."""
    from edgeship.backends.onnxruntime import SIMULATED_KEY, OnnxRuntimeRunner, mark_simulated

    from backends.qdq import EXACT, SATURATED, saturating_qdq_conv

    engine, feed = saturating_qdq_conv(tmp_path / "engine.onnx")
    prediction, _ = saturating_qdq_conv(tmp_path / "prediction.onnx")
    mark_simulated(prediction, "a TensorRT INT8 engine")
    assert {p.key: p.value for p in onnx.load(str(prediction)).metadata_props} == {SIMULATED_KEY: "a TensorRT INT8 engine"}
    with OnnxRuntimeRunner(prediction, threads=1) as run:
        assert run.infer(feed)["output"].item() == EXACT
    with OnnxRuntimeRunner(engine, threads=1) as run:
        integer = run.infer(feed)["output"].item()
    assert integer in (EXACT, SATURATED)  # exact with VNNI (or on ARM), saturated without
    with OnnxRuntimeRunner(engine, threads=1, qdq_as_written=True) as run:  # what a search compares the kernels with
        assert run.infer(feed)["output"].item() == EXACT
