"""The export stage on a real (tiny) run context: dynamic batch, checker, slim, parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from rich.console import Console

from edgeship.artifacts import ArtifactStore, Manifest
from edgeship.data import load_dataset
from edgeship.errors import StageError
from edgeship.pipeline import export as export_module
from edgeship.pipeline.base import RunContext
from edgeship.pipeline.export import ExportStage
from edgeship.pipeline.model import ModelStage

from conftest import needs_fashion_mnist, tiny_recipe


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    tmp = tmp_path_factory.mktemp("export")
    recipe = tiny_recipe(tmp, data={"train_size": 300, "val_size": 100, "eval_size": 200},
                         model={"width": 4, "train": {"epochs": 1, "batch_size": 64}})
    dataset = load_dataset(recipe.data, recipe.calibration, seed=0, notice=lambda _: None)
    run_dir = tmp / "run"
    run_dir.mkdir()
    return RunContext(recipe=recipe, store=ArtifactStore(recipe.store), manifest=Manifest(run_id="t", recipe={}), run_dir=run_dir,
                      console=Console(quiet=True), dataset=dataset)


@pytest.fixture(scope="module")
def model(context: RunContext) -> object:
    return ModelStage().run({}, context.recipe.model, context)["model"]


@needs_fashion_mnist
def test_export_has_dynamic_batch_and_records_parity(context: RunContext, model: object) -> None:
    onnx_artifact = ExportStage().run({"model": model}, context.recipe.export, context)["onnx"]
    onnx.checker.check_model(str(onnx_artifact.path), full_check=True)
    session = ort.InferenceSession(str(onnx_artifact.path), providers=["CPUExecutionProvider"])
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str), f"batch axis must be dynamic, got {batch_dim!r}"
    for n in (1, 5):
        assert session.run(None, {"input": np.zeros((n, 1, 28, 28), np.float32)})[0].shape == (n, 10)
    meta = onnx_artifact.meta
    assert meta["input_name"] == "input" and meta["output_name"] == "logits" and meta["input_shape"] == [1, 28, 28]
    assert 0 <= meta["metrics"]["parity_max_abs_error"] <= 1e-4
    assert "BatchNormalization" not in meta["ops"], "onnxslim folds BatchNorm into the convolutions"


def test_parity_failure_stops_the_stage(context: RunContext, model: object, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module._run_onnx
    monkeypatch.setattr(export_module, "_run_onnx", lambda path, batch: real(path, batch) + 1e-3)
    forced = RunContext(**{**context.__dict__, "force": frozenset({"export"})})
    with pytest.raises(StageError, match=r"differs from PyTorch by 0.001.*parity_atol=0.0001"):
        ExportStage().run({"model": model}, context.recipe.export, forced)


@needs_fashion_mnist
def test_a_large_model_exports_in_a_child_process_to_the_same_onnx(context: RunContext, model: object, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Above ``CHILD_MODEL_BYTES`` the exporter runs in a child (its imports leave with it): the same ONNX, bit for bit."""
    here = ExportStage().run({"model": model}, context.recipe.export, context)["onnx"]
    children: list[object] = []
    real = export_module.in_child
    monkeypatch.setattr(export_module, "in_child", lambda work, *args, **kw: children.append(work) or real(work, *args, **kw))
    monkeypatch.setattr(export_module, "CHILD_MODEL_BYTES", 0)
    elsewhere = RunContext(**{**context.__dict__, "store": ArtifactStore(tmp_path / "store")})
    child = ExportStage().run({"model": model}, context.recipe.export, elsewhere)["onnx"]
    assert children == [export_module._export_stored]
    assert child.sha256 == here.sha256 and child.meta["metrics"] == here.meta["metrics"]
