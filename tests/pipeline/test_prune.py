"""The prune stage end to end on the tiny recipe: sensitivity scan, MACs target, measured before/after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from edgeship import RunResult, run
from edgeship.artifacts import ArtifactStore
from edgeship.recipe import Recipe

from conftest import tiny_recipe

pytestmark = pytest.mark.slow
# round_to is off: the tiny width-8 model has too few channels to prune in steps of 8
PRUNE = {"enabled": True, "keep_macs": 0.5, "steps": 2, "round_to": None,
         "sensitivity": {"val_size": 300, "max_drop": 40.0, "ratios": [0.2, 0.5, 0.8]},
         "finetune": {"epochs": 1, "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prune")


@pytest.fixture(scope="module")
def structured(workspace: Path) -> RunResult:
    return run(tiny_recipe(workspace, prune=PRUNE), console=Console(quiet=True))


def test_structured_prune_meets_the_target_and_measures_latency(structured: RunResult) -> None:
    prune = structured.report["prune"]
    assert prune["method"] == "structured"
    assert prune["after"]["macs"] < prune["before"]["macs"] and prune["after"]["parameters"] < prune["before"]["parameters"]
    assert prune["macs_kept"] == pytest.approx(prune["after"]["macs"] / prune["before"]["macs"], abs=1e-3)
    assert prune["macs_kept"] <= 0.56
    for side in ("before", "after"):
        assert prune[side]["latency"]["p50_ms"] > 0 and prune[side]["onnx_bytes"] > 0 and prune[side]["threads"] == 1
    assert prune["after"]["onnx_bytes"] < prune["before"]["onnx_bytes"]
    engines = {e["name"]: e for e in structured.report["engines"]}
    assert engines["onnxruntime/fp32"]["status"] == "ok" and engines["onnxruntime/fp32"]["top1"] > 0.5


def test_sensitivity_curves_are_in_the_run_folder_and_monotone_ish(structured: RunResult) -> None:
    folder = structured.run_dir / "prune"
    assert (folder / "sensitivity.png").stat().st_size > 1000
    document = json.loads((folder / "sensitivity.json").read_text())
    assert document["curves"], "every prunable layer group has a curve"
    for group, curve in document["curves"].items():
        accuracies = [curve[r] for r in sorted(curve, key=float)]
        assert accuracies[-1] <= accuracies[0] + 0.02, f"{group}: pruning 80% must not beat pruning 20% ({accuracies})"
    plan = json.loads((folder / "prune.json").read_text())
    assert plan["chosen_by"].startswith("sensitivity") and set(plan["ratios"]) == set(document["curves"])


def test_pruned_artifact_rebuilds_from_its_history(structured: RunResult, workspace: Path) -> None:
    from edgeship.models import load_model

    entry = next(e for e in structured.manifest.entries if e.stage == "prune")
    artifact = ArtifactStore(workspace / "store").get(entry.artifact)
    model = load_model(artifact, tiny_recipe(workspace).model)
    state = torch.load(artifact.path, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_rerun_reuses_the_sensitivity_scan(structured: RunResult, workspace: Path) -> None:
    changed = {**PRUNE, "keep_macs": 0.7}
    result = run(tiny_recipe(workspace, prune=changed), console=Console(quiet=True))
    by_stage = {e.stage: e for e in result.manifest.entries}
    assert by_stage["prune-sensitivity"].reused and not by_stage["prune"].reused
    assert result.report["prune"]["macs_kept"] > structured.report["prune"]["macs_kept"]


def test_unstructured_prune_reports_sparsity_and_honest_latency(workspace: Path) -> None:
    recipe: Recipe = tiny_recipe(workspace, prune={"enabled": True, "method": "unstructured", "sparsity": 0.6,
                                                   "finetune": PRUNE["finetune"]})
    result = run(recipe, console=Console(quiet=True))
    prune = result.report["prune"]
    assert prune["after"]["macs"] == prune["before"]["macs"] and prune["parameters_kept"] == 1.0
    details = json.loads((result.run_dir / "prune" / "prune.json").read_text())
    sparsity = details["layer_sparsity"]
    assert sparsity["fc"] == 0.0 and max(sparsity.values()) > 0.3
    assert "no faster" in details["note"]
    assert prune["latency_speedup_p50"] > 0


def test_nothing_to_prune_is_said(workspace: Path) -> None:
    recipe = tiny_recipe(workspace, prune={**PRUNE, "ratios": {"layer1.conv1": 0.0}, "steps": 1})
    console = Console(record=True, width=200)
    result = run(recipe, console=console)
    assert "no channel was removed" in console.export_text()
    assert result.report["prune"]["parameters_kept"] == 1.0


def test_unreachable_target_within_max_drop_is_said(workspace: Path) -> None:
    strict = {**PRUNE, "keep_macs": 0.1, "sensitivity": {**PRUNE["sensitivity"], "max_drop": 0.0}, "steps": 1}
    console = Console(record=True, width=200)
    result = run(tiny_recipe(workspace, prune=strict), console=console)
    text = " ".join(console.export_text().split())
    assert "target not reached" in text
    plan = json.loads((result.run_dir / "prune" / "prune.json").read_text())
    assert "warning" in plan and plan["expected_macs_kept"] > 0.1


def test_latency_target_is_searched_by_measurement(workspace: Path) -> None:
    impossible = {**PRUNE, "latency_target": {"backend": "onnxruntime", "p50_ms": 0.0001}, "steps": 1}
    result = run(tiny_recipe(workspace, prune=impossible), console=Console(quiet=True))
    plan = json.loads((result.run_dir / "prune" / "prune.json").read_text())
    assert plan["target_p50_ms"] == 0.0001 and plan["base_p50_ms"] > 0 and plan["expected_p50_ms"] > 0.0001
    assert plan["warning"].startswith("latency target not reached")
    assert result.report["prune"]["after"]["macs"] < result.report["prune"]["before"]["macs"], "it still prunes as far as allowed"
