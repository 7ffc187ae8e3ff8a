"""Release gates, the release verdict and the per-backend recommendation: one definition for every engine.

``judge`` turns one engine's row into gate outcomes (pass | fail | not-applicable, each with the measured value and
the limit) and a verdict. A gate is not-applicable only when the recipe set no limit, or when the data cannot have
the measure by design (top-1 gates on unlabelled data, where agreement decides); a limit with no value is a fail
("not measured"). An engine that was skipped or failed to build or run is never a pass.

``release`` is the one place the run's verdict is decided; the exit code, the terminal, the page and ``junit.xml``
all read its result. ``recommend`` picks, per backend, the fastest engine that passes every gate, by measured p50,
and says why in words. All work on the report's typed rows (``edgeship.qualification``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.config import AccuracyTarget
from edgeship.measure import SQNR_CAP_DB, faster_round_by_round, paired_ratio
from edgeship.qualification import EngineRow, GatePrediction, GateResult, Outcome, Recommendation, Release, Scores, TimedTogether, Verdict
from edgeship.recipe import GatesConfig

__all__ = ["GATES", "TITLES", "Outcome", "Verdict", "accuracy", "accuracy_drop", "format_value", "judge", "recommend", "release",
           "required_engines"]
GATES = ("max_drop_points", "min_fraction_of_fp32", "min_agreement", "min_cosine", "min_sqnr_db", "max_p99_ms", "max_size_mib")
FIDELITY_GATES = {"min_cosine": "cosine", "min_sqnr_db": "sqnr_db"}  # gate → the per-output figure it judges
TITLES = {"max_drop_points": "top-1 drop vs FP32", "min_fraction_of_fp32": "top-1 fraction of FP32", "min_agreement": "agreement with FP32",
          "min_cosine": "output cosine with FP32", "min_sqnr_db": "output SQNR vs FP32",
          "max_p99_ms": "p99 latency (upper 95% bound)", "max_size_mib": "engine size",
          "search_min_agreement": "keep_float: auto target (validation)", "search_max_drop_points": "keep_float: auto target (validation)",
          "search_min_cosine": "keep_float: auto target (validation)"}
LABEL_GATES = ("max_drop_points", "min_fraction_of_fp32")  # need labels: on unlabelled data agreement decides instead
MIB = 1024**2
NOTHING_QUALIFIED = "nothing was qualified: no required engine was built, measured and passed"


def judge(row: EngineRow, baseline_top1: float | None, gates: GatesConfig, *, labelled: bool = True,
          task: str = "classification", split: str = "evaluation") -> tuple[Verdict, list[GateResult]]:
    """The verdict on one engine row of the report and each gate's outcome; ``labelled``: whether the evaluation data
    has labels (without, the top-1 gates cannot apply and agreement decides); ``task``: a generic model has no class
    scores, so only output fidelity, latency and size gates apply; ``split``: the data the row was scored on, named in
    each accuracy gate's detail."""
    if row.status != "ok" or (row.top1 is None and row.top1_agreement is None and row.fidelity is None):
        verdict: Verdict = "skipped" if row.status == "skipped" else "error"
        why = f"not measured: {row.status}: {row.reason or 'no result'}"
        return verdict, [_gate(name, gates, "not-applicable", None, why, prediction=_prediction(name, row, baseline_top1, gates))
                         for name in GATES]
    results = [_judge_one(name, row, baseline_top1, gates, labelled=labelled, task=task, split=split) for name in GATES]
    if row.float_search:
        results.append(_float_search_gate(row.float_search))
    return ("fail" if any(r.outcome == "fail" for r in results) else "pass"), results


