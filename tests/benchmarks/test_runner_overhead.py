"""``benchmarks/runner_overhead.py``'s measurement on a tiny engine: the three calls are timed, and on OpenVINO
``benchmark_app`` in the same rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeship.backends import availability

from conftest import load_module


def test_the_runtime_call_infer_and_the_harness_call_are_each_timed(tiny_cnn_onnx: Path) -> None:
    module = load_module("benchmarks/runner_overhead.py")
    row = {"backend": "onnxruntime", "path": str(tiny_cnn_onnx)}
    got = module.measure(row, threads=1, seconds=0.02, rounds=3, rng=np.random.default_rng(0))
    assert set(got) == {"runtime", "infer", "harness"}
    assert all(0 < value < 1e5 for value in got.values()), got


@pytest.mark.skipif(not availability("openvino").available, reason="openvino is not installed")
def test_benchmark_app_runs_in_the_same_rounds_and_gives_a_paired_ratio(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    from edgeship.backends.base import Precision
    from edgeship.backends.openvino import OpenVinoBackend
    from edgeship.recipe import OpenVinoConfig

    from backends.contract import onnx_artifact

    engine = OpenVinoBackend().build(onnx_artifact(tiny_cnn_onnx), Precision.FP32, None, OpenVinoConfig(), tmp_path)
    overhead = load_module("benchmarks/runner_overhead.py")
    got = overhead.measure({"backend": "openvino", "path": str(engine)}, threads=1, seconds=0.02, rounds=2,
                           rng=np.random.default_rng(0), tool_shape=(1, 28, 28))
    assert set(got) == {"runtime", "infer", "harness", "benchmark_app", "harness/tool"}
    assert 0 < got["benchmark_app"] < 1e5 and 0.2 < got["harness/tool"] < 5, got
