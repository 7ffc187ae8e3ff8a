"""The terminal and the page format the same figures the same way: a drop is a signed change on both."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from edgeship.qualification import EngineKey, EngineRow, Prediction, Reused
from edgeship.render import html, terminal
from edgeship.render.cells import Cell, accuracy_cells, engine_cells
from edgeship.render.text import change_points


def _row(**changes: object) -> EngineRow:
    row = EngineRow(key=EngineKey(backend="onnxruntime", precision="int8"), reused=Reused(build=False, validate=None), status="ok",
                    top1=0.9, top1_agreement=0.99, top1_drop_points=0.5, top1_drop_vs_backend_fp32_points=0.25, verdict="pass",
                    latency={"p50_ms": 1.0, "p99_ms": 2.0, "ci95": {"p50_ms": [0.9, 1.1]}}, size_bytes=1000)
    return row.model_copy(update=changes)


def test_a_half_point_loss_reads_as_minus_half_a_point_everywhere() -> None:
    assert change_points(0.5) == "-0.50 pt" and change_points(-0.25) == "+0.25 pt" and change_points(None) == "—"
    assert change_points(0.0) == "+0.00 pt"
    cells = accuracy_cells(_row(), basis="labels")
    assert cells["Δ top-1 vs baseline"] == Cell("-0.50 pt", "measured") and cells["Δ top-1 vs own FP32"].text == "-0.25 pt"
    assert html._styled(cells["Δ top-1 vs baseline"]) == terminal._styled(cells["Δ top-1 vs baseline"]) == "-0.50 pt"


def test_a_prediction_is_marked_as_one_in_both_renderings_and_missing_is_a_dash() -> None:
    predicted = Prediction(engine="tensorrt/int8", on="onnxruntime", label="predicted on ONNX Runtime", top1=0.91, top1_agreement=0.98,
                           top1_drop_points=0.1)
    row = _row(status="skipped", top1=None, top1_agreement=None, top1_drop_points=None, predicted=predicted)
    cells = accuracy_cells(row, basis="labels")
    assert cells["top-1"] == Cell("91.00%", "predicted") and cells["Δ top-1 vs own FP32"] == Cell("—", "missing")
    assert "predicted" in html._styled(cells["top-1"]) and "pred." in terminal._styled(cells["top-1"])
    assert html._styled(cells["Δ top-1 vs own FP32"]) == terminal._styled(cells["Δ top-1 vs own FP32"]) == "—"
    unlabelled = accuracy_cells(row.model_copy(update={"predicted": predicted.model_copy(update={"top5_agreement": 1.0})}),
                                basis="agreement")
    assert [c.kind for c in unlabelled.values()] == ["predicted", "predicted", "missing"]


def test_latency_and_verdict_cells_are_shared_and_a_required_skip_reads_as_a_failure() -> None:
    cells = engine_cells(_row(), basis="labels")
    assert cells["p50 ms"] == Cell("1.0000", "measured", "0.9000–1.1000") and cells["p99 ms"] == Cell("2.0000", "measured")
    assert "(0.9000–1.1000)" in html._styled(cells["p50 ms"]) and terminal._styled(cells["p50 ms"]) == "1.0000"
    assert cells["verdict"] == Cell("pass", "pass") and cells["size"].text == "1 KiB"
    skipped = engine_cells(_row(status="skipped", verdict="skipped", reason="no GPU", required=True), basis="labels")["verdict"]
    assert skipped == Cell("skipped, required", "fail")
    assert "class=fail" in html._styled(skipped) and "[red]" in terminal._styled(skipped)
    assert engine_cells(_row(status="skipped", verdict="skipped"), basis="labels")["verdict"] == Cell("skipped", "skipped")


def test_the_summary_and_the_page_print_the_signed_change() -> None:
    from edgeship.artifacts import Manifest, ManifestEntry
    from edgeship.pipeline.report import build_report

    latency = {"p50_ms": 1.0, "p99_ms": 2.0, "batch_size": 1, "ci95": {"p50_ms": [0.9, 1.1], "p99_ms": [1.8, 2.2]}}
    measured = {"top1_agreement": 0.99, "eval_samples": 1000, "size_bytes": 1000, "latency": latency}
    report = build_report(Manifest(run_id="r", recipe={"name": "r"}, status="ok", entries=[
        ManifestEntry(stage="validate", name="pytorch/fp32", status="ok", metrics={**measured, "top1": 0.905}),
        ManifestEntry(stage="build", name="onnxruntime/int8", status="ok", config={"backend": "onnxruntime", "precision": "int8"}),
        ManifestEntry(stage="validate", name="onnxruntime/int8", status="ok", metrics={**measured, "top1": 0.9})]))
    out = StringIO()
    terminal.print_summary(report, Console(file=out, width=200))
    page = html.render_html(report)
    for text in (out.getvalue(), page):
        assert "-0.50 pt" in text and "+0.50 pt" not in text


def test_agreement_shows_its_interval_on_the_page_and_only_the_figure_in_the_terminal() -> None:
    row = _row(top1=None, top1_agreement=0.9712, top1_agreement_ci95=(0.9621, 0.9790), top1_agreement_groups=36)
    cell = accuracy_cells(row, basis="agreement")["top-1 agreement"]
    assert cell == Cell("97.12%", "measured", "96.21–97.90% over 36 photos")
    assert "(96.21–97.90% over 36 photos)" in html._styled(cell) and terminal._styled(cell) == "97.12%"
    assert accuracy_cells(_row(top1=None), basis="agreement")["top-1 agreement"] == Cell("99.00%", "measured")


def test_a_budgeted_search_shows_each_candidates_ratio_in_the_debug_table_the_line_and_the_chart() -> None:
    from edgeship.render import plots
    from edgeship.render.text import float_layers_line

    candidates = [{"float_layers": count, "nodes": [f"n{i}" for i in range(count)], "agreement": agreement, "cosine": 0.99,
                   "agreement_ci95": [agreement - 0.01, min(agreement + 0.01, 1.0)], "p50_ms": p50, "meets": agreement >= 0.97,
                   "p50_together_ms": p50, "slowdown": ratio, "slowdown_ci95": [ratio - 0.02, ratio + 0.02], "within_budget": ratio <= 1.3}
                  for count, agreement, p50, ratio in ((0, 0.91, 2.4, 1.0), (4, 0.93, 3.1, 1.29), (12, 0.972, 3.7, 1.57))]
    search = {"target": {"min_agreement": 0.97, "max_slowdown": 1.3}, "target_text": "top-1 agreement ≥ 97%, within 1.3× the fully "
              "quantized engine's p50", "met": False, "chosen": 4, "candidates": candidates, "samples": 512, "seconds": 60.0,
              "ranking_seconds": 20.0, "ranking": [{"node": f"n{i}"} for i in range(20)],
              "together": {"rounds": 9, "max_slowdown": 1.3, "seconds": 4.0, "threads": 2, "pairs": 2}}
    row = _row(float_search=search, float_layers={"auto": True, "count": 4, "nodes": ["n0", "n1", "n2", "n3"]})
    console = Console(file=StringIO(), width=240, color_system=None)
    assert terminal.print_float_search(row, console)
    text = console.file.getvalue()
    assert "× fully quantized, together" in text and "1.57" in text and "at most 1.3× the fully quantized candidate's" in text
    assert "each candidate timed with it alone (2 pairs, 4 s)" in text
    table_row = next(line for line in text.splitlines() if "1.57" in line)
    assert table_row.split("1.57")[1].split()[:3] == ["│", "no", "│"], "over the budget"
    assert "p50 1.29× the fully quantized engine's, timed together" in float_layers_line(row)
    figure = plots.float_search_figure({"onnxruntime/int8": search})
    low = figure.axes[1]
    assert [tuple(line.get_ydata()) for line in low.lines][0] == (1.0, 1.29, 1.57), "each ratio from the rounds that judged it"
    assert any(set(line.get_ydata()) == {1.3} for line in low.lines[1:]), "the budget drawn"
    assert "÷ fully quantized" in low.get_ylabel()


def test_the_rounding_line_says_how_many_layers_went_on_a_7_bit_grid() -> None:
    from edgeship.render.text import weight_rounding_line

    layers = [{"node": "stem", "qmax": 63.5}, {"node": "dw", "qmax": 127}, {"node": "fc"}]  # "fc": a record without grids
    row = _row(weight_rounding={"method": "gptq", "samples": 64, "layers": layers, "skipped": {}, "median_error_ratio": 0.5})
    line = weight_rounding_line(row)
    assert line.startswith("onnxruntime/int8: 3 layers' INT8 weights rounded by GPTQ on 64 calibration samples (1 of them on "
                           "the quantizer's 7-bit grid); each layer's output error")
    assert "7-bit" not in weight_rounding_line(_row(weight_rounding={"method": "gptq", "samples": 64, "layers": layers[1:]}))
