"""``report.html``: the release qualification report as one self-contained page (inline CSS and SVG, no script,
nothing fetched), rendered from the typed report alone; its cells and the verdict's words come from ``render.cells``,
which the terminal shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

from edgeship.gates import FIDELITY_GATES, GATES, TITLES, format_value
from edgeship.qualification import Report
from edgeship.recipe import GatesConfig
from edgeship.render import plots
from edgeship.render.cells import Cell, engine_cells, latency_cell, overhead_text, release_headline
from edgeship.render.text import change_points, dataset_warnings, db, float_layers_line, int8_weight_lines, verdict_measure
from edgeship.render.text import pct as _pct
from edgeship.render.text import size as _size

SECTIONS = ("verdict", "recommendations", "gates", "pareto", "latency", "throughput", "limit", "profile", "divergence", "pipeline",
            "provenance",
            "notes")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:1.2em 1.6em;color:#1b1b1b}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right;vertical-align:top}th{background:#f4f4f4}
td.l,th.l{text-align:left}td.c,th.c{text-align:center}.pass{color:#16794a;font-weight:600}.fail{color:#b3261e;font-weight:600}
.skipped,.not-applicable{color:#8a6d00}.error{color:#b3261e}.pred{font-style:italic;color:#555}
.pair{display:flex;gap:2em;flex-wrap:wrap}
.banner{padding:.6em 1em;border-radius:6px;font-size:1.1em;margin:.8em 0}.banner.pass{background:#e6f4ea}.banner.fail{background:#fce8e6}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:28em}
.muted{color:#666}.ship{color:#16794a;font-weight:700}
"""


def render_html(report: Report) -> str:
    sections = [_verdict(report), _recommendations(report), _gates(report), _pareto(report), _latency(report),
                _throughput(report), _limit(report), _profile(report), _divergence(report), _pipeline(report), _provenance(report),
                _notes(report)]
    device = report.device or {}
    title = f"edgeship release qualification · {report.run_id}"
    head = (f"<h1>{escape(title)}</h1><p class=muted>recipe <b>{escape(str(report.recipe))}</b> · "
            f"edgeship {escape(report.edgeship)} · {escape(str(device.get('cpu')))} · {report.threads} threads "
            f"on CPUs {escape(str(report.cpus))} · {escape(report.created)}</p>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n{head}\n" + "\n".join(sections) + "\n</body></html>\n")


