"""The tiny recipe with TensorRT where TensorRT or its GPU is missing: the engine is skipped with the reason, the
TensorRT-bound ONNX is still prepared, and its accuracy is reported as a prediction on ONNX Runtime, never as a measurement."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from edgeship import RunResult, run
from edgeship.backends import availability

from conftest import tiny_recipe

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(availability("tensorrt").available, reason="TensorRT and a GPU are here: the engines build for real")]
LABEL = "predicted on ONNX Runtime, not measured on TensorRT"


def tensorrt_recipe(tmp: Path) -> object:
    return tiny_recipe(tmp, backends={"onnxruntime": {"precisions": ["fp32"]}, "openvino": {"enabled": False}, "tflite": {"enabled": False},
                                      "tensorrt": {"enabled": True}}, divergence={"enabled": True})


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, str, Path]:
    tmp = tmp_path_factory.mktemp("tensorrt-run")
    out = io.StringIO()
    result = run(tensorrt_recipe(tmp), console=Console(file=out, width=250, force_terminal=False))  # type: ignore[arg-type]
    return result, out.getvalue(), tmp


def test_engines_are_skipped_with_the_reason_and_never_measured(first: tuple[RunResult, str, Path]) -> None:
    result, _, _ = first
    rows = {row["name"]: row for row in result.report["engines"]}
    assert sorted(rows) == ["onnxruntime/fp32", "tensorrt/fp16", "tensorrt/int8"]
    for name in ("tensorrt/fp16", "tensorrt/int8"):
        row = rows[name]
        assert row["status"] == "skipped" and "tensorrt" in row["reason"] and "edgeship[tensorrt]" in row["reason"]
        for measured in ("top1", "latency", "size_bytes", "top1_agreement"):
            assert row.get(measured) is None, f"{name}: {measured} must not be reported for an engine that was never built"


def test_prepared_onnx_is_scored_as_a_labelled_prediction(first: tuple[RunResult, str, Path]) -> None:
    result, _, _ = first
    rows = {row["name"]: row for row in result.report["engines"]}
    ort_top1 = rows["onnxruntime/fp32"]["top1"]
    for name, tool in (("tensorrt/fp16", "modelopt.onnx.autocast"), ("tensorrt/int8", "modelopt.onnx.quantization")):
        prepared, predicted = rows[name]["prepared"], rows[name]["predicted"]
        assert prepared["status"] == "ok" and prepared["tool"] == tool and prepared["seconds"] > 0 and len(prepared["sha256"]) == 64
        assert predicted["label"] == LABEL and predicted["on"] == "onnxruntime" and predicted["engine"] == name
        assert predicted["eval_samples"] == result.report["dataset"]["eval"]
        assert abs(predicted["top1"] - ort_top1) <= 0.03 and predicted["top1_agreement"] >= 0.9, (name, predicted)
        assert predicted["top1_drop_points"] == pytest.approx(100 * (result.report["baseline"]["top1"] - predicted["top1"]), abs=1e-3)
    assert rows["tensorrt/fp16"]["predicted"]["top1_agreement"] >= 0.99
    int8 = rows["tensorrt/int8"]["prepared"]
    assert int8["qdq"]["symmetric"] and int8["qdq"]["zero_point_types"] == ["INT8"] and int8["calibration_samples"] == 200
    assert any("TensorRT engine runs only on the GPU model" in note for note in result.report["notes"])


def test_the_prepared_onnx_is_compared_layer_by_layer_as_a_prediction(first: tuple[RunResult, str, Path]) -> None:
    """Without a GPU the engine's tensors cannot be read, so the divergence of the skipped TensorRT rows is its prepared
    ONNX's on ONNX Runtime, said to be a prediction, with each layer's own error too."""
    result, _, _ = first
    rows = {row["name"]: row for row in result.report["engines"]}
    for name in ("tensorrt/fp16", "tensorrt/int8"):
        divergence = rows[name]["divergence"]
        assert divergence["note"].startswith("a prediction: the prepared tensorrt ONNX on ONNX Runtime"), divergence["note"]
        assert len(divergence["rows"]) >= 10 and not divergence["unmapped"], divergence
        assert any(row["local"] is not None for row in divergence["rows"])
    assert rows["onnxruntime/fp32"].get("divergence") is None


def test_summary_says_prediction_not_measurement(first: tuple[RunResult, str, Path]) -> None:
    _, printed, _ = first
    text = " ".join(printed.split())
    assert "tensorrt/int8: ONNX prepared by modelopt.onnx.quantization 0.47" in text
    assert f"{LABEL}: top-1" in text and "pred." in text


def test_manifest_records_preparation_and_skip(first: tuple[RunResult, str, Path]) -> None:
    result, _, _ = first
    entries = {(e.stage, e.name): e for e in result.manifest.entries}
    for precision in ("fp16", "int8"):
        assert entries[("prepare", f"tensorrt/{precision}")].status == "ok"
        assert entries[("build", f"tensorrt/{precision}")].status == "skipped"
        assert entries[("validate", f"tensorrt/{precision} predicted on onnxruntime")].status == "ok"


def test_rerun_reuses_the_prepared_onnx(first: tuple[RunResult, str, Path]) -> None:
    _, _, tmp = first
    again = run(tensorrt_recipe(tmp), console=Console(quiet=True))  # type: ignore[arg-type]
    prepared = [e for e in again.manifest.entries if e.stage == "prepare"]
    assert len(prepared) == 2 and all(e.reused for e in prepared)
    assert all(row["prepared"]["reused"] for row in again.report["engines"] if row["backend"] == "tensorrt")


def test_install_commands_survive_the_terminal_markup(first: tuple[RunResult, str, Path]) -> None:
    """'edgeship[tensorrt]' in a reason is text, not a rich markup tag to swallow."""
    _, printed, _ = first
    assert "'edgeship[tensorrt]'" in printed
