"""The host side of the agent protocol against scripted replies: a reply for another engine is refused, a silent
device times out, and the retry policy retries only what may pass."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
import pytest

from edgeship.agent.client import AgentClient, AgentError, measure_remote, with_retries
from edgeship.agent.protocol import EngineRef, EngineToTime, JobRequest, TogetherRequest

ENGINE = EngineRef(backend="onnxruntime", main="model.onnx", sha256="a" * 64, files={"model.onnx": "a" * 64})
OTHER = EngineRef(backend="onnxruntime", main="model.onnx", sha256="b" * 64, files={"model.onnx": "b" * 64})
REQUEST = JobRequest(engine=ENGINE, inputs="c" * 64, input_name="input", input_shape=(1, 28, 28), threads=1)


def state(engine: EngineRef, status: str = "done", **fields: object) -> dict[str, object]:
    return {"id": "1-1", "state": status, "engine": engine.model_dump(mode="json"), "submitted": 1.0, "result": {"latency": {}},
            "files": ["logits.npy"], **fields}


def scripted(replies: dict[tuple[str, str], httpx.Response]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        return replies[(request.method, request.url.path)]

    return httpx.MockTransport(handle)


def test_a_job_reply_for_another_engine_is_refused(tmp_path: Path) -> None:
    transport = scripted({("HEAD", f"/files/{'a' * 64}"): httpx.Response(200), ("HEAD", f"/files/{'c' * 64}"): httpx.Response(200),
                          ("POST", "/jobs"): httpx.Response(202, json=state(ENGINE, "queued")),
                          ("GET", "/jobs/1-1"): httpx.Response(200, json=state(OTHER))})
    with AgentClient("http://device", "t" * 20, transport=transport) as client, \
            pytest.raises(AgentError, match=r"replied for engine bbbbbbbbbbbb…, not the engine sent \(aaaaaaaaaaaa…\)") as err:
        measure_remote(client, REQUEST, {}, tmp_path, job_timeout_s=10)
    assert not err.value.transient, "a wrong attribution is never retried into a result"


def test_a_result_file_for_another_engine_is_refused(tmp_path: Path) -> None:
    transport = scripted({("POST", "/jobs"): httpx.Response(202, json=state(ENGINE, "queued")),
                          ("GET", "/jobs/1-1"): httpx.Response(200, json=state(ENGINE)),
                          ("GET", "/jobs/1-1/files/logits.npy"): httpx.Response(200, content=b"x",
                                                                                 headers={"X-Edgeship-Engine-Sha256": "b" * 64})})
    with AgentClient("http://device", "t" * 20, transport=transport) as client, pytest.raises(AgentError, match="refused"):
        measure_remote(client, REQUEST, {}, tmp_path, job_timeout_s=10)
    assert not (tmp_path / "logits.npy").exists()


def test_a_device_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections, never replies
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
        with AgentClient(f"http://127.0.0.1:{silent.getsockname()[1]}", "t" * 20, timeout_s=0.5) as client, \
                pytest.raises(AgentError, match="timed out") as err:
            client.device()
    assert err.value.transient


def test_retries_follow_the_policy_and_stop_at_a_lasting_fault() -> None:
    calls: list[int] = []
    retried: list[int] = []

    def flaky() -> dict[str, object]:
        calls.append(1)
        if len(calls) < 3:
            raise AgentError("unreachable", transient=True)
        return {"ok": True}

    assert with_retries(flaky, retries=2, delay_s=0.0, on_retry=lambda n, exc: retried.append(n)) == {"ok": True}
    assert retried == [1, 2]
    calls.clear()
    with pytest.raises(AgentError, match=r"unreachable \(after 2 attempts\)"):
        with_retries(flaky, retries=1, delay_s=0.0)

    def refused() -> dict[str, object]:
        calls.append(1)
        raise AgentError("the agent refused the token (401)", transient=False)

    calls.clear()
    with pytest.raises(AgentError, match="401"):
        with_retries(refused, retries=5, delay_s=0.0)
    assert len(calls) == 1, "a lasting fault is not retried"


def test_an_agent_older_than_timing_together_says_so_and_is_not_retried(tmp_path: Path) -> None:
    timed = tuple(EngineToTime(name=name, engine=engine, input_name="input") for name, engine in (("a", ENGINE), ("b", OTHER)))
    request = TogetherRequest(engines=timed, inputs="c" * 64, rounds=2, threads=1)
    transport = scripted({("POST", "/together"): httpx.Response(404, json={"detail": "Not Found"})})
    with AgentClient("http://device", "t" * 20, transport=transport) as client, \
            pytest.raises(AgentError, match=r"^http://device: this agent's edgeship cannot time engines together") as err:
        measure_remote(client, request, {}, tmp_path, job_timeout_s=10)
    assert not err.value.transient
