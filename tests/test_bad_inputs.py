"""Every bad input a user can give: exit code 2, one line naming the file or key and what was expected, no
traceback, and nothing already built is lost (the store's artifacts still verify, and a fixed rerun reuses them)."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from edgeship import RunResult, run
from edgeship.artifacts import ArtifactStore
from edgeship.cli import main

from conftest import needs_fashion_mnist, tiny_recipe

pytestmark = pytest.mark.slow


class Pickled:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """A finished tiny run whose store the bad runs share."""
    recipe = tiny_recipe(tmp_path_factory.mktemp("built"), backends={
        "onnxruntime": {"precisions": ["fp32", "int8"]}, "openvino": {"precisions": ["fp32"]}, "tflite": {"precisions": ["fp32"]},
        "tensorrt": {"enabled": False}})
    return run(recipe, console=Console(quiet=True))


def workspace(result: RunResult) -> Path:
    return result.run_dir.parent.parent


def recipe_file(folder: Path, name: str, base: Path, **overrides: object) -> Path:
    """A tiny recipe sharing ``base``'s store and reports, with ``overrides`` merged into its sections."""
    raw = tiny_recipe(base).model_dump(mode="json", by_alias=True)
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def assert_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], pattern: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    print(f"\nMATRIX {' '.join(argv[:1])}: {err}")  # shown with -s: the message of each case
    return err


def assert_nothing_lost(result: RunResult) -> None:
    store = ArtifactStore(workspace(result) / "store")
    for entry in result.manifest.entries:
        if entry.artifact:
            assert store.get(entry.artifact) is not None, f"{entry.stage} {entry.name} was lost"


# -- the recipe -------------------------------------------------------------------------------------------------