def section(key: str, title: str, body: str) -> str:
    return f"<section id={key}><h2>{escape(title)}</h2>\n{body}\n</section>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """``rows`` hold ready HTML cells; the ``numeric`` columns are right-aligned, the rest left."""
    right = set(numeric)
    head = "".join(f"<th class={'r' if i in right else 'l'}>{escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td class={'r' if i in right else 'l'}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(make: Callable[[], Any], caption: str) -> str:
    return f"<figure>{plots.svg(make())}<figcaption>{escape(caption)}</figcaption></figure>"


def _verdict(report: Report) -> str:
    release = report.release
    reasons = "".join(f"<li>{escape(reason)}</li>" for reason in release.reasons)
    banner = (f"<div class='banner {'pass' if release.passed else 'fail'}'><b>{escape(release_headline(release))}</b>"
              + (f"<ul>{reasons}</ul>" if reasons else "") + "</div>")
    warnings = "".join(f"<div class='banner fail'>{escape(line)}</div>" for line in dataset_warnings(report))
    shipped = {r.engine for r in report.recommendations.values() if r.engine}
    rows = []
    basis = report.accuracy.get("basis", "labels")
    labelled = basis == "labels"
    shown = VERDICT_COLUMNS[basis]
    baseline = report.baseline
    if baseline:
        latency = baseline.get("latency")
        rows.append([f"{escape(baseline_label(baseline['name']))} baseline", "fp32", _size(baseline.get("size_bytes")),
                     *(_styled(latency_cell(latency, key)) for key in ("p50_ms", "p99_ms")),
                     *([_pct(baseline.get("top1")), "reference"] if labelled else ["reference"] * len(shown)), "", "", ""])
    for row in report.engines:
        cells = engine_cells(row, basis=basis)
        failed = [g.gate for g in row.gates if g.outcome == "fail"]
        gates = "all applicable pass" if row.verdict == "pass" else ("fails " + ", ".join(failed) if failed else escape(row.reason))
        rows.append([escape(row.name), escape(row.precision), _styled(cells["size"]), _styled(cells["p50 ms"]), _styled(cells["p99 ms"]),
                     *(_styled(cells[column]) for column in shown), _styled(cells["verdict"]), gates,
                     "<span class=ship>✓ ship</span>" if row.name in shipped else ("required" if row.required else "")])
    columns = {"labels": list(shown), "agreement": ["top-1 agreement with FP32", "top-5 agreement with FP32"],
               "fidelity": ["cosine with FP32 (worst output)", "SQNR dB (worst output)", "relative L2 (worst output)"]}[basis]
    grid = table(["engine", "precision", "size", "p50 ms (95% CI)", "p99 ms (95% CI)", *columns, "verdict", "gates",
                    "recommended"], rows, numeric=range(2, 5 + len(columns)))
    title = {"labels": "", "agreement": "Agreement, not accuracy", "fidelity": "Output fidelity, not accuracy"}[basis]
    note = f"<p><b>{title}</b>: {escape(report.accuracy['text'])}.</p>" if title else ""
    return section("verdict", "Verdict", warnings + banner + note + grid)


VERDICT_COLUMNS = {"labels": ("top-1", "Δ top-1 vs baseline"), "agreement": ("top-1 agreement", "top-5 agreement"),
                   "fidelity": ("cosine", "SQNR dB", "rel. L2")}  # the verdict table's accuracy cells by the report's basis


def baseline_label(name: str) -> str:
    """How the page names the FP32 reference: PyTorch, or an ONNX entry's own ONNX."""
    return "ONNX" if name.startswith("onnx/") else "PyTorch"


def _styled(cell: Cell) -> str:
    """A cell as HTML: a prediction in italics and named as one, a verdict in its colour, an interval muted."""
    if cell.kind == "predicted":
        return f"<span class=pred>{escape(cell.text)} predicted</span>"
    if cell.kind in ("pass", "fail", "skipped", "error"):
        return f"<span class={cell.kind}>{escape(cell.text)}</span>"
    return escape(cell.text) + (f" <span class=muted>({escape(cell.interval)})</span>" if cell.interval else "")


def _recommendations(report: Report) -> str:
    rows = [[escape(backend), f"<span class=ship>{escape(choice.engine)}</span>" if choice.engine else
             "<span class=fail>nothing to ship</span>", escape(choice.reason)]
            for backend, choice in report.recommendations.items()]
    text = ("<p>Per backend, the engine to ship is the fastest one that passes every gate, by measured p50; where the fastest "
            "is not measurably faster, the more accurate of them. Where the backend's engines were timed together, they are "
            "compared round by round (the 95% interval of the median of their per-round ratios), else by their own p50s "
            "(95% intervals that overlap are a tie).</p>")
    return section("recommendations", "Recommendation per backend", text + table(["backend", "engine", "why"], rows) + _together(report))


def _together(report: Report) -> str:
    """Each engine's p50 timed together with its backend's others beside the p50 it was timed with alone."""
    rows = [row for row in report.engines if row.timed_together is not None]
    if not rows:
        return ""
    body = []
    for row in rows:
        together = row.timed_together
        assert together is not None
        low, high = together.p50_ci95
        body.append([escape(row.name), f"{together.round_median_ms:.4f}",
                     escape(", ".join(f"{p50:.4f}" for p50 in together.round_p50_ms)),
                     _styled(Cell(f"{together.p50_ms:.4f}", "measured", f"{low:.4f}–{high:.4f}")),
                     _styled(latency_cell(row.latency, "p50_ms")), escape(together.measured_in)])
    return ("<p>Timed together: each backend's engines again, each loaded once in a process of its own, then taking turns in "
            "short slices (rounds), so that a change of the machine's speed falls on all of them alike.</p>"
            + table(["engine", "median round p50 ms (quoted)", "p50 ms per round", "p50 ms together (95% CI)",
                     "p50 ms alone (95% CI)", "timed together in"], body, numeric=range(1, 5)))


