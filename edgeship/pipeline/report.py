"""The ``report`` stage: ``report.json`` (versioned schema), ``junit.xml``, ``report.html`` and the terminal summary.

The report is a pure function of the run's manifest (``build_report``), so ``edgeship report RUN_DIR``
rebuilds it byte for byte from ``manifest.json`` alone; the gates and the per-backend recommendation
are applied here (``edgeship.gates``).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from edgeship.artifacts import Artifact, Manifest, ManifestEntry, sha256_file, write_atomic
from edgeship.backends import REGISTRY, display_name
from edgeship.data import substitution_note
from edgeship.device import saturates_u8s8
from edgeship.errors import DataError
from edgeship.gates import accuracy_drop, judge, recommend, release, required_engines
from edgeship.harness import call_overhead_us
from edgeship.peak import Peak
from edgeship.pipeline.base import RunContext
from edgeship.pipeline.build import PREPARE, SIDE_METRICS, prediction_name
from edgeship.pipeline.distill import ABLATION, comparison, figures_split, without_evaluation
from edgeship.pipeline.together import TOGETHER, together_name
from edgeship.pipeline.validate import BASELINES, PEAK
from edgeship.qualification import EngineKey, EngineRow, Report
from edgeship.recipe import GatesConfig
from edgeship.render.html import render_html
from edgeship.render.junit import render_junit
from edgeship.render.terminal import print_summary

SCHEMA = "edgeship.report"
# 4: typed rows with their key; 5: the release's reasons, qualified engines and whether the run finished; 6: the machine's
# peak, each engine's fraction of it and its per-layer profile; 7: each engine's layer-wise divergence and keep_float: auto search;
# 8: the task, and output fidelity (cosine, SQNR, relative L2 per output) on every row
SCHEMA_VERSION = 8
OUTPUTS = ("report.json", "junit.xml", "report.html")


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportStage:
    name: ClassVar[str] = "report"

    def run(self, inputs: Mapping[str, Artifact], cfg: ReportConfig, ctx: RunContext) -> dict[str, Artifact]:
        # built from the manifest as saved, exactly what ``edgeship report RUN_DIR`` reads later
        ctx.save_manifest()
        report = write_reports(Manifest.model_validate_json(ctx.manifest_path.read_text()), ctx.run_dir, reached=True)
        for name in OUTPUTS:
            path = ctx.run_dir / name
            ctx.manifest.add(ManifestEntry(stage=self.name, name=name, status="ok", kind="report", path=str(path),
                                           sha256=sha256_file(path), config={"schema": SCHEMA, "schema_version": SCHEMA_VERSION}))
        print_summary(report, ctx.console)
        return {}


def write_reports(manifest: Manifest, run_dir: Path, *, reached: bool = False) -> Report:
    """``report.json``, ``junit.xml`` and ``report.html`` of a run, from its manifest; returns the report. ``reached``:
    the report stage itself is writing them, so every stage before it finished."""
    report = build_report(manifest, reached=reached)
    write_atomic(run_dir / "report.json", json.dumps(report.document(), indent=2) + "\n")
    write_atomic(run_dir / "junit.xml", render_junit(report))
    write_atomic(run_dir / "report.html", render_html(report))
    return report


def rebuild(run_dir: Path) -> Report:
    """``edgeship report RUN_DIR``: the report files again, from ``manifest.json`` alone."""
    return write_reports(load_manifest(run_dir), run_dir if run_dir.is_dir() else run_dir.parent)


def load_manifest(run_dir: Path) -> Manifest:
    """A run's ``manifest.json`` (``run_dir`` or the file in that folder); a ``DataError`` naming the file otherwise."""
    path, text = _read_run_file(run_dir, "manifest.json", missing="no manifest.json here (give a run folder under reports/)")
    try:
        return Manifest.model_validate_json(text)
    except ValueError as exc:
        raise DataError(f"{path}: not a readable edgeship manifest: {str(exc).splitlines()[0]}") from None


def _read_run_file(path: Path, name: str, *, missing: str) -> tuple[Path, str]:
    """The text of ``path`` (or of ``name`` in it, for a folder), or a ``DataError`` naming the file."""
    if path.is_dir():
        path = path / name
    try:
        return path, path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {name}: {exc}") from None