RECIPES = {
    "unknown key": ("calibraton: {size: 10}\n", r"r\.yaml: unknown key 'calibraton'.*allowed keys"),
    "wrong type": ("validate: {iterations: many}\n", r"'validate\.iterations': .*integer"),
    "negative temperature": ("distill: {temperature: -2}\n", r"'distill\.temperature': .*greater than 0"),
    "prune ratio >= 1": ("prune: {ratios: {layer1.conv1: 1.0}}\n", r"a prune ratio must be in \[0, 1\)"),
    "missing file": ("model: {factory: 'factories:tiny_cnn', checkpoint: gone.pt}\n", r"'model\.checkpoint': file not found.*gone\.pt"),
    "not YAML": ("data: [\n", r"r\.yaml: not valid YAML at line"),
    "not a mapping": ("- 1\n", r"a recipe is a mapping"),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_bad_recipe(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, pattern = RECIPES[case]
    (tmp_path / "r.yaml").write_text(text)
    assert_one_line(capsys, ["run", str(tmp_path / "r.yaml")], pattern)


def test_missing_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line(capsys, ["run", str(tmp_path / "nowhere.yaml")], r"nowhere\.yaml")


# -- the model --------------------------------------------------------------------------------------------------

def _other_architecture(path: Path) -> None:
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)


def _pickled_object(path: Path) -> None:
    torch.save({"model": Pickled()}, path)


def _not_a_checkpoint(path: Path) -> None:
    path.write_text("these are not weights")


CHECKPOINTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "another architecture": (_other_architecture, r"ckpt\.pt: checkpoint is for another architecture than ResNetSmall: "
                                                  r"missing stem\.0\.weight, .*; unexpected weight, bias$"),
    "not weights-only": (_pickled_object, r"ckpt\.pt: not a weights-only checkpoint, refused by torch\.load\(weights_only=True\): "
                                          r"Unsupported global: GLOBAL test_bad_inputs\.Pickled was not an allowed global by default; "
                                          r"save the model.s state_dict instead$"),
    "not a checkpoint": (_not_a_checkpoint, r"ckpt\.pt: cannot read checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_bad_checkpoint(case: str, built: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write, pattern = CHECKPOINTS[case]
    write(tmp_path / "ckpt.pt")
    recipe = recipe_file(tmp_path, "r", workspace(built), model={"factory": "factories:tiny_cnn", "checkpoint": str(tmp_path / "ckpt.pt"),
                                                               "zoo": None})
    assert_one_line(capsys, ["run", str(recipe)], pattern)
    assert_nothing_lost(built)


# -- your own model's code ---------------------------------------------------------------------------------------

FACTORIES = {
    "forward raises": ("factories:picky", r"^edgeship: error: model\.factory 'factories:picky': forward failed in the model stage: "
                                          r"RuntimeError: this network was exported for batches of at most 2$"),
    "constructor raises": ("factories:explode", r"model\.factory 'factories:explode': building the model failed: "
                                                r"ValueError: config file netlib\.yaml not found$"),
    "package imports what is missing": ("thirdparty.nets:build", r"'model\.factory': cannot import 'thirdparty\.nets:build': "
                                        r"thirdparty\.nets \(or its package\) imports 'pytorch_lightning', which is not installed; "
                                        r"install it, or name the file to skip the package's imports: "
                                        r"factory: .*thirdparty/nets\.py:build$"),
    "file not found": ("nets/absent.py:build", r"'model\.factory': file not found: .*nets/absent\.py$"),
}


@pytest.mark.parametrize("case", sorted(FACTORIES))
def test_bad_factory(case: str, built: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "thirdparty"
    package.mkdir()
    (package / "__init__.py").write_text("from thirdparty.training import fit\n")
    (package / "training.py").write_text("import pytorch_lightning\n")
    (package / "nets.py").write_text("import torch\n\n\ndef build():\n"
                                     "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    factory, pattern = FACTORIES[case]
    recipe = recipe_file(tmp_path, "r", workspace(built), model={"factory": factory, "zoo": None, "train": {"epochs": 1}})
    assert_one_line(capsys, ["run", str(recipe)], pattern)
    assert_nothing_lost(built)


# -- calibration data -------------------------------------------------------------------------------------------

def _array(values: np.ndarray) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        np.save(folder / "cal.npy", values)
    return write


def _unreadable_image(folder: Path) -> None:
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _nothing(folder: Path) -> None:
    (folder / "notes.txt").write_text("no samples here")


SAMPLE = np.zeros((4, 1, 28, 28), np.float32)
CALIBRATION: dict[str, tuple[Callable[[Path], None], str]] = {
    "NaN": (_array(np.where(np.arange(SAMPLE.size).reshape(SAMPLE.shape) == 5, np.nan, SAMPLE)),
            r"cal: calibration data contains NaN or inf \(1 NaN, 0 inf; first in sample 0\); expected finite values"),
    "inf": (_array(np.full_like(SAMPLE, np.inf)), r"cal: calibration data contains NaN or inf \(0 NaN, 3136 inf; first in sample 0\)"),
    "wrong shape": (_array(np.zeros((4, 3, 32, 32), np.float32)), r"cal\.npy: float samples must have shape \(N, 1, 28, 28\)"),
    "wrong dtype": (_array(np.zeros((4, 28, 28), np.int32)), r"cal\.npy: expected uint8 images or float32 model inputs, got dtype int32"),
    "empty set": (_nothing, r"cal: no images .* or arrays \(\.npy, \.npz\) found"),
    "unreadable image": (_unreadable_image, r"photo\.png: cannot read image"),
}


@needs_fashion_mnist
@pytest.mark.parametrize("case", sorted(CALIBRATION))
def test_bad_calibration_data(case: str, built: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write, pattern = CALIBRATION[case]
    (tmp_path / "cal").mkdir()
    write(tmp_path / "cal")
    recipe = recipe_file(tmp_path, "r", workspace(built), calibration={"source": str(tmp_path / "cal"), "size": 200})
    assert_one_line(capsys, ["run", str(recipe)], pattern)
    assert_nothing_lost(built)


# -- engines given to `edgeship validate` ------------------------------------------------------------------------

def _truncated_copy(name: str) -> Callable[[RunResult, Path], Path]:
    """A copy of the run's ``name`` engine folder whose main file lost its second half."""
    def make(result: RunResult, folder: Path) -> Path:
        import shutil

        entry = next(e for e in result.manifest.entries if (e.stage, e.name) == ("build", name))
        source = Path(entry.path)
        shutil.copytree(source.parent, folder / "engine", ignore=shutil.ignore_patterns("artifact.json"))
        target = folder / "engine" / source.name
        target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        return target
    return make


def _text_as_onnx(result: RunResult, folder: Path) -> Path:
    (folder / "model.onnx").write_text("this is a README, not a model")
    return folder / "model.onnx"


ENGINES: dict[str, tuple[Callable[[RunResult, Path], Path], str]] = {
    "truncated ONNX engine": (_truncated_copy("onnxruntime/int8"), r"model\.int8\.onnx: not a readable ONNX model"),
    "non-ONNX file as a model": (_text_as_onnx, r"model\.onnx: not a readable ONNX model"),
    "truncated OpenVINO IR": (_truncated_copy("openvino/fp32"), r"model\.xml: cannot be loaded as a openvino engine \(truncated or "
                                                                 r"not one\?\): \S"),
    "truncated TFLite engine": (_truncated_copy("tflite/fp32"), r"model\.fp32\.tflite: cannot be loaded as a tflite engine "
                                                                r"\(truncated or not one\?\): The model is not a valid Flatbuffer buffer"),
}


@pytest.mark.parametrize("case", sorted(ENGINES))
def test_bad_engine_file(case: str, built: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, pattern = ENGINES[case]
    engine = make(built, tmp_path)
    recipe = recipe_file(tmp_path, "r", workspace(built))
    assert_one_line(capsys, ["validate", str(engine), "--recipe", str(recipe)], pattern)
    assert_nothing_lost(built)


# -- where the output goes --------------------------------------------------------------------------------------

def test_output_folder_not_writable(built: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    recipe = recipe_file(tmp_path, "r", workspace(built), reports=str(blocker / "reports"))
    assert_one_line(capsys, ["run", str(recipe)], r"'reports': cannot create folder .*file/reports")
    assert_nothing_lost(built)


def test_full_disk_during_an_engine_write(built: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeship.backends.onnxruntime as ort_backend

    def full(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(ort_backend.shutil, "copyfile", full)
    recipe = recipe_file(tmp_path, "r", workspace(built))
    err = assert_one_line(capsys, ["run", str(recipe), "--force", "build"],
                          r"build onnxruntime/fp32: the disk refused a write \(No space left on device: .*model\.onnx\); free space and "
                          r"rerun: every finished artifact is kept in ")
    assert "store" in err
    assert_nothing_lost(built)
    assert not any((workspace(built) / "store" / "tmp").iterdir()), "no half-written engine is left behind"
    monkeypatch.undo()
    console = Console(record=True, width=200)
    rerun = run(tiny_recipe(workspace(built)), console=console)
    assert "↺ build: onnxruntime/fp32" in console.export_text() and rerun.exit_code == built.exit_code


# -- an op a backend cannot convert -----------------------------------------------------------------------------

def test_an_op_one_backend_cannot_convert_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, model={"factory": "factories:determinant", "train": {"epochs": 1}},
                         backends={"onnxruntime": {"precisions": ["fp32"]}, "openvino": {"precisions": ["fp32"]},
                                   "tflite": {"precisions": ["fp32"]}, "tensorrt": {"enabled": False}})
    result = run(recipe, console=Console(quiet=True))
    engines = {e["name"]: e for e in result.report["engines"]}
    assert engines["onnxruntime/fp32"]["status"] == "ok" and engines["onnxruntime/fp32"]["verdict"] != "failed"
    assert engines["openvino/fp32"]["status"] == "failed"
    assert "No conversion rule found for operations: Det" in engines["openvino/fp32"]["reason"], engines["openvino/fp32"]["reason"]
    assert engines["tflite/fp32"]["status"] == "failed" and "MatrixDeterminant" in engines["tflite/fp32"]["reason"]
    print("\n".join(f"{name}: {row['status']}: {row['reason']}" for name, row in engines.items()))
    assert result.exit_code == 1, "the run finished and reported; a required engine was not built"
