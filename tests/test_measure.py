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


def test_bootstrap_intervals_hold_the_estimate_and_match_the_normal_theory() -> None:
    """For the mean of n normal draws the bootstrap interval is close to mean ± 1.96·s/√n."""
    values = np.random.default_rng(1).normal(10.0, 2.0, size=2000)
    stats = summarize(values * 1e6, batch_size=1)
    low, high = stats.ci95["mean_ms"]
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low < stats.mean_ms < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    for name in ("std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms"):
        low, high = stats.ci95[name]
        assert low <= getattr(stats, name) <= high, name
    assert stats.ci95["p99_ms"][1] - stats.ci95["p99_ms"][0] > stats.ci95["p50_ms"][1] - stats.ci95["p50_ms"][0], "tails are less sure"
    assert summarize(values * 1e6, batch_size=1).ci95 == stats.ci95, "seeded: a rerun gives the same interval"


def test_bootstrap_median_interval_covers_the_true_median_about_95_percent_of_the_time() -> None:
    """Known distribution (exponential, median ln 2): over 200 samples of 300 draws, the 95% interval of p50 covers it
    in 88–99% of them."""
    from edgeship.measure import bootstrap_ci

    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        low, high = bootstrap_ci(rng.exponential(1.0, size=300), resamples=400, seed=trial)["p50_ms"]
        covered += low <= np.log(2) <= high
    assert 0.88 <= covered / 200 <= 0.99, covered


def test_bootstrap_of_one_value_is_a_point() -> None:
    stats = summarize(np.array([2_000_000]), batch_size=1)
    assert stats.ci95["p99_ms"] == (2.0, 2.0) and stats.as_dict()["ci95"]["mean_ms"] == [2.0, 2.0]


def test_top5_agreement_is_top5_accuracy_against_the_reference_top_class() -> None:
    reference = np.zeros((3, 8))
    reference[:, 0] = 1.0  # the reference's top class is 0 for every row
    outputs = np.array([[9, 8, 7, 6, 5, 4, 3, 2],      # class 0 first
                        [1, 8, 7, 6, 5, 9, 3, 2],      # class 0 not in the top 5
                        [4, 8, 7, 6, 5, 0, 3, 2]], float)  # class 0 fifth
    found = agreement(outputs, reference)
    assert found["top1_agreement"] == pytest.approx(1 / 3)
    assert found["top5_agreement"] == pytest.approx(2 / 3)
    assert "top5_agreement" not in agreement(outputs[:, :4], reference[:, :4])  # fewer than 5 classes


def test_fidelity_per_output_cosine_sqnr_relative_l2_and_max_error() -> None:
    from edgeship.measure import SQNR_CAP_DB, fidelity, output_scores

    rng = np.random.default_rng(0)
    reference = {"vector": rng.standard_normal((50, 8)).astype(np.float32), "map": np.zeros((50, 1, 4, 4), np.float32)}
    noise = 0.01 * rng.standard_normal((50, 8)).astype(np.float32)
    got = fidelity({"vector": reference["vector"] + noise, "map": reference["map"]}, reference)
    signal, error = float((reference["vector"].astype(np.float64) ** 2).sum()), float((noise.astype(np.float64) ** 2).sum())
    assert got["vector"]["sqnr_db"] == pytest.approx(10 * np.log10(signal / error), abs=1e-3)
    assert got["vector"]["relative_l2"] == pytest.approx(np.sqrt(error / signal), rel=1e-6)
    assert got["vector"]["max_abs_error"] == pytest.approx(float(np.abs(noise).max()), rel=1e-5)
    assert 0.999 < got["vector"]["cosine"] < 1.0
    # an empty map on both sides agrees exactly (a detector finding nothing): not 0/0
    assert got["map"] == {"cosine": 1.0, "sqnr_db": SQNR_CAP_DB, "relative_l2": 0.0, "max_abs_error": 0.0}
    scored = output_scores({"vector": reference["vector"] + noise, "map": reference["map"]}, reference)
    assert scored["min_cosine"] == got["vector"]["cosine"] and scored["eval_samples"] == 50 and scored["top1"] is None
    with pytest.raises(ValueError, match="no output 'map'"):
        fidelity({"vector": reference["vector"]}, reference)
    with pytest.raises(ValueError, match="output 'vector': shape"):
        fidelity({"vector": reference["vector"][:, :4], "map": reference["map"]}, reference)


