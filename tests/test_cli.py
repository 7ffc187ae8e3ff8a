"""The command line: exit codes, one-line errors without tracebacks, the backends table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeship.cli import main


def edgeship(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_recipe_typo_is_one_line_exit_2_without_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("calibraton:\n  size: 100\n")
    done = edgeship("run", str(recipe))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert str(recipe) in lines[0] and "'calibraton'" in lines[0] and "allowed keys" in lines[0]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("calibraton: {}\n")
    done = edgeship("--debug", "run", str(recipe))
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_unwritable_reports_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"reports: {blocker}/reports\nstore: {tmp_path}/store\n")
    assert main(["run", str(recipe)]) == 2


def test_backends_table_lists_every_backend() -> None:
    done = edgeship("backends")
    assert done.returncode == 0
    for name in ("onnxruntime", "openvino", "tflite", "tensorrt"):
        assert name in done.stdout
    assert "issue #" not in done.stdout, "every backend has its adapter"
    if "no CUDA GPU" in done.stdout:
        assert "tensorrt: no engines here, but its precision-bound ONNX is still prepared with ModelOpt" in " ".join(done.stdout.split())


def test_report_command_rebuilds_from_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeship.artifacts import Manifest, ManifestEntry

    latency = {"p50_ms": 1.0, "p99_ms": 2.0, "batch_size": 1, "ci95": {"p50_ms": [0.9, 1.1], "p99_ms": [1.8, 2.2]}}
    manifest = Manifest(run_id="r-1", recipe={"name": "r"}, device={"cpu": "test cpu"}, entries=[
        ManifestEntry(stage="validate", name="pytorch/fp32", status="ok", config={"threads": 2},
                      metrics={"top1": 0.9, "size_bytes": 2048, "latency": latency}),
        ManifestEntry(stage="build", name="onnxruntime/int8", status="failed", reason="boom [see log]",
                      config={"backend": "onnxruntime", "precision": "int8"})])
    (tmp_path / "manifest.json").write_text(manifest.model_dump_json())
    assert main(["report", str(tmp_path)]) == 1, "a required engine that failed to build fails the release"
    out = capsys.readouterr().out
    assert "r-1" in out and "failed, required (1)" in out and "90.00%" in out
    assert "(1) onnxruntime/int8 failed: boom [see log]" in out and "release gates: fail" in out
    assert {p.name for p in tmp_path.iterdir()} >= {"report.json", "junit.xml", "report.html"}
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_run_without_argument_uses_recipes_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship.pipeline import run as run_module

    seen = {}

    def fake_run(recipe: object, **kwargs: object) -> object:
        seen["recipe"], seen["path"] = recipe, kwargs["recipe_path"]
        raise KeyboardInterrupt  # stop here; the real run is covered by the end-to-end tests

    monkeypatch.setattr(run_module, "run", fake_run)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "default.yaml").write_text("name: default\nseed: 7\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 130
    assert seen["recipe"].seed == 7 and str(seen["path"]) == "recipes/default.yaml"
