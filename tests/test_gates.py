"""Gate logic on synthetic rows: every outcome, skipped and failed engines, required engines, the recommendation."""

from __future__ import annotations

from typing import Any

import pytest

from edgeship.gates import GATES, NOTHING_QUALIFIED, format_value, judge, recommend, release, required_engines
from edgeship.qualification import EngineKey, EngineRow, GateResult, Prediction, Reused, TimedTogether
from edgeship.recipe import GatesConfig, Recipe

BASE = 0.92


def row(name: str, *, top1: float = 0.918, agreement: float = 0.99, p50: float = 0.1, ci: tuple[float, float] | None = None,
        p99_high: float = 0.2, size: int = 100_000, status: str = "ok", reason: str = "") -> EngineRow:
    backend, precision = name.split("/")
    out: dict[str, Any] = {"status": status, "reason": reason}
    if status == "ok":
        low, high = ci or (p50 * 0.99, p50 * 1.01)
        out.update(top1=top1, top1_agreement=agreement, eval_samples=1000, size_bytes=size, min_cosine=0.999, min_sqnr_db=30.0,
                   fidelity={"logits": {"cosine": 0.999, "sqnr_db": 30.0, "relative_l2": 0.03, "max_abs_error": 0.1}},
                   latency={"p50_ms": p50, "p99_ms": p99_high * 0.9, "batch_size": 1, "ci95": {"p50_ms": [low, high],
                                                                                                "p99_ms": [p99_high * 0.8, p99_high]}})
    return EngineRow(key=EngineKey(backend=backend, precision=precision), reused=Reused(build=False, validate=None), **out)


def judged(rows: list[EngineRow], gates: GatesConfig, *, labelled: bool = True) -> list[EngineRow]:
    for r in rows:
        r.verdict, r.gates = judge(r, BASE, gates, labelled=labelled)
    return rows


def outcomes(gates: list[GateResult]) -> dict[str, str]:
    return {g.gate: g.outcome for g in gates}


ALL = GatesConfig(max_drop_points=1.0, min_fraction_of_fp32=0.99, min_agreement=0.97, min_cosine=0.99, min_sqnr_db=20.0, max_p99_ms=0.5,
                  max_size_mib=1.0)


def test_every_gate_passes_with_value_and_limit() -> None:
    verdict, gates = judge(row("onnxruntime/int8"), BASE, ALL)
    assert verdict == "pass" and [g.gate for g in gates] == list(GATES)
    assert all(g.outcome == "pass" and g.value is not None and g.limit is not None for g in gates)
    drop = next(g for g in gates if g.gate == "max_drop_points")
    assert drop.value == pytest.approx(0.2)


def test_accuracy_gates_name_the_split_they_were_scored_on() -> None:
    """A run scored on the validation split (validate.split) must not call its samples evaluation samples."""
    details = {g.gate: g.detail for g in judge(row("onnxruntime/int8"), BASE, ALL)[1]}
    assert "1000 evaluation samples" in details["min_agreement"] and "1000 evaluation samples" in details["min_cosine"]
    details = {g.gate: g.detail for g in judge(row("onnxruntime/int8"), BASE, ALL, split="validation")[1]}
    assert "1000 validation samples" in details["min_agreement"] and "1000 validation samples" in details["min_cosine"]


def test_the_agreement_gate_says_the_figures_interval_and_how_it_was_taken() -> None:
    photos = row("onnxruntime/int8").model_copy(update={"top1_agreement_ci95": (0.9612, 0.9843), "top1_agreement_groups": 36})
    detail = {g.gate: g.detail for g in judge(photos, BASE, ALL)[1]}["min_agreement"]
    assert "95% interval 96.12–98.43% (36 photos resampled)" in detail
    independent = row("onnxruntime/int8").model_copy(update={"top1_agreement_ci95": (0.985, 0.994)})
    assert "(samples as independent)" in {g.gate: g.detail for g in judge(independent, BASE, ALL)[1]}["min_agreement"]


