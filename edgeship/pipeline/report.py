"""The ``report`` stage: ``report.json`` (versioned schema) and the terminal summary table."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.artifacts import Artifact, ManifestEntry, sha256_file, write_atomic
from edgeship.pipeline.base import RunContext
from edgeship.pipeline.build import PREPARE, prediction_name
from edgeship.pipeline.validate import BASELINE

SCHEMA = "edgeship.report"
SCHEMA_VERSION = 1


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportStage:
    name: ClassVar[str] = "report"
    Config: ClassVar[type[ReportConfig]] = ReportConfig

    def run(self, inputs: Mapping[str, Artifact], cfg: ReportConfig, ctx: RunContext) -> dict[str, Artifact]:
        report = build_report(inputs, ctx)
        path = ctx.run_dir / "report.json"
        write_atomic(path, json.dumps(report, indent=2))
        ctx.manifest.add(ManifestEntry(stage=self.name, name=path.name, status="ok", kind="report", path=str(path),
                                       sha256=sha256_file(path), config={"schema": SCHEMA, "schema_version": SCHEMA_VERSION}))
        print_summary(report, ctx.console)
        return {}


def build_report(results: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """The report document: baseline, every requested engine with its status, and the run's context."""
    baseline = results.get(BASELINE)
    base_metrics = baseline.meta["metrics"] if baseline else {}
    base_top1 = base_metrics.get("top1")
    engines = []
    for entry in ctx.manifest.entries:
        if entry.stage != "build":
            continue
        row: dict[str, Any] = {"name": entry.name, "backend": entry.config.get("backend"), "precision": entry.config.get("precision"),
                               "status": entry.status, "reason": entry.reason, "artifact": entry.artifact, "sha256": entry.sha256,
                               "path": entry.path, "build_seconds": entry.seconds}
        validation = results.get(entry.name)
        validated = next((e for e in ctx.manifest.entries if e.stage == "validate" and e.name == entry.name), None)
        row["reused"] = {"build": entry.reused, "validate": validated.reused if validated else None}
        if entry.status == "ok" and validation is None:
            row.update(status="failed", reason=f"validation failed: {validated.reason if validated else 'no result'}")
        if validation is not None:
            metrics = dict(validation.meta["metrics"])
            row.update(metrics)
            row.update(_drops(metrics["top1"], base_top1))
        prepared = next((e for e in ctx.manifest.entries if e.stage == PREPARE and e.name == entry.name), None)
        if prepared is not None:
            # ``seconds`` comes from prepare.json in the metrics: the preparation's own time, also when it is reused
            row["prepared"] = {"status": prepared.status, "reason": prepared.reason, "reused": prepared.reused, "path": prepared.path,
                               "sha256": prepared.sha256, **prepared.metrics}
        prediction = results.get(prediction_name(entry.name))
        if prediction is not None:
            metrics = prediction.meta["metrics"]
            row["predicted"] = {**metrics["predicted"], "top1": metrics["top1"], "eval_samples": metrics["eval_samples"],
                                **{k: metrics[k] for k in ("top1_agreement", "max_abs_error", "mean_cosine")},
                                **_drops(metrics["top1"], base_top1)}
        engines.append(row)
    _add_drop_vs_backend_fp32(engines)
    _add_predicted_drop_vs_onnx_fp32(engines)
    dataset = ctx.dataset
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": ctx.manifest.run_id,
        "recipe": ctx.recipe.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "edgeship": ctx.manifest.edgeship,
        "device": ctx.manifest.device,
        "tools": ctx.manifest.tools,
        "threads": ctx.recipe.threads(),
        "dataset": {"name": dataset.name, "source": dataset.source, "train": len(dataset.train), "val": len(dataset.val),
                    "calibration": len(dataset.calibration), "eval": len(dataset.eval), "fingerprint": dataset.fingerprint},
        "baseline": {"name": BASELINE, **base_metrics} if baseline else None,
        "prune": next(({"method": e.config.get("method"), "reused": e.reused, **e.metrics}
                       for e in ctx.manifest.entries if e.stage == "prune" and e.status == "ok"), None),
        "distill": _distill_section(ctx),
        "engines": engines,
        "notes": ["Latency is measured on this machine with the threads shown; engines are not yet timed in isolated "
                  "processes, and release gates are not applied in this version.",
                  "Results reused from the store (reused.validate) were measured at their measured_at time on this device."],
    }
    if any(row["backend"] == "tensorrt" for row in engines):
        report["notes"].append("A TensorRT engine runs only on the GPU model (compute capability) and the TensorRT version it was "
                               "built with (each engine's runtime shows both); rebuild it for any other. Where no engine was built, "
                               "the TensorRT-bound ONNX was scored on ONNX Runtime on the CPU: those figures are predictions, "
                               "not TensorRT measurements.")
    report["student_vs_teacher"] = student_vs_teacher(report)
    return report


