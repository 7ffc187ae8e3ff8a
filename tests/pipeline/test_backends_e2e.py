"""The tiny recipe through every CPU backend at every precision: build, validate, report, cross-check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgeship import RunResult, run
from edgeship.artifacts import ArtifactStore
from edgeship.backends import availability
from edgeship.harness import PAIRED_ROUNDS

from conftest import TINY_VALIDATE, needs_fashion_mnist, tiny_recipe

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (availability("openvino").available and availability("tflite").available),
                                 reason="needs the openvino and tflite extras: pip install 'edgeship[openvino,tflite]'")]
ENGINES = ["onnxruntime/fp32", "onnxruntime/int8", "openvino/fp16", "openvino/fp32", "openvino/int8", "tflite/fp16", "tflite/fp32",
           "tflite/int8"]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    recipe = tiny_recipe(tmp_path_factory.mktemp("all-backends"), backends={"tensorrt": {"enabled": False}},  # test_tensorrt_e2e has it
                         validate={**TINY_VALIDATE, "together_rounds": 1})
    return run(recipe, console=Console(quiet=True))


@needs_fashion_mnist
def test_every_engine_is_built_validated_and_reported(result: RunResult) -> None:
    rows = {row["name"]: row for row in result.report["engines"]}
    assert sorted(rows) == ENGINES
    base = result.report["baseline"]["top1"]
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["reason"])
        assert row["size_bytes"] > 0 and row["build_seconds"] > 0 and row["latency"]["p50_ms"] > 0
        if name.endswith("fp32"):
            assert row["max_abs_error"] < 1e-3 and row["top1"] == pytest.approx(base, abs=0.002), name
        elif name.endswith("fp16"):
            assert row["top1_agreement"] >= 0.99, name
        else:  # the tiny recipe's model is barely trained (about 63% top-1), so its margins are thin
            assert row["top1_agreement"] >= 0.9 and abs(row["top1_drop_points"]) <= 3.0, name
    for row in rows.values():
        own_fp32 = rows[f"{row['backend']}/fp32"]["top1"]
        assert row["top1_drop_vs_backend_fp32_points"] == pytest.approx(100 * (own_fp32 - row["top1"]), abs=1e-3)
    assert rows["openvino/fp32"]["runtime"]["inference_num_threads"] == "1"
    assert "float32" in rows["openvino/fp32"]["runtime"]["inference_precision_hint"]
    assert rows["tflite/int8"]["runtime"]["input_dtypes"] == {"input": "float32"}  # quantized in the graph
    ir = rows["openvino/fp32"]
    assert ir["size_bytes"] > Path(ir["path"]).stat().st_size, "an IR's size counts its .bin"


def test_each_backends_engines_are_timed_together_and_ranked_by_those_p50s(result: RunResult) -> None:
    for backend in ("onnxruntime", "openvino", "tflite"):
        rows = [row for row in result.report["engines"] if row["backend"] == backend]
        for row in rows:
            together = row["timed_together"]
            assert together["engines"] == sorted(r["name"] for r in rows) and together["rounds"] == 1, row["name"]
            low, high = together["p50_ci95"]
            assert low <= together["p50_ms"] <= high and together["iterations"] >= 20
        reason = result.report["recommendations"][backend]["reason"]
        assert reason.endswith(f"(p50s timed together: 1 round in {result.run_dir.name})"), reason


def test_openvino_latency_is_cross_checked_with_benchmark_app(result: RunResult) -> None:
    for name in ("openvino/fp32", "openvino/fp16", "openvino/int8"):
        check = next(row for row in result.report["engines"] if row["name"] == name)["cross_check"]
        assert check["status"] == "ok" and check["tool"] == "benchmark_app", check
        # the tool ran in the harness's alternating rounds, so drifting background load falls on both figures alike
        assert check["rounds"] == PAIRED_ROUNDS == len(check["round_medians_ms"])
        assert check["median_ms"] == pytest.approx(float(np.median(check["round_medians_ms"])))
        assert check["ratio_of_medians"] == pytest.approx(check["ours_p50_ms"] / check["median_ms"], rel=1e-3)
        ours = check["ours_round_p50_ms"]["latency"]  # the ratio pairs each of our rounds with the tool's of the same round
        assert len(ours) == PAIRED_ROUNDS and check["ratio"] == pytest.approx(
            float(np.median(np.array(ours) / check["round_medians_ms"])), rel=1e-3)
        assert rows_runtime(result, name)["timed_call"].startswith("OpenVINO C API"), "the harness times OpenVINO's C API call"
        assert 0.5 < check["bare_ratio"] < 2, "the two harnesses time the same engine call on the same machine"
        assert check["call_overhead_ms"] == pytest.approx(next(row for row in result.report["engines"]
                                                               if row["name"] == name)["call_overhead_us"] / 1e3, abs=1e-4)
    assert all(row.get("cross_check") is None for row in result.report["engines"] if row["backend"] != "openvino")


def rows_runtime(result: RunResult, name: str) -> dict[str, str]:
    return next(row for row in result.report["engines"] if row["name"] == name)["runtime"]


def test_every_engine_reports_its_runtime_call_and_the_overhead_around_it(result: RunResult) -> None:
    for row in result.report["engines"]:
        if row["status"] != "ok":
            continue
        bare = row["bare_latency"]
        assert bare["iterations"] >= 20 and bare["p50_ms"] > 0, row["name"]
        assert row["call_overhead_us"] == bare["paired_overhead_us"], row["name"]
    page = (result.run_dir / "report.html").read_text()
    assert "runtime call p50" in page and "overhead µs" in page


def test_every_engine_has_its_fraction_of_the_machine_peak_and_a_profile(result: RunResult) -> None:
    peak = result.report["peak"]
    assert peak["threads"] == result.report["threads"] and peak["fp32"]["gmacs"] > 0 and peak["int8"]["gmacs"] > 0
    for row in result.report["engines"]:
        if row["status"] != "ok":
            continue
        rate = row["macs_per_sample"] * row["latency"]["batch_size"] / (row["latency"]["p50_ms"] * 1e-3) / 1e9
        assert row["achieved_gmacs"] == pytest.approx(rate, rel=1e-3), row["name"]
        against = peak["int8" if row["precision"] == "int8" else "fp32"]["gmacs"]
        assert row["fraction_of_peak"] == pytest.approx(rate / against, rel=1e-3), row["name"]
        profile = row["profile"]
        assert (profile["tool"] is None) == (row["backend"] == "tflite"), (row["name"], profile)
    assert len({row["macs_per_sample"] for row in result.report["engines"] if row["status"] == "ok"}) == 1, "one model, one count"
    page = (result.run_dir / "report.html").read_text()
    assert "Distance from the machine" in page and "Where the time goes" in page and "OpenVINO performance counters" in page


def test_every_engine_file_is_hashed(result: RunResult) -> None:
    store = ArtifactStore(result.manifest.recipe and Path(result.manifest.recipe["store"]))
    for entry in result.manifest.entries:
        if entry.stage == "build":
            artifact = store.get(entry.artifact)
            assert artifact is not None and artifact.sha256 == entry.sha256
            assert artifact.path.name in artifact.files
    ir = next(e for e in result.manifest.entries if e.stage == "build" and e.name == "openvino/int8")
    assert {"model.xml", "model.bin", "runtime.json"} <= set(store.get(ir.artifact).files)


def test_missing_backend_package_is_skipped_with_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    recipe = tiny_recipe(tmp_path, backends={"onnxruntime": {"precisions": ["fp32"]}, "tflite": {"enabled": False}})
    report = run(recipe, console=Console(quiet=True)).report
    rows = {row["name"]: row for row in report["engines"]}
    assert rows["onnxruntime/fp32"]["status"] == "ok"
    for precision in ("fp32", "fp16", "int8"):
        row = rows[f"openvino/{precision}"]
        assert row["status"] == "skipped" and "cannot import openvino" in row["reason"]
        assert "pip install 'edgeship[openvino]'" in row["reason"]


def test_an_installed_backend_that_cannot_load_fails_the_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken install is not a skip: the engines are failed with the cause, required, and the exit code is 1."""
    shim = tmp_path / "shim" / "ai_edge_litert"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("")
    (shim / "interpreter.py").write_text("raise ImportError('libtensorflowlite_c.so: undefined symbol: TfLiteXNNPack')\n")
    monkeypatch.syspath_prepend(str(shim.parent))
    for module in [m for m in sys.modules if m == "ai_edge_litert" or m.startswith("ai_edge_litert.")]:
        monkeypatch.delitem(sys.modules, module)
    recipe = tiny_recipe(tmp_path, backends={"onnxruntime": {"precisions": ["fp32"]}, "openvino": {"enabled": False},
                                             "tflite": {"precisions": ["fp32"]}, "tensorrt": {"enabled": False}})
    result = run(recipe, console=Console(quiet=True))
    rows = {row["name"]: row for row in result.report["engines"]}
    assert rows["onnxruntime/fp32"]["verdict"] == "pass"
    tflite = rows["tflite/fp32"]
    assert tflite["status"] == "failed" and tflite["required"] and "undefined symbol: TfLiteXNNPack" in tflite["reason"]
    assert "ai_edge_litert.interpreter is installed but fails to import" in tflite["reason"]
    assert result.exit_code == 1 and result.report["release"]["failing"] == ["tflite/fp32"]