def _gates(report: Report) -> str:
    """A matrix: one row per engine, one column per gate (and per engine's own search target where one has it), each cell
    the outcome with the measured value."""
    gates = report.gates
    shown = [name for name in GATES if _applies(name, report)]
    names = [*shown, *dict.fromkeys(g.gate for row in report.engines for g in row.gates if g.gate not in GATES)]
    limits = [f"{TITLES[name]}: {format_value(name, gates.get(name)) if gates.get(name) is not None else 'no limit'}"
              for name in shown]
    body = []
    for row in report.engines:
        verdict = engine_cells(row, basis="labels")["verdict"]
        head = f"<td class=l>{escape(row.name)}</td><td class=l>{_styled(verdict)}</td>"
        if row.verdict in ("skipped", "error"):  # never measured: one explanation across the gate columns
            predictions = [f"{TITLES[g.gate]} {format_value(g.gate, g.prediction.value)} (would {g.prediction.would})"
                           for g in row.gates if g.prediction]
            text = f"not measured: {escape(row.status)}: {escape(row.reason or 'no result')}"
            if predictions and row.predicted:
                text += f"<br><span class=pred>{escape(row.predicted.label)}: {escape('; '.join(predictions))}</span>"
            body.append(f"<tr>{head}<td class=l colspan={len(names)}>{text}</td></tr>")
            continue
        judged = {gate.gate: gate for gate in row.gates}
        cells = []
        for name in names:
            gate = judged.get(name)
            if gate is None:
                cells.append("<td class=c>—</td>")
                continue
            value = "" if gate.value is None else f"<br>{format_value(gate.gate, gate.value)}"
            limit = "" if name in GATES or gate.limit is None else f" (limit {format_value(gate.gate, gate.limit)})"
            cells.append(f"<td class=c title='{escape(gate.detail, quote=True)}'><span class={gate.outcome}>{gate.outcome}</span>"
                         f"{value}{escape(limit)}</td>")
        body.append(f"<tr>{head}{''.join(cells)}</tr>")
    headers = "".join(f"<th class={'l' if i < 2 else 'c'}>{escape(h)}</th>" for i, h in enumerate(("engine", "verdict",
                                                                                                    *(TITLES[name] for name in names))))
    table = f"<table><thead><tr>{headers}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return section("gates", "Gates × engines", f"<p class=muted>Limits: {escape('; '.join(limits))}; required: "
                    f"{escape(str(gates.get('required') or 'every engine not skipped'))}. A limit whose value was not measured "
                    "fails. Hover a cell for how it was measured; p99 is judged on the upper bound of its 95% interval.</p>" + table)


def _applies(gate: str, report: Report) -> bool:
    """Whether the gates matrix has a column for ``gate``: class-score gates not for a generic model, and the output
    fidelity gates only where the recipe set them."""
    if gate in GatesConfig.CLASSIFICATION:
        return report.task != "generic"
    if gate in FIDELITY_GATES:
        return report.gates.get(gate) is not None
    return True


def _measured(report: Report) -> list[Mapping[str, Any]]:
    """The baseline and every engine measured by this version's harness (a full latency summary and an accuracy figure,
    ``accuracy``: top-1, or agreement with FP32 on unlabelled data, where the baseline is the reference: 100%), as the
    plots take them."""
    key = report.accuracy["key"]
    rows = [{**document, "accuracy": document.get(key)} for document in (r.model_dump(mode="json") for r in report.engines)]
    baseline = report.baseline
    if baseline:
        accuracy = baseline.get("top1") if key == "top1" else 1.0
        rows = [{**baseline, "backend": baseline["name"].split("/")[0], "precision": "fp32", "accuracy": accuracy}, *rows]
    return [r for r in rows if _complete(r)]


def _complete(row: Mapping[str, Any]) -> bool:
    latency = row.get("latency") or {}
    return row.get("accuracy") is not None and {"iterations", "quantiles_ms", "ci95", "max_ms"} <= set(latency)


