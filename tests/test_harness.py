"""The measuring process: one engine alone, pinned, with its memory, timings and outputs; failures as one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeship.harness import HarnessError, HarnessSpec, measure, measure_isolated


def spec_for(engine: Path, tmp_path: Path, **changes: object) -> HarnessSpec:
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.random.default_rng(0).normal(size=(30, 1, 28, 28)).astype(np.float32))
    fields: dict[str, object] = {"backend": "onnxruntime", "engine": engine, "input_name": "input", "inputs": inputs,
                                 "outputs": tmp_path / "out.npy", "timings": tmp_path / "timings.npz", "threads": 1,
                                 "cpus": (sorted(os.sched_getaffinity(0))[-1],), "warmup": 2, "iterations": 15,
                                 "min_seconds": 0.0, "batch_size": 2, "throughput_batch_sizes": (8,), "throughput_seconds": 0.0,
                                 "eval_batch_size": 7}
    fields.update(changes)
    return HarnessSpec.model_validate(fields)


def test_isolated_measurement_pins_times_scores_and_reports_memory(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    spec = spec_for(tiny_cnn_onnx, tmp_path)
    seen: list[tuple[str, int, int]] = []
    result = measure_isolated(spec, tmp_path / "work", lambda task, done, total: seen.append((task, done, total)))
    assert result["pid"] != os.getpid() and result["cpus"] == list(spec.cpus or ())
    assert result["latency"]["iterations"] >= 15 and result["latency"]["batch_size"] == 2
    assert result["throughput"]["8"]["status"] == "ok" and result["throughput"]["8"]["iterations"] >= 20
    memory = result["memory"]
    assert 10 * 2**20 < memory["baseline_rss_bytes"] < memory["peak_rss_bytes"] <= memory["peak_rss_with_eval_bytes"]
    assert result["load_ms"] > 0 and result["first_inference_ms"] > 0
    assert result["runtime"]["intra_op_num_threads"] == result["threads"] == 1
    timings = np.load(spec.timings)  # type: ignore[arg-type]
    assert sorted(timings.files) == ["batch8", "latency"] and len(timings["latency"]) == result["latency"]["iterations"]
    outputs = np.load(spec.outputs)  # type: ignore[arg-type]
    inputs = np.load(spec.inputs)
    expected = ort.InferenceSession(str(tiny_cnn_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)
    assert {task for task, _, _ in seen} >= {"latency", "throughput batch 8", "accuracy"}
    assert ("accuracy", 30, 30) in seen


def test_in_process_measure_gives_the_same_outputs(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    spec = spec_for(tiny_cnn_onnx, tmp_path, timings=None, outputs=tmp_path / "in.npy", cpus=None)
    result = measure(spec)
    assert "latency" not in result and "throughput" not in result, "timings=None: scored, not timed"
    assert np.load(tmp_path / "in.npy").shape == (30, 10)


def test_a_broken_engine_fails_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(HarnessError) as caught:
        measure_isolated(spec_for(broken, tmp_path), tmp_path / "work")
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and message
    assert (tmp_path / "work" / "harness-stderr.log").is_file()


def test_a_child_silent_too_long_is_stopped_and_says_where_it_was(tiny_cnn_onnx: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import time

    import edgeship.harness as harness

    hung = tmp_path / "hung-python"  # stands for the child: it reports one step, then hangs as a runtime stuck in a call would
    hung.write_text('#!/bin/sh\necho \'{"task": "latency", "done": 3, "total": 15}\'\nexec sleep 60\n')
    hung.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(hung))
    monkeypatch.setattr(harness, "SILENCE_S", 1.0)
    seen: list[str] = []
    started = time.monotonic()
    with pytest.raises(HarnessError, match=r"^the measuring process gave no sign of progress for 1 s \(latency\) and was stopped"):
        measure_isolated(spec_for(tiny_cnn_onnx, tmp_path), tmp_path / "work", lambda task, done, total: seen.append(task))
    assert seen == ["latency"] and time.monotonic() - started < 30, "stopped, not waited out"


def test_wrong_input_shape_is_a_clear_error(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    spec = spec_for(tiny_cnn_onnx, tmp_path)
    np.save(spec.inputs, np.zeros((4, 3, 28, 28), np.float32))
    with pytest.raises(HarnessError, match="expected shape"):
        measure_isolated(spec, tmp_path / "work")


def test_unusable_cpus_are_refused(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="cannot pin to CPUs"):
        measure_isolated(spec_for(tiny_cnn_onnx, tmp_path, cpus=(4096,)), tmp_path / "work")


def test_scoring_a_memory_mapped_input_holds_a_batch_of_it_not_all_of_it(tmp_path: Path) -> None:
    import psutil

    from edgeship import harness

    inputs = np.random.default_rng(0).random((400, 3, 224, 224), dtype=np.float32)  # 241 MB
    np.save(tmp_path / "inputs.npy", inputs)
    expected = inputs.sum(axis=(1, 2, 3))
    del inputs
    mapped = np.load(tmp_path / "inputs.npy", mmap_mode="r")
    before = psutil.Process().memory_info().rss
    scores = harness._score(None, lambda feed: feed["x"].sum(axis=(1, 2, 3)), {"x": mapped}, lambda *_: None, batch=20)
    grown = psutil.Process().memory_info().rss - before
    np.testing.assert_array_equal(scores, expected)
    assert grown < 60 * 2**20, f"scoring kept {grown / 2**20:.0f} MiB of a 241 MB input resident"


def test_the_call_overhead_is_taken_round_by_round_so_a_load_change_between_rounds_cancels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship import harness

    class TwoCalls:  # the timed call and the runtime's own; their times come from the patched ``_timed``
        def bare_call(self, feed: object) -> object:
            return lambda: None

        def timed_call(self, feed: object) -> object:
            return lambda: None

    calls: list[str] = []

    def timed(task: str, call: object, *args: object) -> np.ndarray:
        calls.append(task)
        slow = 100_000.0 * ((len(calls) - 1) // 2)  # background load grows by 100 µs a round; the call adds 7 µs
        return np.full(4, slow + (57_000.0 if task.startswith("latency") else 50_000.0))

    monkeypatch.setattr(harness, "_timed", timed)
    spec = spec_for(tmp_path / "unused.onnx", tmp_path, throughput_batch_sizes=(), batch_size=1)
    inputs = {"input": np.zeros((2, 1, 28, 28), np.float32)}
    out = harness._time_engine(spec.model_copy(update={"bare_call": True}), TwoCalls(), inputs, lambda *_: None)
    assert len(calls) == 2 * harness.PAIRED_ROUNDS
    assert out["bare_latency"]["paired_overhead_us"] == 7.0