def unfinished(manifest: Manifest) -> str | None:
    """Why a run's manifest shows it never reached its report (killed, interrupted or failed on the way), or ``None``."""
    if manifest.status == "ok" or any(e.stage == ReportStage.name for e in manifest.entries):
        return None
    last = manifest.entries[-1] if manifest.entries else None
    return f"its manifest says {manifest.status}" + (f", last at {last.stage} {last.name}" if last else ", before any stage")


def build_report(manifest: Manifest, *, reached: bool = False) -> Report:
    """The report document: baseline, every requested engine with its gates and verdict, the recommendation per
    backend, and the run's provenance, from the manifest alone. ``reached``: built by the report stage itself, after
    every other stage; otherwise the manifest must show the run finished, or the release cannot pass."""
    entries = [e for e in manifest.entries if e.stage != ReportStage.name]
    validations = {e.name: e for e in entries if e.stage == "validate" and e.status == "ok"}
    baseline_entry = next((validations[name] for name in BASELINES if name in validations), None)
    task = manifest.recipe.get("task") or "classification"
    base_metrics = baseline_entry.metrics if baseline_entry else {}
    base_top1 = base_metrics.get("top1")
    gates = GatesConfig.model_validate(manifest.recipe.get("gates") or {})
    divergences = {e.name: e.metrics for e in entries if e.stage == "divergence" and e.status == "ok"}
    fields: list[dict[str, Any]] = []  # each row's fields as the manifest has them, then typed
    for entry in entries:
        if entry.stage != "build":
            continue
        row: dict[str, Any] = {"name": entry.name, "backend": entry.config.get("backend"), "precision": entry.config.get("precision"),
                               "status": entry.status, "reason": entry.reason, "artifact": entry.artifact, "sha256": entry.sha256,
                               "path": entry.path, "build_seconds": entry.seconds}
        validation = validations.get(entry.name)
        validated = next((e for e in entries if e.stage == "validate" and e.name == entry.name), None)
        row["reused"] = {"build": entry.reused, "validate": validated.reused if validated else None}
        for side in SIDE_METRICS.values():
            if entry.metrics.get(side):
                row[side] = entry.metrics[side]
        if entry.status == "ok" and validation is None:
            row.update(status="failed", reason=f"validation failed: {validated.reason if validated else 'no result'}")
        if validation is not None:
            row.update(validation.metrics)
            if validation.metrics.get("top1") is not None:
                row.update(accuracy_drop(validation.metrics["top1"], base_top1))
        prepared = next((e for e in entries if e.stage == PREPARE and e.name == entry.name), None)
        if prepared is not None:
            # ``seconds`` comes from prepare.json in the metrics: the preparation's own time, also when it is reused
            row["prepared"] = {"status": prepared.status, "reason": prepared.reason, "reused": prepared.reused, "path": prepared.path,
                               "sha256": prepared.sha256, **prepared.metrics}
            for side in SIDE_METRICS.values():  # what its preparation chose (keep_float) is the engine's too
                if side not in row and isinstance(prepared.metrics.get(side), dict):
                    row[side] = prepared.metrics[side]
        divergence = _divergence(divergences, entry.name)
        if divergence is not None:
            row["divergence"] = divergence
        prediction = validations.get(prediction_name(entry.name))
        if prediction is not None:
            metrics = prediction.metrics
            row["predicted"] = {**metrics["predicted"], "top1": metrics["top1"], "eval_samples": metrics["eval_samples"],
                                **{k: metrics[k] for k in AGREEMENT_KEYS if k in metrics},
                                **(accuracy_drop(metrics["top1"], base_top1) if metrics["top1"] is not None else {})}
        fields.append(row)
        fields.extend(_device_rows(row, entries, base_top1))
    _add_timed_together(fields, validations)
    engines = [_typed(row) for row in fields]
    _add_drop_vs_backend_fp32(engines)
    _add_call_overhead(engines)
    peak_entry = validations.get(PEAK)
    peak = Peak.model_validate(peak_entry.metrics) if peak_entry else None
    _add_fraction_of_peak(engines, peak)
    _add_predicted_drop_vs_onnx_fp32(engines)
    labelled, split = bool((manifest.dataset or {}).get("labelled", True)), scored_on(manifest.dataset)
    for typed in engines:
        typed.verdict, typed.gates = judge(typed, base_top1, gates, labelled=labelled, task=task, split=split)
    required = required_engines(engines, gates)
    for typed in engines:
        typed.required = typed.name in required
    validate_cfg = baseline_entry.config if baseline_entry else {}
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": manifest.run_id,
        "recipe": manifest.recipe.get("name"),
        "recipe_path": manifest.recipe_path,
        "created": datetime.datetime.fromtimestamp(manifest.started, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgeship": manifest.edgeship,
        "source": manifest.source,
        "device": manifest.device,
        "tools": manifest.tools,
        "threads": validate_cfg.get("threads"),
        "cpus": validate_cfg.get("cpus"),
        "dataset": manifest.dataset,
        "task": task,
        "accuracy": accuracy_basis(manifest.dataset, task),
        "calibration": manifest.calibration,
        "baseline": {"name": baseline_entry.name, **base_metrics} if baseline_entry else None,
        "prune": next(({"method": e.config.get("method"), "reused": e.reused, **e.metrics}
                       for e in entries if e.stage == "prune" and e.status == "ok"), None),
        "sensitivity": next((e.metrics for e in entries if e.stage == "prune-sensitivity" and e.status == "ok"), None),
        "distill": _distill_section(entries, figures_split(split)),
        "gates": gates.model_dump(mode="json"),
        "engines": engines,
        "devices": _devices(entries),
        "recommendations": recommend(engines),
        "peak": peak,
        "release": release(engines, unfinished=None if reached else unfinished(manifest)),
        "notes": [*filter(None, [substitution_note(manifest.dataset)]),
                  "Each engine and the baseline were measured in a process of their own, pinned to the CPUs shown, one after "
                  "another; latency intervals are percentile-bootstrap 95% intervals over the per-iteration times.",
                  "Results reused from the store (reused.validate) were measured at their measured_at time on this device.",
                  "The gates and the recommendation use the p50 of edgeship's Runner.infer (ONNX-layout float input in, logits "
                  "out: the call an application makes through edgeship), the same call for every backend. Beside it each "
                  "engine has the p50 of the runtime's own call on an input set once (what the runtime's benchmark tools "
                  "time) and the difference, the per-call overhead, so a backend is never judged by the Python around it."],
        "recipe_document": manifest.recipe,
        "artifacts": [{"stage": e.stage, "name": e.name, "artifact": e.artifact, "sha256": e.sha256, "path": e.path}
                      for e in entries if e.sha256],
    }
    for entry in entries:
        if entry.rebuilt:
            report["notes"].append(f"Rebuilt {entry.stage} {entry.name}: {entry.rebuilt}.")
    if report["devices"]:
        report["notes"].append("Rows named <engine>@<device> were measured on that device by its edgeship agent, with the same "
                               "harness as this host's rows; the FP32 baseline and the reference outputs are this host's. Each "
                               "device has its own recommendation.")
    for info in REGISTRY.values():
        if info.report_note and any(row.backend == info.name for row in engines):
            report["notes"].append(info.report_note)
    for entry in entries:
        if entry.stage == "validate" and entry.name.startswith(f"{TOGETHER}/") and entry.status == "failed":
            backend, _, device = entry.name.removeprefix(f"{TOGETHER}/").partition("@")
            report["notes"].append(f"Timing {display_name(backend)}'s engines together{f' on {device}' if device else ''} failed "
                                   f"({entry.reason}): its recommendation ranks each engine's own p50.")
    together = next((row.timed_together for row in engines if row.timed_together is not None), None)
    if together is not None:
        report["notes"].append(f"Each backend's engines were then timed again together, here and on each device: each loaded once "
                               f"in a process of its own, "
                               f"then taking turns in {together.rounds} short slices, so that a change of the machine's speed falls on "
                               "all of them alike. The recommendation compares those figures round by round (timed_together); the "
                               "tables' p50s are each engine's own.")
    saturation = _saturation_note(engines, manifest.device)
    if saturation:
        report["notes"].append(saturation)
    if peak is not None:
        report["notes"].append(f"Fraction of peak: each engine's multiply-accumulates per inference over its p50, against this "
                               f"machine's {peak.threads}-thread GEMM rate at its precision (FP32 {peak.fp32.gmacs:,.1f}, INT8 "
                               f"{peak.int8.gmacs:,.1f} GMAC/s, {peak.runtime}). Rows measured on an edge device have none: the "
                               "peak is this host's.")
    report["student_vs_teacher"] = student_vs_teacher(report["prune"], report["baseline"], engines, distilled=bool(report["distill"]),
                                                      split=split)
    return Report.model_validate(report)


