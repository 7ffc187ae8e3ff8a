"""Rich progress bars for long work, shared by every stage, and a way for a long step deep below a stage (a build's float
layer search) to say what it is doing now."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

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


_STEP_NOTES: ContextVar[Callable[[str], None] | None] = ContextVar("edgeship_step_notes", default=None)


@contextlib.contextmanager
def step_notes(show: Callable[[str], None]) -> Iterator[None]:
    """While inside, ``note_step`` texts go to ``show`` (a stage's spinner)."""
    token = _STEP_NOTES.set(show)
    try:
        yield
    finally:
        _STEP_NOTES.reset(token)


def note_step(text: str) -> None:
    """What a long step is doing now, for whoever listens (``step_notes``); nothing when no one does."""
    show = _STEP_NOTES.get()
    if show is not None:
        show(text)
