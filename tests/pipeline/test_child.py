"""``pipeline/child.in_child``: work in a spawned process, its notes forwarded, its arguments not held by the parent."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from edgeship.errors import StageError
from edgeship.memory import release_freed_memory
from edgeship.pipeline.child import in_child
from edgeship.progress import note_step


def _wait_then_sum(array: np.ndarray, seconds: float) -> float:
    note_step("started")
    time.sleep(seconds)
    return float(array.sum())


def test_the_parent_lets_go_of_the_arguments_while_the_child_works() -> None:
    """A 160 MB argument is pickled to the child; while the child works, the parent holds no pickled copy of it."""
    array = np.ones((40, 1000, 1000), np.float32)
    release_freed_memory()
    before = psutil.Process().memory_info().rss
    during: list[int] = []

    def sample(text: str) -> None:  # the child's note arrives once it holds its arguments
        threading.Timer(0.5, lambda: during.append(psutil.Process().memory_info().rss)).start()

    assert in_child(_wait_then_sum, array, 2.0, show=sample) == 40e6
    assert len(during) == 1
    assert during[0] - before < 60 * 2**20, f"the parent held {(during[0] - before) / 2**20:.0f} MiB more while the child ran"


def _export_fails() -> None:
    raise StageError("export", "torch.onnx.export failed: UnsupportedOperatorError: aten::weird")


def test_a_stage_error_in_the_child_is_the_same_one_line_error_in_the_parent() -> None:
    """The export's child raises ``StageError`` (the exporter's complaint): it reaches the run with its fields, not as a
    broken process pool."""
    with pytest.raises(StageError, match=r"stage 'export' failed: torch.onnx.export failed: UnsupportedOperatorError") as caught:
        in_child(_export_fails)
    assert (caught.value.stage, caught.value.reason) == ("export", "torch.onnx.export failed: UnsupportedOperatorError: aten::weird")


def test_a_child_ends_when_its_run_is_killed() -> None:
    """A run killed outright (SIGKILL: no chance to stop its children) leaves no build child working on."""
    run = subprocess.Popen([sys.executable, "-c", "import time\nfrom edgeship.pipeline.child import in_child\nin_child(time.sleep, 120)"])
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while not workers and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = [child for child in psutil.Process(run.pid).children(recursive=True)
                       if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline())]
        assert workers, "the run started no child"
        time.sleep(1.0)  # the child's initializer has run by the time it takes work; give its watch a moment to start
        run.kill()
        run.wait()
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"the child outlived its run: {[p.pid for p in alive]}"
    finally:
        run.kill()