def _add_timed_together(rows: list[dict[str, Any]], validations: Mapping[str, ManifestEntry]) -> None:
    """Each engine gets its p50 from the rounds that timed its backend's engines together, where they ran: here, or on
    its device (``timed-together/<backend>@<device>``)."""
    for row in rows:
        entry = validations.get(together_name(row["backend"] if "device_name" not in row else f"{row['backend']}@{row['device_name']}"))
        figures = entry.metrics["engines"].get(row["name"]) if entry is not None else None
        if figures is not None and row["status"] == "ok":
            row["timed_together"] = {**figures, "rounds": entry.metrics["rounds"], "engines": list(entry.metrics["engines"]),
                                     "measured_in": entry.metrics["measured_in"], "measured_at": entry.metrics["measured_at"]}


def _saturation_note(engines: list[EngineRow], device: dict[str, Any] | None) -> str | None:
    """What the report says when INT8 engines whose kernels saturate on x86 without VNNI (``BackendInfo.int8_saturates``)
    were measured on such a CPU: their agreement is then the CPU's, not only their quantization's."""
    saturating = sorted({row.backend for row in engines if row.backend in REGISTRY and REGISTRY[row.backend].int8_saturates
                         and row.precision == "int8" and row.key.device is None and row.status == "ok"})
    if not saturating or not saturates_u8s8(device):
        return None
    owners = " and ".join(f"{display_name(name)}'s" for name in saturating)
    return (f"This CPU has no VNNI or AMX (INT8 flags: {', '.join((device or {}).get('isa_flags') or ['none'])}): "
            f"{owners} INT8 kernels add u8×s8 products in pairs into 16 bits (VPMADDUBSW), which saturate with 8-bit "
            "weights, so their INT8 engines agree with FP32 less here than their quantization does, and a float-layer search "
            "keeps more layers in float. A CPU with VNNI, AMX or ARM's dot products does not saturate; on targets without "
            "them, 7-bit weights (ONNX Runtime reduce_range, OpenVINO overflow_fix: enable) avoid it at a cost of their own "
            "(docs/backends.md).")


