"""The host side of the device agent: upload an engine and its feed by hash, run a job, fetch its results.

``measure_remote`` is what the validate stage calls for a device of the recipe's ``devices:``. It retries
what may pass (the agent unreachable, a timeout, the agent restarted mid-job) as the recipe's retry policy
says, never what will not (the engine failed to load there), and it checks the engine's sha256 in every
reply, so a result is never taken for another engine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeship.agent.protocol import ENGINE_HEADER, EngineRef, JobRequest, JobState, ProbeRequest, TogetherRequest
from edgeship.artifacts import sha256_file

Progress = Callable[[str, int, int], None]
POLL_SECONDS = 1.0  # a long poll: at most one request a second reaches the device while it measures


class AgentError(RuntimeError):
    """A device could not give a result; ``transient`` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class AgentClient:
    """One device agent at ``url``, with its bearer token."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0, transport: Any = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, transport=transport,
                                  timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def device(self) -> dict[str, Any]:
        """``GET /device``: the device description and its backends."""
        return self._call("GET", "/device").json()

    def ensure_file(self, path: Path, digest: str | None = None, *, on_upload: Callable[[], None] | None = None) -> str:
        """Upload ``path`` unless the agent holds a file of its sha256 already; returns the sha256."""
        digest = digest or sha256_file(path)
        if self._call("HEAD", f"/files/{digest}", allow=(404,)).status_code == 200:
            return digest
        if on_upload is not None:
            on_upload()

        def chunks() -> Any:
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    yield block

        headers = {"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"}
        self._call("PUT", f"/files/{digest}", content=chunks(), headers=headers)
        return digest

    def submit(self, request: JobRequest | TogetherRequest) -> JobState:
        """``POST /jobs`` (measure one engine) or ``POST /together`` (time engines together)."""
        together = isinstance(request, TogetherRequest)
        route = "/together" if together else "/jobs"
        response = self._call("POST", route, allow=(404,) if together else (), json=request.model_dump(mode="json"))
        if response.status_code == 404:  # an agent older than the route
            raise AgentError(f"{self.url}: this agent's edgeship cannot time engines together (it has no {route}): update it",
                             transient=False)
        state = JobState.model_validate(response.json())
        _check_engine(state.engine, request.engine)
        return state

    def probe(self, request: ProbeRequest) -> JobState:
        """``POST /probes``: run a release's acceptance probe there (its files uploaded first)."""
        state = JobState.model_validate(self._call("POST", "/probes", json=request.model_dump(mode="json")).json())
        _check_engine(state.engine, request.engine)
        return state

    def wait(self, job: JobState, *, deadline: float, progress: Progress | None = None) -> JobState:
        """Poll the job until it is done or failed, or raise a transient ``AgentError`` at ``deadline``."""
        while True:
            state = JobState.model_validate(self._call("GET", f"/jobs/{job.id}", params={"wait": POLL_SECONDS}).json())
            _check_engine(state.engine, job.engine)
            if state.state in ("done", "failed"):
                return state
            if progress is not None:
                if state.state == "queued":
                    progress(f"queued on the device ({state.position} ahead)", 0, 0)
                elif state.progress:
                    progress(state.progress["task"], state.progress["done"], state.progress["total"])
            if time.monotonic() > deadline:
                raise AgentError(f"job {job.id} did not finish within the job timeout ({state.state} at the time)", transient=True)

    def fetch(self, job: JobState, name: str, target: Path) -> None:
        """Download one result file of a finished job to ``target``, checking it belongs to the job's engine."""
        response = self._call("GET", f"/jobs/{job.id}/files/{name}")
        claimed = response.headers.get(ENGINE_HEADER)
        if claimed != job.engine.sha256:
            raise AgentError(f"{name} came back for engine {claimed}, not {job.engine.sha256}: refused", transient=False)
        target.write_bytes(response.content)

    def _call(self, method: str, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise AgentError(f"{self.url}: timed out ({type(exc).__name__})", transient=True) from None
        except httpx.TransportError as exc:
            raise AgentError(f"{self.url}: unreachable ({_reason(exc)})", transient=True) from None
        if response.is_success or response.status_code in allow:
            return response
        detail = _detail(response)
        if response.status_code == 401:
            raise AgentError(f"{self.url}: the agent refused the token (401): check the device's token_env", transient=False)
        # 5xx may pass; a 404 for a job means the agent restarted and lost it, which a new attempt repairs
        transient = response.status_code >= 500 or (response.status_code == 404 and path.startswith("/jobs/"))
        raise AgentError(f"{self.url}{path}: {response.status_code} {detail}", transient=transient)


def _check_engine(got: EngineRef, sent: EngineRef) -> None:
    if got.sha256 != sent.sha256:
        raise AgentError(f"the agent replied for engine {got.sha256[:12]}…, not the engine sent ({sent.sha256[:12]}…): refused",
                         transient=False)


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail or response.reason_phrase or "").strip()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


def measure_remote(client: AgentClient, request: JobRequest | TogetherRequest, files: dict[str, Path], folder: Path, *,
                   job_timeout_s: float, progress: Progress | None = None) -> dict[str, Any]:
    """One attempt: upload what the agent lacks, run the job, fetch its outputs and timings into ``folder``.

    ``files`` maps each sha256 of the request to the local file that has it. Returns the harness result, as the
    local harness would, plus ``job`` (its id, queue and run times on the device's clock).
    """
    for digest, path in files.items():
        client.ensure_file(path, digest, on_upload=None if progress is None else lambda p=path: progress(f"uploading {p.name}", 0, 0))
    state = client.wait(client.submit(request), deadline=time.monotonic() + job_timeout_s, progress=progress)
    if state.state == "failed":
        raise AgentError(f"the measurement failed on the device: {state.error}", transient=False)
    assert state.result is not None
    for name in state.files:
        client.fetch(state, name, folder / name)
    return {**state.result, "job": {"id": state.id, "submitted": state.submitted, "started": state.started, "finished": state.finished}}


def with_retries(attempt: Callable[[], dict[str, Any]], *, retries: int, delay_s: float,
                 on_retry: Callable[[int, AgentError], None] | None = None) -> dict[str, Any]:
    """``attempt()``, again up to ``retries`` times after a transient ``AgentError``, ``delay_s`` apart (doubling)."""
    for number in range(retries + 1):
        try:
            return attempt()
        except AgentError as exc:
            if not exc.transient or number == retries:
                if number:
                    raise AgentError(f"{exc} (after {number + 1} attempts)", transient=exc.transient) from None
                raise
            if on_retry is not None:
                on_retry(number + 1, exc)
            time.sleep(delay_s * 2**number)
    raise AssertionError("unreachable")
