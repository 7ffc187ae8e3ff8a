"""Helpers for driving third-party converters: capture what they print, and pick the line that says what went wrong."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Everything written to stdout/stderr, Python's and the C++ libraries' file descriptors alike."""
    log = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            log.write(sink.read().decode(errors="replace"))


def error_line(text: str) -> str:
    """A tool's most telling line: its last ERROR line, else the last line, without colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return (errors or lines or ["no message"])[-1][:400]


def import_problem(modules: tuple[str, ...]) -> tuple[str, bool] | None:
    """Why ``modules`` cannot be imported, and whether that is a broken install (the package is there but raises on import,
    which is a failure to report) rather than a missing one (a skip by design); ``None`` when all import."""
    for module in modules:
        if not importable(module):
            return f"cannot import {module} (not installed)", False
        try:
            importlib.import_module(module)
        except Exception as exc:  # an installed package that fails to load raises anything: ImportError, OSError, ...
            return f"{module} is installed but fails to import: {type(exc).__name__}: {error_line(str(exc))}", True
    return None


def importable(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (a module blocked in ``sys.modules`` is not)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module blocked in sys.modules
        return False


def fed_inputs(graph: Any) -> list[Any]:
    """An ONNX graph's inputs that are fed at run time: older ONNX files also list their weights among the inputs."""
    initializers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


@contextlib.contextmanager
def loggers_at(level: int, *names: str) -> Iterator[None]:
    """The named loggers (``""``: the root logger) raised to ``level`` while the block runs, then put back: tools that log
    a line per node or per step on the user's terminal."""
    loggers = [logging.getLogger(name or None) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for logger, previous in zip(loggers, saved, strict=True):
            logger.setLevel(previous)
