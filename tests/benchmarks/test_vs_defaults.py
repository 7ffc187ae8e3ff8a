"""``benchmarks/vs_defaults.py`` on a tiny recipe: every default flow is built by its tool and measured in the harness
beside edgeship's engines, and the verdicts compare like with like."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FLOWS = ("plain export (ONNX Runtime FP32)", "ORT quantize_static defaults", "NNCF quantize defaults",
                 "onnx2tf + TFLiteConverter INT8 defaults", "ModelOpt quantize defaults")


def test_default_flows_stand_beside_edgeships_engines_in_one_harness(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, backends={"onnxruntime": {"precisions": ["fp32", "int8"]}, "openvino": {"precisions": ["int8"]},
                                             "tflite": {"precisions": ["int8"]}, "tensorrt": {"enabled": False}})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True, exclude_none=True)))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_defaults.py"), str(path), "--rounds", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads((out / "vs-defaults.json").read_text())
    rows = {row["name"]: row for row in document["rows"]}
    assert document["accuracy_key"] == "top1" and document["rounds"] == 2
    for name in DEFAULT_FLOWS:  # every tool is installed here: each flow builds and scores
        row = rows[name]
        assert row["engine"] and not row["reason"] and 0 < row["top1"] <= 1, row
        assert row["origin"] == ("plain export" if name.startswith("plain") else "tool defaults")
    plain = rows["plain export (ONNX Runtime FP32)"]
    assert plain["speedup_vs_plain"] == 1.0 and plain["accuracy_vs_plain_points"] == 0.0 and plain["size_vs_plain"] == 1.0
    for row in document["rows"]:
        if row["predicted"]:  # ModelOpt's Q/DQ model stands for a TensorRT engine: scored on ONNX Runtime, never timed
            assert row["backend"] == "tensorrt" and row["runs_on"] == "onnxruntime" and "p50_ms" not in row
            continue
        low, high = row["p50_ci"]
        assert low <= row["p50_ms"] <= high and row["size_bytes"] > 0 and row["iterations"] >= 20, row
        assert len(row["round_p50_ms"]) == 2, "every engine loaded, timed a slice in each of the two rounds"
        ratio_low, ratio_high = row["speedup_vs_plain_ci"]  # round by round against the plain export
        assert ratio_low <= row["speedup_vs_plain"] <= ratio_high, row
    report = json.loads(next((tmp_path / "reports").glob("*/report.json")).read_text())
    shipped = {r["engine"] for r in report["recommendations"].values() if r["engine"]}
    assert {name.removeprefix("edgeship ") for name, row in rows.items() if row["recommended"]} == shipped
    assert {"edgeship onnxruntime/int8", "edgeship openvino/int8", "edgeship tflite/int8"} <= set(rows)
    verdicts = "\n".join(document["verdicts"])
    for backend in ("ONNX Runtime", "OpenVINO", "TFLite"):
        assert f"{backend} INT8: edgeship" in verdicts
    assert "ModelOpt quantize defaults: no comparison" in verdicts  # the recipe builds no TensorRT engine to compare
    page = (out / "vs-defaults.html").read_text()
    assert "<svg" in page and "quantize_static" in page and (out / "vs-defaults.md").is_file()
