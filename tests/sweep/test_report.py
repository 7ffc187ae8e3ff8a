"""The sweep's report from trial records: fronts per backend (shared engines once), reuse, the recipe's own point, the
YAML recipes and a page that renders in Chromium."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from edgeship.render.browser import check_page, chromium
from edgeship.sweep.driver import SweepConfig, save_record
from edgeship.sweep.report import (
    MAX_TIMED_TOGETHER,
    SECTIONS,
    add_joined_recipes,
    build_report,
    chosen,
    contenders,
    dominates,
    timed_points,
    write_outputs,
)
from edgeship.sweep.together import compare_rounds
from edgeship.sweep.trial import EnginePoint, TrialRecord, Work

BASE = {"name": "r", "prune": {"keep_macs": 0.25}, "backends": {"openvino": {"enabled": False}, "tflite": {"enabled": False},
                                                                 "tensorrt": {"enabled": False}}}


def _point(engine: str, accuracy: float, p50: float, size: float, artifact: str) -> EnginePoint:
    backend, precision = engine.split("/")
    return EnginePoint(engine=engine, backend=backend, precision=precision, artifact=artifact, status="ok", verdict="pass",
                       accuracy=accuracy, p50_ms=p50, p50_ci=(p50 * 0.9, p50 * 1.1), size_mib=size)


def _record(name: str, keep: float, int8: tuple[float, float, float], *, built: bool) -> TrialRecord:
    fp32 = _point("onnxruntime/fp32", 0.90, 1.0, 4.0, "fp32-shared")
    quant = _point("onnxruntime/int8", *int8, artifact=f"int8-{name}")
    work = [Work(stage="model", name="teacher", artifact="teacher", reused=not built, seconds=0.0 if not built else 30.0),
            Work(stage="validate", name="onnxruntime/int8", artifact=f"v-{name}", reused=False, seconds=2.0)]
    return TrialRecord(name=name, values={"prune.keep_macs": keep}, status="ok", accuracy_key="top1", engines=[fp32, quant],
                       objective=quant, work=work, seconds=40.0, host="vm", recipe={**BASE, "prune": {"keep_macs": keep}})


def test_fronts_reuse_and_the_recipes_point(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(BASE))
    space = {"parameters": {"prune.keep_macs": {"low": 0.2, "high": 0.6, "log": False, "step": None, "integer": False}},
             "objective": {"engine": None}, "seed": 0}
    config = SweepConfig(id="r-1", recipe_path=recipe, space_path=tmp_path / "s.yaml", base=BASE, space=space, target="onnxruntime/int8",
                         trials=4, cpus_per_trial=1, store=tmp_path / "store", created=time.time(),
                         sessions=[{"started": time.time() - 100, "seconds": 100.0, "resumed": False}])
    records = [_record("t001", 0.25, (0.88, 0.50, 1.0), built=True),  # the recipe's own values
               _record("t002", 0.40, (0.89, 0.45, 1.0), built=False),  # beats it: more accurate and faster, as small
               _record("t003", 0.20, (0.85, 0.40, 0.9), built=False),  # faster, less accurate: on the front too
               _record("t004", 0.30, (0.87, 0.60, 1.2), built=False),  # dominated
               TrialRecord(name="t005", values={"prune.keep_macs": 0.5}, status="failed", reason="onnxruntime/int8: build failed")]
    for record in records:
        save_record(tmp_path, record)
    assert [r.name for r in chosen(config, records)] == ["t001", "t002", "t003"]  # the fronts' trials and the recipe's own
    assert [r.name for r in chosen(config, records, also=["t004"])] == ["t001", "t002", "t003", "t004"]  # a joined contender's
    fronts, near = timed_points(records)  # what the sweep times together before the confirmations
    assert fronts["onnxruntime"] == [("t003", "onnxruntime/int8", 0.85), ("t002", "onnxruntime/int8", 0.89),
                                     ("t001", "onnxruntime/fp32", 0.90)]
    assert near == {"onnxruntime": [("t001", "onnxruntime/int8", 0.88)]}, "t002 at 0.45 ms is no faster than its best case"
    # on the evaluation split the recipe's INT8 is beaten by nothing: t002's gain was the validation split's
    confirmed = [_record("t001", 0.25, (0.880, 0.50, 1.0), built=False).model_copy(update={"split": "evaluation"}),
                 _record("t002", 0.40, (0.875, 0.45, 1.0), built=False).model_copy(update={"split": "evaluation"})]
    report = build_report(tmp_path, config, records, confirmed, lock="/tmp/x.lock")
    front = [(p.trial, p.engine) for p in report.fronts["onnxruntime"]]
    assert front == [("t003", "onnxruntime/int8"), ("t002", "onnxruntime/int8"), ("t001", "onnxruntime/fp32")]
    assert report.fronts["onnxruntime"][2].same_in == ["t002", "t003", "t004"]  # one FP32 engine, shared, shown once
    assert report.recipe_trial == "t001"
    int8 = next(v for v in report.versus_recipe if v.engine == "onnxruntime/int8")
    assert [p.trial for p in int8.dominated_by] == ["t002"]
    assert [v.dominated_by for v in report.versus_recipe_confirmed if v.engine == "onnxruntime/int8"] == [[]]
    assert report.reuse["models_trained"] == 1 and report.reuse["stages"]["model"]["seconds_saved"] == 90.0
    accuracy = {"t003 onnxruntime/int8": 0.85, "t002 onnxruntime/int8": 0.89, "t001 onnxruntime/fp32": 0.90}
    rounds = {"t003 onnxruntime/int8": (0.47, 0.46, 0.48), "t002 onnxruntime/int8": (0.45, 0.44, 0.46),
              "t001 onnxruntime/fp32": (1.0, 1.1, 0.9)}
    report.fronts_together = {"onnxruntime": compare_rounds("onnxruntime", 3, accuracy, rounds)}
    write_outputs(tmp_path, report)
    document = json.loads((tmp_path / "sweep.json").read_text())
    assert document["fronts_together"]["onnxruntime"]["reference"] == "t001 onnxruntime/fp32"
    assert document["pareto_recipes"] == {"t001": "pareto/t001.yaml", "t002": "pareto/t002.yaml", "t003": "pareto/t003.yaml"}
    written = (tmp_path / "pareto" / "t002.yaml").read_text()
    assert written.startswith("# Sweep r-1, trial t002: prune.keep_macs=0.4")
    assert yaml.safe_load(written)["prune"] == {"keep_macs": 0.4} and yaml.safe_load(written)["name"] == "r-t002"
    page = (tmp_path / "sweep.html").read_text()
    assert "onnxruntime/int8: build failed" in page and "t002: 0.8900" in page and "0.8750 · 0.450 ms" in page
    assert "no faster than t002 onnxruntime/int8 (more accurate)" in page, "timed together, t003's speed was t002's"
    together = page[page.index("<section id=together>"):]
    assert "<svg" in together and "No faster than a more accurate engine, timed together (grey): t003 onnxruntime/int8." in together
    rounds["t003 onnxruntime/int8"] = (0.30, 0.31, 0.29)  # now faster than t002 in every round: the front holds
    report.fronts_together = {"onnxruntime": compare_rounds("onnxruntime", 3, accuracy, rounds)}
    write_outputs(tmp_path, report)
    assert "each front engine is faster than every more accurate one: the front holds" in (tmp_path / "sweep.html").read_text()
    # t004's INT8 (0.87, its trial's p50 0.60 ms, interval 0.54–0.66) was off the front; timed with it, it beats t003
    accuracy["t004 onnxruntime/int8"] = 0.87
    rounds["t004 onnxruntime/int8"] = (0.25, 0.26, 0.24)  # faster than t003 (0.30 ms) and t002, in every round
    report.contenders = {"onnxruntime": [report.fronts["onnxruntime"][0].model_copy(update={"trial": "t004", "accuracy": 0.87,
                                                                                            "p50_ms": 0.60})]}
    report.fronts_together = {"onnxruntime": compare_rounds("onnxruntime", 3, accuracy, rounds,
                                                            off_front=frozenset({"t004 onnxruntime/int8"}))}
    write_outputs(tmp_path, report)
    page = (tmp_path / "sweep.html").read_text()
    assert "so it joins the front: t004 onnxruntime/int8." in page and ">contender</td>" in page and ">joins the front</td>" in page
    assert "No faster than a more accurate engine, timed together (grey): t003 onnxruntime/int8." in page, "t004 beats t003"
    add_joined_recipes(report)  # the joined contender's recipe, to run again
    write_outputs(tmp_path, report)
    assert json.loads((tmp_path / "sweep.json").read_text())["pareto_recipes"]["t004"] == "pareto/t004.yaml"
    assert "onnxruntime/int8 (0.8700, p50 0.600 ms in its trial; off the front, it joined it timed together)" in \
        (tmp_path / "pareto" / "t004.yaml").read_text().splitlines()[1]
    confirmed_table = (tmp_path / "sweep.html").read_text().split("<section id=confirmed>")[1].split("</section>")[0]
    assert "<td class=l>t004</td>" in confirmed_table and "not confirmed" in confirmed_table, "the joined contender is listed"


def test_contenders_are_the_engines_off_the_front_that_their_own_timing_noise_may_have_put_there() -> None:
    records = [_record("t001", 0.25, (0.88, 0.50, 1.0), built=True),
               _record("t002", 0.40, (0.87, 0.52, 1.0), built=False),  # best case 0.468 ms: faster than t001's 0.50
               _record("t003", 0.30, (0.86, 0.70, 1.0), built=False)]  # best case 0.63 ms: t001 and t002 are faster
    found = contenders(records)
    assert [(r.name, p.engine) for r, p in found["onnxruntime"]] == [("t002", "onnxruntime/int8")]
    narrow = [r.model_copy(update={"engines": [p.model_copy(update={"p50_ci": None}) for p in r.engines]}) for r in records]
    assert contenders(narrow) == {"onnxruntime": []}, "without an interval, the trial's p50 is its best case"
    many = [_record(f"t{i:03d}", 0.3, (0.80 - i / 1000, 0.50 + i / 1000, 1.0), built=False) for i in range(20)]
    assert len(contenders([records[0], *many])["onnxruntime"]) == MAX_TIMED_TOGETHER - 2  # beside t001's two front engines


def test_dominance_needs_one_strict_gain() -> None:
    a, b = _point("x/int8", 0.9, 1.0, 1.0, "a"), _point("x/int8", 0.9, 1.0, 1.0, "b")
    assert not dominates(a, b) and not dominates(b, a)
    assert dominates(_point("x/int8", 0.9, 0.9, 1.0, "c"), b)
    assert not dominates(_point("x/int8", 0.9, 0.9, 2.0, "c"), b) and dominates(_point("x/int8", 0.9, 0.9, 2.0, "c"), b, size=False)


@pytest.mark.skipif(chromium() is None, reason="no Chromium (Debian chromium): the page check needs it")
def test_the_page_renders_in_chromium(tmp_path: Path) -> None:
    test_fronts_reuse_and_the_recipes_point(tmp_path)
    result = check_page(tmp_path / "sweep.html", tmp_path / "sweep.png")
    assert result.ok, result.problems()
    assert tuple(result.sections) == SECTIONS and result.plots == 2  # the fronts, and the front timed together