def _pareto(report: Report) -> str:
    rows = _measured(report)
    if not rows:
        return section("pareto", "Accuracy against latency", "<p>No engine was measured.</p>")
    points = [{"name": r["name"], "backend": r["backend"], "precision": r["precision"], "accuracy": r["accuracy"],
               "p50_ms": r["latency"]["p50_ms"], "p50_ci": r["latency"]["ci95"]["p50_ms"]} for r in rows]
    front = ", ".join(p["name"] for p in plots.pareto_front(points))
    key = report.accuracy["key"]
    ylabel = {"top1": "top-1 (%)", "min_cosine": "output cosine with FP32 (worst output)"}.get(key, "top-1 agreement with FP32 (%)")
    reference = baseline_label(report.baseline["name"]) if report.baseline else "FP32"
    return section("pareto", "Accuracy against latency",
                    figure(lambda: plots.pareto_figure(points, ylabel=ylabel, scale=1.0 if key == "min_cosine" else 100.0),
                            f"Every measured engine and the {reference} baseline; colour: backend, marker: precision. Pareto front: "
                            f"{front}."))


def _latency(report: Report) -> str:
    rows = _measured(report)
    if not rows:
        return section("latency", "Latency distribution per engine", "<p>No engine was measured.</p>")
    statistics = ("mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms")
    grid = table(["engine", "iterations", "mean ms", "std ms", "p50", "p90", "p95", "p99", "max ms", "runtime call p50",
                    "overhead µs", "load ms", "first call ms"],
                   numeric=range(1, 13), rows=[[escape(r["name"]), str(r["latency"]["iterations"]),
                                                *(_styled(latency_cell(r["latency"], k)) for k in statistics),
                                                f"{r['latency']['max_ms']:.3f}", _styled(latency_cell(r.get("bare_latency"), "p50_ms")),
                                                overhead_text(r.get("call_overhead_us")), _num(r.get("load_ms")),
                                                _num(r.get("first_inference_ms"))]
                                               for r in rows])
    return section("latency", "Latency distribution per engine",
                    figure(lambda: plots.latency_figure(rows), "Per-iteration latency up to the 99th percentile, each engine measured "
                            "in its own process; the table gives each statistic with its bootstrap 95% interval.") + grid
                    + "<p class=muted>The p50 the gates use times edgeship's Runner.timed_call, the same call for every backend: the "
                      "input checked once, then written into the runtime and the engine run on every call, the outputs left where "
                      "the runtime put them (as an application reading them in place would). The runtime call p50 times the "
                      "runtime's own call on an input set once (what its benchmark tool times), and the overhead is their "
                      "difference.</p>")


def _throughput(report: Report) -> str:
    rows = [r for r in _measured(report) if r.get("throughput")]
    if not rows:
        return section("throughput", "Throughput and memory", "<p>No throughput was measured.</p>")
    batches = sorted({b for r in rows for b in r["throughput"]}, key=int)
    cells = []
    for r in rows:
        memory = r.get("memory") or {}
        cells.append([escape(r["name"]), *(_throughput_cell(r["throughput"].get(b)) for b in batches),
                      _size(memory.get("peak_rss_bytes")), _size(memory.get("baseline_rss_bytes")), escape(str(r.get("cpus")))])
    grid = table(["engine", *(f"batch {b} samples/s (95% CI)" for b in batches), "peak RSS", "of which before load", "CPUs"], cells,
                   numeric=range(1, len(batches) + 3))
    return section("throughput", "Throughput and memory", figure(lambda: plots.throughput_figure(rows), "Samples per second.")
                    + grid + "<p class=muted>Peak RSS is the measuring process's own peak resident set (VmHWM; ru_maxrss would "
                    "carry over its parent's across exec) after load, first call, "
                    "latency and throughput runs, before accuracy scoring; 'before load' is the interpreter and edgeship alone.</p>")