def _float_search_gate(search: dict[str, Any]) -> GateResult:
    """``keep_float: auto``'s own target, met or not on the validation split: a target no candidate reached keeps the best
    candidate found and fails the engine here, with that reason."""
    target = AccuracyTarget.model_construct(**search["target"])  # checked when the search recorded it
    key = next(iter(target.model_dump(exclude_none=True)))
    chosen = next(c for c in search["candidates"] if c["float_layers"] == search["chosen"])
    value = chosen[target.measure]
    detail = (f"{chosen['float_layers']} layers in float, on {search['samples']} validation samples; {len(search['candidates'])} "
              f"candidates searched in {search['seconds']:.0f} s")
    if target.beyond_noise:  # the value judged is the interval's lower end: say where the estimate itself is
        low, high = chosen["agreement_ci95"]
        detail = f"the lower end of agreement {100 * chosen['agreement']:.2f}% (95% interval {100 * low:.2f}–{100 * high:.2f}%); {detail}"
    if "slowdown" in chosen:  # a latency budget: where the chosen one stands, timed with the fully quantized one
        low, high = chosen["slowdown_ci95"]
        detail = (f"{detail}; p50 {chosen['slowdown']:.2f}× the fully quantized engine's (95% interval {low:.2f}–{high:.2f}), "
                  f"timed with it in {search['together']['rounds']} interleaved rounds")
    if not search["met"]:
        detail = (f"no candidate met {search['target_text']}: the best found"
                  + (" within the budget" if "slowdown" in chosen else "") + f" is kept ({detail})")
        over = sorted((c for c in search["candidates"] if c["meets"] and not c.get("within_budget", True)),
                      key=lambda c: c["float_layers"])
        if over:  # the figure was met, at a price over the budget: say what it would cost
            detail = (f"{detail}; the fewest layers that reach the figure, {over[0]['float_layers']}, cost "
                      f"{over[0]['slowdown']:.2f}× the fully quantized engine's p50")
        if search.get("unranked"):
            detail = f"{detail}; {search['unranked']}"
    name = f"search_{key}"
    return GateResult(gate=name, title=TITLES[name], outcome="pass" if search["met"] else "fail", value=value,
                      limit=getattr(target, key), detail=detail)


def release(rows: Sequence[EngineRow], *, unfinished: str | None = None) -> Release:
    """The run's verdict from its judged rows (``required`` set): the one decision the exit code and every rendering
    follow. ``unfinished``: why the run did not reach its report (a killed run), which can never pass."""
    required = [row for row in rows if row.required]
    failing = [row for row in required if row.verdict != "pass"]
    qualified = [row.name for row in required if row.verdict == "pass"]
    reasons = []
    if unfinished:
        reasons.append(f"the run did not finish ({unfinished}): engines it never reached are missing from this report")
    if not qualified:
        if not rows:
            detail = " (no engine was requested)"
        elif not required:
            detail = f" (no engine is required: every one was skipped, {_skips(rows)})"
        else:
            detail = ""
        reasons.append(NOTHING_QUALIFIED + detail)
    reasons.extend(f"{row.name} {_why_failing(row)}" for row in failing)
    passed = not reasons
    return Release(required=[row.name for row in required], qualified=qualified, failing=[row.name for row in failing],
                   finished=unfinished is None, reasons=reasons, passed=passed, exit_code=0 if passed else 1)


def _skips(rows: Sequence[EngineRow]) -> str:
    reasons = dict.fromkeys(row.reason for row in rows if row.status == "skipped")
    return "; ".join(reasons) if len(reasons) < 4 else f"{len(reasons)} different reasons"


def _why_failing(row: EngineRow) -> str:
    if row.verdict == "fail":
        return f"fails {_failed(row)}"
    what = "was skipped" if row.status == "skipped" else "failed"
    return f"is required but {what}: {row.reason or 'no result'}"


def required_engines(rows: Sequence[EngineRow], gates: GatesConfig) -> list[str]:
    """The engines whose verdict decides the exit code: the recipe's ``required`` patterns, or every engine not skipped.
    ``skipped`` means only "not here by design": a backend not installed, hardware this machine does not have, a device
    that does not list the backend; a broken install or an unreachable device is ``failed``, and so required."""
    if gates.required is None:
        return [row.name for row in rows if row.status != "skipped"]
    return [row.name for row in rows if any(fnmatch.fnmatchcase(row.name, pattern) for pattern in gates.required)]


