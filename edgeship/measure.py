"""The measurement harness shared by every stage that times or scores a model.

Latency: warm-up, then at least ``iterations`` timed calls and at least
``min_seconds``, each timed with ``perf_counter_ns``. Accuracy: top-1 against
labels, and agreement with the FP32 reference outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)
CI_LEVEL = 0.95
QUANTILE_GRID = tuple(range(101))  # the distribution kept with every summary (0th..100th percentile), for plots


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds, each statistic with a bootstrap confidence interval (``ci95``)."""

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
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)  # statistic name → (low, high)
    quantiles_ms: tuple[float, ...] = ()  # at QUANTILE_GRID

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()
                                  if k not in ("ci95", "quantiles_ms")}
        out["ci95"] = {name: [round(low, 4), round(high, 4)] for name, (low, high) in self.ci95.items()}
        out["quantiles_ms"] = [round(q, 4) for q in self.quantiles_ms]
        return out


def summarize(times_ns: np.ndarray, batch_size: int, *, resamples: int = 1000, seed: int = 0) -> LatencyStats:
    """Mean, std, percentiles (numpy's linear interpolation) and their bootstrap 95% intervals, in milliseconds."""
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    if len(ms) == 0:
        raise ValueError("no timings to summarize")
    p50, p90, p95, p99 = np.percentile(ms, PERCENTILES)
    return LatencyStats(len(ms), batch_size, float(ms.mean()), float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, float(p50),
                        float(p90), float(p95), float(p99), float(ms.min()), float(ms.max()),
                        float(batch_size * 1000 / ms.mean()), bootstrap_ci(ms, resamples=resamples, seed=seed),
                        tuple(float(q) for q in np.percentile(ms, QUANTILE_GRID)))


def bootstrap_ci(values: np.ndarray, *, resamples: int = 1000, level: float = CI_LEVEL, seed: int = 0,
                 chunk: int = 100) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of the mean, std and p50/p90/p95/p99 of ``values``.

    Resamples with replacement ``resamples`` times (seeded, so a rerun gives the same interval), ``chunk``
    resamples at a time so memory stays at ``chunk × len(values)``. A single value gives a zero-width interval.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        raise ValueError("no values to bootstrap")
    if n == 1:
        return {name: (float(values[0]), float(values[0])) for name in ("mean_ms", "std_ms", *(f"p{q}_ms" for q in PERCENTILES))}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {"mean_ms": [], "std_ms": [], **{f"p{q}_ms": [] for q in PERCENTILES}}
    for start in range(0, resamples, chunk):
        sample = values[rng.integers(0, n, size=(min(chunk, resamples - start), n))]
        draws["mean_ms"].append(sample.mean(axis=1))
        draws["std_ms"].append(sample.std(axis=1, ddof=1))
        for q, row in zip(PERCENTILES, np.percentile(sample, PERCENTILES, axis=1), strict=True):
            draws[f"p{q}_ms"].append(row)
    tail = 100 * (1 - level) / 2
    return {name: (float(np.percentile(np.concatenate(parts), tail)), float(np.percentile(np.concatenate(parts), 100 - tail)))
            for name, parts in draws.items()}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float]:
    """The median over rounds of each round's ratio of two engines' times, with its bootstrap 95% interval: each round's
    two figures were taken seconds apart, so a change of the machine's speed between rounds cancels."""
    ratios = np.asarray(numerator, dtype=np.float64) / np.asarray(denominator, dtype=np.float64)
    low, high = bootstrap_ci(ratios)["p50_ms"]  # the interval of the median, whatever the unit
    return float(np.median(ratios)), low, high


