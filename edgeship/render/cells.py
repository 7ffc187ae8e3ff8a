"""An engine row's cells and the release verdict's words, computed once for every rendering.

A cell has its text and its kind: ``measured`` (this engine's own figure), ``predicted`` (a prepared ONNX standing in
for an engine that could not be built here, scored on another runtime: never to be read as measured), ``missing``, or
a verdict (``pass`` | ``fail`` | ``skipped`` | ``error``), which says how to colour it. The terminal and the page choose
the columns they show by name and style each kind their way; the text is the same in both. A latency cell also
carries its 95% interval, which the page shows and the terminal leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeship.measure import SQNR_CAP_DB
from edgeship.qualification import EngineRow, Release, Scores
from edgeship.render.text import change_points, interval_text, pct, size

Kind = Literal["measured", "predicted", "missing", "pass", "fail", "skipped", "error"]

# the accuracy columns by the report's basis: labels give top-1 and its change, no labels agreement with FP32, and a
# generic model the fidelity of its worst output against FP32
LABELLED = ("top-1", "Δ top-1 vs baseline", "Δ top-1 vs own FP32", "agreement")
UNLABELLED = ("top-1 agreement", "top-5 agreement", "cosine")
FIDELITY = ("cosine", "SQNR dB", "rel. L2", "max abs error")
COLUMNS = {"labels": LABELLED, "agreement": UNLABELLED, "fidelity": FIDELITY}


@dataclass(frozen=True)
class Cell:
    text: str
    kind: Kind
    interval: str = ""  # a measured statistic's 95% interval, "0.9000–1.1000"


MISSING = Cell("—", "missing")


def engine_cells(row: EngineRow, *, basis: str) -> dict[str, Cell]:
    """Every cell of an engine's line: size, p50, p99, the accuracy columns of the report's ``basis`` (``COLUMNS``), build
    seconds and the verdict."""
    build = row.build_seconds
    return {"size": _measured(size(row.size_bytes)), "p50 ms": latency_cell(row.latency, "p50_ms"),
            "p99 ms": latency_cell(row.latency, "p99_ms"), **accuracy_cells(row, basis=basis),
            "build s": _measured("—" if not build else f"{build:.1f}"), "verdict": verdict_cell(row)}


def verdict_cell(row: EngineRow) -> Cell:
    """The verdict as both renderings print it: pass or fail for a measured engine, else what happened to it; a
    required engine that did not pass reads as a failure whatever happened."""
    verdict = row.verdict or ("skipped" if row.status == "skipped" else "error")
    text = verdict if verdict in ("pass", "fail") else row.status
    if row.required and verdict in ("skipped", "error"):
        return Cell(f"{text}, required", "fail")
    return Cell(text, verdict)


def accuracy_cells(row: EngineRow, *, basis: str) -> dict[str, Cell]:
    """The row's accuracy cells by column (``COLUMNS[basis]``): its own figures where it was measured, else its
    prediction's, marked as such."""
    predicted = row.predicted
    own = {"labels": row.top1, "agreement": row.top1_agreement, "fidelity": row.min_cosine}[basis] is not None
    source: Scores = row if own or predicted is None else predicted
    kind: Kind = "measured" if source is row else "predicted"

    def cell(text: str) -> Cell:
        return MISSING if text == "—" else Cell(text, kind)

    if basis == "fidelity":
        return {"cosine": cell(_figure(source.min_cosine, ".5f")), "SQNR dB": cell(db_text(source.min_sqnr_db)),
                "rel. L2": cell(_figure(source.max_relative_l2, ".2e")), "max abs error": cell(_figure(source.max_abs_error, ".3g"))}
    if basis == "agreement":
        cosine = source.mean_cosine
        top1 = cell(pct(source.top1_agreement))
        if top1 is not MISSING and source.top1_agreement_ci95 is not None:
            top1 = Cell(top1.text, top1.kind, interval_text(source.top1_agreement_ci95, source.top1_agreement_groups))
        return {"top-1 agreement": top1, "top-5 agreement": cell(pct(source.top5_agreement)),
                "cosine": cell("—" if cosine is None else f"{cosine:.5f}")}
    # against its own backend's FP32: nothing to say for an FP32 engine; a prediction compares with the exported ONNX
    if predicted is not None and source is predicted:
        vs_own = change_points(predicted.top1_drop_vs_onnx_fp32_points)
    else:
        vs_own = "—" if row.precision == "fp32" else change_points(row.top1_drop_vs_backend_fp32_points)
    return {"top-1": cell(pct(source.top1)), "Δ top-1 vs baseline": cell(change_points(source.top1_drop_points)),
            "Δ top-1 vs own FP32": cell(vs_own), "agreement": cell(pct(source.top1_agreement))}


def latency_cell(latency: dict[str, object] | None, key: str) -> Cell:
    """A latency statistic in ms with its bootstrap 95% interval, where measured."""
    if not latency or latency.get(key) is None:
        return MISSING
    bounds = (latency.get("ci95") or {}).get(key)  # type: ignore[attr-defined]
    return Cell(f"{latency[key]:.4f}", "measured", f"{bounds[0]:.4f}–{bounds[1]:.4f}" if bounds else "")


def release_headline(release: Release) -> str:
    """The verdict in one line: ``release gates: pass (2 required engines, all passed)`` or ``release gates: fail``."""
    if release.passed:
        return f"release gates: pass ({len(release.required)} required engines, all passed)"
    return f"release gates: fail (exit code {release.exit_code})"


def _figure(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def overhead_text(us: float | None) -> str:
    """The per-call overhead in µs. The timed call does all the runtime's call does and more, so a negative figure is
    the rounds' noise, said so rather than shown as a saving."""
    if us is None:
        return "—"
    return f"{us:.1f}" if us >= 0 else f"{us:.1f} (below the noise)"


def db_text(value: float | None) -> str:
    """An SQNR in dB; the cap (``measure.SQNR_CAP_DB``: no difference at all) reads as identical."""
    if value is None:
        return "—"
    return "identical" if value >= SQNR_CAP_DB else f"{value:.1f}"


def _measured(text: str) -> Cell:
    return MISSING if text == "—" else Cell(text, "measured")
