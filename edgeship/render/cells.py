"""An engine row's accuracy cells, computed once for every rendering: each cell's text and its kind.

A cell is ``measured`` (this engine's own figure), ``predicted`` (a prepared ONNX standing in for an engine that could
not be built here, scored on another runtime: never to be read as measured), or ``missing``. The terminal and the page
choose the columns they show by name and style each kind their way; the text is the same in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgeship.render.text import change_points, pct

Kind = Literal["measured", "predicted", "missing"]

# the columns by the evaluation data's basis: labels give top-1 and its change, no labels agreement with FP32
LABELLED = ("top-1", "Δ top-1 vs baseline", "Δ top-1 vs own FP32", "agreement")
UNLABELLED = ("top-1 agreement", "top-5 agreement", "cosine")


@dataclass(frozen=True)
class Cell:
    text: str
    kind: Kind


MISSING = Cell("—", "missing")


def accuracy_cells(row: Mapping[str, Any], *, labelled: bool) -> dict[str, Cell]:
    """The row's accuracy cells by column (``LABELLED`` or ``UNLABELLED``): its own figures where it was measured,
    else its prediction's, marked as such."""
    predicted = row.get("predicted")
    own = row.get("top1" if labelled else "top1_agreement") is not None
    source, kind = (row, "measured") if own or not predicted else (predicted, "predicted")

    def cell(text: str) -> Cell:
        return MISSING if text == "—" else Cell(text, kind)  # type: ignore[arg-type]

    if not labelled:
        cosine = source.get("mean_cosine")
        return {"top-1 agreement": cell(pct(source.get("top1_agreement"))), "top-5 agreement": cell(pct(source.get("top5_agreement"))),
                "cosine": cell("—" if cosine is None else f"{cosine:.5f}")}
    # against its own backend's FP32: nothing to say for an FP32 engine; a prediction compares with the exported ONNX
    if kind == "predicted":
        vs_own = change_points(source.get("top1_drop_vs_onnx_fp32_points"))
    else:
        vs_own = "—" if row.get("precision") == "fp32" else change_points(row.get("top1_drop_vs_backend_fp32_points"))
    return {"top-1": cell(pct(source.get("top1"))), "Δ top-1 vs baseline": cell(change_points(source.get("top1_drop_points"))),
            "Δ top-1 vs own FP32": cell(vs_own), "agreement": cell(pct(source.get("top1_agreement")))}
