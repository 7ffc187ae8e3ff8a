"""Release gates and the per-backend recommendation: one definition for every engine.

``judge`` turns one engine's measured row into gate outcomes (pass | fail | not-applicable, each with
the measured value and the limit) and a verdict; an engine that was skipped or failed to build or run
is never a pass. ``recommend`` picks, per backend, the fastest engine that passes every gate, by
measured p50, and says why in words.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from edgeship.recipe import GatesConfig

Outcome = Literal["pass", "fail", "not-applicable"]
Verdict = Literal["pass", "fail", "skipped", "error"]
GATES = ("max_drop_points", "min_fraction_of_fp32", "min_agreement", "max_p99_ms", "max_size_mib")
TITLES = {"max_drop_points": "top-1 drop vs FP32", "min_fraction_of_fp32": "top-1 fraction of FP32", "min_agreement": "agreement with FP32",
          "max_p99_ms": "p99 latency (upper 95% bound)", "max_size_mib": "engine size"}
MIB = 1024**2


def judge(row: Mapping[str, Any], baseline_top1: float | None, gates: GatesConfig) -> tuple[Verdict, list[dict[str, Any]]]:
    """The verdict on one engine row of the report and each gate's outcome."""
    status = row.get("status")
    if status != "ok" or (row.get("top1") is None and row.get("top1_agreement") is None):
        verdict: Verdict = "skipped" if status == "skipped" else "error"
        why = f"not measured: {status}: {row.get('reason') or 'no result'}"
        return verdict, [_gate(name, gates, "not-applicable", None, why, prediction=_prediction(name, row, baseline_top1, gates))
                         for name in GATES]
    results = [_judge_one(name, row, baseline_top1, gates) for name in GATES]
    return ("fail" if any(r["outcome"] == "fail" for r in results) else "pass"), results


def required_engines(rows: Sequence[Mapping[str, Any]], gates: GatesConfig) -> list[str]:
    """The engines whose verdict decides the exit code: the recipe's ``required`` patterns, or every engine not skipped."""
    if gates.required is None:
        return [row["name"] for row in rows if row.get("status") != "skipped"]
    return [row["name"] for row in rows if any(fnmatch.fnmatchcase(row["name"], pattern) for pattern in gates.required)]


def target(row: Mapping[str, Any]) -> str | None:
    """Where a row's engine runs, for grouping: its backend, or ``<backend>@<device>`` when measured on a remote device."""
    return row.get("target") or row.get("backend")


