"""End to end on a tiny recipe: model → export → ORT FP32/INT8 → validate → report, then a warm rerun."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from edgeship import RunResult, run
from edgeship.artifacts import Manifest, sha256_file
from edgeship.errors import RecipeError
from edgeship.pipeline.together import together_name
from edgeship.pipeline.validate import PEAK
from edgeship.recipe import Recipe

from conftest import TINY_VALIDATE, needs_fashion_mnist, tiny_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def recipe(workspace: Path) -> Recipe:
    return tiny_recipe(workspace, divergence={"enabled": True}, validate={**TINY_VALIDATE, "together_rounds": 2})


@pytest.fixture(scope="module")
def cold(recipe: Recipe) -> RunResult:
    return run(recipe, console=Console(quiet=True))


@needs_fashion_mnist
def test_report_lists_baseline_and_both_engines(cold: RunResult) -> None:
    result = cold
    report = json.loads(result.report_path.read_text())
    assert report["schema"] == "edgeship.report" and report["schema_version"] == 8
    assert [e["name"] for e in report["engines"]] == ["onnxruntime/fp32", "onnxruntime/int8"]
    assert all(e["status"] == "ok" for e in report["engines"])
    assert report["baseline"]["eval_samples"] == 1000 and report["threads"] == 1


def test_numbers_are_consistent(cold: RunResult) -> None:
    result = cold
    report = result.report
    base = report["baseline"]["top1"]
    fp32, int8 = report["engines"]
    assert base > 0.5, "the tiny teacher must learn something for the comparison to mean anything"
    assert fp32["top1"] == pytest.approx(base, abs=0.002) and fp32["top1_agreement"] >= 0.998
    assert fp32["max_abs_error"] < 1e-3
    assert abs(int8["top1_drop_points"]) <= 3.0 and int8["top1_agreement"] >= 0.95
    assert int8["size_bytes"] < fp32["size_bytes"]
    for row in (fp32, int8, report["baseline"]):
        lat = row["latency"]
        assert row == report["baseline"] or row["top1_drop_points"] == pytest.approx(100 * (base - row["top1"]), abs=1e-3)
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["iterations"] >= 20


def test_manifest_lists_every_artifact_with_matching_sha256(cold: RunResult) -> None:
    result = cold
    manifest = Manifest.model_validate_json((result.run_dir / "manifest.json").read_text())
    assert manifest.status == "ok" and manifest.finished is not None
    assert manifest.tools["torch"].startswith("2.") and manifest.device["logical_cores"]
    names = {(e.stage, e.name) for e in manifest.entries}
    assert {("model", "resnet_small"), ("export", "onnx"), ("build", "onnxruntime/fp32"), ("build", "onnxruntime/int8"),
            ("validate", "pytorch/fp32"), ("validate", "onnxruntime/int8"), ("report", "report.json")} <= names
    for entry in manifest.entries:
        assert entry.status == "ok" and not entry.reused
        assert sha256_file(Path(entry.path)) == entry.sha256
        assert entry.config, "every entry records the config that made it"
    build = next(e for e in manifest.entries if e.name == "onnxruntime/int8" and e.stage == "build")
    export = next(e for e in manifest.entries if e.stage == "export")
    assert build.parents == (export.artifact,)


def test_warm_rerun_reuses_every_stage(recipe: Recipe, cold: RunResult) -> None:
    first = cold
    second = run(recipe, console=Console(quiet=True))
    assert second.run_dir != first.run_dir
    assert all(e.reused for e in second.manifest.entries if e.stage != "report")
    assert [e["top1"] for e in second.report["engines"]] == [e["top1"] for e in first.report["engines"]]
    timed = [e for e in second.report["engines"] if e.get("latency")]
    assert timed and all(e["measured_in"] == first.run_dir.name for e in timed), "a reused result says which run timed it"
    assert not any("; but" in choice["reason"] for choice in second.report["recommendations"].values())  # one run timed all
    assert second.report["recommendations"]["onnxruntime"]["reason"].endswith(f"in {first.run_dir.name})"), "timed together there"


def test_a_backends_engines_are_timed_together_in_shuffled_rounds_and_ranked_by_those(cold: RunResult) -> None:
    import numpy as np

    (entry,) = [e for e in cold.manifest.entries if e.stage == "validate" and e.name == together_name("onnxruntime")]
    assert entry.config["rounds"] == 2 and entry.config["engines"] == ["onnxruntime/fp32", "onnxruntime/int8"]
    first, second = entry.metrics["orders"]
    assert sorted(first) == ["onnxruntime/fp32", "onnxruntime/int8"] and second == first[::-1], "each engine takes each place in turn"
    with np.load(Path(entry.path).parent / "timings.npz") as raw:
        assert sorted(raw.files) == ["onnxruntime/fp32@round1", "onnxruntime/fp32@round2", "onnxruntime/int8@round1",
                                     "onnxruntime/int8@round2"]
        pooled = {name: np.concatenate([raw[f"{name}@round1"], raw[f"{name}@round2"]]) for name in entry.config["engines"]}
    for row in cold.report["engines"]:
        together = row["timed_together"]
        assert together["p50_ms"] == pytest.approx(np.percentile(pooled[row["name"]], 50) / 1e6, abs=1e-4)
        assert together["iterations"] == len(pooled[row["name"]]) >= 20 and len(together["round_p50_ms"]) == 2
        assert together["measured_in"] == cold.run_dir.name
    fastest = min(cold.report["engines"], key=lambda row: row["timed_together"]["p50_ms"])
    reason = cold.report["recommendations"]["onnxruntime"]["reason"]
    page = (cold.run_dir / "report.html").read_text()
    assert "p50 ms together (95% CI)" in page and f"{fastest['timed_together']['p50_ms']:.4f}" in page
    assert "median round p50 ms (quoted)" in page and f"{statistics.median(fastest['timed_together']['round_p50_ms']):.4f}" in page
    assert any(note.startswith("Each backend's engines were then timed again together") and "in 2 short slices" in note
               for note in cold.report["notes"])
    assert f"{fastest['precision'].upper()} " in reason and reason.endswith(
        f"(p50s timed together: 2 interleaved rounds in {cold.run_dir.name})")


def test_force_redoes_only_that_stage(recipe: Recipe, cold: RunResult) -> None:
    first = cold
    forced = run(recipe, force=["validate"], console=Console(quiet=True))
    by_stage = {(e.stage, e.name): e for e in forced.manifest.entries}
    assert all(not e.reused for (stage, _), e in by_stage.items() if stage == "validate")
    assert all(e.reused for (stage, _), e in by_stage.items() if stage in ("model", "export", "build"))
    assert forced.report["baseline"]["top1"] == first.report["baseline"]["top1"]


def test_the_int8_engine_is_compared_layer_by_layer_and_debug_prints_where(cold: RunResult,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The divergence stage compares the INT8 engine's tensors with the FP32 ONNX's on validation samples (the FP32
    engine is the reference's own precision and is not compared); ``edgeship debug`` prints its worst tensors, and an
    engine without a comparison or not in the run is one line, exit 2."""
    from edgeship.cli import main

    fp32, int8 = cold.report["engines"]
    assert fp32.get("divergence") is None
    divergence = int8["divergence"]
    assert divergence["split"] == "validation" and divergence["samples"] == 32 and not divergence["reason"]
    rows = divergence["rows"]
    assert len(rows) >= 10 and rows[-1]["tensor"] == "logits"
    assert [r["depth"] for r in rows] == sorted(r["depth"] for r in rows)
    assert all(r["sqnr_db"] is not None and 10 < r["sqnr_db"] < 80 and 0.9 < r["cosine"] <= 1.0 for r in rows), rows
    worst = min(rows, key=lambda r: r["sqnr_db"])
    capsys.readouterr()
    assert main(["debug", str(cold.run_dir), "onnxruntime/int8"]) == 0
    out = capsys.readouterr().out
    assert worst["tensor"] in out and f"{worst['sqnr_db']:.1f}" in out and "32 validation samples" in out
    for engine, expected in (("onnxruntime/fp32", "nothing to compare"), ("tflite/int8", "no engine named 'tflite/int8'")):
        assert main(["debug", str(cold.run_dir), engine]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("where", ["sites", "tensors", "load"])
def test_a_divergence_that_cannot_be_computed_is_a_recorded_failure_not_a_crash(recipe: Recipe, cold: RunResult,
                                                                               monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A model whose tensors cannot be listed, an engine tensor unlike the FP32 one, or an engine its runtime will not
    load: the stage records one line per engine and the run still writes its report (the comparison is a diagnosis, not
    a gate)."""
    from edgeship.backends.onnxruntime import OnnxRuntimeRunner
    from edgeship.pipeline import divergence

    def broken(*args: object) -> None:
        raise ValueError("[ShapeInferenceError] cannot infer\nmore detail")

    if where == "load":
        activate = OnnxRuntimeRunner._activate

        def refuse(self: OnnxRuntimeRunner) -> None:
            if "int8" in self.engine.name:
                raise RuntimeError("[ShapeInferenceError] INVALID_GRAPH\nmore detail")
            activate(self)

        monkeypatch.setattr(OnnxRuntimeRunner, "_activate", refuse)
    else:
        monkeypatch.setattr(divergence, "tensor_sites" if where == "sites" else "divergence", broken)
    result = run(recipe, force=["divergence"], console=Console(quiet=True))
    (failed,) = [e for e in result.manifest.entries if e.stage == "divergence"]
    assert failed.status == "failed" and "ShapeInferenceError" in failed.reason and "more detail" not in failed.reason
    assert (result.run_dir / "report.html").is_file() and result.report["engines"][1].get("divergence") is None


def test_keep_float_auto_searches_on_the_validation_split_and_the_report_shows_it(workspace: Path, cold: RunResult,
                                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The ONNX Runtime INT8 engine's float layers chosen against a target on the validation split: the report row has
    the search, the engine an extra gate for its target, the page the candidates' chart, and ``edgeship debug`` the
    candidates."""
    from edgeship.cli import main

    recipe = tiny_recipe(workspace, backends={"onnxruntime": {"precisions": ["int8"], "keep_float": "auto",
                                                              "accuracy_target": {"min_agreement": 0.99}},
                                              "openvino": {"enabled": False}, "tflite": {"enabled": False}, "tensorrt": {"enabled": False}})
    result = run(recipe, console=Console(quiet=True))
    (row,) = result.report["engines"]
    search = row["float_search"]
    assert search["split"] == "validation" and search["samples"] == 500 and search["target"] == {"min_agreement": 0.99}
    chosen = next(c for c in search["candidates"] if c["float_layers"] == search["chosen"])
    assert row["float_layers"]["auto"] and row["float_layers"]["nodes"] == chosen["nodes"]
    gate = next(g for g in row["gates"] if g["gate"] == "search_min_agreement")
    assert gate["outcome"] == ("pass" if search["met"] else "fail") and gate["value"] == chosen["agreement"] and gate["limit"] == 0.99
    page = (result.run_dir / "report.html").read_text()
    assert "Float layers chosen against a target" in page and "keep_float auto:" in page
    low, high = chosen["agreement_ci95"]  # the search's own noise: 500 independent samples, Wilson's interval
    assert f"{100 * chosen['agreement']:.2f}% (95% interval {100 * low:.2f}–{100 * high:.2f}%)" in page
    written = search["candidates"][0]["as_written"]["agreement"]  # what the build machine's integer kernels cost, shown beside
    assert f"integer kernels, agreement {100 * written:.2f}% with its Q/DQ computed as written" in page
    full, alone = search["candidates"][0], search["candidates"][0]["weights_alone"]  # which half of the INT8 loss to work on
    split = f"its weights alone in INT8 ({alone['layers']} layers, activations in float) agreement {100 * alone['agreement']:.2f}%"
    assert f"{100 * written:.2f}% with its Q/DQ computed as written, {split}" in page
    capsys.readouterr()
    assert main(["debug", str(result.run_dir), "onnxruntime/int8"]) == 0
    out = capsys.readouterr().out
    assert "keep_float auto against top-1 agreement ≥ 99% on 500 validation samples" in out and "chosen" in out
    assert f"{100 * chosen['agreement']:.2f}%" in out and f"{100 * low:.2f}–{100 * high:.2f}%" in out
    assert f"fully quantized agreement {100 * full['agreement']:.2f}%, {split}" in " ".join(out.split())


def test_unknown_force_stage_is_a_recipe_error(recipe: Recipe) -> None:
    with pytest.raises(RecipeError, match="unknown stage"):
        run(recipe, force=["calibrate"], console=Console(quiet=True))


def test_failed_build_is_recorded_and_the_other_engine_goes_on(recipe: Recipe, cold: RunResult,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship.backends.onnxruntime import OnnxRuntimeBackend

    def broken(*_: object) -> None:
        raise RuntimeError("simulated quantizer crash")

    monkeypatch.setattr(OnnxRuntimeBackend, "_build_int8", staticmethod(broken))
    changed = recipe.model_copy(update={"backends": recipe.backends.model_copy(update={
        "onnxruntime": recipe.backends.onnxruntime.model_copy(update={"calibration_method": "percentile"})})})
    result = run(changed, console=Console(quiet=True))
    fp32, int8 = result.report["engines"]
    assert fp32["status"] == "ok" and fp32["top1"] > 0.5
    assert int8["status"] == "failed" and "simulated quantizer crash" in int8["reason"] and int8["top1"] is None
    entry = next(e for e in result.manifest.entries if e.stage == "build" and e.name == "onnxruntime/int8")
    assert entry.status == "failed" and entry.artifact is None


def test_unavailable_backend_is_skipped_with_its_reason(recipe: Recipe, cold: RunResult,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship.backends.base import Availability
    from edgeship.pipeline import build

    monkeypatch.setattr(build, "availability",
                        lambda name: Availability(name, False, reason="onnxruntime is not installed", install="pip install onnxruntime"))
    result = run(recipe, console=Console(quiet=True))
    assert [(e["status"], "pip install onnxruntime" in e["reason"]) for e in result.report["engines"]] == [("skipped", True)] * 2
    assert result.report["baseline"]["top1"] > 0.5


def test_digits_fallback_runs_end_to_end(tmp_path: Path) -> None:
    from rich.console import Console as RichConsole

    console = RichConsole(record=True, width=200)
    recipe = tiny_recipe(tmp_path, data={"root": str(tmp_path / "no-fashion-mnist"), "val_size": 200},
                         model={"width": 8, "train": {"epochs": 3, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0}})
    result = run(recipe, console=console)
    assert "apt-get install dataset-fashion-mnist" in " ".join(console.export_text().split())
    assert result.report["dataset"]["name"] == "digits" and result.report["dataset"]["eval"] == 359
    assert result.report["baseline"]["top1"] > 0.8
    assert [e["status"] for e in result.report["engines"]] == ["ok", "ok"]


def test_each_engine_is_measured_in_a_pinned_process_of_its_own(cold: RunResult) -> None:
    import os

    import numpy as np

    rows = [cold.report["baseline"], *cold.report["engines"]]
    pids = set()
    for row in rows:
        assert row["isolated"] is True and row["cpus"] == sorted(os.sched_getaffinity(0))[:1], "threads: 1 pins one CPU"
        memory = row["memory"]
        assert 0 < memory["baseline_rss_bytes"] <= memory["peak_rss_bytes"] <= memory["peak_rss_with_eval_bytes"]
        assert row["load_ms"] > 0 and row["first_inference_ms"] > 0 and row["import_ms"] >= 0
        assert row["throughput"]["4"]["status"] == "ok" and row["throughput"]["4"]["samples_per_second"] > 0
        low, high = row["throughput"]["4"]["ci95"]
        assert low <= row["throughput"]["4"]["samples_per_second"] <= high
        assert len(row["latency"]["quantiles_ms"]) == 101 and row["latency"]["ci95"]["p99_ms"][1] >= row["latency"]["p99_ms"]
    # the peak and the engines timed together are no single engine's
    entries = [e for e in cold.manifest.entries if e.stage == "validate" and e.name not in (PEAK, together_name("onnxruntime"))]
    for entry in entries:
        folder = Path(entry.path).parent  # read as stored now: a later --force validate may have measured it anew
        recorded = json.loads((folder / "result.json").read_text())["metrics"]
        pids.add(json.loads((folder / "harness-result.json").read_text())["pid"])
        timings = np.load(folder / "timings.npz")
        assert len(timings["latency"]) == recorded["latency"]["iterations"]
    assert len(pids) == len(entries) and os.getpid() not in pids, "one process per engine, never this one"
    (peak,) = [e for e in cold.manifest.entries if e.stage == "validate" and e.name == PEAK]
    assert peak.metrics["threads"] == 1 and peak.metrics["cpus"] == sorted(os.sched_getaffinity(0))[:1], "pinned like the engines"


def test_report_command_rebuilds_every_file_byte_for_byte_from_the_manifest(cold: RunResult) -> None:
    from edgeship.cli import main
    from edgeship.pipeline.report import OUTPUTS

    before = {name: (cold.run_dir / name).read_bytes() for name in OUTPUTS}
    for name in OUTPUTS:
        (cold.run_dir / name).unlink()
    code = main(["report", str(cold.run_dir)])
    assert code == cold.report["release"]["exit_code"] == cold.exit_code
    for name in OUTPUTS:
        assert (cold.run_dir / name).read_bytes() == before[name], name


def test_junit_has_one_case_per_gate_and_engine(cold: RunResult) -> None:
    import xml.etree.ElementTree as ET

    from edgeship.gates import GATES

    root = ET.parse(cold.run_dir / "junit.xml").getroot()
    assert root.tag == "testsuites"
    *suites, release = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [e["name"] for e in cold.report["engines"]] and release.get("name") == "release"
    cases = root.findall("testsuite/testcase")
    assert len(cases) == len(GATES) * len(suites) + 1 == int(root.get("tests"))
    assert (release.find("testcase/failure") is None) == cold.report["release"]["passed"]
    for suite, row in zip(suites, cold.report["engines"], strict=True):
        assert [c.get("name") for c in suite.findall("testcase")] == list(GATES)
        failures = sum(g["outcome"] == "fail" for g in row["gates"])
        assert len(suite.findall("testcase/failure")) == failures == int(suite.get("failures"))
        assert len(suite.findall("testcase/skipped")) == sum(g["outcome"] == "not-applicable" for g in row["gates"])


def test_html_report_has_every_section_and_inline_plots(cold: RunResult) -> None:
    from html.parser import HTMLParser

    from edgeship.render.html import SECTIONS

    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.sections: list[str] = []
            self.svgs = 0
            self.external: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = dict(attrs)
            if tag == "section":
                self.sections.append(values.get("id") or "")
            self.svgs += tag == "svg"
            for key in ("src", "href"):
                if values.get(key) and not str(values[key]).startswith("#"):
                    self.external.append(str(values[key]))

    page = Collect()
    page.feed((cold.run_dir / "report.html").read_text())
    assert page.sections == list(SECTIONS)
    assert page.svgs >= 3, "Pareto, latency distribution and throughput plots at least"
    assert page.external == [], "self-contained: nothing to fetch"


def test_report_page_renders_in_headless_chromium(cold: RunResult) -> None:
    from edgeship.render.browser import check_page, chromium

    if chromium() is None:
        pytest.skip("no Chromium here: apt-get install chromium (make test installs it where apt and root are available)")
    pytest.importorskip("playwright", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    shot = cold.run_dir / "report.png"
    result = check_page(cold.run_dir / "report.html", shot)
    assert result.ok, result.problems()
    assert result.sections[:3] == ["verdict", "recommendations", "gates"] and result.visible_plots >= 3
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_gates_are_applied_without_measuring_again(recipe: Recipe, cold: RunResult) -> None:
    strict = recipe.model_copy(update={"gates": recipe.gates.model_copy(update={"max_size_mib": 1e-6, "min_agreement": None,
                                                                               "min_fraction_of_fp32": None})})
    failed = run(strict, console=Console(quiet=True))
    assert all(e.reused for e in failed.manifest.entries if e.stage in ("build", "validate"))
    assert failed.exit_code == 1 and failed.report["release"]["failing"] == ["onnxruntime/fp32", "onnxruntime/int8"]
    size = next(g for g in failed.report["engines"][0]["gates"] if g["gate"] == "max_size_mib")
    assert size["outcome"] == "fail" and size["value"] > size["limit"]
    assert all(choice["engine"] is None for choice in failed.report["recommendations"].values())

    loose = recipe.model_copy(update={"gates": recipe.gates.model_copy(update={"min_agreement": 0.5, "min_fraction_of_fp32": 0.5,
                                                                              "required": ["onnxruntime/fp32"]})})
    passed = run(loose, console=Console(quiet=True))
    assert passed.exit_code == 0 and passed.report["release"] == {"required": ["onnxruntime/fp32"], "qualified": ["onnxruntime/fp32"],
                                                                  "failing": [], "finished": True, "reasons": [], "passed": True,
                                                                  "exit_code": 0}
    assert passed.report["recommendations"]["onnxruntime"]["engine"] in ("onnxruntime/fp32", "onnxruntime/int8")


def test_validate_command_qualifies_an_engine_file_like_a_built_one(recipe: Recipe, cold: RunResult, tmp_path: Path) -> None:
    import shutil

    from edgeship.pipeline.qualify import qualify

    built = next(e for e in cold.report["engines"] if e["name"] == "onnxruntime/int8")
    foreign = tmp_path / "elsewhere.onnx"
    shutil.copyfile(built["path"], foreign)
    result = qualify(recipe, foreign, console=Console(quiet=True))
    assert next(e for e in result.manifest.entries if e.stage == "model").reused, "the baseline comes from the store"
    (row,) = result.report["engines"]
    assert row["name"] == "onnxruntime/int8" and row["precision"] == "int8", "precision read from the Q/DQ nodes"
    assert row["top1"] == built["top1"] and row["top1_agreement"] == built["top1_agreement"]
    assert result.report["release"]["required"] == ["onnxruntime/int8"]
    assert result.exit_code == (0 if row["verdict"] == "pass" else 1)
    assert {p.name for p in result.run_dir.iterdir()} >= {"report.json", "junit.xml", "report.html", "manifest.json"}


def test_validate_command_refuses_bad_engine_files_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeship.cli import main

    truncated = tmp_path / "model.onnx"
    truncated.write_bytes(b"\x08\x07\x12\x04trunc")
    unknown = tmp_path / "model.bin"
    unknown.write_bytes(b"x")
    for path, expected in ((truncated, "model.onnx: not a readable ONNX model"), (unknown, "cannot tell the backend from the suffix"),
                           (tmp_path / "missing.onnx", "no such engine file")):
        assert main(["validate", str(path), "--recipe", str(tmp_path / "none.yaml")]) == 2
        assert "recipe file not found" in capsys.readouterr().err
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"store: {tmp_path / 'store'}\nreports: {tmp_path / 'reports'}\n")
        assert main(["validate", str(path), "--recipe", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_large_models_calibrated_build_runs_in_a_child_and_makes_the_same_engine(recipe: Recipe, cold: RunResult,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """At ``CHILD_MODEL_BYTES`` or more (here: any size) an INT8 build goes to a child process, where the quantizer's
    memory leaves with it; an FP32 build, which calibrates nothing, stays in the run's process. The engine is the same."""
    from edgeship.pipeline import build

    children: list[tuple[str, object]] = []
    real = build.in_child
    monkeypatch.setattr(build, "in_child", lambda work, *args, **kw: children.append((args[0], args[2])) or real(work, *args, **kw))
    monkeypatch.setattr(build, "CHILD_MODEL_BYTES", 0)
    rebuilt = run(recipe, force=["build"], console=Console(quiet=True))
    assert children == [("onnxruntime", "int8")]
    engines = {e.name: e for e in rebuilt.manifest.entries if e.stage == "build"}
    before = {e.name: e for e in cold.manifest.entries if e.stage == "build"}
    assert not engines["onnxruntime/int8"].reused and engines["onnxruntime/int8"].sha256 == before["onnxruntime/int8"].sha256
