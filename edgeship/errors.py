"""The error hierarchy. Every error a user can cause is an ``EdgeshipError``.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``;
anything else is a programming error and keeps its traceback.
"""

from __future__ import annotations

import errno


class EdgeshipError(Exception):
    """Root of every error edgeship raises on purpose."""

    exit_code: int = 2


class RecipeError(EdgeshipError):
    """The recipe is wrong: names the file, the key and what is allowed."""


class DataError(EdgeshipError):
    """Calibration or evaluation data is wrong: names the file and what was expected."""


class UserCodeError(EdgeshipError):
    """A user's own model code (a recipe's ``factory``) raised: names the factory, where it ran and the exception; the
    traceback is the user's to read (``--debug``)."""


class BackendUnavailable(EdgeshipError):
    """A backend's runtime is not installed or its device is missing."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # raised in a build's child process, re-raised in the run's
        return type(self), (self.backend, self.reason)


class BuildError(EdgeshipError):
    """Building one engine failed; the run records it and goes on with the others."""

    def __init__(self, backend: str, precision: str, reason: str) -> None:
        super().__init__(f"{backend}/{precision} build failed: {reason}")
        self.backend = backend
        self.precision = precision
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # raised in a build's child process, re-raised in the run's
        return type(self), (self.backend, self.precision, self.reason)


class StageError(EdgeshipError):
    """A pipeline stage could not produce its output."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage {stage!r} failed: {reason}")
        self.stage = stage
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # raised in an export's child process, re-raised in the run's
        return type(self), (self.stage, self.reason)


class StorageError(EdgeshipError):
    """The disk refused a write (full, over quota, read-only): the run stops; what it finished stays in the store."""


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def disk_refusal(exc: BaseException) -> OSError | None:
    """The OSError in ``exc``'s chain (itself, its cause or context) that says the disk refused a write, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None
