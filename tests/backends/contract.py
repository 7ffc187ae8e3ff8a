"""The contract every backend passes. A backend's test module subclasses ``BackendContract``.

Subclasses set ``backend`` (registry name) and ``config`` (its recipe section). Tests
needing the backend's runtime are skipped, with the availability reason, where it is
missing; the availability test itself always runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydantic import BaseModel

from edgeship.artifacts import Artifact, sha256_file
from edgeship.backends import REGISTRY, availability, get_backend
from edgeship.backends.base import Availability, Backend, CalibrationSet, Precision, Runner
from edgeship.errors import BuildError


def onnx_artifact(path: Path) -> Artifact:
    return Artifact(id="0" * 32, kind="onnx", stage="export", path=path, sha256=sha256_file(path), size=path.stat().st_size,
                    meta={"input_name": "input", "input_shape": [1, 28, 28]})


def ort_reference(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]


class BackendContract:
    backend: ClassVar[str]
    config: ClassVar[BaseModel]
    # how far each precision may stray from the FP32 ONNX reference on the tiny CNN
    min_agreement: ClassVar[dict[Precision, float]] = {Precision.FP32: 1.0, Precision.FP16: 0.95, Precision.INT8: 0.8}

    @pytest.fixture(scope="class")
    @classmethod
    def impl(cls) -> Backend:
        state = availability(cls.backend)
        if not state.available:
            pytest.skip(f"{cls.backend} unavailable here: {state.reason}")
        return get_backend(cls.backend)

    @pytest.fixture(scope="class")
    @classmethod
    def engines(cls, impl: Backend, tiny_cnn_onnx: Path, calibration_samples: np.ndarray,
                tmp_path_factory: pytest.TempPathFactory) -> dict[Precision, Path]:
        calibration = CalibrationSet(calibration_samples, "test-fingerprint", batch_size=8)
        built = {}
        for precision in sorted(impl.precisions):
            out = tmp_path_factory.mktemp(f"{cls.backend}-{precision}")
            built[precision] = impl.build(onnx_artifact(tiny_cnn_onnx), precision, calibration if precision is Precision.INT8 else None,
                                          cls.config, out)
        return built

    def test_availability_is_described(self) -> None:
        state = availability(self.backend)
        assert isinstance(state, Availability) and state.backend == self.backend
        assert state.available or (state.reason and state.install), "an unavailable backend must say why and what to install"
        assert REGISTRY[self.backend].precisions

    def test_builds_every_supported_precision(self, impl: Backend, engines: dict[Precision, Path]) -> None:
        assert set(engines) == set(impl.precisions)
        for path in engines.values():
            assert path.is_file() and path.stat().st_size > 0

    def test_outputs_follow_fp32_reference(self, impl: Backend, engines: dict[Precision, Path], tiny_cnn_onnx: Path,
                                          calibration_samples: np.ndarray) -> None:
        batch = calibration_samples[:32]
        reference = ort_reference(tiny_cnn_onnx, batch)
        for precision, path in engines.items():
            with impl.runner(path, threads=1) as runner:
                out = next(iter(runner.infer({"input": batch}).values()))
            assert out.shape == reference.shape
            agree = float((out.argmax(1) == reference.argmax(1)).mean())
            assert agree >= self.min_agreement[precision], f"{precision}: top-1 agreement {agree:.2f}"
            if precision is Precision.FP32:
                assert np.abs(out - reference).max() < 1e-4

    def test_runner_handles_dynamic_batch(self, impl: Backend, engines: dict[Precision, Path], calibration_samples: np.ndarray) -> None:
        with impl.runner(engines[min(engines)], threads=1) as runner:
            for n in (1, 3):
                out = next(iter(runner.infer({"input": calibration_samples[:n]}).values()))
                assert out.shape == (n, 10)

    def test_runner_checks_its_inputs(self, impl: Backend, engines: dict[Precision, Path]) -> None:
        runner: Runner = impl.runner(engines[min(engines)], threads=1)
        good = np.zeros((1, 1, 28, 28), np.float32)
        with pytest.raises(RuntimeError, match="must be entered"):
            runner.infer({"input": good})
        with runner:
            meta = runner.input_metadata()
            assert list(meta) == ["input"] and meta["input"].shape[1:] == (1, 28, 28)
            with pytest.raises(ValueError, match="feed names"):
                runner.infer({"wrong": good})
            with pytest.raises(ValueError, match="dtype"):
                runner.infer({"input": good.astype(np.float64)})
            with pytest.raises(ValueError, match="shape"):
                runner.infer({"input": np.zeros((1, 1, 14, 14), np.float32)})

    def test_unsupported_precision_is_a_build_error(self, impl: Backend, tiny_cnn_onnx: Path, tmp_path: Path) -> None:
        missing = [p for p in Precision if p not in impl.precisions]
        if not missing:
            pytest.skip(f"{self.backend} supports every precision")
        with pytest.raises(BuildError, match=str(missing[0])):
            impl.build(onnx_artifact(tiny_cnn_onnx), missing[0], None, self.config, tmp_path)

    def test_int8_without_calibration_is_a_build_error(self, impl: Backend, tiny_cnn_onnx: Path, tmp_path: Path) -> None:
        if Precision.INT8 not in impl.precisions:
            pytest.skip(f"{self.backend} builds no INT8")
        with pytest.raises(BuildError, match="calibration"):
            impl.build(onnx_artifact(tiny_cnn_onnx), Precision.INT8, None, self.config, tmp_path)
