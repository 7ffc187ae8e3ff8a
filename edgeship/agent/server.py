"""``edgeship agent serve``: a small FastAPI service on the edge device that measures engines there.

- ``GET /device``: the device description and the backends available on it.
- ``HEAD|PUT /files/<sha256>``: the cache of engine and feed files, by hash; an upload whose bytes do not hash
  to its name is refused, and so is one larger than the limit.
- ``POST /jobs``: measure an engine with ``edgeship.harness`` (the local validate stage's own code, in a pinned
  child process); ``GET /jobs/<id>?wait=S`` its state; ``GET /jobs/<id>/files/<name>`` its outputs and timings.
- ``POST /together``: time a backend's engines together in interleaved rounds (``edgeship.interleave``), a job like
  the others, for the ship decision: two engines timed one after the other on a device compare two moments.

One worker thread runs the jobs one after another, so two measurements never overlap; the others queue.
Every request needs ``Authorization: Bearer <token>``. Every path the agent writes is ``<cache>/files/<sha256>``
or a plain file name under a folder it names itself, so nothing a request says can reach outside the cache.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response  # the `agent` extra; only `agent serve` imports this module
from fastapi.responses import FileResponse

from edgeship.agent.protocol import (
    ENGINE_HEADER,
    FILE_NAME,
    PROTOCOL,
    RESULT_FILES,
    SHA256,
    EngineRef,
    JobRequest,
    JobState,
    ProbeRequest,
    TogetherRequest,
    matches,
)
from edgeship.backends import REGISTRY, availability
from edgeship.device import describe_device, pinned_cpus
from edgeship.harness import HarnessError, HarnessSpec, measure_isolated
from edgeship.interleave import time_together_into
from edgeship.measure import pack_hits, scores, top1_hits
from edgeship.version import __version__

KEEP_JOBS = 32  # finished jobs whose folders stay for the host to fetch
CHUNK = 1 << 20


@dataclass
class _Job:
    id: str
    seq: int
    request: JobRequest | ProbeRequest | TogetherRequest
    submitted: float
    state: str = "queued"
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Agent:
    """The agent's state: its cache, its job queue and the one worker that measures."""

    def __init__(self, cache: Path, *, cpus: tuple[int, ...] | None = None) -> None:
        self.cache = cache.resolve()
        for folder in ("jobs", "tmp"):  # a previous agent's jobs are gone with it; its partial uploads are not files
            shutil.rmtree(self.cache / folder, ignore_errors=True)
        for folder in ("files", "engines", "jobs", "tmp"):
            (self.cache / folder).mkdir(parents=True, exist_ok=True)
        self.cpus = cpus
        self.jobs: dict[str, _Job] = {}
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._description: dict[str, Any] | None = None
        self._worker = threading.Thread(target=self._work, name="edgeship-agent-worker", daemon=True)
        self._worker.start()

    def describe(self) -> dict[str, Any]:
        """The device and its backends, found once (a backend's availability check imports its runtime)."""
        if self._description is None:
            backends = {}
            for name in REGISTRY:
                state = availability(name)
                backends[name] = {"available": state.available, "versions": state.versions, "device": state.device,
                                  "reason": state.reason, "broken": state.broken}
            self._description = {"protocol": PROTOCOL, "edgeship": __version__, "host": platform.node(),
                                 "device": describe_device(), "backends": backends, "cpus": list(self.cpus) if self.cpus else None}
        return self._description

    def file_path(self, digest: str) -> Path:
        assert matches(SHA256, digest)
        return self.cache / "files" / digest

    def submit(self, request: JobRequest | ProbeRequest | TogetherRequest) -> _Job:
        with self._lock:
            seq = next(self._ids)
            job = _Job(id=f"{int(time.time())}-{seq}", seq=seq, request=request, submitted=time.time())
            self.jobs[job.id] = job
            self._forget_old_jobs()
        self._queue.put(job)
        return job

    def state(self, job: _Job) -> JobState:
        position = None
        if job.state == "queued":
            with self._lock:
                position = sum(1 for j in self.jobs.values() if j.state == "running" or (j.state == "queued" and j.seq < job.seq))
        files = tuple(name for name in RESULT_FILES if (self._job_dir(job) / name).is_file()) if job.state == "done" else ()
        return JobState(id=job.id, state=job.state, engine=job.request.engine, position=position, progress=job.progress,  # type: ignore[arg-type]
                        submitted=job.submitted, started=job.started, finished=job.finished, result=job.result, error=job.error,
                        files=files)

    def result_file(self, job: _Job, name: str) -> Path | None:
        if name not in RESULT_FILES or job.state != "done":
            return None
        path = self._job_dir(job) / name
        return path if path.is_file() else None

    def staging_path(self, digest: str) -> Path:
        return self.cache / "tmp" / f"upload-{digest}-{next(self._ids)}"

    def _job_dir(self, job: _Job) -> Path:
        return self.cache / "jobs" / job.id

    def _forget_old_jobs(self) -> None:
        finished = sorted((j for j in self.jobs.values() if j.state in ("done", "failed")), key=lambda j: j.submitted)
        for job in finished[: max(0, len(finished) - KEEP_JOBS)]:
            shutil.rmtree(self._job_dir(job), ignore_errors=True)
            del self.jobs[job.id]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            job.state, job.started = "running", time.time()
            try:
                job.result = self._run(job)
                job.state = "done"
            except HarnessError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any job; the host gets the cause
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            job.finished = time.time()
            job.done.set()

    def _run(self, job: _Job) -> dict[str, Any]:
        if isinstance(job.request, ProbeRequest):
            return self._probe(job, job.request)
        if isinstance(job.request, TogetherRequest):
            return self._together(job, job.request)
        request = job.request
        engine = self._engine_folder(request.engine) / request.engine.main
        folder = self._job_dir(job)
        folder.mkdir(parents=True, exist_ok=True)
        spec = HarnessSpec(**request.settings(), backend=request.engine.backend, engine=engine, input_name=request.input_name,
                           inputs=self.file_path(request.inputs), outputs=folder / "logits.npy",
                           timings=folder / "timings.npz" if request.timed else None, cpus=pinned_cpus(request.threads, self.cpus))

        def progress(task: str, done: int, total: int) -> None:
            job.progress = {"task": task, "done": done, "total": total}

        result = measure_isolated(spec, folder, progress)  # the benchmark tool too, in its rounds, when cross_check asks
        if request.outputs == "metrics":
            result["scores"] = self._score(folder / "logits.npy", request)
            (folder / "logits.npy").unlink()
        return result

    def _together(self, job: _Job, request: TogetherRequest) -> dict[str, Any]:
        """The engines timed together in pinned children of their own, on the agent's CPUs like any job's."""
        folder = self._job_dir(job)
        folder.mkdir(parents=True, exist_ok=True)
        cpus = pinned_cpus(request.threads, self.cpus)
        specs = {timed.name: HarnessSpec(**request.settings(), backend=timed.engine.backend,
                                         engine=self._engine_folder(timed.engine) / timed.engine.main, input_name=timed.input_name,
                                         inputs=self.file_path(request.inputs), cpus=cpus) for timed in request.engines}
        total = request.rounds * len(specs)
        slices = itertools.count()

        def on_slice(index: int, name: str) -> None:
            job.progress = {"task": f"engines timed together, round {index + 1}/{request.rounds}: {name}", "done": next(slices),
                            "total": total}

        result = time_together_into(folder, specs, rounds=request.rounds, on_slice=on_slice)
        shutil.rmtree(folder / "children", ignore_errors=True)  # the children's specs name this cache's paths
        return result

    def _probe(self, job: _Job, request: ProbeRequest) -> dict[str, Any]:
        """The release verified and probed by the device loader in a process of its own, as a device would run it."""
        folder = self._job_dir(job)
        folder.mkdir(parents=True, exist_ok=True)
        keys = []
        for n, key in enumerate(request.trusted_keys):
            keys += ["--key", str(folder / f"trusted-{n}.pub")]
            (folder / f"trusted-{n}.pub").write_text(key)
        command = [sys.executable, "-m", "edgeship_deploy", "verify", str(self._engine_folder(request.engine)), *keys, "--probe",
                   *(["--allow-unsigned"] if request.allow_unsigned else []),
                   *(["--threads", str(request.threads)] if request.threads else [])]
        job.progress = {"task": "probe", "done": 0, "total": 1}
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        return {"passed": done.returncode == 0, "exit_code": done.returncode, "lines": lines}

    def _engine_folder(self, ref: EngineRef) -> Path:
        """The engine's files under their own names, linked from the hash cache into a folder named by their hashes."""
        key = hashlib.sha256(repr(sorted(ref.files.items())).encode()).hexdigest()[:32]
        folder = self.cache / "engines" / key
        if not folder.is_dir():
            staging = self.cache / "tmp" / f"engine-{key}-{os.getpid()}-{threading.get_ident()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for name, digest in ref.files.items():
                try:
                    os.link(self.file_path(digest), staging / name)
                except OSError:
                    shutil.copyfile(self.file_path(digest), staging / name)
            try:
                staging.rename(folder)
            except OSError:  # made meanwhile by an identical request
                shutil.rmtree(staging, ignore_errors=True)
        return folder

    def _score(self, logits_path: Path, request: JobRequest) -> dict[str, Any]:
        """The outputs' scores, and which samples agree on top-1 (``pack_hits``): the host knows which photo each sample
        came from, and gives the interval over photos from them."""
        labels = np.load(self.file_path(request.labels)) if request.labels else None
        outputs, reference = np.load(logits_path), np.load(self.file_path(request.reference))
        return {**scores(outputs, reference, labels), "top1_hits": pack_hits(top1_hits(outputs, reference))}  # type: ignore[arg-type]