def recommend(rows: Sequence[EngineRow]) -> dict[str, Recommendation]:
    """Per backend (per backend and device, ``target``, for rows measured on a remote device): the engine to ship (the
    fastest passing by p50: from the rounds that timed the backend's engines together where every compared row has one,
    else each engine's own) and the reason, or none and why."""
    out: dict[str, Recommendation] = {}
    for group in dict.fromkeys(row.target for row in rows):
        engines = [row for row in rows if row.target == group]
        timings = _timings(engines)
        passing = sorted((r for r in engines if r.verdict == "pass"), key=lambda r: timings[r.name].rank)
        if not passing:
            out[group] = Recommendation(engine=None, reason="no engine passes every gate: " + "; ".join(_why_not(r) for r in engines))
            continue
        fastest = passing[0]
        tied = [r for r in passing[1:] if not _significantly_faster(timings[fastest.name], timings[r.name])]
        chosen = max([fastest, *tied], key=lambda r: (accuracy(r)[0], -(r.size_bytes or 0)))
        basis = _together(engines) or _apart(passing)
        out[group] = Recommendation(engine=chosen.name, precision=chosen.precision,
                                    reason=_reason(chosen, fastest, tied, engines, timings) + basis)
    return out


@dataclass(frozen=True)
class _Timing:
    """The p50 a recommendation quotes, with its 95% interval, and where the engines were timed together each round's
    p50 (the rounds of one backend's engines line up: each round's figures were taken seconds apart)."""

    p50: float
    low: float
    high: float
    rank: float  # what orders them: the p50, or timed together the median over rounds of the time relative to one row's
    rounds: tuple[float, ...] = ()


def _paired(a: _Timing, b: _Timing) -> bool:
    return len(a.rounds) > 1 and len(a.rounds) == len(b.rounds)


def _ratio(a: _Timing, b: _Timing) -> tuple[float, float, float]:
    """``a``'s time over ``b``'s, round by round (``measure.paired_ratio``)."""
    return paired_ratio(a.rounds, b.rounds)


def _timed(engines: Sequence[EngineRow]) -> list[EngineRow]:
    return [row for row in engines if row.latency is not None]


def _timed_together(engines: Sequence[EngineRow]) -> dict[str, TimedTogether] | None:
    """Each timed row's figures from the rounds that timed them together, when every timed row has them from as many
    rounds; else None (never a mix: only figures taken together rank fairly against each other)."""
    together = {row.name: row.timed_together for row in _timed(engines)}
    figures = [t for t in together.values() if t is not None]
    if not figures or len(figures) < len(together) or len({len(t.round_p50_ms) for t in figures}) > 1:
        return None
    return together  # type: ignore[return-value]


def _timings(engines: Sequence[EngineRow]) -> dict[str, _Timing]:
    """Each timed row's p50: all from the rounds that timed them together (``_timed_together``), else all from each
    row's own timing."""
    together = _timed_together(engines)
    if together is not None:
        reference = np.asarray(next(iter(together.values())).round_p50_ms)
        # the p50 quoted is the median of the rounds' p50s, the figure the round-by-round ratios go with
        return {name: _Timing(t.round_median_ms, *t.p50_ci95, rank=float(np.median(np.asarray(t.round_p50_ms) / reference)),
                              rounds=tuple(t.round_p50_ms)) for name, t in together.items()}
    # a result without an interval (not measured by the harness) is its own interval
    return {row.name: _Timing(row.p50_ms, *(row.latency or {}).get("ci95", {}).get("p50_ms", (row.p50_ms, row.p50_ms)), rank=row.p50_ms)
            for row in _timed(engines)}


def _together(engines: Sequence[EngineRow]) -> str:
    """What the reason adds when its p50s come from rounds that timed the engines together."""
    together = _timed_together(engines)
    if together is None or len(together) < 2:
        return ""
    first = next(iter(together.values()))
    rounds = f"{first.rounds} interleaved rounds" if first.rounds > 1 else "1 round"
    return f" (p50s timed together: {rounds} in {first.measured_in})"


