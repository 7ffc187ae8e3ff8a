"""Artifacts, the content-addressed store and the run manifest.

An artifact's id is a hash of (stage, config, input ids, edgeship version), so
the same work is found again on a rerun. Outputs are built in a staging folder
and renamed into place, so a killed run never leaves a half-written artifact
that looks complete; the record ``artifact.json`` is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from edgeship.version import __version__

RECORD = "artifact.json"


class Artifact(BaseModel):
    """One stage output: a main file, its sha256 and what made it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: str
    stage: str
    path: Path
    sha256: str
    size: int
    parents: tuple[str, ...] = ()
    meta: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file of the artifact, by path in its folder")

    @property
    def folder(self) -> Path:
        return self.path.parent

    @classmethod
    def read(cls, record: Path) -> Artifact:
        """The artifact recorded in ``record`` (an ``artifact.json``), its main file placed in the record's own folder:
        the recorded path is where the file was when it was built, relative to that process's working directory when
        the store's path was relative, and the store may since have been moved, copied or read from another folder
        (a sweep's Ray workers start elsewhere). ``ValueError`` when the record is unreadable or names a file outside
        its artifact."""
        try:
            artifact = cls.model_validate_json(record.read_text())
        except ValueError as exc:
            raise ValueError("is unreadable") from exc
        parts = artifact.path.parts
        if artifact.id not in parts:
            raise ValueError(f"names a file outside the artifact: {artifact.path}")
        inside = parts[len(parts) - parts[::-1].index(artifact.id):]  # the main file's path inside the artifact folder
        placed = record.parent.joinpath(*inside)
        return artifact if artifact.path == placed else artifact.model_copy(update={"path": placed})

    def verify(self) -> str | None:
        """Why the files on disk no longer match this record, or ``None`` when they all do."""
        if not self.path.is_file():
            return f"{self.path.name} is missing"
        if self.path.stat().st_size != self.size:
            return f"{self.path.name} is {self.path.stat().st_size} bytes, {self.size} recorded"
        if sha256_file(self.path) != self.sha256:
            return f"{self.path.name} does not match its recorded sha256"
        for name, digest in self.files.items():
            file = self.folder / name
            if not file.is_file():
                return f"{name} is missing"
            if sha256_file(file) != digest:
                return f"{name} does not match its recorded sha256"
        return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(value: Any) -> str:
    """sha256 of a JSON rendering with sorted keys (paths and enums as strings)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def artifact_id(stage: str, config: Mapping[str, Any], inputs: Sequence[str]) -> str:
    return stable_hash({"stage": stage, "config": config, "inputs": list(inputs), "edgeship": __version__})[:32]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def store_tmp(root: Path) -> Path:
    """The store's folder for work in progress (staging builds, spilled samples), on the store's own disk."""
    return Path(root) / "tmp"


def spill_prefix(kind: str) -> str:
    """The name prefix of this process's spilled samples of ``kind`` (``<kind>-<pid>-``), so a later run can tell a
    killed run's leftovers (``remove_dead_spills``) from a live run's."""
    return f"{kind}-{os.getpid()}-"


def remove_dead_spills(folder: Path, kind: str) -> None:
    """Remove the spilled samples of ``kind`` in ``folder`` whose process is gone: what a killed run left behind (a
    run's own are removed when its work ends; another live run's are left alone)."""
    for leftover in folder.glob(f"{kind}-*-*"):
        pid = leftover.name[len(kind) + 1 :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except PermissionError:  # another user's live process
            continue
        except ProcessLookupError:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the file gets the mode a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


class ArtifactStore:
    """Artifacts on disk under ``root/<id[:2]>/<id>/``; complete once ``artifact.json`` is there."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, aid: str) -> Path:
        return self.root / aid[:2] / aid

    def get(self, aid: str) -> Artifact | None:
        """The complete artifact with this id, or ``None`` (absent, unfinished or tampered with)."""
        return self.lookup(aid)[0]

    def lookup(self, aid: str) -> tuple[Artifact | None, str | None]:
        """``(artifact, None)`` when complete and intact; ``(None, why)`` when a stored copy no longer matches its
        record (truncated, edited, a file missing); ``(None, None)`` when there is none, or only an unfinished one."""
        record = self.folder(aid) / RECORD
        if not record.is_file():
            return None, None
        try:
            artifact = Artifact.read(record)
        except ValueError as exc:
            return None, f"its record {RECORD} {exc}"
        if artifact.id != aid:
            return None, f"its record {RECORD} is artifact {artifact.id}'s"
        problem = artifact.verify()
        return (artifact, None) if problem is None else (None, problem)

    @contextlib.contextmanager
    def lock(self, aid: str, *, waiting: Callable[[], contextlib.AbstractContextManager[object] | None] | None = None) -> Iterator[None]:
        """Hold ``aid``'s file lock: one process at a time looks up, builds and commits an artifact, so runs sharing a
        store never build the same artifact at once or replace one another's. ``waiting`` is called when another
        process holds it; a context manager it returns is held while this one waits (a sweep's trial gives its
        machine back to the others then)."""
        from filelock import FileLock, Timeout

        folder = self.root / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / f"{aid}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            held = waiting() if waiting is not None else None
            with held if held is not None else contextlib.nullcontext():
                lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def scratch(self, aid: str) -> Path:
        """A folder for ``aid``'s resumable work (training checkpoints) that outlives a crash; removed on commit."""
        return self.root / "scratch" / aid

    @contextlib.contextmanager
    def staging(self, aid: str) -> Iterator[Path]:
        """A fresh folder to build ``aid`` in; removed unless ``commit`` moved it into place. Call it holding ``lock(aid)``:
        any other staging folder of ``aid`` is then a killed run's leftover, and is removed."""
        tmp_root = store_tmp(self.root)
        tmp_root.mkdir(parents=True, exist_ok=True)
        for leftover in tmp_root.glob(f"{aid}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=tmp_root, prefix=f"{aid}-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(
        self,
        staging: Path,
        *,
        aid: str,
        kind: str,
        stage: str,
        main_file: Path,
        parents: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Record ``main_file`` (inside ``staging``) and move the folder into the store."""
        relative = main_file.relative_to(staging)
        final = self.folder(aid)
        artifact = Artifact(
            id=aid,
            kind=kind,
            stage=stage,
            path=final / relative,
            sha256=sha256_file(main_file),
            size=main_file.stat().st_size,
            parents=tuple(parents),
            meta=dict(meta or {}),
            files={file.relative_to(staging).as_posix(): sha256_file(file) for file in sorted(staging.rglob("*"))
                   if file.is_file() and file.name != RECORD},
        )
        write_atomic(staging / RECORD, artifact.model_dump_json(indent=2))
        _fsync_tree(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a stale or incomplete copy (``get`` said no): replace it
            shutil.rmtree(final)
        os.replace(staging, final)
        shutil.rmtree(self.scratch(aid), ignore_errors=True)
        return artifact


Status = Literal["ok", "failed", "skipped"]


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    name: str
    status: Status
    reason: str = ""
    reused: bool = False
    rebuilt: str = Field(default="", description="why the stored copy was not reused: it no longer matched its record")
    artifact: str | None = None
    kind: str | None = None
    path: str | None = None
    sha256: str | None = None
    parents: tuple[str, ...] = ()
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


class Manifest(BaseModel):
    """What a run made, rewritten atomically after every stage."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    edgeship: str = __version__
    run_id: str
    recipe: dict[str, Any]
    recipe_path: str | None = None
    started: float = Field(default_factory=time.time)
    finished: float | None = None
    status: Literal["running", "ok", "failed", "interrupted"] = "running"
    tools: dict[str, str] = Field(default_factory=dict)
    device: dict[str, Any] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict, description="edgeship's git commit and whether its tree was dirty")
    dataset: dict[str, Any] = Field(default_factory=dict, description="the data the run used: name, source, split sizes, fingerprint")
    calibration: dict[str, Any] | None = Field(default=None, description="the calibration set: samples and fingerprint")
    entries: list[ManifestEntry] = Field(default_factory=list)

    # one lock for every change and every save: builds and measurements fanned out over threads share one manifest
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

    def add(self, entry: ManifestEntry) -> None:
        """``entry``, replacing the entry of the same stage and name (which moves to the end)."""
        with self._lock:
            self.entries = [e for e in self.entries if (e.stage, e.name) != (entry.stage, entry.name)] + [entry]

    def record(self, stage: str, name: str, artifact: Artifact, *, reused: bool, config: Mapping[str, Any], seconds: float,
               metrics: Mapping[str, Any] | None = None, rebuilt: str = "") -> None:
        """An ``ok`` entry; ``rebuilt`` says why a stored copy was not reused (it was damaged)."""
        self.add(ManifestEntry(stage=stage, name=name, status="ok", reused=reused, rebuilt=rebuilt, artifact=artifact.id,
                               kind=artifact.kind, path=str(artifact.path), sha256=artifact.sha256, parents=artifact.parents,
                               config=dict(config), metrics=dict(metrics or artifact.meta.get("metrics", {})), seconds=round(seconds, 3)))

    def annotate(self, stage: str, name: str, metrics: Mapping[str, Any]) -> None:
        """Add facts to an entry's metrics (a published curve, a training history), so the report needs only the manifest."""
        with self._lock:
            for entry in self.entries:
                if (entry.stage, entry.name) == (stage, name):
                    entry.metrics.update(metrics)
                    return
        raise KeyError(f"no manifest entry {stage}/{name}")

    def save(self, path: Path) -> None:
        with self._lock:
            write_atomic(path, self.model_dump_json(indent=2))
