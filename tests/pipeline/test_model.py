"""The model stage's user path: factory + weights-only checkpoint, and its errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from edgeship.errors import DataError, RecipeError
from edgeship.models import instantiate, load_checkpoint
from edgeship.pipeline.model import input_shape
from edgeship.recipe import ModelConfig, Preprocessing
from edgeship.zoo import build

from conftest import needs_fashion_mnist

FACTORY_MODULE = '''
import torch
def make():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
def not_a_model():
    return 42
'''


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "usermodels.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usermodels"
    sys.modules.pop("usermodels", None)


def test_factory_and_weights_only_checkpoint(user_package: str, tmp_path: Path) -> None:
    source = instantiate(ModelConfig(factory=f"{user_package}:make"), in_channels=1, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    model = instantiate(ModelConfig(factory=f"{user_package}:make"), in_channels=1, num_classes=10)
    load_checkpoint(model, tmp_path / "weights.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values(), strict=True))


def test_checkpoint_for_another_architecture(user_package: str, tmp_path: Path) -> None:
    torch.save(build("resnet_small", in_channels=1, num_classes=10, width=4).state_dict(), tmp_path / "other.pt")
    model = instantiate(ModelConfig(factory=f"{user_package}:make"), in_channels=1, num_classes=10)
    with pytest.raises(DataError, match=r"other.pt: checkpoint is for another architecture than "):
        load_checkpoint(model, tmp_path / "other.pt")


def test_pickled_object_is_refused(user_package: str, tmp_path: Path) -> None:
    model = instantiate(ModelConfig(factory=f"{user_package}:make"), in_channels=1, num_classes=10)
    torch.save({"optimizer": Path("not/a/tensor")}, tmp_path / "pickle.pt")
    with pytest.raises(DataError, match=r"pickle.pt: not a weights-only checkpoint"):
        load_checkpoint(model, tmp_path / "pickle.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="garbage.pt"):
        load_checkpoint(model, tmp_path / "garbage.pt")


@pytest.mark.parametrize(("factory", "pattern"), [("usermodels:absent", "usermodels has no .absent."),
                                                  ("nowhere.mod:make", "cannot import"),
                                                  ("usermodels:not_a_model", "returned int")])
def test_bad_factories(user_package: str, factory: str, pattern: str) -> None:
    with pytest.raises(RecipeError, match=pattern):
        instantiate(ModelConfig(factory=factory), in_channels=1, num_classes=10)


def test_zoo_model_shapes() -> None:
    model = build("resnet_small", in_channels=3, num_classes=7, width=4).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_input_shape_follows_preprocessing() -> None:
    class Data:
        class eval:  # noqa: N801 - mimics Dataset.eval
            import numpy as np

            images = np.zeros((1, 28, 28), np.uint8)

    assert input_shape(Data, Preprocessing()) == (1, 28, 28)  # type: ignore[arg-type]
    assert input_shape(Data, Preprocessing(color="rgb", mean=(0.5,), std=(0.5,), resize=(32, 40))) == (3, 32, 40)  # type: ignore[arg-type]


@needs_fashion_mnist
def test_model_stage_uses_a_user_checkpoint_without_training(user_package: str, tmp_path: Path) -> None:
    from rich.console import Console

    from edgeship.artifacts import ArtifactStore, Manifest
    from edgeship.data import load_dataset
    from edgeship.pipeline.base import RunContext
    from edgeship.pipeline.model import ModelStage

    from conftest import tiny_recipe

    source = instantiate(ModelConfig(factory=f"{user_package}:make"), in_channels=1, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    recipe = tiny_recipe(tmp_path, model={"factory": f"{user_package}:make", "checkpoint": str(tmp_path / "weights.pt")},
                         data={"train_size": 100, "val_size": 50, "eval_size": 50})
    ctx = RunContext(recipe=recipe, store=ArtifactStore(recipe.store), manifest=Manifest(run_id="t", recipe={}), run_dir=tmp_path,
                     console=Console(quiet=True), dataset=load_dataset(recipe.data, recipe.calibration, seed=0, notice=lambda _: None))
    artifact = ModelStage().run({}, recipe.model, ctx)["model"]
    assert artifact.meta["source"] == "factory" and "history" not in artifact.meta
    stored = torch.load(artifact.path, weights_only=True)
    assert all(torch.equal(stored[k], v) for k, v in source.state_dict().items())
    again = ModelStage().run({}, recipe.model, ctx)["model"]
    assert again == artifact and ctx.manifest.entries[-1].reused


@pytest.mark.slow
@needs_fashion_mnist
def test_the_your_model_walkthrough_goes_through_every_stage_and_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README's "your own model": a third-party network (Dropout, ``view`` flatten, handed over in train mode) whose
    package imports what is not installed, named by file, with a DataParallel checkpoint nested under "model";
    pruned (sensitivity scan), distilled, exported and built for every CPU backend."""
    import importlib.util

    import yaml

    from edgeship.cli import main

    example = Path(__file__).resolve().parents[2] / "examples" / "your_model"
    spec = importlib.util.spec_from_file_location("walkthrough_train", example / "train.py")
    assert spec is not None and spec.loader is not None
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)
    assert trainer.train(tmp_path / "smallconvnet.pt", epochs=1, samples=5000) > 0.6
    saved = torch.load(tmp_path / "smallconvnet.pt", weights_only=True)
    assert set(saved) >= {"model", "optimizer"} and all(k.startswith("module.") for k in saved["model"])

    recipe = yaml.safe_load((example / "recipe.yaml").read_text())
    recipe["model"]["factory"] = f"{example / 'netlib' / 'models.py'}:build"
    recipe.update(store=str(tmp_path / "store"), reports=str(tmp_path / "reports"), calibration={"size": 200},
                  validate={"together_rounds": 0,
                            "warmup": 2, "iterations": 20, "min_seconds": 0.05, "threads": 1, "throughput_batch_sizes": [4],
                            "throughput_seconds": 0.02},
                  prune={"keep_macs": 0.5, "steps": 1, "finetune": {"epochs": 1},
                         "sensitivity": {"val_size": 300, "ratios": [0.3, 0.6]}},
                  distill={"train": {"epochs": 1}, "ablation": False},
                  backends={"onnxruntime": {"precisions": ["fp32", "int8"]}, "openvino": {"precisions": ["fp32"]},
                            "tflite": {"precisions": ["fp32"]}, "tensorrt": {"enabled": False}})
    recipe["data"].update(train_size=3000, val_size=500, eval_size=1000)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["run", str(tmp_path / "recipe.yaml")])
    out = capsys.readouterr().out
    assert "Traceback" not in out
    report = json.loads(next((tmp_path / "reports").glob("*/report.json")).read_text())
    rows = {row["name"]: row for row in report["engines"]}
    assert set(rows) == {"onnxruntime/fp32", "onnxruntime/int8", "openvino/fp32", "tflite/fp32"}
    assert all(row["status"] == "ok" for row in rows.values()), {n: r["reason"] for n, r in rows.items()}
    assert report["prune"]["macs_kept"] <= 0.6 and report["distill"] is not None
    assert report["baseline"]["top1"] > 0.6 and code == report["release"]["exit_code"]