def faster_round_by_round(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a``'s times (one per round) are below ``b``'s beyond the noise: the interval of their round-by-round
    ratio (``paired_ratio``) lies below 1."""
    return paired_ratio(a, b)[2] < 1.0


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


def scores(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
           groups: Sequence[str] | None = None) -> dict[str, Any]:
    """An engine's scores on the evaluation split: top-1 against ``labels`` (None without labels), the sample count,
    its ``agreement`` with the FP32 ``reference``, and that agreement's 95% interval (``agreement_interval``, over
    ``groups`` when the samples come in correlated groups)."""
    scored = {"top1": None if labels is None else top1(outputs, labels), "eval_samples": len(outputs), **agreement(outputs, reference)}
    summary = fidelity_summary(fidelity({"logits": outputs}, {"logits": reference}))
    scored.update({k: summary[k] for k in ("min_sqnr_db", "max_relative_l2")})
    hits = top1_hits(outputs, reference)
    scored.update(agreement_interval(hits, groups))
    return scored


def top1_hits(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per sample, whether ``outputs`` has the ``reference``'s top class."""
    return outputs.reshape(len(outputs), -1).argmax(1) == reference.reshape(len(reference), -1).argmax(1)


def pack_hits(hits: np.ndarray) -> str:
    """``hits`` as hex of their packed bits: a device that scores its own outputs sends these back (an eighth of a
    byte per sample), so the host can give the interval over the photos that only it knows (``unpack_hits``)."""
    return np.packbits(np.asarray(hits, bool)).tobytes().hex()


