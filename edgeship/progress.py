"""Rich progress bars for long work, shared by every stage."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(console: Console, *, fields: str = "") -> Progress:
    """A bar with count, elapsed/remaining time and a free-text ``{task.fields[info]}`` column."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    return Progress(*columns, console=console, transient=False, disable=console.quiet)