def _apart(compared: Sequence[EngineRow]) -> str:
    """What the reason adds when the p50s it compares were not timed in one run: a result reused from the store keeps
    the p50 of the moment it was measured, and on a shared machine two moments can differ more than two engines do."""
    runs: dict[str, list[str]] = {}
    for row in compared:  # a result stored before runs were recorded: an earlier run when reused
        run = row.measured_in or ("an earlier run" if row.reused.validate_ else "this run")
        runs.setdefault(run, []).append(_label(row))
    if len(runs) < 2:
        return ""
    said = "; ".join(f"{', '.join(labels)} in {run}" for run, labels in runs.items())
    return f"; but these p50s were timed in different runs ({said}): rerun with --force validate to time them together"


def accuracy(row: EngineRow) -> tuple[float, str]:
    """The accuracy figure that ranks engines: top-1 against labels, on unlabelled data top-1 agreement with FP32, and for
    a generic model the worst output's cosine with FP32."""
    if row.top1 is not None:
        return row.top1, "top-1"
    if row.top1_agreement is None and row.min_cosine is not None:
        return row.min_cosine, "output cosine"
    return row.top1_agreement or 0.0, "top-1 agreement"


def accuracy_drop(top1: float, baseline_top1: float | None) -> dict[str, Any]:
    """Top-1 below the FP32 baseline, in points and as a fraction of the baseline's (MLPerf style); ``{}`` without one."""
    if baseline_top1 is None:
        return {}
    return {"top1_drop_points": round(100 * (baseline_top1 - top1), 4),
            "top1_relative_to_fp32": round(top1 / baseline_top1, 6) if baseline_top1 else None}


def _passes(name: str, value: float, limit: float) -> bool:
    return value <= limit if name.startswith("max_") else value >= limit


def _judge_one(name: str, row: EngineRow, baseline_top1: float | None, gates: GatesConfig, *, labelled: bool,
               task: str = "classification", split: str = "evaluation") -> GateResult:
    limit = getattr(gates, name)
    if limit is None:
        return _gate(name, gates, "not-applicable", None, "no limit set in the recipe")
    if name in GatesConfig.CLASSIFICATION and task == "generic":
        return _gate(name, gates, "not-applicable", None, "a generic model has no class scores: output fidelity decides "
                                                          "(min_cosine, min_sqnr_db)")
    if name in FIDELITY_GATES:
        return _fidelity_gate(name, row, gates, split)
    if name in LABEL_GATES and not labelled:
        return _gate(name, gates, "not-applicable", None, "no labels in the evaluation data: accuracy is top-1 agreement with FP32 "
                                                          "(min_agreement)")
    value, detail = _measured(name, row, baseline_top1, split)
    if value is None:  # a limit was set and the value is missing: the engine was never checked against it
        return _gate(name, gates, "fail", None, f"not measured: {detail}")
    return _gate(name, gates, "pass" if _passes(name, value, limit) else "fail", value, detail)


def _measured(name: str, row: Scores, baseline_top1: float | None, split: str = "evaluation") -> tuple[float | None, str]:
    """The value a gate judges, and how it was measured, from a measured row or a prediction."""
    top1 = row.top1
    if name in ("max_drop_points", "min_fraction_of_fp32"):
        drops = accuracy_drop(top1, baseline_top1) if top1 is not None else {}
        value = drops.get("top1_drop_points" if name == "max_drop_points" else "top1_relative_to_fp32")
        if top1 is None:
            return None, "no top-1 measured"
        if value is None or baseline_top1 is None:
            return None, "no FP32 baseline top-1"
        return value, f"top-1 {100 * top1:.2f}% vs FP32 {100 * baseline_top1:.2f}%"
    if name == "min_agreement":
        if row.top1_agreement is None:
            return None, "no agreement measured"
        top5, bounds = row.top5_agreement, row.top1_agreement_ci95
        noise = ""
        if bounds is not None:
            over = f"{row.top1_agreement_groups} photos resampled" if row.top1_agreement_groups else "samples as independent"
            noise = f"; 95% interval {100 * bounds[0]:.2f}–{100 * bounds[1]:.2f}% ({over})"
        return row.top1_agreement, (f"{row.eval_samples} {split} samples" + noise
                                    + (f"; top-5 agreement {100 * top5:.2f}%" if top5 is not None else ""))
    latency = getattr(row, "latency", None) or {}
    if name == "max_p99_ms":
        bounds = (latency.get("ci95") or {}).get("p99_ms")
        if not bounds:
            return None, "latency not measured"
        return bounds[1], f"p99 {latency['p99_ms']:.4f} ms, 95% CI {bounds[0]:.4f}–{bounds[1]:.4f} ms, batch {latency.get('batch_size')}"
    size = getattr(row, "size_bytes", None)
    return (None, "size not measured") if size is None else (round(size / MIB, 4), f"{size:,} bytes")


