"""One trial: the base recipe with the trial's values, run like any recipe, and what the sweep keeps of its report.

A trial is a plain pipeline run over the shared store; the only things it adds are the machine's timing lock
(``NodeLock``: timing waits until no other trial works here) and the threads its training may use.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from edgeship.errors import EdgeshipError
from edgeship.pipeline.report import load_report
from edgeship.recipe import recipe_from_document
from edgeship.sweep.node import NodeLock
from edgeship.sweep.space import Value, with_values

MIB = 1024 * 1024


class TrialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str  # t003: also the run's name prefix
    values: dict[str, Value]
    base: dict[str, Any]  # the base recipe's document, input paths absolute
    recipe_path: Path  # where errors say the recipe came from
    store: Path  # absolute: Ray's workers do not start in the driver's folder
    reports: Path
    target: str  # the objective's engine
    split: Literal["validation", "evaluation"] = "validation"  # trials choose on validation; the chosen are confirmed on evaluation
    compute_threads: int
    node_lock: Path | None = None  # None: the machine's default


class EnginePoint(BaseModel):
    """One engine of one trial as the sweep's fronts see it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    engine: str
    backend: str
    precision: str
    artifact: str | None = None  # the engine's store id: trials that built the same engine share it
    status: str
    verdict: str | None = None
    accuracy: float | None = None
    p50_ms: float | None = None
    p50_ci: tuple[float, float] | None = None
    size_mib: float | None = None

    @property
    def measured(self) -> bool:
        return self.accuracy is not None and self.p50_ms is not None and self.size_mib is not None


class Work(BaseModel):
    """One artifact the trial's run used: built here (``seconds``: how long it took) or reused from the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: str
    name: str
    artifact: str
    reused: bool
    seconds: float


class TrialRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    values: dict[str, Value]
    split: Literal["validation", "evaluation"] = "validation"  # what its accuracy figures were scored on
    status: Literal["ok", "failed"]
    reason: str = ""
    run_dir: str | None = None
    accuracy_key: str | None = None  # top1 | top1_agreement | min_cosine
    engines: list[EnginePoint] = Field(default_factory=list)
    objective: EnginePoint | None = None
    work: list[Work] = Field(default_factory=list)
    seconds: float = 0.0
    waited_for_machine_s: float = 0.0  # waiting to time alone
    timed_alone_s: float = 0.0
    host: str = ""
    attempt: int = 0
    recipe: dict[str, Any] = Field(default_factory=dict)  # the trial's recipe document, as a user would run it


def run_trial(request: TrialRequest, *, host: str = "") -> TrialRecord:
    """Run the trial's recipe; a recipe or pipeline error is the trial's failure, recorded with its reason."""
    from edgeship.pipeline import run as pipeline

    started = time.perf_counter()
    document = with_values(request.base, request.values)
    record = TrialRecord(name=request.name, values=request.values, split=request.split, status="failed", host=host, recipe=document)
    suffix = "" if request.split == "validation" else f"-{request.split}"
    run_document = with_values(document, {"name": f"{document.get('name', 'recipe')}-{request.name}{suffix}", "store": str(request.store),
                                          "reports": str(request.reports), "validate.split": request.split,
                                          # the sweep times its fronts together at the end (sweep/together.py): the trials'
                                          # own recommendations decide nothing, so they skip the rounds
                                          "validate.together_rounds": 0})
    log = io.StringIO()
    lock = NodeLock(request.node_lock)
    try:
        recipe = recipe_from_document(run_document, request.recipe_path)
        with lock.working():
            result = pipeline.run(recipe, console=Console(file=log, width=160, force_terminal=False), occupancy=lock,
                                  compute_threads=request.compute_threads)
    except EdgeshipError as exc:
        record.reason = str(exc)
        record.seconds = time.perf_counter() - started
        return record
    finally:
        record.waited_for_machine_s, record.timed_alone_s = lock.waited_s, lock.timed_s
    (result.run_dir / "trial.log").write_text(log.getvalue(), encoding="utf-8")
    record.run_dir = str(result.run_dir)
    record.work = [Work(stage=e.stage, name=e.name, artifact=e.artifact, reused=e.reused, seconds=e.seconds)
                   for e in result.manifest.entries if e.artifact and e.status == "ok"]
    report = load_report(result.run_dir)
    record.accuracy_key = report.accuracy["key"]
    record.engines = [_point(row.model_dump(mode="json", by_alias=True), record.accuracy_key) for row in report.engines]
    record.objective = next((p for p in record.engines if p.engine == request.target), None)
    record.status = "ok"
    if record.objective is None or not record.objective.measured:
        record.status = "failed"
        reason = next((row.reason for row in report.engines if row.name == request.target), "") or "not measured"
        record.reason = f"{request.target}: {reason}"
    record.seconds = time.perf_counter() - started
    return record


def outcome(record: TrialRecord) -> str:
    """The record in a few words for the sweep's terminal lines: its objective engine's figures, or why it failed."""
    o = record.objective
    if record.status == "ok" and o is not None and o.measured:
        return f"{o.engine} {o.accuracy:.4f}, p50 {o.p50_ms:.3f} ms, {o.size_mib:.2f} MiB"
    return f"failed: {record.reason}"


def _point(row: Mapping[str, Any], key: str) -> EnginePoint:
    latency = row.get("latency") or {}
    ci = (latency.get("ci95") or {}).get("p50_ms")
    size = row.get("size_bytes")
    return EnginePoint(engine=row["name"], backend=row["backend"], precision=row["precision"], artifact=row.get("artifact"),
                       status=row["status"],
                       verdict=row.get("verdict"), accuracy=row.get(key), p50_ms=latency.get("p50_ms"),
                       p50_ci=tuple(ci) if ci else None, size_mib=size / MIB if size is not None else None)