def _drops(top1: float, base_top1: float | None) -> dict[str, Any]:
    if base_top1 is None:
        return {}
    return {"top1_drop_points": round(100 * (base_top1 - top1), 4),
            "top1_relative_to_fp32": round(top1 / base_top1, 6) if base_top1 else None}


def _add_drop_vs_backend_fp32(engines: list[dict[str, Any]]) -> None:
    """Each engine's top-1 drop against its own backend's FP32 engine: the quantization effect alone, apart
    from what pruning and distillation changed against the baseline."""
    fp32 = {row["backend"]: row["top1"] for row in engines if row["precision"] == "fp32" and row.get("top1") is not None}
    for row in engines:
        if row.get("top1") is not None and row["backend"] in fp32:
            row["top1_drop_vs_backend_fp32_points"] = round(100 * (fp32[row["backend"]] - row["top1"]), 4)


def _add_predicted_drop_vs_onnx_fp32(engines: list[dict[str, Any]]) -> None:
    """A prediction's top-1 drop against the exported FP32 ONNX on the same runtime (``onnxruntime/fp32``): what the
    backend's FP16/INT8 preparation alone costs."""
    exported = next((row.get("top1") for row in engines if row["name"] == "onnxruntime/fp32"), None)
    for row in engines:
        predicted = row.get("predicted")
        if predicted and exported is not None and predicted.get("on") == "onnxruntime":
            predicted["top1_drop_vs_onnx_fp32_points"] = round(100 * (exported - predicted["top1"]), 4)


def student_vs_teacher(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pipeline's verdict on the student: measured ORT FP32 latency ratio (both timed in the prune stage of
    one run, same harness) and the test top-1 of its ORT FP32 engine against the teacher's PyTorch FP32 top-1."""
    prune, baseline = report.get("prune"), report.get("baseline")
    engine = next((e for e in report.get("engines", []) if e.get("name") == "onnxruntime/fp32" and e.get("status") == "ok"), None)
    if not prune or not baseline or engine is None:
        return None
    return {"teacher_p50_ms": prune["before"]["latency"]["p50_ms"], "student_p50_ms": prune["after"]["latency"]["p50_ms"],
            "latency_reduction": prune["latency_speedup_p50"], "teacher_top1": baseline["top1"], "student_top1": engine["top1"],
            "top1_drop_points": engine["top1_drop_points"], "stages": "prune + distill" if report.get("distill") else "prune"}


def _distill_section(ctx: RunContext) -> dict[str, Any] | None:
    """Teacher, student before recovery, hard-label fine-tune and distilled top-1, from this run's manifest."""
    from edgeship.pipeline.distill import ABLATION, comparison

    entries = {e.stage: e for e in ctx.manifest.entries if e.status == "ok"}
    if "distill" not in entries:
        return None
    distilled, ablation = entries["distill"], entries.get(ABLATION)
    return {"name": distilled.name, "reused": distilled.reused, "seconds": distilled.seconds + (ablation.seconds if ablation else 0.0),
            **comparison(distilled.metrics, ablation.metrics if ablation else None),
            "epochs_run": distilled.metrics.get("epochs_run"), "best_epoch": distilled.metrics.get("best_epoch")}