def _fidelity_gate(name: str, row: Scores, gates: GatesConfig, split: str = "evaluation") -> GateResult:
    """``min_cosine`` / ``min_sqnr_db`` on every output (one limit) or on the outputs named (a limit each): the value shown
    is the output furthest below its limit, or the closest to it when all pass."""
    limit = getattr(gates, name)
    figure = FIDELITY_GATES[name]
    per_output = row.fidelity or {}
    limits = limit if isinstance(limit, dict) else dict.fromkeys(per_output, limit)
    missing = [output for output in limits if output not in per_output]
    if not per_output or missing:
        what = f"no output named {', '.join(map(repr, missing))} (the engine's: {', '.join(per_output) or 'none'})" if per_output \
            else "no output fidelity measured"
        return GateResult(gate=name, title=TITLES[name], outcome="fail", value=None, limit=None, detail=f"not measured: {what}")
    margins = {output: per_output[output][figure] - bound for output, bound in limits.items()}
    worst = min(margins, key=margins.__getitem__)
    value, bound = per_output[worst][figure], limits[worst]
    outcome: Outcome = "pass" if value >= bound else "fail"
    detail = f"worst output {worst!r}" + (f" of {len(limits)}" if len(limits) > 1 else "") + f"; {row.eval_samples} {split} samples"
    return GateResult(gate=name, title=TITLES[name], outcome=outcome, value=value, limit=bound, detail=detail)


def _prediction(name: str, row: EngineRow, baseline_top1: float | None, gates: GatesConfig) -> GatePrediction | None:
    """What an accuracy gate would say on a prediction (TensorRT's prepared ONNX on ONNX Runtime): shown, never a pass."""
    predicted, limit = row.predicted, getattr(gates, name)
    if predicted is None or limit is None or name not in ("max_drop_points", "min_fraction_of_fp32", "min_agreement", *FIDELITY_GATES):
        return None
    if name in FIDELITY_GATES:
        result = _fidelity_gate(name, predicted, gates)
        if result.value is None:
            return None
        return GatePrediction(value=result.value, would="pass" if result.outcome == "pass" else "fail", label=predicted.label)
    value, _ = _measured(name, predicted, baseline_top1)
    if value is None:
        return None
    return GatePrediction(value=value, would="pass" if _passes(name, value, limit) else "fail", label=predicted.label)


def _gate(name: str, gates: GatesConfig, outcome: Outcome, value: float | None, detail: str,
          prediction: GatePrediction | None = None) -> GateResult:
    limit = getattr(gates, name)
    if isinstance(limit, dict):  # a limit per output: the row shows the tightest
        limit = max(limit.values())
    return GateResult(gate=name, title=TITLES[name], outcome=outcome, value=value, limit=limit, detail=detail, prediction=prediction)


def _significantly_faster(a: _Timing, b: _Timing) -> bool:
    """Whether ``a``'s p50 is below ``b``'s beyond measurement noise: timed together, the interval of their ratio round
    by round lies below 1; else their own 95% intervals do not overlap."""
    if _paired(a, b):
        return faster_round_by_round(a.rounds, b.rounds)
    return a.high < b.low