def _limit(report: Report) -> str:
    """Each engine's achieved multiply-accumulate rate against this machine's GEMM rate at its precision."""
    title = "Distance from the machine's limit"
    peak = report.peak
    if peak is None:
        return section("limit", title, "<p>This machine's peak was not measured (see the run's problems), so no engine has a "
                        "fraction of it.</p>")
    rows = [r for r in report.engines if r.fraction_of_peak is not None]
    head = (f"<p>This machine's peak on {peak.threads} threads (CPUs {escape(str(peak.cpus))}), a {'×'.join(map(str, peak.shape))} "
            f"matrix product through {escape(peak.runtime)}: <b>FP32 {peak.fp32.gmacs:,.1f} GMAC/s</b> ({peak.fp32.op}), "
            f"<b>INT8 {peak.int8.gmacs:,.1f} GMAC/s</b> ({peak.int8.op}).</p>")
    if not rows:
        return section("limit", title, head + "<p>No engine of this host has a MAC count and a latency.</p>")
    grid = table(["engine", "MACs per sample", "achieved GMAC/s", "held against", "fraction of peak"],
                   [[escape(r.name), f"{r.macs_per_sample:,}", f"{r.achieved_gmacs:,.2f}",
                     f"{peak.for_precision(r.precision).op} {peak.for_precision(r.precision).gmacs:,.1f}", _pct(r.fraction_of_peak)]
                    for r in rows], numeric=range(1, 5))
    points = [{"name": r.name, "backend": r.backend, "fraction": r.fraction_of_peak} for r in rows]
    return section("limit", title, head + figure(lambda: plots.peak_figure(points), "Achieved rate over the matching peak, "
                    "per engine.") + grid + f"<p class=muted>{escape(PEAK_MEANING)}</p>")


PEAK_MEANING = ("The achieved rate is the model's multiply-accumulates per inference (convolutions and matrix products of the "
                "exported FP32 model) over the engine's p50. INT8 engines are held against the INT8 product, FP32 and FP16 "
                "engines against the FP32 one (a CPU without FP16 arithmetic runs FP16 engines on FP32 kernels). A large matrix "
                "product is the best case: depthwise convolutions, small feature maps and thin layers are bound by memory and "
                "by per-layer overhead, and the call around the kernels counts too, so a small model reaching a few percent is "
                "expected. A low fraction says the time is in overhead and memory traffic, not arithmetic; the per-layer "
                "profile says where.")


def _profile(report: Report) -> str:
    """Per engine: time per op type (with the kernels the runtime chose) and the slowest layers."""
    title = "Where the time goes"
    parts = []
    for row in report.engines:
        profile = row.profile
        if profile is None:
            continue
        if profile.tool is None:
            parts.append(f"<h3>{escape(row.name)}</h3><p class=muted>No per-layer profile: {escape(profile.reason)}.</p>")
            continue
        types = table(["op type", "layers", "µs per inference", "share", "kernels"],
                       [[escape(t.op_type), str(t.layers), f"{t.mean_us:,.1f}", _pct(t.share), escape(", ".join(t.kernels) or "—")]
                        for t in profile.by_type], numeric=range(1, 4))
        layers = table(["layer", "op type", "kernel", "µs"],
                        [[escape(layer.layer), escape(layer.op_type), escape(layer.kernel or "—"), f"{layer.mean_us:,.1f}"]
                         for layer in profile.top_layers[:5]], numeric=(3,))
        parts.append(f"<h3>{escape(row.name)}</h3><p class=muted>{escape(profile.tool)}, mean of {profile.runs} profiled inferences: "
                     f"{profile.layer_count} layers, {profile.layers_us:,.1f} µs in layers.</p>{types}<p>Slowest layers:</p>{layers}")
    if not parts:
        return section("profile", title, "<p>No engine was profiled.</p>")
    return section("profile", title, "<p class=muted>Taken in a session of its own after timing: a profiler slows what it "
                    "watches, so read shares, not absolute times. A kernel named <code>ref</code> is a runtime's reference "
                    "implementation: a layer that fell off the fast kernels.</p>" + "".join(parts))