@pytest.mark.parametrize(("change", "gate"), [
    ({"top1": 0.905}, "max_drop_points"),  # 1.5 pt
    ({"top1": 0.905}, "min_fraction_of_fp32"),  # 98.4%
    ({"agreement": 0.96}, "min_agreement"),
    ({"p99_high": 0.51}, "max_p99_ms"),
    ({"size": 2 * 1024**2}, "max_size_mib"),
])
def test_each_gate_fails_on_its_own_measure(change: dict[str, Any], gate: str) -> None:
    verdict, _ = judge(row("openvino/int8", **change), BASE, ALL)
    assert verdict == "fail" and outcomes(judge(row("openvino/int8", **change), BASE, ALL)[1])[gate] == "fail"


def test_latency_is_judged_on_the_upper_bound_of_p99() -> None:
    r = row("tflite/int8", p99_high=0.55)  # p99 itself 0.495 is under 0.5, its upper bound is not
    assert r.latency is not None and r.latency["p99_ms"] < 0.5
    verdict, gates = judge(r, BASE, ALL)
    assert verdict == "fail" and outcomes(gates)["max_p99_ms"] == "fail"


def test_a_limit_left_null_is_not_applicable_and_never_fails() -> None:
    verdict, gates = judge(row("tflite/fp32", agreement=0.1, size=10**9), BASE, GatesConfig(min_agreement=None, min_fraction_of_fp32=None))
    assert verdict == "pass" and set(outcomes(gates).values()) == {"not-applicable"}
    assert all(g.detail == "no limit set in the recipe" for g in gates)


def test_a_skipped_or_failed_engine_is_never_a_pass() -> None:
    skipped, gates = judge(row("tensorrt/int8", status="skipped", reason="no CUDA GPU"), BASE, ALL)
    assert skipped == "skipped" and set(outcomes(gates).values()) == {"not-applicable"}
    assert "no CUDA GPU" in gates[0].detail
    failed, gates = judge(row("openvino/int8", status="failed", reason="nncf crashed"), BASE, ALL)
    assert failed == "error" and all("nncf crashed" in g.detail for g in gates)


def test_a_prediction_is_shown_against_the_gate_but_does_not_pass() -> None:
    r = row("tensorrt/int8", status="skipped", reason="no CUDA GPU")
    r.predicted = Prediction(engine="tensorrt/int8", on="onnxruntime", top1=0.919, top1_agreement=0.99, eval_samples=1000,
                             label="predicted on ONNX Runtime")
    verdict, gates = judge(r, BASE, ALL)
    assert verdict == "skipped"
    fraction = next(g for g in gates if g.gate == "min_fraction_of_fp32")
    assert fraction.outcome == "not-applicable" and fraction.prediction is not None and fraction.prediction.would == "pass"
    assert next(g for g in gates if g.gate == "max_p99_ms").prediction is None


def test_required_engines_default_to_every_engine_not_skipped() -> None:
    rows = [row("onnxruntime/fp32"), row("openvino/int8", status="failed"), row("tensorrt/int8", status="skipped")]
    assert required_engines(rows, GatesConfig()) == ["onnxruntime/fp32", "openvino/int8"]
    assert required_engines(rows, GatesConfig(required=["tensorrt/*"])) == ["tensorrt/int8"]


def test_a_required_pattern_that_matches_nothing_is_a_recipe_error() -> None:
    with pytest.raises(ValueError, match="gates.required: 'openvino/int9' matches no engine"):
        Recipe.model_validate({"gates": {"required": ["openvino/int9"]}})


def test_recommendation_is_the_fastest_passing_engine_with_the_reason() -> None:
    rows = judged([row("openvino/fp32", p50=0.20), row("openvino/fp16", p50=0.19), row("openvino/int8", p50=0.08)], ALL)
    choice = recommend(rows)["openvino"]
    assert choice.engine == "openvino/int8"
    assert "INT8 2.38× faster than FP16" in choice.reason and choice.reason.endswith("INT8 chosen")


