"""Numbers as people read them, shared by the terminal table and the report page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def size(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:.0f} KiB" if value < 1024**2 else f"{value / 1024**2:.1f} MiB"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def float_layers_line(row: Mapping[str, Any]) -> str:
    """Which layers an INT8 engine keeps in float (``keep_float``) and how INT8 scored them alone."""
    kept = row["float_layers"]
    worst = ", ".join(f"{r['weight']} (cosine {r['cosine']:.4f})" for r in kept["ranking"][: kept["count"]])
    return (f"{row['name']}: {len(kept['nodes'])} layers kept in float (keep_float {kept['count']} + the convolutions feeding them); "
            f"most INT8-sensitive, weights alone in INT8 on {kept['samples']} calibration samples: {worst}")