def test_rows_that_are_nothing_on_both_sides_agree_and_a_false_detection_does_not() -> None:
    from edgeship.measure import fidelity

    reference = np.zeros((4, 16), np.float32)
    reference[0, :4] = [0.9, 0.8, 0.7, 0.6]  # one map with something in it; three empty maps
    engine = reference + np.float32(1e-7) * np.arange(16, dtype=np.float32)  # rounding noise around zero
    assert fidelity({"map": engine}, {"map": reference})["map"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    engine[2, 5] = 0.5  # the engine sees text where FP32 sees none: that row disagrees
    assert fidelity({"map": engine}, {"map": reference})["map"]["cosine"] == pytest.approx(0.75, abs=1e-3)


def test_one_value_per_sample_is_compared_as_a_column_not_by_its_sign() -> None:
    from edgeship.measure import fidelity

    reference = np.linspace(-1, 1, 41, dtype=np.float32)[:, None]
    engine = reference + np.float32(0.03)  # flips the sign of the value nearest zero; the column still follows closely
    cosine = fidelity({"score": engine}, {"score": reference})["score"]["cosine"]
    assert cosine > 0.99, cosine


def test_an_overflowed_output_is_scored_as_the_worst_in_finite_figures() -> None:
    import json

    from edgeship.measure import SQNR_CAP_DB, fidelity

    reference = np.ones((4, 3), np.float32)
    engine = reference.copy()
    engine[1, 2] = np.inf
    figures = fidelity({"out": engine}, {"out": reference})["out"]
    assert figures["sqnr_db"] == -SQNR_CAP_DB and figures["cosine"] == pytest.approx(0.75)
    json.dumps(figures, allow_nan=False)


def test_grouped_interval_is_as_wide_as_the_groups_warrant_not_the_samples() -> None:
    """1,000 samples in 10 groups whose rates differ: resampling whole groups gives a far wider interval than treating
    the samples as independent, and both hold the overall rate."""
    from edgeship.measure import grouped_interval

    rates = np.linspace(0.80, 1.0, 10)
    hits = np.concatenate([np.random.default_rng(g).random(100) < rate for g, rate in enumerate(rates)])
    groups = np.repeat([f"photo{g}" for g in range(10)], 100)
    low, high = grouped_interval(hits, groups, seed=0)
    plain_low, plain_high = grouped_interval(hits, np.arange(len(hits)).astype(str), seed=0)
    assert low < hits.mean() < high and plain_low < hits.mean() < plain_high
    assert (high - low) > 1.5 * (plain_high - plain_low)
    assert grouped_interval(hits, groups, seed=0) == (low, high)  # seeded
    assert grouped_interval(np.ones(50), np.repeat(["a", "b"], 25)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="one group name per sample"):
        grouped_interval(hits, groups[:10])


def test_grouped_interval_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    from edgeship.measure import grouped_interval

    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        rates = np.clip(rng.normal(0.9, 0.05, 30), 0, 1)  # each group's own rate around a true 0.9
        hits = np.concatenate([rng.random(40) < rate for rate in rates])
        low, high = grouped_interval(hits, np.repeat(np.arange(30).astype(str), 40), resamples=500, seed=trial)
        covered += low <= 0.9 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_scores_give_agreement_an_interval_over_groups_or_as_independent_samples() -> None:
    from edgeship.measure import scores

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, 10))
    outputs = reference.copy()
    outputs[:40] = rng.normal(size=(40, 10))  # about 36 of the first 40 disagree: all in the first photos
    groups = [f"photo{i // 40}" for i in range(400)]
    grouped, plain = scores(outputs, reference, None, groups), scores(outputs, reference, None)
    assert grouped["top1_agreement_groups"] == 10 and plain["top1_agreement_groups"] is None
    for scored in (grouped, plain):
        low, high = scored["top1_agreement_ci95"]
        assert low < scored["top1_agreement"] < high <= 1
    assert np.diff(grouped["top1_agreement_ci95"]) > 1.5 * np.diff(plain["top1_agreement_ci95"])
    # Wilson's interval for 0 of n and n of n stays inside [0, 1] and is not a point
    low, high = scores(reference, reference, None)["top1_agreement_ci95"]
    assert 0.98 < low < high and high == pytest.approx(1.0)


def test_packed_hits_come_back_as_they_went_and_bad_text_is_named() -> None:
    from edgeship.measure import pack_hits, unpack_hits

    hits = np.random.default_rng(1).random(2_792) < 0.96
    packed = pack_hits(hits)
    assert len(packed) == 2 * 349 and np.array_equal(unpack_hits(packed, 2_792), hits)
    with pytest.raises(ValueError, match=r"top1_hits: expected 2793 packed bits \(350 bytes\), got 349 bytes"):
        unpack_hits(packed, 2_793)
    with pytest.raises(ValueError, match="top1_hits: expected hexadecimal"):
        unpack_hits("zz", 8)