def _divergence(report: Report) -> str:
    """Per backend, the accumulated SQNR of every tensor against depth; per engine, the tensors furthest from FP32 and
    where the SQNR falls most."""
    title = "Where the numbers diverge"
    rows = [r for r in report.engines if r.divergence is not None]
    searches = {r.name: r.float_search for r in report.engines if r.float_search}
    if not rows and not searches:
        return section("divergence", title, "<p>No FP16 or INT8 engine was compared layer by layer.</p>")
    series = {r.name + (" (predicted)" if r.divergence.note.startswith("a prediction") else ""):
              [t.model_dump() for t in r.divergence.rows] for r in rows if r.divergence.available and r.divergence.rows}
    parts = [] if rows else ["<p>No FP16 or INT8 engine was compared layer by layer.</p>"]
    if series:
        parts.append(figure(lambda: plots.divergence_figure(series), "Accumulated SQNR of each tensor against the FP32 ONNX, "
                             "in graph order: a steep fall marks the layer the error comes from."))
    for row in rows:
        d = row.divergence
        if not d.available:
            parts.append(f"<h3>{escape(row.name)}</h3><p class=muted>No layer-wise comparison: {escape(d.reason)}</p>")
            continue
        local = d.has_local
        worst = table(["tensor", "op type", "depth", "SQNR dB", "cosine", *(["alone: SQNR dB"] if local else [])],
                       [[escape(t.tensor), escape(t.op_type), str(t.depth), db(t.sqnr_db), f"{t.cosine:.5f}",
                         *([db(t.local.sqnr_db) if t.local else "—"] if local else [])] for t in d.worst(5)],
                       numeric=range(2, 6 if local else 5))
        if local:
            sources = table(["tensor", "op type", "alone: SQNR dB", "accumulated"],
                             [[escape(t.tensor), escape(t.op_type), db(t.local.sqnr_db if t.local else None), db(t.sqnr_db)]
                              for t in d.worst_local(5)], numeric=range(2, 4))
            label = "Largest errors of a layer's own (alone on FP32 inputs):"
        else:
            sources = table(["tensor", "op type", "SQNR dB", "fall dB"],
                             [[escape(t.tensor), escape(t.op_type), db(t.sqnr_db), f"{fall:.2f}"] for t, fall in d.steepest(5)],
                             numeric=range(2, 4))
            label = "Steepest falls of the accumulated SQNR:"
        alone = f"layers alone: {d.local_note}" if d.local_note else ""
        parts.append(f"<h3>{escape(row.name)}</h3><p class=muted>{escape(d.method)}; {d.samples} {escape(d.split)} samples; "
                     f"{len(d.rows)} tensors compared, {len(d.unmapped)} not in the engine.{_sentences(d.note, alone)}</p>"
                     f"<div class=pair><div><p>Furthest from FP32:</p>{worst}</div><div><p>{label}</p>{sources}</div></div>")
    if searches:  # a build-time choice: shown whether or not the divergence stage ran
        lines = "".join(f"<li>{escape(line)}</li>" for row in report.engines if row.float_search
                        for line in [float_layers_line(row)] if line)
        parts.append("<h3>Float layers chosen against a target (keep_float: auto)</h3>"
                     + figure(lambda: plots.float_search_figure(searches), "Each candidate built by the backend itself and "
                               "scored on the validation split (bars: its agreement's 95% interval, whole photos resampled where "
                               "the samples are crops of photos); the p50 is an in-process estimate taken during the search, not "
                               "the engine's measured latency. Where the target sets a latency budget (max_slowdown), each "
                               "candidate was timed again in interleaved rounds with the fully quantized one, and its p50's "
                               "ratio to that engine's, round by round, is drawn instead, the budget dotted.") + f"<ul>{lines}</ul>")
    return section("divergence", title, "<p class=muted>Each tensor of the FP32 ONNX against the same tensor inside the engine, "
                    "at its deployed precision, run from the input (so each carries every earlier layer's error). SQNR 40 dB is "
                    "an error of 1% of the signal, 20 dB of 10%. <code>edgeship debug RUN ENGINE</code> prints the same per "
                    "engine.</p>" + "".join(parts))


def _sentences(*texts: str) -> str:
    """Clauses as sentences after a first one: capitalised, each with its full stop; empty ones left out."""
    return "".join(f" {escape(text[0].upper() + text[1:])}." for text in texts if text)