def _typed(fields: Mapping[str, Any]) -> EngineRow:
    """A row's fields as gathered from the manifest, with its identity as an ``EngineKey``."""
    rest = dict(fields)
    name = rest.pop("name")
    key = EngineKey(backend=rest.pop("backend"), precision=rest.pop("precision"), device=rest.pop("device_name", None))
    rest.pop("target", None)
    if key.name != name:  # a manifest entry whose name is not its config's backend and precision
        raise DataError(f"manifest entry {name!r}: its config names {key.name!r}")
    return EngineRow(key=key, **rest)


AGREEMENT_KEYS = ("top1_agreement", "top1_agreement_ci95", "top1_agreement_groups", "top5_agreement", "max_abs_error", "mean_cosine",
                  "min_cosine", "min_sqnr_db", "max_relative_l2",
                  "fidelity")
DEVICE_KEYS = ("device_name", "agent", "device", "agent_edgeship")


def _device_rows(engine: dict[str, Any], entries: list[ManifestEntry], base_top1: float | None) -> list[dict[str, Any]]:
    """The engine measured on each device of the recipe (validate entries ``<engine>@<device>``), one row each, judged
    like any engine; its key's device groups them for that device's recommendation."""
    rows = []
    for entry in entries:
        device = _device_of(entry)
        if device is None or entry.name != f"{engine['name']}@{device}":
            continue
        row = {**{k: engine[k] for k in ("backend", "precision", "artifact", "sha256", "path", "build_seconds")},
               "name": entry.name, "device_name": device, "status": entry.status,
               "reason": entry.reason, "reused": {"build": engine["reused"]["build"], "validate": entry.reused}}
        if engine["status"] != "ok":
            row.update(status=engine["status"], reason=engine["reason"])
        if entry.status == "ok":
            row.update({k: v for k, v in entry.metrics.items() if k not in DEVICE_KEYS})
            if entry.metrics.get("top1") is not None:
                row.update(accuracy_drop(entry.metrics["top1"], base_top1))
        rows.append(row)
    return rows