def test_a_recommendation_says_when_it_compares_p50s_from_two_runs() -> None:
    """A result reused from the store keeps its old p50: a choice between p50s timed in different runs is flagged."""
    rows = judged([row("onnxruntime/fp32", p50=0.20), row("onnxruntime/fp16", p50=0.15), row("onnxruntime/int8", p50=0.08)], ALL)
    for r in rows:
        r.measured_in = "run-2"
    assert "; but" not in recommend(rows)["onnxruntime"].reason  # timed in one run
    rows[0].measured_in = rows[1].measured_in = "run-1"
    reason = recommend(rows)["onnxruntime"].reason
    assert reason.startswith("INT8 1.88× faster than FP16") and reason.endswith(
        "INT8 chosen; but these p50s were timed in different runs (INT8 in run-2; FP16, FP32 in run-1): rerun with "
        "--force validate to time them together")
    for r in rows:  # results stored before runs were recorded: reused ones are an earlier run's
        r.measured_in = None
    rows[0].reused = Reused(build=True, validate=True)
    assert "(INT8, FP16 in this run; FP32 in an earlier run)" in recommend(rows)["onnxruntime"].reason


def together(rounds: list[float], *, run: str = "run-3", pooled: float | None = None) -> TimedTogether:
    p50 = pooled or sorted(rounds)[len(rounds) // 2]
    return TimedTogether(p50_ms=p50, p50_ci95=(p50 * 0.999, p50 * 1.001), p99_ms=p50 * 1.5, iterations=600, round_p50_ms=rounds,
                         rounds=len(rounds), engines=["onnxruntime/fp32", "onnxruntime/int8"], measured_in=run,
                         measured_at="2026-12-07T08:00:00+0000")


def test_the_recommendation_compares_engines_timed_together_round_by_round() -> None:
    """Timed apart, a disturbed FP32 p50 made INT8 look faster; timed together, FP32 is: it ships, whatever the runs."""
    rows = judged([row("onnxruntime/fp32", p50=0.20, top1=0.919), row("onnxruntime/int8", p50=0.15, top1=0.916)], ALL)
    rows[0].measured_in, rows[1].measured_in = "run-1", "run-2"
    assert recommend(rows)["onnxruntime"].engine == "onnxruntime/int8"  # their own p50s
    rows[0].timed_together = together([0.100, 0.101, 0.150, 0.100, 0.099])  # a slow third round, for both
    rows[1].timed_together = together([0.140, 0.141, 0.210, 0.139, 0.140])
    choice = recommend(rows)["onnxruntime"]
    assert choice.engine == "onnxruntime/fp32"
    assert choice.reason == ("FP32 1.40× faster round by round than INT8 (p50 0.1000 vs 0.1400 ms): FP32 chosen (p50s timed together: "
                             "5 interleaved rounds in run-3)")  # and not flagged as timed in two runs: they were timed together
    # INT8's pooled p50 is lower, but round by round it is faster in some rounds and slower in others: a tie, FP32 more accurate
    rows[1].timed_together = together([0.090, 0.110, 0.140, 0.095, 0.098])
    choice = recommend(rows)["onnxruntime"]
    assert choice.engine == "onnxruntime/fp32"
    assert choice.reason.startswith("INT8 is not measurably faster (p50 0.0980 vs 0.1000 ms, round by round it takes ×0.9")
    assert "a 95% interval that holds ×1) and FP32 has the higher top-1 (91.90% vs 91.60%)" in choice.reason
    rows[1].timed_together = together([0.090, 0.091, 0.135, 0.089, 0.090])  # faster in every round, by the same factor
    choice = recommend(rows)["onnxruntime"]
    assert choice.engine == "onnxruntime/int8" and choice.reason.startswith("INT8 1.11× faster round by round than FP32"), choice.reason
    # pooled over every call, INT8's p50 is the lower (its slow calls fell in fewer rounds), but FP32 is faster in every round
    rows[0].timed_together = together([0.100] * 5, pooled=0.090)
    rows[1].timed_together = together([0.105] * 5, pooled=0.085)
    choice = recommend(rows)["onnxruntime"]
    assert choice.engine == "onnxruntime/fp32" and choice.reason.startswith(
        "FP32 1.05× faster round by round than INT8 (p50 0.1000 vs 0.1050 ms)"), choice.reason  # the rounds' medians
    rows[1].timed_together = None  # never a mix: one engine without a figure timed together, the single timings rank
    choice = recommend(rows)["onnxruntime"]
    assert choice.engine == "onnxruntime/int8" and "timed in different runs" in choice.reason and "together:" not in choice.reason


def test_a_faster_engine_that_fails_a_gate_is_passed_over_and_named() -> None:
    rows = judged([row("tflite/fp16", p50=0.104, top1=0.918), row("tflite/int8", p50=0.100, top1=0.904)], ALL)
    choice = recommend(rows)["tflite"]
    assert choice.engine == "tflite/fp16"
    assert choice.reason.startswith("INT8 1.04× faster than FP16 but fails max_drop_points (1.60 pt vs limit 1.00 pt)")
    assert choice.reason.endswith("FP16 chosen")


def test_engines_within_measurement_noise_go_to_the_more_accurate() -> None:
    rows = judged([row("onnxruntime/fp32", p50=0.101, ci=(0.098, 0.104), top1=0.919),
                   row("onnxruntime/int8", p50=0.100, ci=(0.097, 0.103), top1=0.915)], ALL)
    choice = recommend(rows)["onnxruntime"]
    assert choice.engine == "onnxruntime/fp32" and "95% intervals overlap" in choice.reason


def test_no_engine_passing_means_nothing_to_ship_and_why() -> None:
    rows = judged([row("tflite/int8", agreement=0.5), row("tflite/fp32", status="skipped", reason="x")], ALL)
    choice = recommend(rows)["tflite"]
    assert choice.engine is None and "INT8 fails min_agreement (50.00% vs limit 97.00%)" in choice.reason
    assert "FP32 skipped" in choice.reason


def test_values_read_in_their_units() -> None:
    assert format_value("min_agreement", 0.9734) == "97.34%" and format_value("max_drop_points", 0.5) == "0.50 pt"
    assert format_value("max_p99_ms", 0.08991) == "0.0899 ms" and format_value("max_size_mib", None) == "—"


def unlabelled(name: str, *, agreement: float, p50: float = 0.1, ci: tuple[float, float] | None = None) -> EngineRow:
    """A row measured on data without labels: no top-1, agreement with FP32 only."""
    return row(name, agreement=agreement, p50=p50, ci=ci).model_copy(update={"top1": None, "top5_agreement": min(1.0, agreement + 0.02)})


def test_without_labels_accuracy_gates_step_aside_and_agreement_decides() -> None:
    verdict, gates = judge(unlabelled("tflite/int8", agreement=0.98), None, ALL, labelled=False)
    by_gate = {g.gate: g for g in gates}
    assert verdict == "pass"
    for gate in ("max_drop_points", "min_fraction_of_fp32"):
        assert by_gate[gate].outcome == "not-applicable" and "no labels" in by_gate[gate].detail
    assert by_gate["min_agreement"].outcome == "pass" and by_gate["min_agreement"].value == 0.98
    assert "top-5 agreement 100.00%" in by_gate["min_agreement"].detail
    assert judge(unlabelled("tflite/int8", agreement=0.96), None, ALL, labelled=False)[0] == "fail"


def test_without_labels_a_tie_goes_to_the_higher_agreement() -> None:
    gates = GatesConfig(min_fraction_of_fp32=None, min_agreement=0.9)
    rows = judged([unlabelled("openvino/int8", agreement=0.95, p50=0.100, ci=(0.098, 0.102)),
                   unlabelled("openvino/fp16", agreement=0.999, p50=0.101, ci=(0.099, 0.103))], gates, labelled=False)
    choice = recommend(rows)["openvino"]
    assert choice.engine == "openvino/fp16"
    assert "higher top-1 agreement (99.90% vs 95.00%)" in choice.reason


# -- the policy challenged: what must never read as a pass --------------------------------------------------------


def released(rows: list[EngineRow], gates: GatesConfig, **kwargs: Any) -> Any:
    judged(rows, gates)
    required = required_engines(rows, gates)
    for r in rows:
        r.required = r.name in required
    return release(rows, **kwargs)


def test_nothing_built_is_never_a_pass() -> None:
    skipped = [row("tensorrt/int8", status="skipped", reason="no CUDA GPU"), row("tflite/int8", status="skipped", reason="not installed")]
    verdict = released(skipped, ALL)
    assert not verdict.passed and verdict.exit_code == 1 and verdict.required == [] and verdict.qualified == []
    assert verdict.reasons[0].startswith(NOTHING_QUALIFIED) and "no CUDA GPU" in verdict.reasons[0]
    none = released([], ALL)
    assert not none.passed and "no engine was requested" in none.reasons[0]


def test_a_required_engine_that_was_skipped_fails_the_release() -> None:
    rows = [row("onnxruntime/fp32"), row("tensorrt/fp16", status="skipped", reason="no CUDA GPU")]
    verdict = released(rows, GatesConfig(required=["tensorrt/*", "onnxruntime/*"]))
    assert not verdict.passed and verdict.failing == ["tensorrt/fp16"] and verdict.qualified == ["onnxruntime/fp32"]
    assert verdict.reasons == ["tensorrt/fp16 is required but was skipped: no CUDA GPU"]


def test_a_limit_with_no_value_fails_as_not_measured() -> None:
    no_interval = row("openvino/int8")
    assert no_interval.latency is not None
    no_interval.latency = {k: v for k, v in no_interval.latency.items() if k != "ci95"}  # a result without its p99 interval
    no_size = row("openvino/fp16").model_copy(update={"size_bytes": None})
    no_agreement = row("openvino/fp32").model_copy(update={"top1_agreement": None})
    for r, gate in ((no_interval, "max_p99_ms"), (no_size, "max_size_mib"), (no_agreement, "min_agreement")):
        verdict, gates = judge(r, BASE, ALL)
        failed = next(g for g in gates if g.gate == gate)
        assert verdict == "fail" and failed.outcome == "fail" and failed.value is None and failed.detail.startswith("not measured")
    verdict, gates = judge(row("openvino/int8"), None, ALL)  # labelled data, but no FP32 baseline top-1
    assert verdict == "fail" and outcomes(gates)["max_drop_points"] == "fail" and "no FP32 baseline" in gates[0].detail


def test_an_unfinished_run_cannot_pass_even_when_every_row_passes() -> None:
    verdict = released([row("onnxruntime/fp32")], ALL, unfinished="its manifest says running, last at validate onnxruntime/fp32")
    assert not verdict.passed and not verdict.finished and verdict.qualified == ["onnxruntime/fp32"]
    assert "did not finish" in verdict.reasons[0]
    assert released([row("onnxruntime/fp32")], ALL).passed


def generic_row(fidelity: dict[str, dict[str, float]]) -> EngineRow:
    base = row("onnxruntime/int8")
    return base.model_copy(update={"top1": None, "top1_agreement": None, "fidelity": fidelity,
                                   "min_cosine": min(f["cosine"] for f in fidelity.values())})


FIDELITY = {"vector": {"cosine": 0.995, "sqnr_db": 25.0, "relative_l2": 0.05, "max_abs_error": 0.3},
            "score": {"cosine": 0.9999, "sqnr_db": 42.0, "relative_l2": 0.008, "max_abs_error": 0.01}}


def test_a_generic_model_is_judged_by_output_fidelity_not_class_scores() -> None:
    gates = GatesConfig(min_cosine=0.99, min_sqnr_db=20.0)  # the class-score defaults stay set and do not apply
    verdict, results = judge(generic_row(FIDELITY), None, gates, labelled=False, task="generic")
    judged_ = {g.gate: g for g in results}
    assert verdict == "pass"
    assert {judged_[name].outcome for name in GatesConfig.CLASSIFICATION} == {"not-applicable"}
    assert judged_["min_cosine"].value == 0.995 and "worst output 'vector' of 2" in judged_["min_cosine"].detail
    assert judged_["min_sqnr_db"].value == 25.0


def test_a_limit_per_output_judges_each_output_by_its_own_limit() -> None:
    # 'score' passes 0.9999 ≥ 0.999 but 'vector' fails 0.995 < 0.998: the gate fails on 'vector'
    verdict, results = judge(generic_row(FIDELITY), None, GatesConfig(min_cosine={"vector": 0.998, "score": 0.999}), labelled=False,
                             task="generic")
    cosine = next(g for g in results if g.gate == "min_cosine")
    assert verdict == "fail" and cosine.outcome == "fail" and cosine.value == 0.995 and cosine.limit == 0.998
    verdict, results = judge(generic_row(FIDELITY), None, GatesConfig(min_cosine={"score": 0.999}), labelled=False, task="generic")
    assert verdict == "pass"


def test_a_limit_on_an_output_the_engine_lacks_fails_as_not_measured() -> None:
    verdict, results = judge(generic_row(FIDELITY), None, GatesConfig(min_sqnr_db={"logits": 20.0}), labelled=False, task="generic")
    sqnr = next(g for g in results if g.gate == "min_sqnr_db")
    assert verdict == "fail" and sqnr.value is None and "no output named 'logits'" in sqnr.detail


@pytest.mark.parametrize("strict", [False, True])
def test_a_search_beyond_the_noise_is_judged_by_its_lower_end_and_says_where_the_figure_is(strict: bool) -> None:
    """keep_float: auto's own gate: with ``beyond_noise`` the value judged is the chosen candidate's lower end, and the
    detail gives the figure and its interval; without, the figure itself."""
    candidate = {"float_layers": 4, "nodes": ["a"], "agreement": 0.975, "agreement_ci95": [0.962, 0.986], "agreement_low": 0.962,
                 "meets": not strict}
    target = {"min_agreement": 0.97, **({"beyond_noise": True} if strict else {})}
    engine = row("onnxruntime/int8")
    engine.float_search = {"target": target, "target_text": "t", "met": not strict, "chosen": 4, "candidates": [candidate],
                           "samples": 512, "seconds": 12.0}
    _, gates = judge(engine, BASE, GatesConfig())
    gate = next(g for g in gates if g.gate == "search_min_agreement")
    assert (gate.outcome, gate.value, gate.limit) == (("fail", 0.962, 0.97) if strict else ("pass", 0.975, 0.97))
    assert ("agreement 97.50% (95% interval 96.20–98.60%)" in gate.detail) is strict


def test_a_search_over_its_latency_budget_fails_and_says_what_the_figure_would_cost() -> None:
    """With ``max_slowdown``, the gate gives the kept candidate's ratio to the fully quantized engine, and when the fewest
    layers that reach the figure are over the budget, what they cost."""
    candidates = [{"float_layers": 0, "nodes": [], "agreement": 0.91, "meets": False, "slowdown": 1.0, "slowdown_ci95": [1.0, 1.0],
                   "within_budget": True},
                  {"float_layers": 12, "nodes": ["a"], "agreement": 0.972, "meets": True, "slowdown": 1.57,
                   "slowdown_ci95": [1.49, 1.63], "within_budget": False}]
    engine = row("onnxruntime/int8")
    engine.float_search = {"target": {"min_agreement": 0.97, "max_slowdown": 1.3}, "target_text": "t", "met": False, "chosen": 0,
                           "candidates": candidates, "samples": 512, "seconds": 12.0, "together": {"rounds": 9}}
    _, gates = judge(engine, BASE, GatesConfig())
    gate = next(g for g in gates if g.gate == "search_min_agreement")
    assert (gate.outcome, gate.value, gate.limit) == ("fail", 0.91, 0.97)
    assert "the best found within the budget is kept" in gate.detail
    assert "p50 1.00× the fully quantized engine's (95% interval 1.00–1.00), timed with it in 9 interleaved rounds" in gate.detail
    assert gate.detail.endswith("the fewest layers that reach the figure, 12, cost 1.57× the fully quantized engine's p50")
