"""The run's summary on the terminal: the engine table, failed gates, the recommendation per backend and the verdict,
then one line each on prepared ONNX, INT8 weights, latency cross-checks, pruning, the student and distillation.

It reads the typed report only (``edgeship report`` prints it again from a run folder); its cells and the release
verdict's words come from ``render.cells``, which the HTML page shares, so both say the same thing the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.gates import format_value
from edgeship.qualification import EngineRow, Report
from edgeship.render.cells import COLUMNS, Cell, db_text, engine_cells, latency_cell, overhead_text, release_headline
from edgeship.render.text import (
    MEASURE_NAMES,
    change_points,
    dataset_warnings,
    db,
    int8_weight_lines,
    interval_text,
    student_measure,
    verdict_measure,
    weights_alone_text,
)
from edgeship.render.text import pct as _pct
from edgeship.render.text import size as _size


def print_summary(report: Report, console: Console) -> None:
    """The summary table (every engine with precision, size, p50/p99, accuracy, build time and verdict), the failed gates,
    the recommendation per backend and the release verdict with its reasons, then the one-line facts."""
    device = report.device or {}
    table = Table(title=f"edgeship · {report.run_id} · {device.get('cpu', '?')} · {report.threads} threads")
    basis = report.accuracy.get("basis", "labels")
    labelled = basis == "labels"
    accuracy_columns = COLUMNS[basis]
    columns = ("size", "p50 ms", "p99 ms", *accuracy_columns, "build s", "verdict")
    for column in ("engine", "precision", *columns, "ship"):
        table.add_column(column, justify="left" if column in ("engine", "precision", "verdict", "ship") else "right",
                         no_wrap=column == "verdict")
    for line in dataset_warnings(report):
        console.print(f"[bold yellow]{escape(line)}[/bold yellow]", soft_wrap=True)
    baseline = report.baseline
    if baseline:
        lat = baseline.get("latency") or {}
        reference = ([_pct(baseline.get("top1")), "baseline", "—", "—"] if labelled
                     else ["reference"] * (len(accuracy_columns) - 1) + ["—"])
        table.add_row(baseline["name"].split("/")[0], "fp32", _size(baseline.get("size_bytes")), latency_cell(lat, "p50_ms").text,
                      latency_cell(lat, "p99_ms").text, *reference, "—", "reference", "")
    reasons: dict[str, list[str]] = {}  # one footnote per distinct reason, so long install commands do not fill the table
    for row in report.engines:
        if row.reason:
            reasons.setdefault(f"{row.status}: {row.reason}", []).append(row.name)
    marks = {reason: f"({n})" for n, reason in enumerate(reasons, 1)}
    shipped = {r.engine for r in report.recommendations.values() if r.engine}
    for row in report.engines:
        mark = marks.get(f"{row.status}: {row.reason}", "") if row.reason else ""
        cells = engine_cells(row, basis=basis)
        table.add_row(row.target, row.precision, *(_styled(cells[column]) for column in columns[:-1]),
                      f"{_styled(cells['verdict'])} {mark}".rstrip(), "[bold green]✓[/bold green]" if row.name in shipped else "")
    console.print(table)
    for reason, names in reasons.items():
        console.print(f"{marks[reason]} {', '.join(names)} {escape(reason)}", soft_wrap=True)
    for row in report.engines:
        for gate in row.gates:
            if gate.outcome == "fail":
                console.print(f"[red]gate failed[/red] {row.name}: {gate.title} {format_value(gate.gate, gate.value)} vs "
                              f"limit {format_value(gate.gate, gate.limit)} ({escape(gate.detail)})", soft_wrap=True)
    for backend, choice in report.recommendations.items():
        head = f"[bold]{backend}[/bold]: ship [bold green]{choice.engine}[/bold green]" if choice.engine else \
            f"[bold]{backend}[/bold]: [red]nothing to ship[/red]"
        console.print(f"{head} — {escape(choice.reason)}", soft_wrap=True)
    release = report.release
    colour = "green" if release.passed else "red"
    console.print(f"[bold {colour}]{release_headline(release)}[/bold {colour}]", soft_wrap=True)
    for reason in release.reasons:
        console.print(f"  [red]✗[/red] {escape(reason)}", soft_wrap=True)
    for row in report.engines:
        if row.predicted or row.prepared:
            console.print(prepared_line(row), soft_wrap=True)
    for row in report.engines:
        for line in int8_weight_lines(row):
            console.print(line, soft_wrap=True)
    overheads = [f"{row.name} {overhead_text(row.call_overhead_us)}" for row in report.engines if row.call_overhead_us is not None]
    if overheads:
        console.print("per-call overhead, µs (the timed call's p50 − the runtime's own call): " + ", ".join(overheads), soft_wrap=True)
    fractions = [f"{row.name} {100 * row.fraction_of_peak:.1f}%" for row in report.engines if row.fraction_of_peak is not None]
    if report.peak is not None and fractions:
        console.print(f"fraction of this machine's peak (FP32 {report.peak.fp32.gmacs:,.0f}, INT8 {report.peak.int8.gmacs:,.0f} GMAC/s "
                      f"on {report.peak.threads} threads; where the time goes per layer: report.html): " + ", ".join(fractions),
                      soft_wrap=True)
    for row in report.engines:
        check = row.cross_check
        if not check:
            continue
        if check["status"] == "ok":
            colour = "green" if check["within_5pct"] else "yellow"
            paired = "round by round" if check.get("ours_round_p50_ms") else "of the medians"
            console.print(f"latency cross-check {row.name}: our p50 {check['ours_p50_ms']:.3f} ms, {check['tool']} median "
                          f"{check['median_ms']:.3f} ms ([{colour}]×{check['ratio']:.2f}[/{colour}] {paired})" + cross_check_reason(check),
                          soft_wrap=True)
        else:
            console.print(f"[yellow]latency cross-check {row.name} failed: {escape(check['reason'])}[/yellow]", soft_wrap=True)
    prune = report.prune
    if prune:
        before, after = prune["before"], prune["after"]
        console.print(f"prune ({prune.get('method')}): MACs kept {prune['macs_kept']:.1%}, parameters kept {prune['parameters_kept']:.1%}, "
                      f"ONNX {_size(before['onnx_bytes'])} → {_size(after['onnx_bytes'])}, measured ORT FP32 p50 "
                      f"{before['latency']['p50_ms']:.3f} → {after['latency']['p50_ms']:.3f} ms (×{prune['latency_speedup_p50']:.2f}), "
                      f"{student_measure(prune)}", soft_wrap=True)
    verdict = report.student_vs_teacher
    if verdict:
        console.print(f"[bold]student vs teacher ({verdict['stages']})[/bold]: measured ORT FP32 p50 {verdict['teacher_p50_ms']:.3f} → "
                      f"{verdict['student_p50_ms']:.3f} ms ([bold]×{verdict['latency_reduction']:.2f}[/bold]), {verdict_measure(verdict)}",
                      soft_wrap=True)
    distill = report.distill
    if distill:
        measure = distill.get("measure", "top1")
        split = distill.get("split", "eval")  # val: a run scored on validation shows no evaluation figure
        rows, on_eval = distill[measure], f"{split}_{measure}"
        hard = rows.get("hard_label_finetune")
        shown = _pct if measure == "top1" else (lambda value: f"{value:.4f}")
        on = "test" if split == "eval" else "validation"
        console.print(f"distill ({distill['name']}): {on} {MEASURE_NAMES.get(measure, measure)} teacher {shown(rows['teacher'][on_eval])}, "
                      f"student before {shown(rows['student_before'][on_eval])}, hard-label fine-tune "
                      f"{shown(hard[on_eval]) if hard else 'not run'}, distilled {shown(rows['distilled'][on_eval])} "
                      f"({change_points(distill['distilled_drop_vs_teacher_points'])} vs teacher"
                      + (f", {distill['gain_over_hard_labels_points']:+.2f} pt over hard labels)" if hard else ")"), soft_wrap=True)


STYLES = {"predicted": "italic", "pass": "green", "fail": "red", "skipped": "yellow", "error": "red"}


def _styled(cell: Cell) -> str:
    text = f"{cell.text} pred." if cell.kind == "predicted" else cell.text
    style = STYLES.get(cell.kind)
    return f"[{style}]{escape(text)}[/{style}]" if style else escape(text)


def prepared_line(row: EngineRow) -> str:
    """One line on a prepared ONNX (TensorRT's): which tool made it, and its accuracy as predicted on ONNX Runtime."""
    prepared, predicted = row.prepared or {}, row.predicted
    if prepared.get("status", "ok") != "ok":
        return f"[yellow]{row.name}: no prepared ONNX: {escape(str(prepared.get('reason')))}[/yellow]"
    if prepared.get("tool") == "none":
        text = f"{row.name}: ONNX is the exported FP32 model"
    else:
        tool = f"{prepared.get('tool', '?')} {prepared.get('version') or ''}".strip()
        if prepared.get("fallback_reason"):
            tool += f" (ModelOpt unavailable: {prepared['fallback_reason']})"
        text = f"{row.name}: ONNX prepared by {escape(tool)} in {prepared.get('seconds', 0):.1f} s"
        subnormal = (prepared.get("qdq") or {}).get("subnormal_fp16_scales")
        if subnormal:
            text += (f" [yellow]({subnormal} FP16 weight scales are subnormal, from near-zero channels; ONNX Runtime's CPU "
                     "DequantizeLinear mishandles them, so the prediction below may be wrong: high_precision: fp32 avoids "
                     "them)[/yellow]")
    if predicted and predicted.top1_agreement is None and predicted.min_cosine is not None:  # a generic model: output fidelity
        text += (f"; [italic]{predicted.label}[/italic]: output cosine {predicted.min_cosine:.5f}, SQNR "
                 f"{db_text(predicted.min_sqnr_db)} dB (worst output)")
    elif predicted:
        text += (f"; [italic]{predicted.label}[/italic]: "
                 + (f"top-1 {_pct(predicted.top1)}, " if predicted.top1 is not None else "")
                 + (f"({change_points(predicted.top1_drop_points)} vs baseline), " if predicted.top1_drop_points is not None else "")
                 + f"agreement {_pct(predicted.top1_agreement)}"
                 + (f", top-5 agreement {_pct(predicted.top5_agreement)}" if predicted.top5_agreement is not None else ""))
    return text


def cross_check_reason(check: Mapping[str, Any]) -> str:
    """Why our p50 and the backend tool's median differ by more than 5%, from what was measured."""
    if check["within_5pct"] or "bare_ratio" not in check:
        return ""
    if abs(check["bare_ratio"] - 1) > 0.05:
        return (f"; the engine call alone times ×{check['bare_ratio']:.2f} of the tool's median in the same rounds too, so the "
                "difference is in the engine's run (background load, or settings the tool applies otherwise), not in edgeship's call")
    return (f"; the engine call alone times ×{check['bare_ratio']:.2f} of the tool's median in our harness, so the rest is the "
            f"{1e3 * check['call_overhead_ms']:.0f} µs call around it (writing the input into the runtime, edgeship's "
            "call), which the tool leaves out and every backend's p50 here includes")


def print_float_search(row: EngineRow, console: Console) -> bool:
    """``edgeship debug``: the candidates ``keep_float: auto`` built for ``row``'s engine, each with its figure on the
    validation samples (and its 95% interval where recorded) and its in-search p50; False when the engine had no search."""
    search = row.float_search
    if not search:
        return False
    cosine = search.get("measure") == "cosine"
    outcome = "met" if search["met"] else "not met: the best candidate found is kept"
    console.print(f"[bold]{escape(row.name)}[/bold]: keep_float auto against {escape(search['target_text'])} on {search['samples']} "
                  f"validation samples ({outcome}); {len(search['candidates'])} candidates in {search['seconds']:.0f} s, the ranking "
                  f"{search.get('ranking_seconds', 0):.0f} s of it", soft_wrap=True)
    budget = search.get("together")
    table = Table(title="candidates (layers: ranked layers in float; nodes: with those feeding them)")
    for column in ("layers", "nodes", "output cosine" if cosine else "agreement", *([] if cosine else ["95% interval"]),
                   "p50 ms in the search", *(["× fully quantized, together", "within budget"] if budget else []), "meets", ""):
        table.add_column(column, justify="right")
    for candidate in search["candidates"]:
        figures = [f"{candidate['cosine']:.5f}"] if cosine else [
            f"{100 * candidate['agreement']:.2f}%", interval_text(candidate.get("agreement_ci95")) or "—"]
        timed = [f"{candidate['slowdown']:.2f}", "yes" if candidate["within_budget"] else "no"] if budget else []
        table.add_row(str(candidate["float_layers"]), str(len(candidate["nodes"])), *figures, f"{candidate['p50_ms']:.3f}", *timed,
                      "yes" if candidate["meets"] else "no", "chosen" if candidate["float_layers"] == search["chosen"] else "")
    console.print(table)
    alone = weights_alone_text(search)
    if alone:
        console.print(f"[dim]{escape(alone)}; the gap between the two comes with the activations in INT8[/dim]", soft_wrap=True)
    if budget:
        console.print(f"[dim]the budget: p50 at most {budget['max_slowdown']:g}× the fully quantized candidate's, the median of "
                      f"their ratios over {budget['rounds']} interleaved rounds, each candidate timed with it alone "
                      f"({budget['pairs']} pairs, {budget['seconds']:.0f} s); \"meets\" is the figure alone[/dim]", soft_wrap=True)
    return True


def print_divergence(row: EngineRow, console: Console, *, count: int = 10) -> None:
    """``edgeship debug``: the ``count`` tensors of ``row``'s engine furthest from FP32, and the layers whose own error is
    largest (where the runtime runs a layer alone) or, where it cannot, where the accumulated SQNR falls most."""
    d = row.divergence
    if d is None or not d.available:
        raise ValueError(f"{row.name}: no layer-wise comparison" + (f": {d.reason}" if d is not None else
                         " (the run's divergence stage is off in its recipe, or failed: its manifest says which)"))
    console.print(f"[bold]{escape(row.name)}[/bold]: {len(d.rows)} tensors of the FP32 ONNX compared on {d.samples} {d.split} "
                  f"samples ({escape(d.method)}); {len(d.unmapped)} not in the engine", soft_wrap=True)
    for text in (d.note, f"layers alone: {d.local_note}" if d.local_note else ""):
        if text:
            console.print(f"[dim]{escape(text)}[/dim]", soft_wrap=True)
    worst = Table(title=f"the {count} tensors furthest from FP32")
    columns = ["tensor", "op type", "depth", "SQNR dB", "cosine"] + (["alone: SQNR dB"] if d.has_local else [])
    for column in columns:
        worst.add_column(column, justify="left" if column in ("tensor", "op type") else "right")
    for t in d.worst(count):
        alone = [db(t.local.sqnr_db) if t.local else "—"] if d.has_local else []
        worst.add_row(escape(t.tensor), t.op_type, str(t.depth), db(t.sqnr_db), f"{t.cosine:.5f}", *alone)
    console.print(worst)
    if d.has_local:
        sources = Table(title="the largest errors of a layer's own (alone on FP32 inputs): where float helps most")
        for column in ("tensor", "op type", "depth", "alone: SQNR dB", "accumulated SQNR dB"):
            sources.add_column(column, justify="left" if column in ("tensor", "op type") else "right")
        for t in d.worst_local(min(count, 5)):
            sources.add_row(escape(t.tensor), t.op_type, str(t.depth), db(t.local.sqnr_db if t.local else None), db(t.sqnr_db))
    else:
        sources = Table(title="steepest falls from the tensor before: the likely sources")
        for column in ("tensor", "op type", "depth", "SQNR dB", "fall dB"):
            sources.add_column(column, justify="left" if column in ("tensor", "op type") else "right")
        for t, fall in d.steepest(min(count, 5)):
            sources.add_row(escape(t.tensor), t.op_type, str(t.depth), db(t.sqnr_db), f"{fall:.2f}")
    console.print(sources)

