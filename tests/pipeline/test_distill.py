"""The distill stage on the tiny recipe: prune → distill with its hard-label ablation, named students,
unlabeled transfer data, resume after an interruption, and the errors a recipe can cause."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from rich.console import Console

from edgeship import RunResult, run
from edgeship.artifacts import ArtifactStore
from edgeship.distillation import Objective
from edgeship.errors import RecipeError
from edgeship.pipeline.distill import _label
from edgeship.recipe import DistillConfig

from conftest import needs_fashion_mnist, tiny_recipe

pytestmark = pytest.mark.slow
ADAMW = {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0}
PRUNE = {"enabled": True, "keep_macs": 0.5, "steps": 1, "round_to": None, "ratios": {"layer2.conv1": 0.5, "layer3.conv1": 0.5},
         "finetune": {"epochs": 1, **ADAMW}}
DISTILL = {"enabled": True, "train": {"epochs": 2, **ADAMW}, "hints": [{"student": "layer3"}]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def distilled(workspace: Path) -> RunResult:
    return run(tiny_recipe(workspace, prune=PRUNE, distill=DISTILL), console=Console(quiet=True))


def test_report_compares_teacher_pruned_hard_label_and_distilled(distilled: RunResult) -> None:
    section = distilled.report["distill"]
    top1 = section["top1"]
    assert set(top1) == {"teacher", "student_before", "hard_label_finetune", "distilled"}
    assert all(0 < row["eval_top1"] <= 1 and 0 < row["val_top1"] <= 1 for row in top1.values())
    assert top1["teacher"]["eval_top1"] == pytest.approx(distilled.report["baseline"]["top1"], abs=1e-9), "same model, same test set"
    assert section["gain_over_hard_labels_points"] == pytest.approx(
        100 * (top1["distilled"]["eval_top1"] - top1["hard_label_finetune"]["eval_top1"]), abs=1e-3)
    fp32 = next(e for e in distilled.report["engines"] if e["name"] == "onnxruntime/fp32")
    assert fp32["status"] == "ok"
    assert fp32["top1"] == pytest.approx(top1["distilled"]["eval_top1"], abs=0.002), "the engine is the distilled student"
    verdict = distilled.report["student_vs_teacher"]
    assert verdict["stages"] == "prune + distill" and verdict["latency_reduction"] == distilled.report["prune"]["latency_speedup_p50"]
    assert verdict["top1_drop_points"] == pytest.approx(100 * (top1["teacher"]["eval_top1"] - fp32["top1"]), abs=1e-3)
    folder = distilled.run_dir / "distill"
    assert (folder / "curves.png").stat().st_size > 5000
    document = json.loads((folder / "distill.json").read_text())
    assert len(document["distill"]["history"]["val_accuracy"]) == document["distill"]["metrics"]["epochs_run"] == 2
    assert len(document["hard_label_finetune"]["history"]["val_accuracy"]) == 2, "the ablation runs the same epochs"


def test_distilled_artifact_keeps_the_pruned_structure(distilled: RunResult, workspace: Path) -> None:
    from edgeship.models import load_model

    store = ArtifactStore(workspace / "store")
    entries = {e.stage: e for e in distilled.manifest.entries}
    pruned, student = store.get(entries["prune"].artifact), store.get(entries["distill"].artifact)
    assert pruned is not None and student is not None and student.parents[1] == pruned.id
    model = load_model(student)
    assert [p.shape for p in model.parameters()] == [p.shape for p in load_model(pruned).parameters()]
    state = torch.load(student.path, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not (workspace / "store" / "scratch" / student.id).exists(), "the checkpoint folder goes once the artifact is complete"


def test_changing_the_objective_reuses_the_ablation(distilled: RunResult, workspace: Path) -> None:
    result = run(tiny_recipe(workspace, prune=PRUNE, distill={**DISTILL, "temperature": 3.0, "hints": []}), console=Console(quiet=True))
    by_stage = {e.stage: e for e in result.manifest.entries}
    assert by_stage["distill-ablation"].reused and by_stage["prune"].reused and not by_stage["distill"].reused
    assert result.report["distill"]["name"] == "soft+hard T=3 alpha=0.7"


def test_an_interrupted_distillation_resumes_from_its_last_epoch(distilled: RunResult, workspace: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeship.training

    recipe = tiny_recipe(workspace, prune=PRUNE, distill={**DISTILL, "objective": "soft", "ablation": False})
    real_fit = edgeship.training.fit

    def interrupted_fit(*args: object, **kwargs: object) -> object:
        def stop(epoch: int) -> None:
            if epoch == 1:
                raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch": stop})  # type: ignore[arg-type]

    monkeypatch.setattr(edgeship.training, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, console=Console(quiet=True))
    assert list((workspace / "store" / "scratch").glob("*/train.ckpt")), "the epoch-1 checkpoint survives the interruption"
    monkeypatch.setattr(edgeship.training, "fit", real_fit)
    console = Console(record=True, width=200)
    result = run(recipe, console=console)
    assert "resuming after epoch 1/2" in console.export_text()
    document = json.loads((result.run_dir / "distill" / "distill.json").read_text())
    assert document["distill"]["history"]["resumed_from_epoch"] == 1 and document["distill"]["metrics"]["epochs_run"] == 2
    assert document["hard_label_finetune"] is None and "not run" in document["hard_label_finetune_note"]


@needs_fashion_mnist
def test_a_named_zoo_student_learns_from_scratch_and_exports(workspace: Path) -> None:
    student = {"zoo": "mobilenet_small", "width": 8}
    result = run(tiny_recipe(workspace, distill={**DISTILL, "hints": [], "student": student, "train": {"epochs": 2, **ADAMW, "lr": 0.01}}),
                 console=Console(quiet=True))
    top1 = result.report["distill"]["top1"]
    assert top1["student_before"]["eval_top1"] < 0.3, "an untrained student starts near chance"
    assert top1["distilled"]["eval_top1"] > 0.5
    names = {(e.stage, e.name) for e in result.manifest.entries}
    assert ("model", "student: mobilenet_small") in names and result.report["prune"] is None
    fp32 = next(e for e in result.report["engines"] if e["name"] == "onnxruntime/fp32")
    assert fp32["status"] == "ok" and fp32["top1"] == pytest.approx(top1["distilled"]["eval_top1"], abs=0.002)


@needs_fashion_mnist
def test_unlabeled_transfer_data_from_a_folder(workspace: Path, tmp_path: Path) -> None:
    from edgeship.data import load_dataset
    from edgeship.recipe import CalibrationConfig, DataConfig

    dataset = load_dataset(DataConfig(train_size=3000, val_size=500, eval_size=1000), CalibrationConfig(size=200), seed=0)
    np.save(tmp_path / "unlabeled.npy", dataset.train.images[:1500])  # raw uint8 images, no labels
    distill = {**DISTILL, "hints": [], "objective": "soft", "transfer": "unlabeled", "transfer_source": str(tmp_path)}
    result = run(tiny_recipe(workspace, prune=PRUNE, distill=distill), console=Console(quiet=True))
    document = json.loads((result.run_dir / "distill" / "distill.json").read_text())
    assert document["distill"]["metrics"]["transfer"] == {"samples": 1500, "labeled": False}
    assert result.report["distill"]["top1"]["hard_label_finetune"] is None
    assert all(e.stage != "distill-ablation" for e in result.manifest.entries), "no labels, no hard-label ablation"


def test_distill_without_a_student_is_a_recipe_error(workspace: Path) -> None:
    with pytest.raises(RecipeError, match="there is no student"):
        run(tiny_recipe(workspace, distill=DISTILL), console=Console(quiet=True))


@needs_fashion_mnist
def test_corrupt_transfer_data_names_the_file(workspace: Path, tmp_path: Path) -> None:
    from edgeship.errors import DataError

    bad = np.full((4, 1, 28, 28), np.nan, np.float32)
    np.save(tmp_path / "bad.npy", bad)
    distill = {**DISTILL, "hints": [], "objective": "soft", "transfer": "unlabeled", "transfer_source": str(tmp_path)}
    with pytest.raises(DataError, match="transfer data contains NaN or inf"):
        run(tiny_recipe(workspace, prune=PRUNE, distill=distill), console=Console(quiet=True))


def test_a_run_scored_on_validation_shows_no_evaluation_figure_of_the_distillation(tmp_path: Path) -> None:
    """A sweep's trial (validate.split: validation) must not show evaluation figures anywhere, the distillation's
    comparison included: distill.json and its chart take the validation split's."""
    from types import SimpleNamespace

    from edgeship.pipeline.distill import publish
    from edgeship.render.plots import ablation_figure

    def scores(val: float) -> dict[str, float]:
        return {"val_top1": val, "eval_top1": val - 0.01}

    metrics = {"measure": "top1", "teacher": scores(0.9), "student_before": scores(0.7), "student_after": scores(0.85)}
    history = {"train_loss": [1.0], "val_accuracy": [0.85]}
    artifact = SimpleNamespace(meta={"metrics": metrics, "history": history})
    cfg = SimpleNamespace(objective="mse", hints=[], temperature=1.0, alpha=0.5)
    for split in ("val", "eval"):
        publish(artifact, None, cfg, tmp_path / split, split)  # type: ignore[arg-type]
        document = json.loads((tmp_path / split / "distill.json").read_text())
        text = json.dumps(document)
        assert document["split"] == split and ("eval_top1" in text) is (split == "eval")
        assert document["distilled_drop_vs_teacher_points"] == pytest.approx(5.0)  # 0.90 - 0.85 on either split
        figure = ablation_figure(document["top1"], "top1", split)
        assert figure.axes[0].get_xlabel().startswith("test" if split == "eval" else "validation")