def _reason(chosen: EngineRow, fastest: EngineRow, tied: Sequence[EngineRow], engines: Sequence[EngineRow],
            timings: dict[str, _Timing]) -> str:
    label = _label(chosen)
    parts = []

    def p50(row: EngineRow) -> float:
        return timings[row.name].p50

    def speedup(fast: EngineRow, slow: EngineRow) -> str:
        """How many times faster, round by round where they were timed together."""
        a, b = timings[fast.name], timings[slow.name]
        return f"{1 / _ratio(a, b)[0]:.2f}× faster round by round" if _paired(a, b) else f"{b.p50 / a.p50:.2f}× faster"

    def overlap(fast: EngineRow, slow: EngineRow) -> str:
        a, b = timings[fast.name], timings[slow.name]
        if not _paired(a, b):
            return "95% intervals overlap"
        _, low, high = _ratio(a, b)
        return f"round by round it takes ×{low:.3f}–×{high:.3f} the time" + (", a 95% interval that holds ×1" if low <= 1 <= high else "")

    faster_failing = [r for r in engines if r.verdict == "fail" and r.name in timings and timings[r.name].rank < timings[chosen.name].rank]
    for other in sorted(faster_failing, key=lambda r: timings[r.name].rank):
        parts.append(f"{_label(other)} {speedup(other, chosen)} than {label} but fails {_failed(other)}")
    if chosen is not fastest:
        (mine, what), (theirs, _) = accuracy(chosen), accuracy(fastest)
        parts.append(f"{_label(fastest)} is not measurably faster (p50 {p50(fastest):.4f} vs {p50(chosen):.4f} ms, "
                     f"{overlap(fastest, chosen)}) and {label} has the higher {what} ({100 * mine:.2f}% vs {100 * theirs:.2f}%)")
    slower = [r for r in engines if r.verdict == "pass" and r is not chosen and r not in tied and r is not fastest]
    if slower and chosen is fastest:
        nearest = min(slower, key=lambda r: timings[r.name].rank)
        parts.append(f"{label} {speedup(chosen, nearest)} than {_label(nearest)} (p50 {p50(chosen):.4f} vs {p50(nearest):.4f} ms)")
    if tied and chosen is fastest:
        parts.append(f"{', '.join(_label(r) for r in tied)} within measurement noise, lower or equal {accuracy(chosen)[1]}")
    if not parts:
        parts.append(f"the only engine of its backend that passes every gate (p50 {p50(chosen):.4f} ms)")
    return "; ".join(parts) + f": {label} chosen"


def _why_not(row: EngineRow) -> str:
    if row.verdict == "fail":
        return f"{_label(row)} fails {_failed(row)}"
    return f"{_label(row)} {row.status}"


def _failed(row: EngineRow) -> str:
    failed = [g for g in row.gates if g.outcome == "fail"]
    return ", ".join(f"{g.gate} (not measured)" if g.value is None else
                     f"{g.gate} ({format_value(g.gate, g.value)} vs limit {format_value(g.gate, g.limit)})" for g in failed)


def format_value(gate: str, value: float | dict[str, float] | None) -> str:
    """A gate's value or limit in its unit, for people: 99.42%, 0.54 pt, 0.0898 ms, 0.21 MiB; a limit per output as
    ``score 15.0 dB, vector 20.0 dB``."""
    if value is None:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{output} {format_value(gate, limit)}" for output, limit in value.items())
    if gate in ("min_fraction_of_fp32", "min_agreement", "search_min_agreement"):
        return f"{100 * value:.2f}%"
    if gate in ("max_drop_points", "search_max_drop_points"):
        return f"{value:.2f} pt"
    if gate in ("min_cosine", "search_min_cosine"):
        return f"{value:.5f}"
    if gate == "min_sqnr_db":
        return "identical" if value >= SQNR_CAP_DB else f"{value:.1f} dB"
    if gate == "max_p99_ms":
        return f"{value:.4f} ms"
    return f"{value:.3f} MiB"


def _label(row: EngineRow) -> str:
    return row.precision.upper()
