"""The machine's timing lock: a sweep's trials share a machine, and an engine is never timed while another trial works.

Every trial process holds the lock *shared* while it works and takes it *exclusive* to time (``timing``), so a
measurement waits until the other trials on this machine are idle or timing themselves, and none starts work until it
is done. A trial blocked on another's artifact gives its share back while it waits (``waiting``), which is what keeps
"A times engine E while B waits for E" from deadlocking. A gate file in front of the lock gives a waiting measurement
priority over new shares, so work that keeps restarting cannot starve it.

The lock is one file on the machine's own disk (``flock``), never on the shared store: it guards CPUs, which nodes do
not share, and two Ray nodes started on one machine (``ray.cluster_utils.Cluster``) share it, as they share its CPUs.
A killed process's locks go with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def default_path() -> Path:
    """One lock per machine and user, in the machine's temporary folder."""
    return Path(tempfile.gettempdir()) / f"edgeship-node-{os.getuid()}.lock"


class NodeLock:
    """This process's part in the machine's timing lock; ``working()`` holds a share for the block (a trial's run)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self._gate = self.path.with_name(self.path.name + ".gate")
        self._fds: tuple[int, int] | None = None
        self._state = threading.Lock()
        self._timing = threading.Lock()  # one measurement of this process at a time
        self._away = 0  # reasons this process holds no share now: waits and measurements in progress
        self.waited_s = 0.0  # time spent waiting for the machine to time alone
        self.timed_s = 0.0  # time spent timing with the machine alone

    @contextlib.contextmanager
    def working(self) -> Iterator[NodeLock]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fds = (os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), os.open(self._gate, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            self._share()
            yield self
        finally:
            for fd in self._fds:
                os.close(fd)  # closing drops every lock this process holds on it
            self._fds = None

    def waiting(self) -> contextlib.AbstractContextManager[object]:
        """Held while blocked on another process: this process's share is given back."""
        return self._idle()

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Held while timing: no other holder of the lock works on this machine."""
        if self._fds is None:
            raise RuntimeError("NodeLock.timing outside working()")
        main, gate = self._fds
        with self._timing, self._idle():
            started = time.perf_counter()
            fcntl.flock(gate, fcntl.LOCK_EX)  # no new shares from here on
            try:
                fcntl.flock(main, fcntl.LOCK_EX)
                self.waited_s += time.perf_counter() - started
                timed = time.perf_counter()
                try:
                    yield
                finally:
                    self.timed_s += time.perf_counter() - timed
                    fcntl.flock(main, fcntl.LOCK_UN)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _idle(self) -> Iterator[None]:
        with self._state:
            self._away += 1
            if self._away == 1 and self._fds is not None:
                fcntl.flock(self._fds[0], fcntl.LOCK_UN)
        try:
            yield
        finally:
            with self._state:
                self._away -= 1
                if self._away == 0 and self._fds is not None:
                    self._share()

    def _share(self) -> None:
        assert self._fds is not None
        main, gate = self._fds
        fcntl.flock(gate, fcntl.LOCK_EX)  # waits behind a measurement that is waiting for the machine
        try:
            fcntl.flock(main, fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
