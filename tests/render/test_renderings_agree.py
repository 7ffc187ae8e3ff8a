"""The terminal and the page format the same figures the same way: a drop is a signed change on both."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from edgeship.render import html, terminal
from edgeship.render.text import change_points


def _row() -> dict[str, object]:
    return {"name": "onnxruntime/int8", "backend": "onnxruntime", "precision": "int8", "target": "onnxruntime", "status": "ok",
            "reason": "", "top1": 0.9,
            "top1_agreement": 0.99, "top1_drop_points": 0.5, "top1_drop_vs_backend_fp32_points": 0.25, "verdict": "pass",
            "latency": {"p50_ms": 1.0, "p99_ms": 2.0}, "size_bytes": 1000}


def test_a_half_point_loss_reads_as_minus_half_a_point_everywhere() -> None:
    assert change_points(0.5) == "-0.50 pt" and change_points(-0.25) == "+0.25 pt" and change_points(None) == "—"
    assert change_points(0.0) == "+0.00 pt"
    cells = terminal._accuracy_cells(_row())
    assert cells[1] == "-0.50 pt" and cells[2] == "-0.25 pt"
    assert html._accuracy_cells(_row())[1] == "-0.50 pt"


def test_the_summary_prints_the_signed_change() -> None:
    out = StringIO()
    report = {"run_id": "r", "device": {}, "threads": 1, "accuracy": {"basis": "labels"}, "engines": [_row()],
              "baseline": {"name": "pytorch/fp32", "top1": 0.905, "latency": {}}, "recommendations": {}, "release": None}
    terminal.print_summary(report, Console(file=out, width=200))
    assert "-0.50 pt" in out.getvalue() and "+0.50 pt" not in out.getvalue()
