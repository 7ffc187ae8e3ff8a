from __future__ import annotations

from pathlib import Path

import pytest

from edgeship.backends import REGISTRY
from edgeship.backends.base import Precision
from edgeship.pipeline.build import engine_config, requested
from edgeship.recipe import BackendsConfig, OnnxRuntimeConfig, OpenVinoConfig, TensorRtConfig, TfliteConfig

from conftest import TrainedCnn


def test_fp32_identity_ignores_int8_only_settings() -> None:
    base, changed = OnnxRuntimeConfig(), OnnxRuntimeConfig(calibration_method="entropy", reduce_range=False, precisions=("int8",))
    assert engine_config("onnxruntime", Precision.FP32, base) == engine_config("onnxruntime", Precision.FP32, changed)
    assert engine_config("onnxruntime", Precision.INT8, base) != engine_config("onnxruntime", Precision.INT8, changed)
    assert engine_config("onnxruntime", Precision.INT8, base)["precision"] == "int8"


def test_disabled_backends_are_not_requested() -> None:
    assert [name for name, _ in requested(BackendsConfig())] == ["onnxruntime", "openvino", "tflite", "tensorrt"]
    only_tflite = BackendsConfig(onnxruntime=OnnxRuntimeConfig(enabled=False), openvino=OpenVinoConfig(enabled=False),
                                 tensorrt=TensorRtConfig(enabled=False))
    assert [name for name, _ in requested(only_tflite)] == ["tflite"]


def test_engine_identity_per_backend() -> None:
    assert "preset" not in engine_config("openvino", Precision.FP16, OpenVinoConfig())
    assert engine_config("openvino", Precision.INT8, OpenVinoConfig())["preset"] == "performance"
    assert engine_config("openvino", Precision.FP32, OpenVinoConfig()) != engine_config("openvino", Precision.FP32,
                                                                                          OpenVinoConfig(performance_hint="throughput"))
    int8_io = TfliteConfig(io_type="int8")
    assert engine_config("tflite", Precision.FP32, TfliteConfig()) == engine_config("tflite", Precision.FP32, int8_io)
    assert engine_config("tflite", Precision.INT8, TfliteConfig()) != engine_config("tflite", Precision.INT8, int8_io)


def test_tensorrt_preparation_ignores_engine_only_settings() -> None:
    """Changing the builder's workspace, level, cache or profile rebuilds the engine, never the calibrated ONNX."""
    from edgeship.pipeline.build import prepare_config

    base = TensorRtConfig()
    engine_side = TensorRtConfig(workspace_mib=4096, optimization_level=5, batch={"max": 8})
    assert prepare_config("tensorrt", Precision.INT8, base) == prepare_config("tensorrt", Precision.INT8, engine_side)
    assert engine_config("tensorrt", Precision.INT8, base) != engine_config("tensorrt", Precision.INT8, engine_side)
    ort_qdq = TensorRtConfig(qdq_tool="onnxruntime")
    assert prepare_config("tensorrt", Precision.INT8, base) != prepare_config("tensorrt", Precision.INT8, ort_qdq)
    assert prepare_config("tensorrt", Precision.FP16, base) == prepare_config("tensorrt", Precision.FP16, ort_qdq)


def test_an_unset_accuracy_target_leaves_an_engines_identity_as_it_was() -> None:
    """``accuracy_target`` came after the engines in users' stores: unset, it is not part of an INT8 engine's key (no
    rebuild); set, with ``keep_float: auto``, it is."""
    plain = engine_config("onnxruntime", Precision.INT8, OnnxRuntimeConfig())
    assert "accuracy_target" not in plain and plain["keep_float"] == 0
    searched = engine_config("onnxruntime", Precision.INT8, OnnxRuntimeConfig(keep_float="auto", accuracy_target={"min_agreement": 0.97}))
    assert searched["keep_float"] == "auto"
    assert searched["accuracy_target"] == {"min_agreement": 0.97, "max_drop_points": None, "min_cosine": None}


def test_keys_added_later_stay_out_of_an_engines_identity_at_their_defaults() -> None:
    """So an engine stored before them is reused, not rebuilt; set, they key the engine."""
    from edgeship.backends.onnxruntime import OnnxRuntimeConfig

    plain = engine_config("onnxruntime", Precision.INT8, OnnxRuntimeConfig())
    assert "mode" not in plain and "accuracy_target" not in plain
    assert engine_config("onnxruntime", Precision.INT8, OnnxRuntimeConfig(mode="dynamic"))["mode"] == "dynamic"
    assert not {"model_type", "smooth_quant_alpha", "calibration_method"} & set(engine_config("openvino", Precision.INT8, OpenVinoConfig()))
    assert engine_config("openvino", Precision.INT8, OpenVinoConfig(calibration_method="histogram"))["calibration_method"] == "histogram"
    assert engine_config("onnxruntime", Precision.INT8, OnnxRuntimeConfig())["calibration_method"] == "minmax"  # its own default keys
    assert "fixed_shape" not in engine_config("tflite", Precision.FP32, TfliteConfig())
    assert engine_config("tflite", Precision.FP32, TfliteConfig(fixed_shape={"x": (1, 3, 8, 8)}))["fixed_shape"] == {"x": [1, 3, 8, 8]}


