"""The machine's timing lock across processes: timing waits for working processes, a waiting process lets it through,
and no process starts work while another times."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys, time
from pathlib import Path
from edgeship.sweep.node import NodeLock
lock_path, log, role = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def mark(what):
    with log.open("a") as f:
        f.write(f"{time.monotonic():.4f} {role} {what}\\n")
lock = NodeLock(lock_path)
with lock.working():
    mark("working")
    if role == "worker":
        time.sleep(1.0)
        mark("done")
    elif role == "waiter":
        with lock.waiting():
            mark("waiting")
            time.sleep(1.5)
        mark("back")
    elif role == "timer":
        with lock.timing():
            mark("timing")
            time.sleep(0.8)
            mark("timed")
"""


def _start(tmp_path: Path, role: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "node.lock"), str(tmp_path / "log"), role])


def _events(tmp_path: Path) -> dict[str, float]:
    out = {}
    for line in (tmp_path / "log").read_text().splitlines():
        stamp, role, what = line.split()
        out[f"{role} {what}"] = float(stamp)
    return out


def _wait_for(tmp_path: Path, event: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (tmp_path / "log").exists() and event in _events(tmp_path):
            return
        time.sleep(0.02)
    raise AssertionError(f"{event} never happened")


def test_timing_waits_until_no_other_process_works(tmp_path: Path) -> None:
    worker = _start(tmp_path, "worker")
    _wait_for(tmp_path, "worker working")
    timer = _start(tmp_path, "timer")
    assert worker.wait(30) == 0 and timer.wait(30) == 0
    events = _events(tmp_path)
    assert events["timer timing"] >= events["worker done"]


def test_a_waiting_process_lets_timing_through_and_work_resumes_after_it(tmp_path: Path) -> None:
    waiter = _start(tmp_path, "waiter")
    _wait_for(tmp_path, "waiter waiting")
    timer = _start(tmp_path, "timer")
    _wait_for(tmp_path, "timer timing")
    worker = _start(tmp_path, "worker")  # starts work while the timer times: it must wait for the timing to end
    assert waiter.wait(30) == 0 and timer.wait(30) == 0 and worker.wait(30) == 0
    events = _events(tmp_path)
    assert events["timer timing"] < events["waiter back"]  # timed while the waiter waited, not after it
    assert events["waiter back"] >= events["timer timed"]  # the waiter took its share back only once timing ended
    assert events["worker working"] >= events["timer timed"]
