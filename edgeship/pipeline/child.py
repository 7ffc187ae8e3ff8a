"""Work done in a fresh child process, so the memory it leaves behind leaves with it.

An exporter's or converter's imports and caches (torch.onnx's dynamo and onnxscript, TensorFlow and onnx2tf) stay in a
process for good, hundreds of MB to GB that no trim gives back: in the run's own process they would sit under every
later stage and beside every measuring process. A spawned child starts with nothing of the run's memory or threads;
its step notes reach the parent's spinner, its errors are re-raised in the parent (they must pickle). A child whose run
is gone ends itself: a run killed without a chance to stop its children would otherwise leave a build holding the
cores for minutes, under whatever is measured next.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from edgeship.progress import step_notes

T = TypeVar("T")
# work on a model at least this large goes to a child; a smaller one (a toy, a test's) is far from any memory limit, and
# a child's start, seconds of imports, would outweigh its work
CHILD_MODEL_BYTES = 4 << 20
_NOTES: Any = None  # in a child: where its step notes go (the parent's queue)
PARENT_POLL_SECONDS = 1.0  # how often a child looks whether its run is still there


def in_child(work: Callable[..., T], *args: Any, show: Callable[[str], None] = lambda _: None) -> T:
    """``work(*args)`` (a module-level function, picklable arguments) in a spawned child; its step notes are passed
    to ``show`` while it runs, its result returned."""
    context = multiprocessing.get_context("spawn")
    notes = context.SimpleQueue()
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_set_up, initargs=(notes, os.getpid())) as pool:
        future = pool.submit(_noting, work, *args)
        # multiprocessing's queue feeder thread keeps the last call it sent, pickled, until it sends another: an empty
        # call after the work lets go of the work's arguments (a calibration set: hundreds of MB) while the child runs
        pool.submit(_nothing)
        while not future.done():
            while not notes.empty():
                show(notes.get())
            time.sleep(0.1)
        return future.result()


def _set_up(notes: Any, parent: int) -> None:
    """In the child, before any work: its notes go to ``notes``, and it ends when ``parent``, its run, is gone."""
    global _NOTES
    _NOTES = notes
    threading.Thread(target=_end_with, args=(parent,), name="edgeship-parent-watch", daemon=True).start()


def _end_with(parent: int) -> None:
    """Exit once ``parent`` is gone (this process then has another parent: init, or a subreaper)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _noting(work: Callable[..., T], *args: Any) -> T:
    with step_notes(_NOTES.put):
        return work(*args)


def _nothing() -> None:
    return None