def test_a_one_image_models_identity_leaves_out_the_keys_of_other_entries() -> None:
    """The model stage's key of a zoo, pretrained or factory model is what it was before ONNX entries and declared inputs
    existed, so a stored teacher is not trained again."""
    from edgeship.pipeline.model import model_identity
    from edgeship.recipe import ModelConfig

    assert not {"onnx", "inputs", "outputs"} & set(model_identity(ModelConfig()))
    assert model_identity(ModelConfig(factory="a.b:c", inputs=[{"name": "x", "shape": ["batch", 3]}]))["inputs"]
    assert engine_config("openvino", Precision.INT8, OpenVinoConfig(model_type="transformer"))["model_type"] == "transformer"


def test_a_searched_engines_key_covers_the_validation_samples_and_the_search_method() -> None:
    """An engine searched by an earlier method (another ranking, or its backend's own change: ``search_revision``) is
    searched again, not reused from the store."""
    from types import SimpleNamespace

    import numpy as np

    from edgeship.backends.float_search import SEARCH_METHOD
    from edgeship.pipeline.build import BuildStage
    from edgeship.tensors import CalibrationSet, SearchSet

    search = SearchSet(np.zeros((4, 1, 2, 2), np.float32), None, "validation-fingerprint")
    stage = BuildStage(CalibrationSet(np.zeros((4, 1, 2, 2), np.float32), "calibration-fingerprint"), search)
    onnx = SimpleNamespace(meta={"input_name": "input"})
    auto = OnnxRuntimeConfig(keep_float="auto", accuracy_target={"min_agreement": 0.97})
    searched = stage._calibration_for("onnxruntime", Precision.INT8, onnx, auto)  # type: ignore[arg-type]
    plain = stage._calibration_for("onnxruntime", Precision.INT8, onnx, OnnxRuntimeConfig())  # type: ignore[arg-type]
    assert searched is not None and plain is not None and searched.search is search
    revision = REGISTRY["onnxruntime"].search_revision
    assert revision and searched.fingerprint == f"calibration-fingerprint+search:validation-fingerprint+{SEARCH_METHOD}{revision}"
    assert plain.fingerprint == "calibration-fingerprint" and plain.search is None
    openvino = stage._calibration_for("openvino", Precision.INT8, onnx, OpenVinoConfig(keep_float="auto",  # type: ignore[arg-type]
                                                                                      accuracy_target={"min_agreement": 0.97}))
    assert openvino is not None and openvino.fingerprint.endswith(f"+{SEARCH_METHOD}"), "another backend's revision keys only its engines"


def test_a_build_in_a_child_process_returns_its_engine_its_notes_and_its_errors(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """``BackendInfo.build_in_child`` (TFLite): the engine the child wrote, the step notes it sent on the way (a float
    search's), and a ``BuildError`` re-raised here with its fields."""
    from edgeship.backends.base import CalibrationSet
    from edgeship.config import AccuracyTarget
    from edgeship.errors import BuildError
    from edgeship.pipeline.build import build_in_child
    from edgeship.tensors import SearchSet

    from backends.contract import onnx_artifact

    artifact = onnx_artifact(trained_cnn.onnx)
    search = SearchSet(trained_cnn.evaluation[:64], trained_cnn.labels[:64], "v")
    calibration = CalibrationSet(trained_cnn.calibration[:32], "c").with_search(search)
    cfg = OnnxRuntimeConfig(keep_float="auto", accuracy_target=AccuracyTarget(min_agreement=0.9))
    notes: list[str] = []
    engine = build_in_child("onnxruntime", artifact, Precision.INT8, calibration, cfg, tmp_path, notes.append)
    assert engine == tmp_path / "model.int8.onnx" and engine.is_file() and (tmp_path / "float_search.json").is_file()
    assert notes and notes[0].startswith("keep_float auto: ranking"), "the child's step notes reach the parent's spinner"
    with pytest.raises(BuildError, match="INT8 needs a calibration set") as caught:
        build_in_child("onnxruntime", artifact, Precision.INT8, None, OnnxRuntimeConfig(), tmp_path, notes.append)
    assert (caught.value.backend, caught.value.precision) == ("onnxruntime", Precision.INT8)
