"""TensorRT: the ONNX-side preparation on the CPU (always), engine build and run through the contract (TensorRT + CUDA only).

ModelOpt runs in a child process, so these tests steer that process through ``PYTHONPATH``: a folder
whose ``modelopt`` package fails to import stands for a machine without ModelOpt, and a
``sitecustomize`` that refuses sockets stands for a machine without a network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeship.backends.base import CalibrationSet, Precision
from edgeship.backends.float_search import SEARCH_FILE
from edgeship.backends.onnxruntime import SIMULATED_KEY
from edgeship.backends.rounding import WEIGHT_ROUNDING_FILE, round_weights
from edgeship.backends.tensorrt import TensorRtBackend, qdq_summary
from edgeship.config import AccuracyTarget
from edgeship.errors import BackendUnavailable, BuildError
from edgeship.recipe import TensorRtConfig
from edgeship.tensors import SearchSet

from backends.contract import BackendContract, onnx_artifact, ort_reference
from conftest import TrainedCnn


class TestTensorRtContract(BackendContract):
    """Builds FP32, FP16 and INT8 engines of the trained CNN and compares them with ORT FP32. Skipped, with the
    reason, where ``tensorrt`` or a CUDA GPU is missing (as on every machine of this project so far)."""

    backend = "tensorrt"
    config = TensorRtConfig()
    runtime_modules = ("tensorrt",)
    profiles = False  # its runs need a GPU

    def test_runner_pins_threads(self) -> None:  # type: ignore[override]
        pytest.skip("a TensorRT engine runs on the GPU: there is no CPU thread count to pin")


@pytest.fixture(scope="module")
def calibration(trained_cnn: TrainedCnn) -> CalibrationSet:
    return CalibrationSet(trained_cnn.calibration, "digits-calibration")


@pytest.fixture(scope="module")
def prepared(trained_cnn: TrainedCnn, calibration: CalibrationSet, tmp_path_factory: pytest.TempPathFactory) -> dict[Precision, Path]:
    """FP16 and INT8 prepared with the default settings (ModelOpt AutoCast and ModelOpt Q/DQ)."""
    out = {}
    for precision in (Precision.FP16, Precision.INT8):
        folder = tmp_path_factory.mktemp(f"trt-prepared-{precision}")
        out[precision] = TensorRtBackend().prepare(trained_cnn.onnx, precision, calibration, TensorRtConfig(), folder)
    return out


def predict(model: Path, inputs: np.ndarray) -> np.ndarray:
    return ort_reference(model, inputs)


def info(model: Path) -> dict[str, object]:
    return json.loads((model.parent / "prepare.json").read_text())


@pytest.fixture
def without_modelopt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes find a ``modelopt`` that cannot be imported, as on a machine without it."""
    package = tmp_path / "blocked" / "modelopt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError(\"No module named 'modelopt' (blocked by the test)\")\n")
    monkeypatch.setenv("PYTHONPATH", str(package.parent))


def test_autocast_fp16_keeps_float32_io_and_follows_fp32(prepared: dict[Precision, Path], trained_cnn: TrainedCnn) -> None:
    import onnx

    model = prepared[Precision.FP16]
    graph = onnx.load(str(model)).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.FLOAT]
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer), "the weights must be FP16"
    made = info(model)
    assert made["tool"] == "modelopt.onnx.autocast" and made["version"] and made["keep_io_types"] is True
    reference = predict(trained_cnn.onnx, trained_cnn.evaluation)
    out = predict(model, trained_cnn.evaluation)
    assert out.dtype == np.float32
    relative = float(np.abs(out - reference).max() / np.abs(reference).max())
    assert 0 < relative <= 1e-2, f"FP16 relative error {relative:.3g}"


