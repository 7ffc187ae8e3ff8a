"""Numbers as people read them, shared by the terminal table and the report page."""

from __future__ import annotations


def size(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:.0f} KiB" if value < 1024**2 else f"{value / 1024**2:.1f} MiB"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"
