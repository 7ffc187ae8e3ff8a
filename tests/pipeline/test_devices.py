"""On-device validation through a real agent (``edgeship agent serve`` in a subprocess on loopback): the same outputs
as the local measurement, faults recorded per device while the run goes on, and a killed agent mid-job."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from rich.console import Console

from edgeship import run
from edgeship.errors import StageError
from edgeship.pipeline.measurers import DeviceMeasurer

from conftest import TINY_VALIDATE, TOKEN, agent_process, free_port, tiny_recipe

pytestmark = pytest.mark.slow
def device(name: str, url: str, **settings: object) -> dict[str, object]:
    return {"name": name, "url": url, "token_env": "EDGESHIP_TEST_TOKEN", "retries": 1, "retry_delay_s": 0.1, **settings}


def rows(result: object) -> dict[str, dict[str, object]]:
    return {row["name"]: row for row in result.report["engines"]}  # type: ignore[attr-defined]


def logits(result: object, name: str) -> np.ndarray:
    entry = next(e for e in result.manifest.entries if e.stage == "validate" and e.name == name)  # type: ignore[attr-defined]
    return np.load(Path(entry.path).parent / "logits.npy")


def test_a_device_measures_the_same_outputs_and_faults_stay_with_their_device(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("EDGESHIP_WRONG_TOKEN", "not-the-token-0123456789")
    with agent_process(tmp_path / "agent") as agent:
        recipe = tiny_recipe(tmp_path, devices=[
            device("loop", agent.url),
            device("nobody", f"http://127.0.0.1:{free_port()}"),  # nothing listens there
            device("wrongtoken", agent.url, token_env="EDGESHIP_WRONG_TOKEN"),
            device("notoken", agent.url, token_env="EDGESHIP_UNSET_TOKEN"),
            device("small", agent.url, outputs_limit_mib=0.001, backends=["onnxruntime", "openvino"]),
        ])
        console = Console(record=True, width=250)
        result = run(recipe, console=console)
    text = console.export_text()
    found = rows(result)
    for engine in ("onnxruntime/fp32", "onnxruntime/int8"):
        local, remote = found[engine], found[f"{engine}@loop"]
        assert local["status"] == remote["status"] == "ok"
        assert np.array_equal(logits(result, engine), logits(result, f"{engine}@loop")), "same engine, same outputs on the device"
        assert remote["top1"] == local["top1"] and remote["top1_agreement"] == local["top1_agreement"]
        assert remote["sha256"] == local["sha256"] and remote["latency"]["iterations"] >= 20
        assert remote["memory"]["peak_rss_bytes"] > 0 and remote["target"] == "onnxruntime@loop"
        assert found[f"{engine}@small"]["top1"] == local["top1"], "scored on the device, outputs over its limit"
        assert found[f"{engine}@small"]["top1_agreement_ci95"] == local["top1_agreement_ci95"]
        assert found[f"{engine}@nobody"]["status"] == "failed" and "unreachable" in found[f"{engine}@nobody"]["reason"]
        assert "after 2 attempts" in found[f"{engine}@nobody"]["reason"], "the recipe's retry policy: 1 retry"
        assert "refused the token (401)" in found[f"{engine}@wrongtoken"]["reason"]
        assert "EDGESHIP_UNSET_TOKEN" in found[f"{engine}@notoken"]["reason"] and "is not set" in found[f"{engine}@notoken"]["reason"]
    assert "↻ device nobody" in text, "a retry is announced"
    assert result.report["recommendations"]["onnxruntime@loop"]["engine"] in ("onnxruntime/fp32@loop", "onnxruntime/int8@loop")
    assert result.report["devices"]["loop"]["agent"] == agent.url and result.report["devices"]["loop"]["device"]["cpu"]
    assert result.exit_code == 1 and "onnxruntime/fp32@nobody" in result.report["release"]["failing"]
    assert "onnxruntime/fp32" not in result.report["release"]["failing"], "the host's own rows are judged on their own"
    html = (result.run_dir / "report.html").read_text()
    assert "onnxruntime/int8@loop" in html and "measured on that device by its edgeship agent" in html


def test_a_device_times_its_engines_together_and_a_rerun_reuses_results_and_uploads(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_TEST_TOKEN", TOKEN)
    with agent_process(tmp_path / "agent") as agent:
        recipe = tiny_recipe(tmp_path, devices=[device("loop", agent.url)], validate={**TINY_VALIDATE, "together_rounds": 2})
        first = run(recipe, console=Console(quiet=True))
        found = rows(first)
        for engine in ("onnxruntime/fp32@loop", "onnxruntime/int8@loop"):
            together = found[engine]["timed_together"]
            assert together["rounds"] == 2 and len(together["round_p50_ms"]) == 2 and together["iterations"] >= 20
            assert together["engines"] == ["onnxruntime/fp32@loop", "onnxruntime/int8@loop"], "timed beside each other there"
            assert found[engine.removesuffix("@loop")]["timed_together"]["engines"] == ["onnxruntime/fp32", "onnxruntime/int8"]
        entry = next(e for e in first.manifest.entries if e.name == "timed-together/onnxruntime@loop")
        raw = np.load(Path(entry.path).parent / "timings.npz")
        assert sorted(raw.files) == sorted(f"{e}@round{i}" for e in ("onnxruntime/fp32@loop", "onnxruntime/int8@loop") for i in (1, 2))
        reason = first.report["recommendations"]["onnxruntime@loop"]["reason"]
        assert "p50s timed together: 2 interleaved rounds" in reason and "different runs" not in reason, reason
        uploads = sorted(p.name for p in (agent.cache / "files").iterdir())
        again = run(recipe, console=Console(quiet=True))
        reused = {e.name: e.reused for e in again.manifest.entries if e.stage == "validate"}
        assert reused["onnxruntime/int8@loop"] and reused["onnxruntime/fp32@loop"], "same engine, same device: the result is reused"
        assert reused["timed-together/onnxruntime@loop"], "the same engines on the same device: their rounds are reused"

        def older_agent(*args: object) -> dict[str, object]:
            raise StageError("validate", f"device loop: {agent.url}: this agent's edgeship cannot time engines together")

        monkeypatch.setattr(DeviceMeasurer, "time_together", older_agent)
        forced = run(recipe, force=["validate"], console=Console(quiet=True))
        assert all(not e.reused for e in forced.manifest.entries if e.stage == "validate")
        assert sorted(p.name for p in (agent.cache / "files").iterdir()) == uploads, "nothing uploaded twice"
        assert rows(forced)["onnxruntime/int8@loop"].get("timed_together") is None and rows(forced)["onnxruntime/int8"]["timed_together"]
        assert any(note.startswith("Timing ONNX Runtime's engines together on loop failed (device loop: ") and "own p50" in note
                   for note in forced.report["notes"]), forced.report["notes"]
        assert forced.report["recommendations"]["onnxruntime@loop"]["engine"], "the device's own p50s still rank its engines"
        assert len(uploads) == 3, "two engines and one evaluation set"


def test_an_agent_killed_mid_job_fails_that_device_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_TEST_TOKEN", TOKEN)
    with agent_process(tmp_path / "agent") as agent:
        recipe = tiny_recipe(tmp_path, devices=[device("doomed", agent.url, retries=1, retry_delay_s=0.2)],
                             validate={"together_rounds": 0,
                                       "warmup": 2, "iterations": 20, "min_seconds": 5.0, "threads": 1, "throughput_batch_sizes": []})

        def kill_when_measuring() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if list((agent.cache / "jobs").glob("*/harness-spec.json")):
                    time.sleep(0.5)
                    os.kill(agent.process.pid, signal.SIGKILL)  # the agent, mid-job
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_measuring)
        killer.start()
        result = run(recipe, console=Console(quiet=True))
        killer.join()
    found = rows(result)
    assert agent.process.returncode == -signal.SIGKILL
    assert found["onnxruntime/fp32"]["status"] == found["onnxruntime/int8"]["status"] == "ok", "the host's measurements go on"
    for name in ("onnxruntime/fp32@doomed", "onnxruntime/int8@doomed"):
        assert found[name]["status"] == "failed" and "device doomed" in found[name]["reason"], found[name]
        assert "unreachable" in found[name]["reason"] or "timed out" in found[name]["reason"], found[name]["reason"]
    assert (result.run_dir / "report.html").is_file() and result.exit_code == 1


def test_agent_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abc\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "good").write_text(TOKEN)
        cases = {
            "short: expected a token of at least 16 characters": ["--token-file", str(tmp_path / "short")],
            "cannot read the token file": ["--token-file", str(tmp_path / "missing")],
            f"--port {port}: cannot listen there": ["--token-file", str(tmp_path / "good"), "--port", str(port)],
            "--cpus 'a,b': expected CPU numbers": ["--token-file", str(tmp_path / "good"), "--cpus", "a,b"],
            "--cpus '0,4096': CPUs [4096] are not usable here": ["--token-file", str(tmp_path / "good"), "--cpus", "0,4096"],
        }
        for expected, args in cases.items():
            done = subprocess.run([sys.executable, "-m", "edgeship", "agent", "serve", *args], capture_output=True, text=True, timeout=60)
            assert done.returncode == 2 and expected in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@contextmanager
def network_namespace(tag: str, subnet: str) -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: (namespace, its address). Skips where namespaces cannot be
    made (not root, no `ip`)."""
    namespace, host_end, device_end = f"es{tag}{os.getpid()}", f"e{tag}{os.getpid()}h", f"e{tag}{os.getpid()}d"
    commands = [["ip", "netns", "add", namespace], ["ip", "link", "add", host_end, "type", "veth", "peer", "name", device_end],
                ["ip", "link", "set", device_end, "netns", namespace], ["ip", "addr", "add", f"{subnet}.1/24", "dev", host_end],
                ["ip", "link", "set", host_end, "up"], ["ip", "netns", "exec", namespace, "ip", "addr", "add", f"{subnet}.2/24", "dev",
                                                         device_end],
                ["ip", "netns", "exec", namespace, "ip", "link", "set", device_end, "up"],
                ["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"]]
    try:
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace here ({' '.join(command)}: {done.stderr.strip()})")
        yield namespace, f"{subnet}.2"
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # takes the veth pair with it


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="network namespaces need Linux and root")
def test_two_agents_in_their_own_network_namespaces_as_two_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_TEST_TOKEN", TOKEN)
    (tmp_path / "token").write_text(TOKEN)
    base = os.getpid() % 200 + 20
    agents = []
    port = str(free_port())  # free on this host, so a refusal on 127.0.0.1 below is the namespaces' doing
    with network_namespace("a", f"10.77.{base}") as (ns_a, ip_a), network_namespace("b", f"10.78.{base}") as (ns_b, ip_b):
        for namespace, address in ((ns_a, ip_a), (ns_b, ip_b)):
            agents.append(subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-m", "edgeship", "agent", "serve",
                                            "--host", address, "--port", port, "--token-file", str(tmp_path / "token"),
                                            "--cache", str(tmp_path / namespace)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        try:
            for address in (ip_a, ip_b):
                deadline = time.monotonic() + 120
                while True:
                    try:
                        httpx.get(f"http://{address}:{port}/device", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
                        break
                    except httpx.TransportError:
                        assert time.monotonic() < deadline, f"the agent at {address} did not start"
                        time.sleep(0.2)
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{port}/device", timeout=2)  # it listens in its namespace, not on this host
            recipe = tiny_recipe(tmp_path, devices=[device("a", f"http://{ip_a}:{port}"), device("b", f"http://{ip_b}:{port}")])
            result = run(recipe, console=Console(quiet=True))
        finally:
            for agent in agents:
                agent.kill()
                agent.wait(timeout=30)
    found = rows(result)
    for engine in ("onnxruntime/fp32", "onnxruntime/int8"):
        for name in ("a", "b"):
            assert found[f"{engine}@{name}"]["status"] == "ok", found[f"{engine}@{name}"]
            assert np.array_equal(logits(result, f"{engine}@{name}"), logits(result, engine))
    assert result.report["devices"]["a"]["agent"] == f"http://{ip_a}:{port}" and result.exit_code == 0