def test_modelopt_int8_is_symmetric_qdq_and_agrees_with_fp32(prepared: dict[Precision, Path], trained_cnn: TrainedCnn) -> None:
    model = prepared[Precision.INT8]
    qdq = qdq_summary(model)
    assert qdq["quantize_linear"] > 0 and qdq["dequantize_linear"] > 0
    assert qdq["zero_point_types"] == ["INT8"] and qdq["symmetric"] is True and qdq["per_channel_scales"] > 0
    made = info(model)
    assert made["tool"] == "modelopt.onnx.quantization" and made["calibration_method"] == "entropy"
    assert made["calibration_samples"] == len(trained_cnn.calibration) and made["qdq"] == qdq
    assert made["calibrated_per_node"] is False, "a small model's activations fit: calibrated whole, the quick way"
    assert made["io"] == {"inputs": {"input": "FLOAT"}, "outputs": {"logits": "FLOAT"}}
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.int8.onnx", "prepare.json"], "no tool leftovers"
    assert {p.key: p.value for p in onnx.load(str(model)).metadata_props}[SIMULATED_KEY] == "a TensorRT INT8 engine", \
        "stamped: ONNX Runtime scores the prediction with its Q/DQ as written"
    reference = predict(trained_cnn.onnx, trained_cnn.evaluation).argmax(1)
    agreement = float((predict(model, trained_cnn.evaluation).argmax(1) == reference).mean())
    assert agreement >= 0.98, f"INT8 top-1 agreement {agreement:.4f} on {len(reference)} evaluation inputs"


def activation_scales(model: Path) -> dict[str, float]:
    """Each activation QuantizeLinear's input tensor and its scale."""
    graph = onnx.load(str(model)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    return {node.input[0]: float(constants[node.input[1]]) for node in graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in constants}


def test_a_float_layer_search_calibrates_once_and_its_engine_keeps_those_scales(prepared: dict[Precision, Path], trained_cnn: TrainedCnn,
                                                                              calibration: CalibrationSet, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The fully quantized candidate calibrates; every later candidate, and the prepared ONNX, read its scales from a
    TensorRT calibration cache, with one calibration input only: the scales are the full calibration's."""
    from edgeship.backends import tensorrt

    written: list[tuple[str | None, int, dict[str, float]]] = []  # per ModelOpt call: its cache, its inputs, its scales
    step = tensorrt.run_modelopt_step

    def spied(request: dict[str, Any], work: Path) -> tuple[int, str, str | None]:
        done = step(request, work)
        with np.load(request["calibration"]) as data:
            written.append((request.get("calibration_cache"), len(data[data.files[0]]), activation_scales(Path(request["target"]))))
        return done

    monkeypatch.setattr(tensorrt, "run_modelopt_step", spied)
    searched = calibration.with_search(SearchSet(trained_cnn.evaluation[:100], trained_cnn.labels[:100], "v"))
    unreachable = AccuracyTarget.model_construct(min_agreement=None, max_drop_points=-50.0)  # a gain of 50 points: every k is tried
    cfg = TensorRtConfig(keep_float="auto", accuracy_target=unreachable)
    model = TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, searched, cfg, tmp_path)
    full = activation_scales(prepared[Precision.INT8])  # the fixture: calibrated, fully quantized
    (first_cache, first_count, first_scales), *later = written
    assert first_cache is None and first_count == len(trained_cnn.calibration) and first_scales == pytest.approx(full)
    assert len(later) >= 2 and all(cache is not None and count == 1 for cache, count, _ in later), written
    for _, _, scales in later:  # the prepared ONNX (the last) too
        assert set(scales) <= set(full) and all(scales[name] == pytest.approx(full[name], rel=1e-6) for name in scales)
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert "share the activation scales" in record["method"]
    assert info(model)["activation_scales"].startswith("shared: calibrated once")
    assert not list(tmp_path.glob(".shared-calibration-*")), "the cache is a work file"


def test_qdq_summary_sees_asymmetric_activations(trained_cnn: TrainedCnn, calibration: CalibrationSet, tmp_path: Path) -> None:
    """The symmetry check can fail: ONNX Runtime's own INT8 (uint8 activations) has non-zero zero points."""
    from edgeship.backends.onnxruntime import quantize_qdq

    target = tmp_path / "asymmetric.onnx"
    quantize_qdq(trained_cnn.onnx, target, calibration.subset(32), method="minmax", per_channel=True, activation_type="uint8")
    summary = qdq_summary(target)
    assert summary["symmetric"] is False and "UINT8" in summary["zero_point_types"]


def test_int8_falls_back_to_onnxruntime_without_modelopt(without_modelopt: None, trained_cnn: TrainedCnn,
                                                          calibration: CalibrationSet, tmp_path: Path) -> None:
    model = TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, calibration, TensorRtConfig(calibration_method="max"), tmp_path)
    made = info(model)
    assert made["tool"] == "onnxruntime.quantization.quantize_static" and "blocked by the test" in made["fallback_reason"]
    assert made["high_precision"] == "fp32" and made["calibration_method"] == "max"
    qdq = qdq_summary(model)
    assert qdq["zero_point_types"] == ["INT8"] and qdq["symmetric"] is True and qdq["per_channel_scales"] > 0
    reference = predict(trained_cnn.onnx, trained_cnn.evaluation).argmax(1)
    agreement = float((predict(model, trained_cnn.evaluation).argmax(1) == reference).mean())
    assert agreement >= 0.98, f"INT8 top-1 agreement {agreement:.4f}"