def create_app(agent: Agent, token: str, *, max_upload_bytes: int) -> FastAPI:
    """The FastAPI application over ``agent``; every route needs the bearer ``token``."""
    expected = f"Bearer {token}".encode()

    def authorized(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="edgeship agent", dependencies=[Depends(authorized)], docs_url=None, redoc_url=None, openapi_url=None)

    def job_or_404(job_id: str) -> _Job:
        job = agent.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} here (the agent may have restarted)")
        return job

    def checked_sha(digest: str) -> str:
        if not matches(SHA256, digest):
            raise HTTPException(400, "a file is named by its sha256: 64 lowercase hex digits")
        return digest

    @app.get("/device")
    def device() -> dict[str, Any]:
        return agent.describe()

    @app.head("/files/{digest}")
    def has_file(digest: str) -> Response:
        path = agent.file_path(checked_sha(digest))
        if not path.is_file():
            raise HTTPException(404, f"no file {digest}")
        return Response(headers={"X-Edgeship-Size": str(path.stat().st_size)})

    @app.put("/files/{digest}", status_code=201)
    async def put_file(digest: str, request: Request) -> dict[str, Any]:
        target = agent.file_path(checked_sha(digest))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise HTTPException(413, f"upload of {int(declared)} bytes is over this agent's limit of {max_upload_bytes} bytes")
        staging = agent.staging_path(digest)
        hasher, size = hashlib.sha256(), 0
        try:
            with staging.open("wb") as handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_upload_bytes:
                        raise HTTPException(413, f"upload is over this agent's limit of {max_upload_bytes} bytes")
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if hasher.hexdigest() != digest:
                raise HTTPException(400, f"sha256 mismatch: the {size} bytes received hash to {hasher.hexdigest()}, not {digest}")
            os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)
        return {"sha256": digest, "size": size}

    def uploaded(request: JobRequest | ProbeRequest | TogetherRequest) -> None:
        missing = [f"{role} ({digest[:12]}…)" for role, digest in request.hashes().items() if not agent.file_path(digest).is_file()]
        if missing:
            raise HTTPException(409, f"upload these first: {', '.join(missing)}")

    def runs_here(engine: EngineRef, what: str = "") -> None:
        backend = agent.describe()["backends"].get(engine.backend)
        if backend is None or not backend["available"]:
            why = backend["reason"] if backend else "not a backend edgeship knows"
            raise HTTPException(422, f"{what}{engine.backend} cannot run on this device: {why}")

    @app.post("/jobs", status_code=202)
    def submit(request: JobRequest) -> JobState:
        uploaded(request)
        runs_here(request.engine)
        return agent.state(agent.submit(request))

    @app.post("/together", status_code=202)
    def together(request: TogetherRequest) -> JobState:
        uploaded(request)
        for timed in request.engines:
            runs_here(timed.engine, f"{timed.name}: ")
        return agent.state(agent.submit(request))

    @app.post("/probes", status_code=202)
    def probe(request: ProbeRequest) -> JobState:
        uploaded(request)
        return agent.state(agent.submit(request))

    @app.get("/jobs/{job_id}")
    def job_state(job_id: str, wait: float = 0.0) -> JobState:
        job = job_or_404(job_id)
        if wait > 0:
            job.done.wait(min(wait, 30.0))
        return agent.state(job)

    @app.get("/jobs/{job_id}/files/{name}")
    def job_file(job_id: str, name: str) -> FileResponse:
        job = job_or_404(job_id)
        path = agent.result_file(job, name) if matches(FILE_NAME, name) else None
        if path is None:
            raise HTTPException(404, f"job {job_id} has no {name!r}")
        return FileResponse(path, media_type="application/octet-stream", headers={ENGINE_HEADER: job.request.engine.sha256})

    return app


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (first line, stripped); ``ValueError`` naming the file when it is unusable."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the token file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token file is not text") from None
    token = lines[0] if lines else ""
    if len(token) < 16:
        raise ValueError(f"{path}: expected a token of at least 16 characters on its first line "
                         "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > token`)")
    return token


def serve(*, host: str, port: int, token_file: Path, cache: Path, max_upload_mib: float, cpus: tuple[int, ...] | None,
          announce: Any = print) -> None:
    """Run the agent until interrupted."""
    import uvicorn

    token = read_token(token_file)
    agent = Agent(cache, cpus=cpus)
    description = agent.describe()
    available = [name for name, state in description["backends"].items() if state["available"]]
    app = create_app(agent, token, max_upload_bytes=int(max_upload_mib * 1024 * 1024))
    announce(f"edgeship agent on http://{host}:{port} · {description['device']['cpu']} · backends: {', '.join(available) or 'none'} "
             f"· cache {agent.cache}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
