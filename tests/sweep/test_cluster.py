"""Sweeps on a two-node Ray cluster started on this machine: four trials of a tiny recipe sharing one store, a worker
node removed mid-sweep, and a killed driver resumed. The drivers are `edgeship sweep` processes joining the cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'edgeship[sweep]'")

# the smallest recipe that still trains, exports, calibrates INT8 and times: trials differ only in INT8 settings, so the
# model, its export and the FP32 engine are built by one trial and reused by the others
RECIPE = {
    "name": "sw", "data": {"train_size": 600, "val_size": 200, "eval_size": 300}, "calibration": {"size": 64},
    "model": {"width": 8, "train": {"epochs": 1}}, "prune": {"enabled": False}, "distill": {"enabled": False},
    "backends": {"onnxruntime": {"precisions": ["fp32", "int8"]}, "openvino": {"enabled": False}, "tflite": {"enabled": False},
                 "tensorrt": {"enabled": False}},
    "validate": {"together_rounds": 2, "warmup": 2, "iterations": 20, "min_seconds": 0.05, "threads": 1, "throughput_batch_sizes": []},
    "divergence": {"enabled": False},
}
SPACE = {"parameters": {"backends.onnxruntime.calibration_method": ["minmax", "entropy", "percentile"],
                        "backends.onnxruntime.per_channel": {"choices": [True, False]}}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    try:
        made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs the drivers, the workers the trials
        made.add_node(num_cpus=1)
        made.add_node(num_cpus=1)
        made.wait_for_nodes()
    except Exception as exc:  # noqa: BLE001 (any reason Ray cannot start here is the skip's reason)
        pytest.skip(f"Ray cannot start a cluster here: {exc}")
    yield made
    made.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: the resume test reuses what the first sweep built, as a user's second sweep would."""
    return tmp_path_factory.mktemp("sweep-store")


def _files(tmp_path: Path, store: Path) -> tuple[Path, Path]:
    recipe, space = tmp_path / "sw.yaml", tmp_path / "space.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "store": str(store), "reports": str(tmp_path / "reports")}))
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return recipe, space


def _driver(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.Popen([sys.executable, "-m", "edgeship", "sweep", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _until(condition: Any, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _sweep_folder(out: Path) -> Path:
    folders = [p for p in out.glob("*") if p.is_dir()] if out.exists() else []
    return folders[0] if folders else out / "missing"


def _built_twice(trials: list[dict[str, Any]]) -> list[str]:
    built = Counter(w["artifact"] for t in trials for w in t["work"] if not w["reused"])
    return [artifact for artifact, times in built.items() if times > 1]


def test_a_node_removed_mid_sweep_loses_no_trial(cluster: Any, store: Path, tmp_path: Path) -> None:
    recipe, space = _files(tmp_path, store)
    driver = _driver(str(recipe), "--space", str(space), "--trials", "4", "--address", cluster.address, "--out", "sweeps", cwd=tmp_path)
    runs = lambda: list((_sweep_folder(tmp_path / "sweeps") / "runs").glob("*"))  # noqa: E731
    _until(lambda: len(runs()) >= 2 or driver.poll() is not None, "two trials running at once")
    victim = next(node for node in cluster.worker_nodes)
    cluster.remove_node(victim)  # one of the two running trials loses its worker
    output, _ = driver.communicate(timeout=600)
    cluster.add_node(num_cpus=1)
    assert driver.returncode == 0, output
    document = json.loads((_sweep_folder(tmp_path / "sweeps") / "sweep.json").read_text())
    trials = document["trials"]
    assert [t["name"] for t in trials] == ["t001", "t002", "t003", "t004"] and {t["status"] for t in trials} == {"ok"}
    assert sum(t["attempt"] for t in trials) >= 1, output  # the lost trial ran again
    assert "worker was lost" in output
    assert document["reuse"]["models_trained"] == 1  # the teacher was trained once, for all four
    assert not _built_twice(trials)  # nothing finished (built or measured) was made again
    assert document["recipe_trial"] == "t001" and document["fronts"]["onnxruntime"]
    if len(document["fronts"]["onnxruntime"]) >= 2:  # the front's engines, timed together on the driver's machine afterwards
        together = document["fronts_together"]["onnxruntime"]
        assert together["reason"] == "" and together["rounds"] == 2, together
        front = {(p["trial"], p["engine"]) for p in document["fronts"]["onnxruntime"]}
        near = {(p["trial"], p["engine"]) for p in document["contenders"].get("onnxruntime", [])}
        assert {(p["trial"], p["engine"]) for p in together["points"]} == front | near and not front & near
        assert {(p["trial"], p["engine"]) for p in together["points"] if not p["on_front"]} == near
        assert all(len(p["round_p50_ms"]) == 2 and p["speedup"][1] <= p["speedup"][0] <= p["speedup"][2] for p in together["points"])
    else:
        assert document["fronts_together"] == {}
    for relative in document["pareto_recipes"].values():
        written = yaml.safe_load((_sweep_folder(tmp_path / "sweeps") / relative).read_text())
        assert written["backends"]["onnxruntime"]["precisions"] == ["fp32", "int8"]


def test_a_killed_driver_resumes_the_same_sweep(cluster: Any, store: Path, tmp_path: Path) -> None:
    recipe, space = _files(tmp_path, store)
    driver = _driver(str(recipe), "--space", str(space), "--trials", "4", "--address", cluster.address, "--out", "sweeps", cwd=tmp_path)
    records = lambda: list((_sweep_folder(tmp_path / "sweeps") / "trials").glob("t*.json"))  # noqa: E731
    _until(lambda: len(records()) >= 1 or driver.poll() is not None, "a finished trial")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    folder = _sweep_folder(tmp_path / "sweeps")
    finished = {p.name: p.read_text() for p in records()}
    assert 1 <= len(finished) < 4
    resumed = _driver("--resume", str(folder), "--address", cluster.address, cwd=tmp_path)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    document = json.loads((folder / "sweep.json").read_text())
    assert [t["name"] for t in document["trials"]] == ["t001", "t002", "t003", "t004"]
    assert {t["status"] for t in document["trials"]} == {"ok"}
    for name, text in finished.items():  # a trial finished before the kill is not run again
        assert (folder / "trials" / name).read_text() == text
    assert not _built_twice(document["trials"])
    assert [s["resumed"] for s in document["sessions"]] == [False, True]
