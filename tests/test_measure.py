from __future__ import annotations

import time

import numpy as np
import pytest

from edgeship.measure import agreement, summarize, time_calls, top1


def test_summarize_percentiles_in_milliseconds() -> None:
    stats = summarize(np.arange(1, 101) * 1_000_000, batch_size=4)
    assert stats.iterations == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.min_ms == 1 and stats.max_ms == 100
    assert stats.throughput == pytest.approx(4 * 1000 / 50.5)


def test_time_calls_runs_at_least_n_iterations_and_t_seconds() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=3, iterations=5, min_seconds=0.0)
    assert len(times) == 5 and len(calls) == 8
    started = time.perf_counter()
    times = time_calls(lambda: None, warmup=0, iterations=1, min_seconds=0.05)
    assert time.perf_counter() - started >= 0.05 and len(times) > 1
    assert (times >= 0).all()


def test_top1_and_agreement() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    outputs = np.array([[1.0, 0.5], [1.0, 0.0], [2.0, 1.0]])
    assert top1(reference, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    found = agreement(outputs, reference)
    assert found["top1_agreement"] == pytest.approx(2 / 3)
    assert found["max_abs_error"] == pytest.approx(1.0)
    assert 0 < found["mean_cosine"] < 1
    assert agreement(reference, reference)["mean_cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        agreement(outputs[:2], reference)


def test_interleaved_timing_alternates_rounds_and_pools_each_call() -> None:
    from edgeship.measure import time_interleaved

    order: list[str] = []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=0, iterations=10,
                             min_seconds=0.0, rounds=5)
    assert {name: len(t) for name, t in times.items()} == {"a": 10, "b": 10}
    assert "".join(order) == "aabb" * 5, "each round times every call in turn"
