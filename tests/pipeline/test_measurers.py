"""The measurement seam: a Measurer checks a request before it measures, and prepares its shared inputs once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgeship.artifacts import ArtifactStore, Manifest
from edgeship.data import load_dataset
from edgeship.pipeline.base import RunContext
from edgeship.pipeline.measurers import DeviceMeasurer, LocalMeasurer, MeasureRequest
from edgeship.recipe import DeviceConfig

from conftest import tiny_recipe


@pytest.fixture
def local(tmp_path: Path) -> LocalMeasurer:
    recipe = tiny_recipe(tmp_path, data={"dataset": "digits", "train_size": 100, "val_size": 50, "eval_size": 50})
    dataset = load_dataset(recipe.data, recipe.calibration, seed=0, notice=lambda _: None)
    ctx = RunContext(recipe=recipe, store=ArtifactStore(tmp_path / "store"), manifest=Manifest(run_id="t", recipe={}),
                     run_dir=tmp_path, console=Console(quiet=True), dataset=dataset)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return LocalMeasurer(recipe.validate_, 1, None, scratch, ctx)


def test_a_request_for_an_unknown_runtime_or_folder_is_refused(local: LocalMeasurer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        local.measure(MeasureRequest("x/fp32", "tvm", tmp_path / "m.so", "input", timed=True), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        local.measure(MeasureRequest("x/fp32", "onnxruntime", tmp_path / "m.onnx", "input", timed=True), tmp_path / "nowhere")


def test_a_device_measures_only_a_stored_engine(local: LocalMeasurer, tmp_path: Path) -> None:
    device = DeviceConfig(name="nuc", url="http://127.0.0.1:9", token_env="T")
    remote = DeviceMeasurer(local, client=None, device=device, described={"device": {}}, threads=1,  # type: ignore[arg-type]
                            reference=np.zeros((50, 10), np.float32))
    with pytest.raises(ValueError, match="a device measures a stored engine"):
        remote.measure(MeasureRequest("onnxruntime/fp32@nuc", "onnxruntime", tmp_path / "m.onnx", "input", timed=True), tmp_path)
    assert remote.where()["device_name"] == "nuc"


def test_the_evaluation_inputs_are_written_once_for_every_thread(local: LocalMeasurer) -> None:
    with ThreadPoolExecutor(4) as pool:
        paths = set(pool.map(lambda _: local.eval_inputs, range(16)))
    assert len(paths) == 1
    inputs = np.load(paths.pop())
    assert inputs.shape[0] == 50 and inputs.dtype == np.float32