def _divergence(found: Mapping[str, dict[str, Any]], engine: str) -> dict[str, Any] | None:
    """The engine's layer-wise divergence (``found``: each compared engine's, by name): its own, or where it has none
    (TensorRT without a GPU) its prepared ONNX's on ONNX Runtime, a prediction."""
    own, predicted = found.get(engine), found.get(prediction_name(engine))
    if own is not None and not own.get("reason"):
        return own
    return predicted or own


def _device_of(entry: ManifestEntry) -> str | None:
    """The edge device a validate entry was measured on, as its config records it; ``None`` for this host."""
    return (entry.config.get("device") or {}).get("name") if entry.stage == "validate" else None


def _devices(entries: list[ManifestEntry]) -> dict[str, Any]:
    """Each remote device that measured an engine: its agent's address, its description and its edgeship version."""
    devices: dict[str, Any] = {}
    for entry in entries:
        device = _device_of(entry)
        if device is None:
            continue
        if entry.status == "ok":
            devices.setdefault(device, {k: entry.metrics.get(k) for k in ("agent", "device", "agent_edgeship")})
        else:
            devices.setdefault(device, {"agent": entry.config["device"].get("url"), "device": None, "agent_edgeship": None})
    return devices


def scored_on(dataset: Mapping[str, Any] | None) -> str:
    """The split the engines were scored on: evaluation, or validation where validate.split chose held-out data (a sweep's
    trial)."""
    return (dataset or {}).get("scored_on", "evaluation")


def accuracy_basis(dataset: Mapping[str, Any] | None, task: str = "classification") -> dict[str, str]:
    """What the report's accuracy figures are: top-1 against labels, or (unlabelled data) agreement with the FP32
    PyTorch model, which the report must never call accuracy, or for a generic model output fidelity against the FP32
    reference. ``key`` is the engine-row field that ranks and plots."""
    dataset = dataset or {}
    split = scored_on(dataset)
    if task == "generic":
        return {"basis": "fidelity", "key": "min_cosine", "title": "output cosine",
                "text": f"each output of each engine against the FP32 reference's on {dataset.get('eval')} "
                        f"{split} samples of {dataset.get('name')} (cosine, SQNR, relative L2, max abs error; a row shows its worst "
                        "output)"}
    if dataset.get("labelled", True):
        return {"basis": "labels", "key": "top1", "title": "top-1", "text": f"top-1 accuracy on the labelled {dataset.get('name', '')} "
                f"{split} split".replace("  ", " ")}
    return {"basis": "agreement", "key": "top1_agreement", "title": "top-1 agreement",
            "text": f"no labels ({dataset.get('name')}): accuracy is top-1 / top-5 agreement with the FP32 PyTorch model on "
                    f"{dataset.get('eval')} {split} images, not accuracy against ground truth; beside each figure, its 95% "
                    "interval (whole photos resampled where the images are crops of photos, which are correlated)"}


def _add_drop_vs_backend_fp32(engines: list[EngineRow]) -> None:
    """Each engine's top-1 drop against its own backend's FP32 engine: the quantization effect alone, apart
    from what pruning and distillation changed against the baseline."""
    fp32 = {row.target: row.top1 for row in engines if row.precision == "fp32" and row.top1 is not None}
    for row in engines:
        if row.top1 is not None and row.target in fp32:
            row.top1_drop_vs_backend_fp32_points = round(100 * (fp32[row.target] - row.top1), 4)


def _add_call_overhead(engines: list[EngineRow]) -> None:
    """What edgeship's call adds to the runtime's own, per call: the timed call's median minus the bare call's, both
    timed by the same harness in the same process, round by round (the median of the rounds' differences); results of an
    older harness have only the difference of the pooled p50s."""
    for row in engines:
        if row.latency and row.bare_latency:
            row.call_overhead_us = call_overhead_us(row.latency, row.bare_latency)