def test_modelopt_asked_for_by_name_must_be_there(without_modelopt: None, trained_cnn: TrainedCnn, calibration: CalibrationSet,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BackendUnavailable, match=r"modelopt.*blocked by the test.*edgeship\[tensorrt-onnx\]"):
        TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, calibration, TensorRtConfig(qdq_tool="modelopt"), out)
    with pytest.raises(BackendUnavailable, match=r"FP16 needs ModelOpt AutoCast"):
        TensorRtBackend().prepare(trained_cnn.onnx, Precision.FP16, calibration, TensorRtConfig(), out)
    assert not list(out.iterdir()), "a failed preparation leaves nothing behind"


def test_onnxruntime_tool_by_name(trained_cnn: TrainedCnn, calibration: CalibrationSet, tmp_path: Path) -> None:
    model = TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, calibration.subset(64), TensorRtConfig(qdq_tool="onnxruntime"),
                                      tmp_path)
    assert info(model)["tool"] == "onnxruntime.quantization.quantize_static" and "fallback_reason" not in info(model)


def test_modelopt_leaves_this_process_unpatched(prepared: dict[Precision, Path]) -> None:
    """ModelOpt patches ONNX Runtime's quantizer process-wide; it ran in a child, so ours is as ONNX Runtime ships it."""
    from onnxruntime.quantization.calibrate import CalibraterBase

    assert "modelopt" not in sys.modules
    assert CalibraterBase.create_inference_session.__module__.startswith("onnxruntime")


