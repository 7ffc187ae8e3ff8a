"""The measurement harness shared by every stage that times or scores a model.

Latency: warm-up, then at least ``iterations`` timed calls and at least
``min_seconds``, each timed with ``perf_counter_ns``. Accuracy: top-1 against
labels, and agreement with the FP32 reference outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds."""

    iterations: int
    batch_size: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second at this batch size

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(times_ns: np.ndarray, batch_size: int) -> LatencyStats:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    if len(ms) == 0:
        raise ValueError("no timings to summarize")
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return LatencyStats(len(ms), batch_size, float(ms.mean()), float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, float(p50),
                        float(p90), float(p95), float(p99), float(ms.min()), float(ms.max()),
                        float(batch_size * 1000 / ms.mean()))


def time_calls(call: Callable[[], object], *, warmup: int, iterations: int, min_seconds: float,
               on_step: Callable[[], None] | None = None) -> np.ndarray:
    """Per-call times (ns) of ``call`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times: list[int] = []
    deadline = time.perf_counter_ns() + int(min_seconds * 1e9)
    while len(times) < iterations or time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
        if on_step is not None:
            on_step()
    return np.asarray(times, dtype=np.int64)


def time_interleaved(calls: Mapping[str, Callable[[], object]], *, warmup: int, iterations: int, min_seconds: float,
                     rounds: int = 5) -> dict[str, np.ndarray]:
    """Per-call times (ns) of several calls, timed in alternating rounds and pooled per call.

    Comparing two engines timed minutes apart lets any change of background load
    in between decide the ratio; alternating rounds spread it over both.
    """
    times: dict[str, list[np.ndarray]] = {name: [] for name in calls}
    for round_index in range(rounds):
        for name, call in calls.items():
            times[name].append(time_calls(call, warmup=warmup if round_index == 0 else min(warmup, 5),
                                          iterations=-(-iterations // rounds), min_seconds=min_seconds / rounds))
    return {name: np.concatenate(parts) for name, parts in times.items()}


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How closely ``outputs`` follow the FP32 ``reference`` (same shape, one row per sample)."""
    if outputs.shape != reference.shape:
        raise ValueError(f"outputs {outputs.shape} and reference {reference.shape} differ in shape")
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_abs_error": float(np.abs(a - b).max()),
        "mean_cosine": float(cos.mean()),
    }
