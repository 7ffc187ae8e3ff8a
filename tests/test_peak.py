"""The machine's GEMM peak: measured through ONNX Runtime in a pinned child process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeship.peak import Peak, PeakRate, main, measure_peak_isolated


def test_the_peak_is_measured_in_a_pinned_child_and_int8_and_fp32_are_told_apart(tmp_path: Path) -> None:
    cpus = (sorted(os.sched_getaffinity(0))[0],) if hasattr(os, "sched_getaffinity") else None
    peak = measure_peak_isolated(1, cpus, tmp_path)
    assert peak.threads == 1 and (cpus is None or peak.cpus == list(cpus))
    assert peak.fp32.op == "MatMul" and peak.int8.op == "MatMulInteger"
    for rate in (peak.fp32, peak.int8):
        # 1024³ MACs in the median call: the rate follows from the time, and a core does between 0.1 and 10,000 GMAC/s
        assert rate.gmacs == pytest.approx(1024**3 / (rate.median_ms * 1e-3) / 1e9, rel=0.01)
        assert 0.1 < rate.gmacs < 10_000 and rate.iterations >= 5
    assert peak.for_precision("int8") is peak.int8 and peak.for_precision("fp16") is peak.fp32


def test_a_failed_child_is_a_runtime_error_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="CPU|Invalid argument|cpu"):
        measure_peak_isolated(1, (10_000,), tmp_path)  # a CPU this machine does not have


def test_bad_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zero", "out.json"]) == 2
    assert "usage" in capsys.readouterr().err


def test_peak_rates_reject_unknown_fields() -> None:
    rate = {"op": "MatMul", "gmacs": 1.0, "median_ms": 1.0, "iterations": 1}
    with pytest.raises(ValueError, match="extra"):
        Peak(threads=1, cpus=None, shape=(1, 1, 1), runtime="x", fp32=PeakRate(**rate), int8=PeakRate(**rate), surprise=1)  # type: ignore[call-arg]