def test_the_report_of_a_run_scored_on_validation_shows_no_evaluation_figure_of_the_distillation() -> None:
    """The report's distillation section and its student-vs-teacher line name and use the engines' split."""
    from types import SimpleNamespace

    from edgeship.pipeline.report import _distill_section
    from edgeship.render.text import verdict_measure

    def scores(val: float) -> dict[str, float]:
        return {"val_cosine": val, "eval_cosine": val - 0.01}

    metrics = {"measure": "cosine", "teacher": scores(1.0), "student_before": scores(0.8), "student_after": scores(0.9),
               "history": {"val_accuracy": [0.9], "eval_cosine": [0.89]}}
    entry = SimpleNamespace(stage="distill", status="ok", name="mse", reused=False, seconds=1.0, metrics=metrics)
    for split in ("val", "eval"):
        section = _distill_section([entry], split)  # type: ignore[list-item]
        assert section is not None and section["split"] == split
        assert ("eval_cosine" in json.dumps(section)) is (split == "eval")
        assert section["distilled_drop_vs_teacher_points"] == pytest.approx(10.0)
    verdict = {"measure": "cosine", "student_cosine": 0.93}
    assert verdict_measure({**verdict, "split": "validation"}).startswith("validation output cosine")
    assert verdict_measure({**verdict, "split": "evaluation"}).startswith("test output cosine")


def test_every_objective_names_its_stage() -> None:
    labels = {objective: _label(DistillConfig(objective=objective)) for objective in get_args(Objective)}
    assert labels["cosine"] == "output cosine" and len(set(labels.values())) == len(labels)
