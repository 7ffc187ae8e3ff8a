from __future__ import annotations

from edgeship.backends.base import Precision
from edgeship.pipeline.build import engine_config, requested
from edgeship.recipe import BackendsConfig, OnnxRuntimeConfig


def test_fp32_identity_ignores_int8_only_settings() -> None:
    base, changed = OnnxRuntimeConfig(), OnnxRuntimeConfig(calibration_method="entropy", reduce_range=False, precisions=("int8",))
    assert engine_config("onnxruntime", Precision.FP32, base) == engine_config("onnxruntime", Precision.FP32, changed)
    assert engine_config("onnxruntime", Precision.INT8, base) != engine_config("onnxruntime", Precision.INT8, changed)
    assert engine_config("onnxruntime", Precision.INT8, base)["precision"] == "int8"


def test_disabled_backends_are_not_requested() -> None:
    assert [name for name, _ in requested(BackendsConfig())] == ["onnxruntime"]
    assert requested(BackendsConfig(onnxruntime=OnnxRuntimeConfig(enabled=False))) == []
