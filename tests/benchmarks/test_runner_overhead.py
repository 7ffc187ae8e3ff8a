"""``benchmarks/runner_overhead.py``'s measurement on a tiny ONNX Runtime engine: the three calls are timed and the
runner's call is never faster than nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_the_runtime_call_infer_and_the_harness_call_are_each_timed(tiny_cnn_onnx: Path) -> None:
    spec = importlib.util.spec_from_file_location("runner_overhead", ROOT / "benchmarks" / "runner_overhead.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = {"backend": "onnxruntime", "path": str(tiny_cnn_onnx)}
    got = module.measure(row, threads=1, seconds=0.02, rounds=3, rng=np.random.default_rng(0))
    assert set(got) == {"runtime", "infer", "harness"}
    assert all(0 < value < 1e5 for value in got.values()), got