def _add_fraction_of_peak(engines: list[EngineRow], peak: Peak | None) -> None:
    """Each engine's achieved multiply-accumulate rate, and that rate over this machine's GEMM rate at its precision.
    Rows measured on an edge device have no fraction: the peak is this host's."""
    for row in engines:
        if row.latency is None or not row.macs_per_sample:
            continue
        row.achieved_gmacs = round(row.macs_per_sample * row.latency["batch_size"] / (row.p50_ms * 1e-3) / 1e9, 3)
        if peak is not None and row.key.device is None:
            row.fraction_of_peak = round(row.achieved_gmacs / peak.for_precision(row.precision).gmacs, 5)


def _add_predicted_drop_vs_onnx_fp32(engines: list[EngineRow]) -> None:
    """A prediction's top-1 drop against the exported FP32 ONNX on the same runtime (``onnxruntime/fp32``): what the
    backend's FP16/INT8 preparation alone costs."""
    exported = next((row.top1 for row in engines if row.name == "onnxruntime/fp32"), None)
    for row in engines:
        predicted = row.predicted
        if predicted is not None and exported is not None and predicted.on == "onnxruntime" and predicted.top1 is not None:
            predicted.top1_drop_vs_onnx_fp32_points = round(100 * (exported - predicted.top1), 4)


def student_vs_teacher(prune: Mapping[str, Any] | None, baseline: Mapping[str, Any] | None, engines: list[EngineRow], *,
                       distilled: bool, split: str = "evaluation") -> dict[str, Any] | None:
    """The pipeline's verdict on the student: measured ORT FP32 latency ratio (both timed in the prune stage of one run,
    same harness) and the top-1 of its ORT FP32 engine on ``split`` (the engines' split) against the teacher's PyTorch
    FP32 top-1 — or, for a model without labels, that engine's output cosine with the teacher's PyTorch outputs."""
    engine = next((e for e in engines if e.name == "onnxruntime/fp32" and e.status == "ok"), None)
    if not prune or not baseline or engine is None:
        return None
    verdict = {"teacher_p50_ms": prune["before"]["latency"]["p50_ms"], "student_p50_ms": prune["after"]["latency"]["p50_ms"],
               "latency_reduction": prune["latency_speedup_p50"], "stages": "prune + distill" if distilled else "prune", "split": split}
    if prune.get("measure", "top1") == "cosine":
        return {**verdict, "measure": "cosine", "student_cosine": engine.min_cosine}
    return {**verdict, "measure": "top1", "teacher_top1": baseline["top1"], "student_top1": engine.top1,
            "top1_drop_points": engine.top1_drop_points}


def _distill_section(entries: list[ManifestEntry], split: str = "eval") -> dict[str, Any] | None:
    """Teacher, student before recovery, hard-label fine-tune and distilled scores, and both training histories;
    ``split`` ``val`` (a run scored on validation) leaves every evaluation figure out, as ``distill.json`` does."""
    done = {e.stage: e for e in entries if e.status == "ok"}
    if "distill" not in done:
        return None
    distilled, ablation = done["distill"], done.get(ABLATION)
    history = {"distilled": distilled.metrics.get("history"), "hard_label_finetune": ablation.metrics.get("history") if ablation else None}
    return {"name": distilled.name, "reused": distilled.reused, "seconds": distilled.seconds + (ablation.seconds if ablation else 0.0),
            **comparison(distilled.metrics, ablation.metrics if ablation else None, split),
            "epochs_run": distilled.metrics.get("epochs_run"), "best_epoch": distilled.metrics.get("best_epoch"),
            "history": without_evaluation(history) if split == "val" else history}


def load_report(path: Path) -> Report:
    """A run's ``report.json`` (``path`` or the file in that folder), typed; a ``DataError`` naming the file otherwise."""
    path, text = _read_run_file(path, "report.json", missing="no report here")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: not a readable report.json: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise DataError(f"{path}: not an edgeship report (schema {SCHEMA!r} expected)")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: report schema version {document.get('schema_version')}, this edgeship reads {SCHEMA_VERSION}")
    try:
        return Report.model_validate(document)
    except ValueError as exc:
        raise DataError(f"{path}: not a readable report.json: {str(exc).splitlines()[0]}") from None