def unpack_hits(packed: str, count: int) -> np.ndarray:
    """``pack_hits``'s ``count`` hits; ValueError when the text is not that many packed bits."""
    try:
        raw = bytes.fromhex(packed)
    except ValueError:
        raise ValueError("top1_hits: expected hexadecimal packed bits") from None
    if len(raw) != -(-count // 8):
        raise ValueError(f"top1_hits: expected {count} packed bits ({-(-count // 8)} bytes), got {len(raw)} bytes")
    return np.unpackbits(np.frombuffer(raw, np.uint8), count=count).astype(bool)


def agreement_interval(hits: np.ndarray, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """The 95% interval of top-1 agreement: whole groups resampled (``grouped_interval``) when the samples come in
    correlated groups, such as crops of one photo; else Wilson's score interval, which takes the samples as independent.
    ``top1_agreement_groups`` says which: the number of groups, or None."""
    hits = np.asarray(hits, np.float64)
    if not len(hits):
        return {"top1_agreement_ci95": None, "top1_agreement_groups": None}
    if groups is not None and len(groups):
        low, high = grouped_interval(hits, groups)
        return {"top1_agreement_ci95": [low, high], "top1_agreement_groups": len(set(groups))}
    n, z = len(hits), 1.959963984540054
    p = float(hits.mean())
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"top1_agreement_ci95": [max(0.0, centre - half), min(1.0, centre + half)], "top1_agreement_groups": None}


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How closely ``outputs`` follow the FP32 ``reference`` (same shape, one row per sample).

    ``top1_agreement``: the same top class as the reference. ``top5_agreement`` (with at least 5 classes): the
    reference's top class is among the five highest outputs, i.e. top-5 accuracy with the reference as the labels.
    """
    if outputs.shape != reference.shape:
        raise ValueError(f"outputs {outputs.shape} and reference {reference.shape} differ in shape")
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    out = {
        "top1_agreement": float(top1_hits(a, b).mean()),
        "max_abs_error": float(np.abs(a - b).max()),
        "mean_cosine": float(cos.mean()),
    }
    if a.shape[1] >= 5:
        out["top5_agreement"] = topk(a, b.argmax(1), 5)
    return out


def grouped_interval(hits: np.ndarray, groups: Sequence[str] | np.ndarray, *, resamples: int = 2000, level: float = CI_LEVEL,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``hits`` (one 0/1 or score per sample) when samples come in
    correlated ``groups`` (crops of one photo): whole groups are resampled, so the interval is as wide as the number
    of groups warrants, not the number of samples. One group per sample is the plain bootstrap."""
    hits = np.asarray(hits, np.float64)
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    if len(hits) == 0 or len(index) != len(hits):
        raise ValueError(f"{len(hits)} samples and {len(index)} group names: one group name per sample needed")
    total, count = np.bincount(index, hits, len(names)), np.bincount(index, minlength=len(names)).astype(np.float64)
    draws = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1 / len(names)), size=resamples)
    means = (draws @ total) / (draws @ count)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest logits (ties broken by numpy's partition)."""
    best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((best == np.asarray(labels)[:, None]).any(axis=1).mean())


SQNR_CAP_DB = 200.0  # what an output identical to its reference (no noise at all) reports: JSON has no infinity
RELATIVE_L2_CAP = 1e6  # an error on a reference that is zero everywhere
MAX_ERROR_CAP = 1e30  # an output that overflowed
NOTHING = 1e-3  # of an output's largest reference value: a row within it on both sides is empty, and agrees


def fidelity(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """How closely each named output follows the FP32 ``reference`` (one row per sample), the measures of a model
    whose outputs are not class scores: the mean per-sample ``cosine`` (for one value per sample, the cosine of the whole
    column: a single value's cosine is only its sign), ``sqnr_db`` over every element, ``relative_l2``
    (‖out − ref‖ / ‖ref‖) and ``max_abs_error``. A row that is nothing on both sides (every value within ``NOTHING`` of
    the output's largest reference value: a detector's map of a photo without text) agrees: the direction of rounding
    noise around zero means nothing, and counting it would sink the mean cosine of an engine that is right everywhere."""
    missing = sorted(set(reference) - set(outputs))
    if missing:
        raise ValueError(f"the engine gave no output {', '.join(map(repr, missing))} (it gave {', '.join(sorted(outputs))})")
    out = {}
    for name, ref in reference.items():
        got = outputs[name]
        if got.shape != ref.shape:
            raise ValueError(f"output {name!r}: shape {got.shape}, the FP32 reference has {ref.shape}")
        a = got.reshape(len(got), -1).astype(np.float64)
        b = ref.reshape(len(ref), -1).astype(np.float64)
        if a.shape[1] == 1:  # one value per sample: a row's cosine is only its sign, so the column is compared whole
            a, b = a.T, b.T
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        tolerance = NOTHING * float(np.abs(b).max(initial=0))
        both_nothing = (np.abs(a).max(axis=1, initial=0) <= tolerance) & (np.abs(b).max(axis=1, initial=0) <= tolerance)
        with np.errstate(all="ignore"):  # an engine output that overflowed (inf, nan) is scored as the worst, not as an error
            cos = np.where(both_nothing, 1.0, (a * b).sum(1) / np.maximum(norms, 1e-30))
            cos = np.where(np.isfinite(cos), cos, 0.0)
            noise, signal = float(((a - b) ** 2).sum()), float((b**2).sum())
            ratio = signal / noise if noise else np.inf
            sqnr = SQNR_CAP_DB if noise == 0 else (-SQNR_CAP_DB if not ratio > 0 else min(SQNR_CAP_DB, 10 * np.log10(ratio)))
            relative = np.sqrt(noise / max(signal, 1e-30)) if np.isfinite(noise) else RELATIVE_L2_CAP
            largest = float(np.abs(a - b).max(initial=0))
        # every figure finite and bounded, as JSON keeps it (it has no infinity or NaN)
        out[name] = {"cosine": float(cos.mean()), "sqnr_db": round(float(max(-SQNR_CAP_DB, sqnr)), 4),
                     "relative_l2": min(RELATIVE_L2_CAP, float(relative)),
                     "max_abs_error": largest if np.isfinite(largest) else MAX_ERROR_CAP}
    return out


def fidelity_summary(per_output: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The worst output's figures, which a row shows and the gates judge by default, with every output's beside them."""
    return {"fidelity": {name: dict(figures) for name, figures in per_output.items()},
            "min_cosine": min(f["cosine"] for f in per_output.values()),
            "min_sqnr_db": min(f["sqnr_db"] for f in per_output.values()),
            "max_relative_l2": max(f["relative_l2"] for f in per_output.values()),
            "max_abs_error": max(f["max_abs_error"] for f in per_output.values())}


def output_scores(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A generic model's scores on the evaluation split: output fidelity against the FP32 reference, per output."""
    first = next(iter(outputs.values()))
    return {"eval_samples": len(first), "top1": None, **fidelity_summary(fidelity(outputs, reference))}
