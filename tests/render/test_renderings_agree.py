"""The terminal and the page format the same figures the same way: a drop is a signed change on both."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from edgeship.render import html, terminal
from edgeship.render.cells import Cell, accuracy_cells
from edgeship.render.text import change_points


def _row() -> dict[str, object]:
    return {"name": "onnxruntime/int8", "backend": "onnxruntime", "precision": "int8", "target": "onnxruntime", "status": "ok",
            "reason": "", "top1": 0.9,
            "top1_agreement": 0.99, "top1_drop_points": 0.5, "top1_drop_vs_backend_fp32_points": 0.25, "verdict": "pass",
            "latency": {"p50_ms": 1.0, "p99_ms": 2.0}, "size_bytes": 1000}


def test_a_half_point_loss_reads_as_minus_half_a_point_everywhere() -> None:
    assert change_points(0.5) == "-0.50 pt" and change_points(-0.25) == "+0.25 pt" and change_points(None) == "—"
    assert change_points(0.0) == "+0.00 pt"
    cells = accuracy_cells(_row(), labelled=True)
    assert cells["Δ top-1 vs baseline"] == Cell("-0.50 pt", "measured") and cells["Δ top-1 vs own FP32"].text == "-0.25 pt"
    assert html._styled(cells["Δ top-1 vs baseline"]) == terminal._styled(cells["Δ top-1 vs baseline"]) == "-0.50 pt"


def test_a_prediction_is_marked_as_one_in_both_renderings_and_missing_is_a_dash() -> None:
    row = {**_row(), "status": "skipped", "top1": None, "top1_agreement": None, "top1_drop_points": None, "precision": "int8",
           "predicted": {"top1": 0.91, "top1_agreement": 0.98, "top1_drop_points": 0.1, "top1_drop_vs_onnx_fp32_points": None}}
    cells = accuracy_cells(row, labelled=True)
    assert cells["top-1"] == Cell("91.00%", "predicted") and cells["Δ top-1 vs own FP32"] == Cell("—", "missing")
    assert "predicted" in html._styled(cells["top-1"]) and "pred." in terminal._styled(cells["top-1"])
    assert html._styled(cells["Δ top-1 vs own FP32"]) == terminal._styled(cells["Δ top-1 vs own FP32"]) == "—"
    unlabelled = accuracy_cells({**row, "predicted": {"top1_agreement": 0.97, "top5_agreement": 1.0, "mean_cosine": None}},
                                labelled=False)
    assert [c.kind for c in unlabelled.values()] == ["predicted", "predicted", "missing"]


def test_the_summary_prints_the_signed_change() -> None:
    out = StringIO()
    report = {"run_id": "r", "device": {}, "threads": 1, "accuracy": {"basis": "labels"}, "engines": [_row()],
              "baseline": {"name": "pytorch/fp32", "top1": 0.905, "latency": {}}, "recommendations": {}, "release": None}
    terminal.print_summary(report, Console(file=out, width=200))
    assert "-0.50 pt" in out.getvalue() and "+0.50 pt" not in out.getvalue()