def recommend(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per backend (per backend and device, ``target``, for rows measured on a remote device): the engine to ship (the
    fastest passing by measured p50) and the reason, or none and why."""
    out: dict[str, dict[str, Any]] = {}
    for backend in dict.fromkeys(target(row) for row in rows):
        engines = [row for row in rows if target(row) == backend]
        passing = sorted((r for r in engines if r.get("verdict") == "pass"), key=lambda r: r["latency"]["p50_ms"])
        if not passing:
            out[backend] = {"engine": None, "reason": "no engine passes every gate: " + "; ".join(_why_not(r) for r in engines)}
            continue
        fastest = passing[0]
        tied = [r for r in passing[1:] if not _significantly_faster(fastest, r)]
        chosen = max([fastest, *tied], key=lambda r: (accuracy(r)[0], -r.get("size_bytes", 0)))
        out[backend] = {"engine": chosen["name"], "precision": chosen["precision"], "reason": _reason(chosen, fastest, tied, engines)}
    return out


def accuracy(row: Mapping[str, Any]) -> tuple[float, str]:
    """The accuracy figure that ranks engines: top-1 against labels, or on unlabelled data top-1 agreement with FP32."""
    if row.get("top1") is not None:
        return row["top1"], "top-1"
    return row.get("top1_agreement") or 0.0, "top-1 agreement"


def accuracy_drop(top1: float, baseline_top1: float | None) -> dict[str, Any]:
    """Top-1 below the FP32 baseline, in points and as a fraction of the baseline's (MLPerf style); ``{}`` without one."""
    if baseline_top1 is None:
        return {}
    return {"top1_drop_points": round(100 * (baseline_top1 - top1), 4),
            "top1_relative_to_fp32": round(top1 / baseline_top1, 6) if baseline_top1 else None}


def _passes(name: str, value: float, limit: float) -> bool:
    return value <= limit if name.startswith("max_") else value >= limit


def _judge_one(name: str, row: Mapping[str, Any], baseline_top1: float | None, gates: GatesConfig) -> dict[str, Any]:
    limit = getattr(gates, name)
    if limit is None:
        return _gate(name, gates, "not-applicable", None, "no limit set in the recipe")
    value, detail = _measured(name, row, baseline_top1)
    if value is None:
        return _gate(name, gates, "not-applicable", None, detail)
    return _gate(name, gates, "pass" if _passes(name, value, limit) else "fail", value, detail)


def _measured(name: str, row: Mapping[str, Any], baseline_top1: float | None) -> tuple[float | None, str]:
    """The value a gate judges, and how it was measured, from a measured (or predicted) row."""
    top1 = row.get("top1")
    if name in ("max_drop_points", "min_fraction_of_fp32"):
        drops = accuracy_drop(top1, baseline_top1) if top1 is not None else {}
        value = drops.get("top1_drop_points" if name == "max_drop_points" else "top1_relative_to_fp32")
        if top1 is None:
            return None, "no labels in the evaluation data: accuracy is top-1 agreement with FP32 (min_agreement)"
        if value is None or baseline_top1 is None:
            return None, "no FP32 baseline top-1"
        return value, f"top-1 {100 * top1:.2f}% vs FP32 {100 * baseline_top1:.2f}%"
    if name == "min_agreement":
        agree = row.get("top1_agreement")
        if agree is None:
            return None, "no agreement measured"
        top5 = row.get("top5_agreement")
        return agree, f"{row.get('eval_samples')} evaluation samples" + (f"; top-5 agreement {100 * top5:.2f}%" if top5 is not None else "")
    if name == "max_p99_ms":
        latency = row.get("latency") or {}
        bounds = (latency.get("ci95") or {}).get("p99_ms")
        if not bounds:
            return None, "latency not measured"
        return bounds[1], f"p99 {latency['p99_ms']:.4f} ms, 95% CI {bounds[0]:.4f}–{bounds[1]:.4f} ms, batch {latency.get('batch_size')}"
    size = row.get("size_bytes")
    return (None, "size not measured") if size is None else (round(size / MIB, 4), f"{size:,} bytes")


def _prediction(name: str, row: Mapping[str, Any], baseline_top1: float | None, gates: GatesConfig) -> dict[str, Any] | None:
    """What an accuracy gate would say on a prediction (TensorRT's prepared ONNX on ONNX Runtime): shown, never a pass."""
    predicted, limit = row.get("predicted"), getattr(gates, name)
    if not predicted or limit is None or name not in ("max_drop_points", "min_fraction_of_fp32", "min_agreement"):
        return None
    value, _ = _measured(name, predicted, baseline_top1)
    if value is None:
        return None
    return {"value": value, "would": "pass" if _passes(name, value, limit) else "fail", "label": predicted.get("label")}


def _gate(name: str, gates: GatesConfig, outcome: Outcome, value: float | None, detail: str,
          prediction: dict[str, Any] | None = None) -> dict[str, Any]:
    gate = {"gate": name, "title": TITLES[name], "outcome": outcome, "value": value, "limit": getattr(gates, name), "detail": detail}
    if prediction:
        gate["prediction"] = prediction
    return gate


def _significantly_faster(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether ``a``'s p50 is below ``b``'s beyond measurement noise: their 95% intervals do not overlap."""
    a_high = a["latency"]["ci95"]["p50_ms"][1]
    b_low = b["latency"]["ci95"]["p50_ms"][0]
    return a_high < b_low


def _reason(chosen: Mapping[str, Any], fastest: Mapping[str, Any], tied: Sequence[Mapping[str, Any]],
            engines: Sequence[Mapping[str, Any]]) -> str:
    label = _label(chosen)
    parts = []
    faster_failing = [r for r in engines if r.get("verdict") == "fail" and r["latency"]["p50_ms"] < chosen["latency"]["p50_ms"]]
    for other in sorted(faster_failing, key=lambda r: r["latency"]["p50_ms"]):
        parts.append(f"{_label(other)} {_speedup(other, chosen):.2f}× faster than {label} but fails {_failed(other)}")
    if chosen is not fastest:
        (mine, what), (theirs, _) = accuracy(chosen), accuracy(fastest)
        parts.append(f"{_label(fastest)} is not measurably faster (p50 {_p50(fastest)} vs {_p50(chosen)} ms, 95% intervals overlap) "
                     f"and {label} has the higher {what} ({100 * mine:.2f}% vs {100 * theirs:.2f}%)")
    slower = [r for r in engines if r.get("verdict") == "pass" and r is not chosen and r not in tied and r is not fastest]
    if slower and chosen is fastest:
        nearest = min(slower, key=lambda r: r["latency"]["p50_ms"])
        parts.append(f"{label} {_speedup(chosen, nearest):.2f}× faster than {_label(nearest)} (p50 {_p50(chosen)} vs {_p50(nearest)} ms)")
    if tied and chosen is fastest:
        parts.append(f"{', '.join(_label(r) for r in tied)} within measurement noise, lower or equal {accuracy(chosen)[1]}")
    if not parts:
        parts.append(f"the only engine of its backend that passes every gate (p50 {_p50(chosen)} ms)")
    return "; ".join(parts) + f": {label} chosen"


def _why_not(row: Mapping[str, Any]) -> str:
    if row.get("verdict") == "fail":
        return f"{_label(row)} fails {_failed(row)}"
    return f"{_label(row)} {row.get('status')}"


def _failed(row: Mapping[str, Any]) -> str:
    failed = [g for g in row.get("gates", []) if g["outcome"] == "fail"]
    return ", ".join(f"{g['gate']} ({_value(g)} vs limit {format_value(g['gate'], g['limit'])})" for g in failed)


def format_value(gate: str, value: float | None) -> str:
    """A gate's value or limit in its unit, for people: 99.42%, 0.54 pt, 0.0898 ms, 0.21 MiB."""
    if value is None:
        return "—"
    if gate in ("min_fraction_of_fp32", "min_agreement"):
        return f"{100 * value:.2f}%"
    if gate == "max_drop_points":
        return f"{value:.2f} pt"
    if gate == "max_p99_ms":
        return f"{value:.4f} ms"
    return f"{value:.3f} MiB"


def _value(gate: Mapping[str, Any]) -> str:
    return format_value(gate["gate"], gate["value"])


def _label(row: Mapping[str, Any]) -> str:
    return str(row["precision"]).upper()


def _p50(row: Mapping[str, Any]) -> str:
    return f"{row['latency']['p50_ms']:.4f}"


def _speedup(fast: Mapping[str, Any], slow: Mapping[str, Any]) -> float:
    return slow["latency"]["p50_ms"] / fast["latency"]["p50_ms"]
