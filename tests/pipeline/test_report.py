"""The release verdict challenged: cases that must never read as a pass, each checked in every rendering.

Each case is a manifest as a run would leave it; the report is built from it exactly as ``edgeship report`` does,
and the exit code, ``report.json``, ``junit.xml``, the terminal summary and the page's banner must all say the same.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgeship.artifacts import Manifest, ManifestEntry
from edgeship.cli import main
from edgeship.gates import NOTHING_QUALIFIED
from edgeship.pipeline.report import load_report, rebuild
from edgeship.qualification import Report
from edgeship.render.terminal import cross_check_reason, print_summary

LATENCY = {"p50_ms": 1.0, "p99_ms": 2.0, "batch_size": 1, "ci95": {"p50_ms": [0.9, 1.1], "p99_ms": [1.8, 2.2]}}
MEASURED = {"top1": 0.9, "top1_agreement": 0.995, "eval_samples": 1000, "size_bytes": 4096, "latency": LATENCY}
LABELLED = {"name": "fashion_mnist", "source": "/usr/share/datasets/fashion-mnist", "labelled": True}


def manifest(*entries: ManifestEntry, gates: dict[str, Any] | None = None, status: str = "ok",
             dataset: dict[str, Any] | None = None) -> Manifest:
    baseline = ManifestEntry(stage="validate", name="pytorch/fp32", status="ok", config={"threads": 1},
                             metrics={**MEASURED, "top1": 0.9})
    return Manifest(run_id="case", recipe={"name": "case", "gates": gates or {}}, status=status, device={"cpu": "test"},
                    dataset=dataset or LABELLED, entries=[baseline, *entries])


def engine(name: str, *, status: str = "ok", reason: str = "", metrics: dict[str, Any] | None = None) -> list[ManifestEntry]:
    backend, precision = name.split("/")
    config = {"backend": backend, "precision": precision}
    built = ManifestEntry(stage="build", name=name, status=status, reason=reason, config=config,
                          sha256="0" * 64 if status == "ok" else None)
    if status != "ok":
        return [built]
    return [built, ManifestEntry(stage="validate", name=name, status="ok", config={"threads": 1}, metrics=metrics or MEASURED)]


def renderings(run_dir: Path, report: Report) -> dict[str, bool]:
    """Whether each rendering says the release passed."""
    junit = ET.parse(run_dir / "junit.xml").getroot()
    page = (run_dir / "report.html").read_text()
    out = StringIO()
    print_summary(report, Console(file=out, width=240))
    document = json.loads((run_dir / "report.json").read_text())
    return {"exit code": report.release.exit_code == 0, "report.json": document["release"]["passed"],
            "junit.xml": int(junit.get("failures", "0")) + int(junit.get("errors", "0")) == 0,
            "terminal": "release gates: pass" in out.getvalue() and "release gates: fail" not in out.getvalue(),
            "page": "class='banner pass'" in page and "class='banner fail'" not in page}


def report_of(tmp_path: Path, run: Manifest) -> tuple[Report, dict[str, bool]]:
    (tmp_path / "manifest.json").write_text(run.model_dump_json())
    report = rebuild(tmp_path)
    return report, renderings(tmp_path, report)


SKIPPED = [*engine("tensorrt/fp16", status="skipped", reason="no CUDA GPU (nvidia-smi finds none); install: pip install tensorrt"),
           *engine("tflite/int8", status="skipped", reason="cannot import ai_edge_litert (not installed); install: pip install x")]
NO_INTERVAL = {**MEASURED, "latency": {k: v for k, v in LATENCY.items() if k != "ci95"}}
CASES: dict[str, tuple[Manifest, bool]] = {
    "every engine passes": (manifest(*engine("onnxruntime/fp32"), *engine("onnxruntime/int8")), True),
    "every engine skipped": (manifest(*SKIPPED), False),
    "no engine requested": (manifest(), False),
    "required engine skipped": (manifest(*engine("onnxruntime/fp32"), *SKIPPED, gates={"required": ["tensorrt/*", "onnxruntime/*"]}),
                                False),
    "broken install (failed, so required)": (manifest(*engine("onnxruntime/fp32"), *engine(
        "openvino/fp32", status="failed", reason="openvino is installed but fails to import: ImportError: libfoo.so"), *SKIPPED), False),
    "limit set, p99 interval missing": (manifest(*engine("onnxruntime/fp32", metrics=NO_INTERVAL), gates={"max_p99_ms": 5.0}), False),
    "limit set, size missing": (manifest(*engine("onnxruntime/fp32", metrics={**MEASURED, "size_bytes": None}),
                                         gates={"max_size_mib": 1.0}), False),
    "run killed in the device leg": (manifest(*engine("onnxruntime/fp32"), status="running"), False),
    "not-required engine fails a gate": (manifest(*engine("onnxruntime/fp32"), *engine("onnxruntime/int8", metrics={
        **MEASURED, "top1": 0.5, "top1_agreement": 0.5}), gates={"required": ["onnxruntime/fp32"]}), True),
}


@pytest.mark.parametrize("case", CASES)
def test_every_rendering_agrees_with_the_exit_code(case: str, tmp_path: Path) -> None:
    run, passes = CASES[case]
    report, said = report_of(tmp_path, run)
    assert said == dict.fromkeys(said, passes), f"{case}: {said}; reasons: {report.release.reasons}"
    assert report.release.passed is passes and bool(report.release.reasons) is not passes


def test_nothing_qualified_is_the_reason_everywhere(tmp_path: Path) -> None:
    report, _ = report_of(tmp_path, CASES["every engine skipped"][0])
    assert report.release.reasons[0].startswith(NOTHING_QUALIFIED) and "no CUDA GPU" in report.release.reasons[0]
    assert NOTHING_QUALIFIED in (tmp_path / "report.html").read_text()
    release = next(s for s in ET.parse(tmp_path / "junit.xml").getroot() if s.get("name") == "release")
    assert NOTHING_QUALIFIED in release.find("testcase/failure").get("message", "")  # type: ignore[union-attr]


def test_a_required_skipped_engine_is_a_junit_failure_not_a_skip(tmp_path: Path) -> None:
    report_of(tmp_path, CASES["required engine skipped"][0])
    suites = {s.get("name"): s for s in ET.parse(tmp_path / "junit.xml").getroot()}
    tensorrt = suites["tensorrt/fp16"]
    assert int(tensorrt.get("failures", "0")) == len(tensorrt.findall("testcase")) > 0 and tensorrt.findall("testcase/skipped") == []
    assert "required engine skipped: no CUDA GPU" in tensorrt.find("testcase/failure").get("message", "")  # type: ignore[union-attr]
    assert suites["tflite/int8"].findall("testcase/failure") == [], "not required: reported as skipped"


def test_a_missing_value_fails_its_gate_as_not_measured(tmp_path: Path) -> None:
    report, _ = report_of(tmp_path, CASES["limit set, p99 interval missing"][0])
    gate = next(g for g in report.engines[0].gates if g.gate == "max_p99_ms")
    assert gate.outcome == "fail" and gate.detail == "not measured: latency not measured" and report.engines[0].verdict == "fail"


def test_edgeship_report_on_a_killed_run_says_so_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").write_text(CASES["run killed in the device leg"][0].model_dump_json())
    assert main(["report", str(tmp_path)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "the run did not finish (its manifest says running, last at validate onnxruntime/fp32)" in out
    assert not load_report(tmp_path).release.finished


def test_a_stand_in_dataset_is_said_first_on_the_page_and_in_the_notes(tmp_path: Path) -> None:
    digits = {"name": "digits", "source": "sklearn.datasets.load_digits", "labelled": True,
              "substitute_for": "fashion_mnist (not found under /usr/share/datasets/fashion-mnist; install: apt-get install x)"}
    report, _ = report_of(tmp_path, manifest(*engine("onnxruntime/fp32"), dataset=digits))
    assert report.notes[0].startswith("This run used digits (sklearn.datasets.load_digits) in place of fashion_mnist")
    page = (tmp_path / "report.html").read_text()
    verdict = page[page.index("<section id=verdict>"):]
    assert verdict.index("in place of fashion_mnist") < verdict.index("release gates"), "before the verdict, on the first screen"
    out = StringIO()
    print_summary(report, Console(file=out, width=240))
    assert out.getvalue().lstrip().startswith("This run used digits")


def test_report_json_reads_back_as_the_same_typed_report(tmp_path: Path) -> None:
    report, _ = report_of(tmp_path, CASES["required engine skipped"][0])
    assert load_report(tmp_path) == report


def test_a_backend_that_is_installed_but_raises_on_import_is_broken_not_missing(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeship.backends import availability

    shim = tmp_path / "shim" / "openvino"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('libopenvino.so.2600: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(shim.parent))
    for module in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, module)
    state = availability("openvino")
    assert not state.available and state.broken and "libopenvino.so.2600" in state.reason
    assert state.reason.startswith("openvino is installed but fails to import: ImportError")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a module blocked in sys.modules is one not installed
    assert not availability("tensorrt").broken


def test_a_cross_check_miss_is_put_down_to_the_call_only_when_the_engine_call_alone_agrees_with_the_tool() -> None:
    check = {"within_5pct": False, "bare_ratio": 1.01, "call_overhead_ms": 0.012}
    assert "12 µs call around it" in cross_check_reason(check)
    slow = {**check, "bare_ratio": 1.2}  # the engine's own call is as far off: load, not edgeship's call
    assert "×1.20" in cross_check_reason(slow) and "not in edgeship's call" in cross_check_reason(slow)
    assert cross_check_reason({**check, "within_5pct": True}) == ""


@pytest.mark.parametrize(("device", "said"), [
    ({"cpu": "AMD EPYC", "machine": "x86_64", "isa_flags": ["avx2", "fma"]}, True),
    ({"cpu": "Xeon", "machine": "x86_64", "isa_flags": ["avx2", "fma", "avx512f", "avx512_vnni"]}, False),
    ({"cpu": "Cortex-A78", "machine": "aarch64", "isa_flags": ["asimddp"]}, False),
    ({"cpu": "test"}, False),
])
def test_int8_engines_measured_on_a_cpu_whose_kernels_saturate_say_so(tmp_path: Path, device: dict[str, Any], said: bool) -> None:
    """ONNX Runtime's and OpenVINO's INT8 kernels saturate u8×s8 pair sums on x86 without VNNI or AMX: a report of their
    INT8 engines measured there says so once, naming them and the CPU's flags; TFLite's INT8 alone never does."""
    case = manifest(*engine("onnxruntime/int8"), *engine("openvino/int8"), *engine("tflite/int8"))
    case.device = device
    report, _ = report_of(tmp_path, case)
    notes = [note for note in report.notes if "no VNNI or AMX" in note]
    assert len(notes) == int(said)
    if said:
        assert notes[0].startswith("This CPU has no VNNI or AMX (INT8 flags: avx2, fma): ONNX Runtime's and OpenVINO's INT8 kernels add")
    tflite_only = manifest(*engine("tflite/int8"))
    tflite_only.device = device
    (tmp_path / "tflite").mkdir()
    assert not [note for note in report_of(tmp_path / "tflite", tflite_only)[0].notes if "no VNNI or AMX" in note]


def test_a_failed_timing_together_is_said_and_the_single_timings_rank(tmp_path: Path) -> None:
    failed = ManifestEntry(stage="validate", name="timed-together/onnxruntime", status="failed",
                           reason="timed-together/onnxruntime: onnxruntime/int8: RuntimeError: out of memory")
    report, _ = report_of(tmp_path, manifest(*engine("onnxruntime/fp32"), *engine("onnxruntime/int8"), failed))
    assert ("Timing ONNX Runtime's engines together failed (timed-together/onnxruntime: onnxruntime/int8: RuntimeError: out of "
            "memory): its recommendation ranks each engine's own p50.") in report.notes
    assert all(row.timed_together is None for row in report.engines) and "together:" not in report.recommendations["onnxruntime"].reason