def test_unreadable_onnx_is_a_build_error_for_every_precision(tmp_path: Path, calibration: CalibrationSet) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    (tmp_path / "out").mkdir()
    for precision in (Precision.INT8, Precision.FP16):
        with pytest.raises(BuildError, match=rf"tensorrt/{precision} build failed: DecodeError"):
            TensorRtBackend().prepare(bogus, precision, calibration.subset(8), TensorRtConfig(), tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_modelopt_failure_is_a_build_error_with_its_words(trained_cnn: TrainedCnn, calibration: CalibrationSet,
                                                          tmp_path: Path) -> None:
    """Calibration inputs of the wrong shape: ModelOpt's own complaint reaches the error."""
    wrong = CalibrationSet(np.zeros((8, 1, 14, 14), np.float32), "wrong-shape")
    with pytest.raises(BuildError, match=r"tensorrt/int8 build failed: ModelOpt quantize failed: \w+"):
        TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, wrong, TensorRtConfig(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_int8_preparation_needs_calibration(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="calibration"):
        TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, None, TensorRtConfig(), tmp_path)


def test_preparation_works_offline(trained_cnn: TrainedCnn, calibration: CalibrationSet, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelOpt's child process with every socket refused (a sitecustomize) prepares FP16 and INT8 and tries no connection."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    attempts = tmp_path / "attempts.log"
    loaded = tmp_path / "hook-loaded"
    (hooks / "sitecustomize.py").write_text(
        f"open({str(loaded)!r}, 'w').close()\n"
        "import socket\n"
        "def _refuse(*args, **kwargs):\n"
        f"    open({str(attempts)!r}, 'a').write(repr(args[1:] or args) + '\\n')\n"
        "    raise OSError('network disabled in this test')\n"
        "socket.socket.connect = _refuse\nsocket.socket.connect_ex = _refuse\nsocket.getaddrinfo = _refuse\n")
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    for precision in (Precision.FP16, Precision.INT8):
        (tmp_path / precision).mkdir()
        model = TensorRtBackend().prepare(trained_cnn.onnx, precision, calibration.subset(64), TensorRtConfig(), tmp_path / precision)
        assert info(model)["tool"].startswith("modelopt")
    assert loaded.exists(), "the child process must have run with the network refused"
    assert not attempts.exists(), attempts.read_text()


def test_availability_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeship.backends.tensorrt as trt_module

    monkeypatch.setattr(trt_module, "importable", lambda module: True)
    monkeypatch.setattr(trt_module, "nvidia_gpu", lambda: "")
    state = TensorRtBackend().availability()
    assert not state.available and state.reason == "no CUDA GPU (nvidia-smi finds none)"
    monkeypatch.setattr(trt_module, "importable", lambda module: module != "tensorrt")
    monkeypatch.setattr(trt_module, "nvidia_gpu", lambda: "NVIDIA L4, 8.9")
    state = TensorRtBackend().availability()
    assert not state.available and state.reason.startswith("cannot import tensorrt") and state.device == "NVIDIA L4, 8.9"
    assert "pypi.nvidia.com" in state.install and "edgeship[tensorrt]" in state.install
    monkeypatch.setattr(trt_module, "importable", lambda module: True)
    monkeypatch.setattr(trt_module, "import_problem", lambda modules: None)  # TensorRT installed, and it loads
    assert TensorRtBackend().availability().available
    monkeypatch.setattr(trt_module, "import_problem", lambda modules: ("tensorrt is installed but fails to import: OSError: "
                                                                       "libnvinfer.so.10: cannot open shared object file", True))
    state = TensorRtBackend().availability()
    assert not state.available and state.broken and "libnvinfer.so.10" in state.reason, "installed, a GPU, and broken: a failure"
    monkeypatch.setattr(trt_module, "nvidia_gpu", lambda: "")
    assert not TensorRtBackend().availability().broken, "no GPU: TensorRT is skipped by design, never imported"


def test_build_without_tensorrt_or_gpu_is_unavailable_never_faked(trained_cnn: TrainedCnn, calibration: CalibrationSet,
                                                                  tmp_path: Path) -> None:
    backend = TensorRtBackend()
    if backend.availability().available:
        pytest.skip("TensorRT and a CUDA GPU are present: the contract tests build real engines")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        backend.build(onnx_artifact(trained_cnn.onnx), Precision.FP16, calibration, TensorRtConfig(), tmp_path)
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        backend.compile(trained_cnn.onnx, Precision.FP16, TensorRtConfig(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_static_batch_model_is_calibrated_one_input_at_a_time(trained_cnn: TrainedCnn, calibration: CalibrationSet,
                                                              tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(trained_cnn.onnx))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    static = tmp_path / "static.onnx"
    onnx.save(model, str(static))
    (tmp_path / "out").mkdir()
    prepared_model = TensorRtBackend().prepare(static, Precision.INT8, calibration.subset(40), TensorRtConfig(), tmp_path / "out")
    assert info(prepared_model)["tool"] == "modelopt.onnx.quantization" and qdq_summary(prepared_model)["symmetric"]


def test_modelopt_int8_with_gptq_weights_keeps_their_integers(trained_cnn: TrainedCnn, calibration: CalibrationSet,
                                                             tmp_path: Path) -> None:
    """ModelOpt's weight quantizer (per channel, max) re-derives the scales from the GPTQ-rounded weights and keeps
    the integers GPTQ chose; the prepared ONNX records the rounding and still follows FP32."""
    calibration = calibration.subset(64)
    cfg = TensorRtConfig(weight_rounding="gptq", high_precision="fp32")
    model = TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, calibration, cfg, tmp_path)
    assert info(model)["weight_rounding"] == "gptq"
    record = json.loads((tmp_path / WEIGHT_ROUNDING_FILE).read_text())
    rounded, _ = round_weights(trained_cnn.onnx, calibration.samples)
    expected = {i.name: numpy_helper.to_array(i) for i in rounded.graph.initializer}
    assert [row["weight"] for row in record["layers"]] and all(row["weight"] in expected for row in record["layers"])
    quantized = dequantized_weights(model)  # ModelOpt leaves some layers (here layer1 and the Gemm) unquantized
    assert quantized and quantized.keys() <= {row["weight"] for row in record["layers"]}
    for name, value in quantized.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    reference = predict(trained_cnn.onnx, trained_cnn.evaluation).argmax(1)
    assert float((predict(model, trained_cnn.evaluation).argmax(1) == reference).mean()) >= 0.98


def dequantized_weights(model: Path) -> dict[str, np.ndarray]:
    """Each quantized weight as the prepared ONNX hands it to its layer: the float initializer through QuantizeLinear and
    DequantizeLinear (or a stored INT8 initializer through DequantizeLinear), computed with ONNX Runtime."""
    import onnx

    graph = onnx.load(str(model)).graph
    initializers = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    wanted = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = producer.get(node.input[0])
        origin = source.input[0] if source is not None and source.op_type == "QuantizeLinear" else node.input[0]
        if origin in initializers and origin != graph.input[0].name:
            wanted[origin.removesuffix("_quantized")] = node.output[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(onnx.load(str(model)))
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in wanted.values())
    import onnxruntime as ort

    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(list(wanted.values()), {graph.input[0].name: np.zeros((1, 1, 28, 28), np.float32)})
    return dict(zip(wanted, values, strict=True))


def test_activations_beyond_the_memory_limit_are_calibrated_node_by_node(prepared: dict[Precision, Path], trained_cnn: TrainedCnn,
                                                                       calibration: CalibrationSet, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelOpt holds every activation of every calibration input at once; past ``CALIBRATION_MEMORY`` it calibrates node
    by node, which writes the same Q/DQ ONNX, and the preparation record says why."""
    import onnx

    from edgeship.backends import tensorrt
    from edgeship.backends.tensorrt import activation_bytes

    per_sample = activation_bytes(trained_cnn.onnx, calibration.arrays)
    assert per_sample > 0
    monkeypatch.setattr(tensorrt, "CALIBRATION_MEMORY", per_sample * calibration.count - 1)
    model = TensorRtBackend().prepare(trained_cnn.onnx, Precision.INT8, calibration, TensorRtConfig(), tmp_path)
    made = info(model)
    assert made["calibrated_per_node"] is True and "GiB of activations held at once otherwise" in made["per_node_reason"]
    whole = onnx.load(str(prepared[Precision.INT8])).graph
    assert onnx.load(str(model)).graph.initializer == whole.initializer, "the same scales, zero points and weights"


def _scaling_model(path: Path) -> Path:
    """input (N, 4) → Mul by 400 → Relu → Add 1: the Mul's output passes FP16's safe range (AutoCast's data_max, 1000)
    only for inputs above 2.5."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["scaled"], name="scale_up"),
         helper.make_node("Relu", ["scaled"], ["relu"], name="relu"),
         helper.make_node("Add", ["relu", "one"], ["output"], name="shift")],
        "scaling", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.full(4, 400, np.float32), "scale"), numpy_helper.from_array(np.ones(4, np.float32), "one")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_autocast_reference_runs_in_chunks_with_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AutoCast's reference run holds every activation of every reference input; past ``CALIBRATION_MEMORY`` it runs them
    a chunk at a time and merges the ranges, which must give the same FP16 model. One input in a middle chunk alone
    pushes the Mul past FP16's safe range, so a chunk lost in the merge changes the model."""
    from edgeship.backends import tensorrt

    source = _scaling_model(tmp_path / "scaling.onnx")
    samples = np.random.default_rng(0).uniform(0, 1, (10, 4)).astype(np.float32)
    samples[4, 2] = 5.0  # 2000 after the Mul: only this input makes AutoCast keep the Mul in FP32
    prepared = {}
    for label, memory, rows in (("whole", 1 << 30, samples), ("chunked", None, samples), ("small", 1 << 30, samples[:4])):
        if memory is None:  # three inputs' activations per chunk: chunks 0-2, 3-5, 6-8, 9
            memory = tensorrt.activation_bytes(source, {"input": samples}) * 3
        monkeypatch.setattr(tensorrt, "CALIBRATION_MEMORY", memory)
        folder = tmp_path / label
        folder.mkdir()
        prepared[label] = TensorRtBackend().prepare(source, Precision.FP16, CalibrationSet(rows, label), TensorRtConfig(), folder)
    assert info(prepared["chunked"])["reference_chunk"] == 3 and info(prepared["whole"])["reference_chunk"] == 10
    assert prepared["chunked"].read_bytes() == prepared["whole"].read_bytes()
    assert prepared["small"].read_bytes() != prepared["whole"].read_bytes(), "the large input must decide the Mul's precision"