def print_summary(report: Mapping[str, Any], console: Console) -> None:
    """The summary table: every engine with precision, size, p50/p99, top-1, drop vs FP32, status."""
    device = report.get("device", {})
    table = Table(title=f"edgeship · {report['run_id']} · {device.get('cpu', '?')} · {report.get('threads')} threads")
    for column, justify in (("engine", "left"), ("precision", "left"), ("size", "right"), ("p50 ms", "right"), ("p99 ms", "right"),
                            ("top-1", "right"), ("drop vs baseline", "right"), ("drop vs own FP32", "right"), ("agreement", "right"),
                            ("build s", "right"), ("status", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    baseline = report.get("baseline")
    if baseline:
        lat = baseline.get("latency", {})
        table.add_row(BASELINE.split("/")[0], "fp32", _size(baseline.get("size_bytes")), _ms(lat.get("p50_ms")), _ms(lat.get("p99_ms")),
                      _pct(baseline.get("top1")), "baseline", "—", "—", "—", "[green]ok[/green]")
    reasons: dict[str, list[str]] = {}  # one footnote per distinct reason, so long install commands do not fill the table
    for row in report.get("engines", []):
        if row.get("reason"):
            reasons.setdefault(f"{row['status']}: {row['reason']}", []).append(row["name"])
    marks = {reason: f"({n})" for n, reason in enumerate(reasons, 1)}
    for row in report.get("engines", []):
        mark = marks.get(f"{row['status']}: {row['reason']}", "") if row.get("reason") else ""
        table.add_row(*_engine_cells(row, mark))
    console.print(table)
    for reason, names in reasons.items():
        console.print(f"{marks[reason]} {', '.join(names)} {escape(reason)}", soft_wrap=True)
    for row in report.get("engines", []):
        if row.get("predicted") or row.get("prepared"):
            console.print(prepared_line(row), soft_wrap=True)
    for row in report.get("engines", []):
        check = row.get("cross_check")
        if not check:
            continue
        if check["status"] == "ok":
            colour = "green" if check["within_5pct"] else "yellow"
            console.print(f"latency cross-check {row['name']}: our p50 {check['ours_p50_ms']:.3f} ms, {check['tool']} median "
                          f"{check['median_ms']:.3f} ms ([{colour}]×{check['ratio']:.2f}[/{colour}])" + cross_check_reason(check),
                          soft_wrap=True)
        else:
            console.print(f"[yellow]latency cross-check {row['name']} failed: {escape(check['reason'])}[/yellow]", soft_wrap=True)
    prune = report.get("prune")
    if prune:
        before, after = prune["before"], prune["after"]
        console.print(f"prune ({prune.get('method')}): MACs kept {prune['macs_kept']:.1%}, parameters kept {prune['parameters_kept']:.1%}, "
                      f"ONNX {_size(before['onnx_bytes'])} → {_size(after['onnx_bytes'])}, measured ORT FP32 p50 "
                      f"{before['latency']['p50_ms']:.3f} → {after['latency']['p50_ms']:.3f} ms (×{prune['latency_speedup_p50']:.2f}), "
                      f"val top-1 {_pct(before['val_top1'])} → {_pct(after['val_top1'])}", soft_wrap=True)
    verdict = report.get("student_vs_teacher")
    if verdict:
        console.print(f"[bold]student vs teacher ({verdict['stages']})[/bold]: measured ORT FP32 p50 {verdict['teacher_p50_ms']:.3f} → "
                      f"{verdict['student_p50_ms']:.3f} ms ([bold]×{verdict['latency_reduction']:.2f}[/bold]), test top-1 "
                      f"{_pct(verdict['teacher_top1'])} → {_pct(verdict['student_top1'])} "
                      f"([bold]{-verdict['top1_drop_points']:+.2f} pt[/bold])", soft_wrap=True)
    distill = report.get("distill")
    if distill:
        top1 = distill["top1"]
        hard = top1.get("hard_label_finetune")
        console.print(f"distill ({distill['name']}): test top-1 teacher {_pct(top1['teacher']['eval_top1'])}, student before "
                      f"{_pct(top1['student_before']['eval_top1'])}, hard-label fine-tune "
                      f"{_pct(hard['eval_top1']) if hard else 'not run'}, distilled {_pct(top1['distilled']['eval_top1'])} "
                      f"({-distill['distilled_drop_vs_teacher_points']:+.2f} pt vs teacher"
                      + (f", {distill['gain_over_hard_labels_points']:+.2f} pt over hard labels)" if hard else ")"), soft_wrap=True)


def _engine_cells(row: Mapping[str, Any], mark: str) -> list[str]:
    """One engine's table cells; a prediction (TensorRT's prepared ONNX on ONNX Runtime) is shown as such, never as measured."""
    lat = row.get("latency", {})
    colour = {"ok": "green", "skipped": "yellow"}.get(row["status"], "red")
    drop, own = row.get("top1_drop_points"), row.get("top1_drop_vs_backend_fp32_points")
    top1, agree = _pct(row.get("top1")), _pct(row.get("top1_agreement"))
    drop_text, own_text = _points(drop), "—" if row.get("precision") == "fp32" else _points(own)
    predicted = row.get("predicted")
    if predicted and row.get("top1") is None:
        top1, agree = _predicted(_pct(predicted["top1"])), _predicted(_pct(predicted["top1_agreement"]))
        drop_text = _predicted(_points(predicted.get("top1_drop_points")))
        own_text = _predicted(_points(predicted.get("top1_drop_vs_onnx_fp32_points")))
    build = row.get("build_seconds")
    return [row.get("backend") or "?", row.get("precision") or "?", _size(row.get("size_bytes")), _ms(lat.get("p50_ms")),
            _ms(lat.get("p99_ms")), top1, drop_text, own_text, agree, "—" if not build else f"{build:.1f}",
            f"[{colour}]{row['status']}[/{colour}] {mark}".rstrip()]


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f} pt"


def _predicted(text: str) -> str:
    return text if text == "—" else f"[italic]{text} pred.[/italic]"


def prepared_line(row: Mapping[str, Any]) -> str:
    """One line on a prepared ONNX (TensorRT's): which tool made it, and its accuracy as predicted on ONNX Runtime."""
    prepared, predicted = row.get("prepared") or {}, row.get("predicted")
    if prepared.get("status", "ok") != "ok":
        return f"[yellow]{row['name']}: no prepared ONNX: {escape(str(prepared.get('reason')))}[/yellow]"
    if prepared.get("tool") == "none":
        text = f"{row['name']}: ONNX is the exported FP32 model"
    else:
        tool = f"{prepared.get('tool', '?')} {prepared.get('version') or ''}".strip()
        if prepared.get("fallback_reason"):
            tool += f" (ModelOpt unavailable: {prepared['fallback_reason']})"
        text = f"{row['name']}: ONNX prepared by {escape(tool)} in {prepared.get('seconds', 0):.1f} s"
    if predicted:
        text += (f"; [italic]{predicted['label']}[/italic]: top-1 {_pct(predicted['top1'])}"
                 + (f" ({0.0 - predicted['top1_drop_points']:+.2f} pt vs baseline)" if "top1_drop_points" in predicted else "")
                 + f", agreement {_pct(predicted['top1_agreement'])}")
    return text


def cross_check_reason(check: Mapping[str, Any]) -> str:
    """Why our p50 and the backend tool's median differ by more than 5%, from what was measured."""
    if check["within_5pct"] or "bare_ratio" not in check:
        return ""
    return (f"; the engine call alone times ×{check['bare_ratio']:.2f} of the tool's median in our harness, so the rest is the "
            f"{1e3 * check['call_overhead_ms']:.0f} µs Python call around it (wrapping inputs, copying outputs), which the tool "
            "leaves out and every backend's p50 here includes")


def load_report(path: Path) -> dict[str, Any]:
    from edgeship.errors import DataError

    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no report here") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable report.json: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise DataError(f"{path}: not an edgeship report (schema {SCHEMA!r} expected)")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: report schema version {report.get('schema_version')}, this edgeship reads {SCHEMA_VERSION}")
    return report


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:.0f} KiB" if value < 1024**2 else f"{value / 1024**2:.1f} MiB"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"