def _pipeline(report: Report) -> str:
    parts = []
    sensitivity, prune, distill = report.sensitivity, report.prune, report.distill
    if sensitivity and sensitivity.get("curves"):
        parts.append("<h3>Prune sensitivity</h3>" + figure(lambda: plots.sensitivity_figure(sensitivity, sensitivity.get("max_drop", 0.0)),
                     "Each layer group pruned alone at each ratio, before fine-tuning; the search keeps groups above the red line."))
    if prune:
        before, after = prune["before"], prune["after"]
        parts.append("<h3>MACs and parameters</h3>" + figure(lambda: plots.footprint_figure(prune),
                     f"{prune.get('method')} pruning; ONNX {_size(before['onnx_bytes'])} → {_size(after['onnx_bytes'])}, measured ORT "
                     f"FP32 p50 {before['latency']['p50_ms']:.3f} → {after['latency']['p50_ms']:.3f} ms."))
    if distill:
        measure = distill.get("measure", "top1")
        scores = distill[measure]
        split = distill.get("split", "eval")
        parts.append("<h3>Distillation</h3>" + figure(lambda: plots.ablation_figure(scores, measure, split),
                     f"{distill['name']}: {change_points(distill['distilled_drop_vs_teacher_points'])} vs the teacher"
                     + (f", {distill['gain_over_hard_labels_points']:+.2f} pt over hard labels alone." if "gain_over_hard_labels_points"
                        in distill else ".")))
        history = distill.get("history") or {}
        if history.get("distilled"):
            curves = {"distilled": history["distilled"], "hard-label fine-tune": history.get("hard_label_finetune")}
            parts.append(figure(lambda: plots.training_figure(curves, scores, measure),
                                 "Training curves (validation split held out from training)."))
    lines = [line for row in report.engines for line in int8_weight_lines(row)]
    if lines:
        parts.append("<h3>INT8 weights: layers kept in float, rounding</h3><ul>" + "".join(f"<li>{escape(text)}</li>" for text in lines)
                     + "</ul>")
    verdict = report.student_vs_teacher
    if verdict:
        parts.append(f"<p>Student vs teacher ({escape(verdict['stages'])}): ORT FP32 p50 {verdict['teacher_p50_ms']:.3f} → "
                     f"{verdict['student_p50_ms']:.3f} ms (×{verdict['latency_reduction']:.2f}), {escape(verdict_measure(verdict))}.</p>")
    return section("pipeline", "Pipeline", "\n".join(parts) or "<p>Pruning and distillation were off in this recipe.</p>")


def _provenance(report: Report) -> str:
    source = report.source or {}
    facts = [("edgeship", f"{report.edgeship} · commit {source.get('commit') or 'unknown'}"
              + (" (uncommitted changes)" if source.get("dirty") else "")),
             ("recipe file", str(report.recipe_path)), ("dataset", json.dumps(report.dataset)),
             ("calibration set", json.dumps(report.calibration)), ("device", json.dumps(report.device)),
             ("tools", ", ".join(f"{k} {v}" for k, v in (report.tools or {}).items()))]
    for name, remote in report.devices.items():
        facts.append((f"device {name}", f"{remote.get('agent')} · edgeship {remote.get('agent_edgeship')} · "
                                        f"{json.dumps(remote.get('device'))}"))
    rows = [[escape(k), f"<code>{escape(v)}</code>"] for k, v in facts]
    artifacts = table(["stage", "name", "sha256", "artifact id"],
                       [[escape(a["stage"]), escape(a["name"]), f"<code>{escape(str(a['sha256']))}</code>",
                         f"<code>{escape(str(a.get('artifact') or '—'))}</code>"] for a in report.artifacts])
    recipe = f"<details><summary>recipe as run</summary><pre>{escape(json.dumps(report.recipe_document, indent=2))}</pre></details>"
    return section("provenance", "Provenance", table(["what", "value"], rows) + "<h3>Artifacts</h3>" + artifacts + recipe)


def _notes(report: Report) -> str:
    return section("notes", "Notes", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")


def _throughput_cell(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "—"
    if entry.get("status") != "ok":
        return f"<span class=fail>failed</span> <span class=muted>{escape(str(entry.get('reason')))}</span>"
    low, high = entry["ci95"]
    return f"{entry['samples_per_second']:,.0f} <span class=muted>({low:,.0f}–{high:,.0f})</span>"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"
