"""The device agent's HTTP service, in process: token, uploads by sha256 with a size limit, the cache it never
leaves, jobs one at a time, and a failed job's cause."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeship.agent.protocol import EngineRef, EngineToTime, JobRequest, TogetherRequest
from edgeship.agent.server import Agent, create_app, read_token
from edgeship.measure import unpack_hits

TOKEN = "a-test-token-of-some-length"
LIMIT = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(tmp_path / "cache", cpus=None)


@pytest.fixture
def client(agent: Agent) -> Iterator[object]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(agent, TOKEN, max_upload_bytes=LIMIT), headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield http


def upload(client: object, data: bytes) -> str:
    digest = sha(data)
    response = client.put(f"/files/{digest}", content=data)  # type: ignore[attr-defined]
    assert response.status_code == 201, response.text
    return digest


def job(client: object, onnx: Path, inputs: np.ndarray, tmp_path: Path, **settings: object) -> JobRequest:
    """Upload an ONNX engine and its inputs, and the request that measures it."""
    engine = upload(client, onnx.read_bytes())
    np.save(tmp_path / "inputs.npy", inputs)
    feed = upload(client, (tmp_path / "inputs.npy").read_bytes())
    settings = {"threads": 1, "warmup": 1, "iterations": 5, "min_seconds": 0.0, **settings}
    return JobRequest(engine=EngineRef(backend="onnxruntime", main="model.onnx", sha256=engine, files={"model.onnx": engine}),
                      inputs=feed, input_name="input", input_shape=(1, 28, 28), **settings)  # type: ignore[arg-type]


def every_file(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": TOKEN}])
def test_every_route_needs_the_bearer_token(agent: Agent, headers: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(agent, TOKEN, max_upload_bytes=LIMIT)) as http:
        digest = sha(b"x")
        answers = [http.get("/device", headers=headers), http.put(f"/files/{digest}", content=b"x", headers=headers),
                   http.head(f"/files/{digest}", headers=headers), http.post("/jobs", json={}, headers=headers),
                   http.get("/jobs/1-1", headers=headers), http.get("/jobs/1-1/files/logits.npy", headers=headers)]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert answers[0].headers["www-authenticate"] == "Bearer"
    assert not every_file(agent.cache / "files"), "nothing was stored for an unauthorised request"


def test_device_lists_the_backends_available_here(client: object) -> None:
    described = client.get("/device").json()  # type: ignore[attr-defined]
    assert described["protocol"] == 1 and described["device"]["cpu"]
    assert described["backends"]["onnxruntime"]["available"] is True
    assert described["backends"]["tensorrt"]["available"] is False and described["backends"]["tensorrt"]["reason"]


def test_an_upload_is_stored_under_its_sha256_once_verified(client: object, agent: Agent) -> None:
    data = b"engine bytes" * 100
    assert client.head(f"/files/{sha(data)}").status_code == 404  # type: ignore[attr-defined]
    digest = upload(client, data)
    assert (agent.cache / "files" / digest).read_bytes() == data
    assert client.head(f"/files/{digest}").status_code == 200  # type: ignore[attr-defined]


def test_an_upload_whose_bytes_do_not_match_its_sha256_is_refused(client: object, agent: Agent) -> None:
    response = client.put(f"/files/{sha(b'the engine')}", content=b"the engine, truncated in transit"[:20])  # type: ignore[attr-defined]
    assert response.status_code == 400 and "sha256 mismatch" in response.json()["detail"]
    assert not every_file(agent.cache / "files") and not every_file(agent.cache / "tmp")


def test_an_oversized_upload_is_refused(client: object, agent: Agent) -> None:
    data = bytes(LIMIT + 1)
    response = client.put(f"/files/{sha(data)}", content=data)  # type: ignore[attr-defined]
    assert response.status_code == 413 and f"limit of {LIMIT} bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the bytes arrive
        for _ in range(3):
            yield bytes(LIMIT // 2)

    response = client.put(f"/files/{'0' * 64}", content=chunks())  # type: ignore[attr-defined]
    assert response.status_code == 413
    assert not every_file(agent.cache / "files") and not every_file(agent.cache / "tmp")


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "ABC", "0" * 63, "../" + "0" * 61])
def test_a_file_is_named_only_by_a_sha256(client: object, name: str) -> None:
    assert client.put(f"/files/{name}", content=b"x").status_code in (400, 404)  # type: ignore[attr-defined]


@pytest.mark.parametrize("file_name", ["../model.onnx", "/etc/passwd", ".hidden", "a/b.onnx", ".."])
def test_engine_file_names_cannot_leave_the_cache(file_name: str) -> None:
    digest = "0" * 64
    with pytest.raises(ValueError, match="plain file name|pattern"):
        EngineRef(backend="onnxruntime", main=file_name, sha256=digest, files={file_name: digest})
    with pytest.raises(ValueError, match="plain file name"):  # a side file is checked as strictly as the main one
        EngineRef(backend="onnxruntime", main="model.xml", sha256=digest, files={"model.xml": digest, file_name: digest})


def test_a_trailing_newline_is_not_a_plain_file_name() -> None:
    digest = "0" * 64
    with pytest.raises(ValueError, match="plain file name"):
        EngineRef(backend="openvino", main="model.xml", sha256=digest, files={"model.xml": digest, "model.bin\n": digest})


def test_a_job_whose_files_were_not_uploaded_is_refused_with_what_is_missing(client: object, tiny_cnn_onnx: Path) -> None:
    digest = sha(tiny_cnn_onnx.read_bytes())
    request = JobRequest(engine=EngineRef(backend="onnxruntime", main="model.onnx", sha256=digest, files={"model.onnx": digest}),
                         inputs="1" * 64, input_name="input", input_shape=(1, 28, 28), threads=1)
    response = client.post("/jobs", json=request.model_dump(mode="json"))  # type: ignore[attr-defined]
    assert response.status_code == 409
    assert "engine file model.onnx" in response.json()["detail"] and "inputs" in response.json()["detail"]


def test_two_jobs_queue_and_never_overlap(client: object, tiny_cnn_onnx: Path, calibration_samples: np.ndarray, tmp_path: Path) -> None:
    request = job(client, tiny_cnn_onnx, calibration_samples[:16], tmp_path, min_seconds=1.0)
    first = client.post("/jobs", json=request.model_dump(mode="json")).json()  # type: ignore[attr-defined]
    second = client.post("/jobs", json=request.model_dump(mode="json")).json()  # type: ignore[attr-defined]
    assert second["state"] == "queued" and second["position"] >= 1, second
    done = [client.get(f"/jobs/{j['id']}", params={"wait": 30}).json() for j in (first, second)]  # type: ignore[attr-defined]
    while any(d["state"] not in ("done", "failed") for d in done):
        done = [client.get(f"/jobs/{j['id']}", params={"wait": 30}).json() for j in (first, second)]  # type: ignore[attr-defined]
    assert [d["state"] for d in done] == ["done", "done"], done
    assert done[1]["started"] >= done[0]["finished"], "the second measurement started only after the first had finished"
    assert done[0]["result"]["latency"]["iterations"] >= 5 and done[0]["result"]["memory"]["peak_rss_bytes"] > 0
    assert set(done[0]["files"]) == {"logits.npy", "timings.npz"}
    answer = client.get(f"/jobs/{first['id']}/files/logits.npy")  # type: ignore[attr-defined]
    assert answer.headers["x-edgeship-engine-sha256"] == request.engine.sha256
    assert client.get(f"/jobs/{first['id']}/files/..%2F..%2Ffiles").status_code == 404  # type: ignore[attr-defined]


def test_a_job_that_fails_on_the_device_says_why(client: object, tmp_path: Path, calibration_samples: np.ndarray) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    request = job(client, broken, calibration_samples[:4], tmp_path)
    state = client.post("/jobs", json=request.model_dump(mode="json")).json()  # type: ignore[attr-defined]
    while state["state"] not in ("done", "failed"):
        state = client.get(f"/jobs/{state['id']}", params={"wait": 30}).json()  # type: ignore[attr-defined]
    assert state["state"] == "failed" and state["error"] and "\n" not in state["error"], state


def test_metrics_mode_scores_on_the_device(client: object, tiny_cnn_onnx: Path, calibration_samples: np.ndarray, tmp_path: Path) -> None:
    import onnxruntime as ort

    inputs = calibration_samples[:32]
    reference = ort.InferenceSession(str(tiny_cnn_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    np.save(tmp_path / "reference.npy", reference)
    labels = reference.argmax(1)
    labels[:4] = (labels[:4] + 1) % 10
    np.save(tmp_path / "labels.npy", labels)
    reference_sha = upload(client, (tmp_path / "reference.npy").read_bytes())
    labels_sha = upload(client, (tmp_path / "labels.npy").read_bytes())
    request = job(client, tiny_cnn_onnx, inputs, tmp_path, outputs="metrics", reference=reference_sha, labels=labels_sha, timed=False)
    state = client.post("/jobs", json=request.model_dump(mode="json")).json()  # type: ignore[attr-defined]
    while state["state"] not in ("done", "failed"):
        state = client.get(f"/jobs/{state['id']}", params={"wait": 30}).json()  # type: ignore[attr-defined]
    scores = state["result"]["scores"]
    assert scores["top1"] == pytest.approx(28 / 32) and scores["top1_agreement"] == 1.0 and scores["eval_samples"] == 32
    assert unpack_hits(scores["top1_hits"], 32).all(), "each sample's top-1 hit goes back, for the interval over photos"
    assert state["files"] == [], "in metrics mode the outputs stay on the device"


def test_read_token_names_the_file_and_what_it_expected(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("short\n")
    with pytest.raises(ValueError, match=r"token: expected a token of at least 16 characters"):
        read_token(path)
    with pytest.raises(ValueError, match="cannot read the token file"):
        read_token(tmp_path / "missing")
    path.write_text("\n  a-long-enough-token-value  \nsecond line\n")
    assert read_token(path) == "a-long-enough-token-value"


def test_engines_are_timed_together_in_interleaved_rounds_on_the_device(client: object, tiny_cnn_onnx: Path,
                                                                        calibration_samples: np.ndarray, tmp_path: Path) -> None:
    one = job(client, tiny_cnn_onnx, calibration_samples[:4], tmp_path)
    import onnx

    model = onnx.load(tiny_cnn_onnx)
    model.doc_string = "the same network, another engine"  # its sha256 differs
    other = upload(client, model.SerializeToString())
    engines = (EngineToTime(name="onnxruntime/fp32", engine=one.engine, input_name="input"),
               EngineToTime(name="onnxruntime/int8", input_name="input",
                            engine=EngineRef(backend="onnxruntime", main="model.onnx", sha256=other, files={"model.onnx": other})))
    request = TogetherRequest(engines=engines, inputs=one.inputs, rounds=3, threads=1, warmup=1, iterations=6, min_seconds=0.0)
    state = client.post("/together", json=request.model_dump(mode="json")).json()  # type: ignore[attr-defined]
    while state["state"] not in ("done", "failed"):
        state = client.get(f"/jobs/{state['id']}", params={"wait": 30}).json()  # type: ignore[attr-defined]
    assert state["state"] == "done", state["error"]
    result = state["result"]
    assert result["rounds"] == 3 and [sorted(order) for order in result["orders"]] == [["onnxruntime/fp32", "onnxruntime/int8"]] * 3
    for name in ("onnxruntime/fp32", "onnxruntime/int8"):
        figures = result["engines"][name]
        assert len(figures["round_p50_ms"]) == 3 and figures["iterations"] >= 6 and figures["p50_ms"] > 0
    assert state["engine"]["sha256"] == one.engine.sha256 and state["files"] == ["timings.npz"]
    answer = client.get(f"/jobs/{state['id']}/files/timings.npz")  # type: ignore[attr-defined]
    assert answer.headers["x-edgeship-engine-sha256"] == one.engine.sha256
    (tmp_path / "timings.npz").write_bytes(answer.content)
    assert len(np.load(tmp_path / "timings.npz").files) == 6, "each engine's times in each round"


def test_timing_together_refuses_missing_files_and_twice_the_same_name(client: object, tiny_cnn_onnx: Path) -> None:
    digest = sha(tiny_cnn_onnx.read_bytes())
    ref = EngineRef(backend="onnxruntime", main="model.onnx", sha256=digest, files={"model.onnx": digest})
    engines = (EngineToTime(name="a", engine=ref, input_name="input"), EngineToTime(name="b", engine=ref, input_name="input"))
    request = TogetherRequest(engines=engines, inputs="1" * 64, rounds=2, threads=1)
    response = client.post("/together", json=request.model_dump(mode="json"))  # type: ignore[attr-defined]
    assert response.status_code == 409 and "engine file a/model.onnx" in response.json()["detail"]
    with pytest.raises(ValueError, match="each name once"):
        TogetherRequest(engines=(engines[0], engines[0]), inputs="1" * 64, rounds=2, threads=1)
