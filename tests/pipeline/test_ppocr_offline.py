"""The PP-OCRv4 text detector from the rapidocr-onnxruntime wheel, an ONNX entry with a segmentation map out, end to end
with the network switched off (as the EfficientNet offline test does): a reduced recipes/ppocr_det.yaml with ONNX
Runtime FP32 and INT8 (its symbolic-shape fallback) and TFLite FP32 at the recipe's fixed shape (onnx2tf fetches sample
images when not fed its own), 24 evaluation crops. The full recipe is a benchmark (``edgeship run recipes/ppocr_det.yaml``),
not part of the suite."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from test_efficientnet_offline import probe, quick, run_offline

from edgeship.backends import availability

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                                 reason="needs the rapidocr-onnxruntime wheel (make setup installs it with --no-deps)"),
              pytest.mark.skipif(not availability("tflite").available, reason="needs the tflite extra: pip install 'edgeship[tflite]'")]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, object]:
    pytest.importorskip("skimage", reason="needs scikit-image's photos (the efficientnet extra)")
    tmp = tmp_path_factory.mktemp("ppocr-offline")
    recipe = yaml.safe_load((ROOT / "recipes" / "ppocr_det.yaml").read_text())
    recipe.update(store=str(tmp / "store"), reports=str(tmp / "reports"))
    recipe["data"]["eval_size"] = 24
    recipe["calibration"]["size"] = 32
    recipe["backends"] = {"onnxruntime": {"precisions": ["fp32", "int8"]}, "openvino": {"enabled": False},  # tested in test_generic
                          "tflite": {**recipe["backends"]["tflite"], "precisions": ["fp32"]},  # its fixed_shape kept
                          "tensorrt": {"enabled": False}}
    return run_offline(quick(recipe, eval_batch_size=8), tmp, "ppocr_det")


def test_the_run_really_had_no_network(offline_run) -> None:
    _, _, mode = offline_run
    assert probe(mode).startswith("offline:"), mode.how


def test_every_engine_follows_the_fp32_map(offline_run) -> None:
    done, tmp, _ = offline_run
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(next((tmp / "reports").glob("*/report.json")).read_text())
    assert report["task"] == "generic" and report["baseline"]["name"] == "onnx/fp32"
    assert report["accuracy"]["basis"] == "fidelity" and report["dataset"]["eval"] == 24
    rows = {row["name"]: row for row in report["engines"]}
    assert set(rows) == {"onnxruntime/fp32", "onnxruntime/int8", "tflite/fp32"}
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("reason"))
        assert list(row["fidelity"]) == ["sigmoid_0.tmp_0"] and row["eval_samples"] == 24
    assert rows["onnxruntime/fp32"]["min_sqnr_db"] >= 100  # the reference file itself
    float_sqnr = rows["tflite/fp32"]["min_sqnr_db"]  # other kernels, same arithmetic (55 dB on these 24 crops, 105 on 160)
    assert float_sqnr >= 40 and rows["tflite/fp32"]["min_cosine"] >= 0.99
    for name in ("onnxruntime/int8",):  # built and run; plain INT8 loses this map (docs/measurements.md)
        assert rows[name]["min_sqnr_db"] < float_sqnr and -1 <= rows[name]["min_cosine"] < 1, (name, rows[name]["min_sqnr_db"])
    verdicts = {name: row["verdict"] for name, row in rows.items()}
    assert verdicts["onnxruntime/fp32"] == verdicts["tflite/fp32"] == "pass"
    assert "Output fidelity, not accuracy" in next((tmp / "reports").glob("*/report.html")).read_text()
    # ONNX Runtime's symbolic shape inference gives up on this graph and saves its half-inferred model, weights in a
    # uuid-named .data file, in the working directory: edgeship removes both
    assert not list(tmp.glob("sym_shape_infer_temp*")) and not list(tmp.glob("*.data"))
    assert "SQNR dB" in done.stdout
