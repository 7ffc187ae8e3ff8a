from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeship.errors import RecipeError
from edgeship.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = "data: {dataset: sample_photos, preprocessing: {resize: [224, 224], color: rgb}}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_bundled_default_matches_builtin_defaults() -> None:
    assert load_recipe(ROOT / "recipes" / "default.yaml") == Recipe()


def test_every_bundled_recipe_loads() -> None:
    for path in (ROOT / "recipes").glob("*.yaml"):
        assert load_recipe(path).name == path.stem


def test_typo_names_key_allowed_keys_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "calibraton:\n  size: 10\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "'calibraton'" in message
    assert "allowed keys:" in message and "calibration" in message


def test_nested_typo_lists_that_sections_keys(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"unknown key 'calibraton_method' in 'backends.onnxruntime'; allowed keys: .*calibration_method"):
        load_recipe(write(tmp_path, "backends:\n  onnxruntime:\n    calibraton_method: entropy\n"))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("validate: {iterations: many}", r"'validate.iterations': .*integer.*'many'"),
        ("model: {train: {epochs: -1}}", r"'model.train.epochs': .*greater than 0"),
        ("backends: {onnxruntime: {precisions: [fp64]}}", r"'backends.onnxruntime.precisions.0': .*'fp32', 'fp16' or 'int8'"),
        ("model: {pretrained: resnet9000}", r"unknown pretrained model 'resnet9000'; known: efficientnet_lite0"),
        ("model: {onnx: m.onnx, inputs: [{name: x, shape: [batch, 3]}]}", r"inputs and outputs declare a factory model's tensors"),
        ("task: generic\nmodel: {factory: 'a.b:c', inputs: [{name: x, shape: [4, 3]}]}", r"the first dimension is the batch"),
        ("task: generic\nmodel: {factory: 'a.b:c', inputs: [{name: x, shape: [b]}, {name: x, shape: [b]}]}", r"inputs: 'x' appears twice"),
        ("model: {factory: 'a.b:c', inputs: [{name: x, shape: [batch, 3]}]}", r"model.inputs: a model with declared inputs is judged by"),
        ("task: generic\nmodel: {factory: 'a.b:c', inputs: [{name: x, shape: [b, 3]}]}\nprune: {importance: taylor}",
         r"prune.importance: taylor ranks channels by the gradients of a loss, and a model without labels"),
        ("task: generic\nmodel: {factory: 'a.b:c', inputs: [{name: x, shape: [b, 3]}]}\ndistill: {objective: soft}",
         r"distill.objective: soft matches class probabilities, and a model with declared inputs is judged by its outputs"),
        ("task: generic\nmodel: {factory: 'a.b:c', inputs: [{name: x, shape: [b, 3]}]}\ndistill: {ablation: true}",
         r"distill.ablation: the hard-label fine-tune needs labels"),
        ("backends: {onnxruntime: {mode: dynamic, keep_float: 2}}", r"keep_float shapes a static INT8 build; mode: dynamic"),
        ("backends: {onnxruntime: {weight_rounding: gptq, per_channel: false}}",
         r"weight_rounding: gptq rounds each output channel on its own scale, and per_channel: false"),
        ("backends: {openvino: {model_type: bert}}", r"'backends.openvino.model_type'"),
        ("model: {onnx: net.pt}", r"'model': onnx: expected a .onnx file or 'package://<package>/<file>.onnx'"),
        ("data: {dataset: arrays}", r"'data': dataset arrays needs path"),
        ("data: {path: x.npz}", r"'data': path is the .npz of dataset arrays; dataset 'fashion_mnist' does not read it"),
        ("gates: {min_cosine: {}}", r"'gates.min_cosine': give one limit, or one per output name"),
        ("model: {pretrained: efficientnet_lite0, zoo: resnet_small}",
         r"give one of zoo, pretrained, factory or onnx, not zoo and pretrained"),
        ("data: {dataset: sample_photos}", r"dataset sample_photos needs preprocessing.resize"),
        ("data: {extra_eval_photos: opencv-doc}", r"'data': extra_eval_photos widens dataset sample_photos's evaluation split"),
        ("data: {dataset: sample_photos, extra_eval_photos: wider, preprocessing: {resize: [8, 8]}}",
         r"'data.extra_eval_photos'"),
        (PHOTOS + "model: {zoo: resnet_small}\nprune: {enabled: false}\ndistill: {enabled: false}",
         r"a zoo model without a checkpoint is trained here, and data.dataset 'sample_photos' has no labels"),
        (PHOTOS + "model: {pretrained: efficientnet_lite0}\ndistill: {enabled: false}",
         r"'recipe': prune.enabled: prune fine-tunes and scores on labelled images.*set prune.enabled: false, or use labelled "
         r"images of your own \(data.dataset: image_folder\)"),
        ("data: {dataset: image_folder}", r"dataset image_folder needs root: the folder holding train/ and test/"),
        (PHOTOS + "model: {pretrained: efficientnet_lite0}\nprune: {enabled: false}", r"set distill.enabled: false"),
        ("backends: {onnxruntime: {calibration_method: kl}}", r"'backends.onnxruntime.calibration_method'"),
        ("backends: {tflite: {weight_rounding: adaround}}", r"'backends.tflite.weight_rounding': .*'nearest' or 'gptq'.*adaround"),
        ("model: {zoo: nope}", r"unknown zoo model 'nope'"),
        ("model: {factory: no_colon}", r"package.module:function"),
        ("prune: {keep_macs: 0}", r"'prune.keep_macs': .*greater than 0"),
        ("prune: {ratios: {layer1.conv1: 1.0}}", r"a prune ratio must be in \[0, 1\)"),
        ("prune: {sensitivity: {ratios: [0.5, 1.2]}}", r"strictly between 0 and 1"),
        ("[1, 2]", r"a recipe is a mapping"),
        ("data: [", r"not valid YAML at line"),
        ("model: {factory: 'a.b:c', checkpoint: missing.pt}", r"'model.checkpoint': file not found"),
        ("distill: {temperature: -2}", r"'distill.temperature': .*greater than 0.*-2"),
        ("distill: {alpha: 1.5}", r"'distill.alpha': .*less than or equal to 1"),
        ("distill: {objective: kl}", r"'distill.objective': .*'soft', 'soft_hard', 'mse' or 'cosine'"),
        ("distill: {transfer: unlabeled, objective: soft_hard}",
         r"soft_hard needs labels; with transfer: unlabeled use soft, mse or cosine"),
        ("distill: {transfer_source: imgs}", r"transfer_source is unlabeled data: set transfer: unlabeled"),
        ("distill: {transfer: unlabeled, objective: soft, transfer_source: nowhere}", r"'distill.transfer_source': no such file"),
        ("distill: {student: {factory: 'a.b:c', checkpoint: gone.pt}}", r"'distill.student.checkpoint': file not found"),
        ("distill: {hints: [{studnet: layer2}]}", r"unknown key 'studnet' in 'distill.hints.0'; allowed keys: student, teacher"),
        ("devices: [{name: local, url: 'http://h:1', token_env: T}]", r"'devices.0.name': 'local' is the host itself"),
        ("devices: [{name: a, url: 'http://h:1', token_env: T}, {name: a, url: 'http://g:1', token_env: T}]",
         r"device name 'a' appears twice"),
        ("devices: [{name: a, url: 'ftp://h', token_env: T}]", r"'devices.0.url'"),
        ("devices: [{name: a, url: 'http://h:1', token_env: T, backends: [tensorflow]}]", r"unknown backend 'tensorflow'"),
        ("devices: [{name: a, url: 'http://h:1', token_env: T, retries: -1}]", r"'devices.0.retries': .*greater than or equal to 0"),
        ("devices: [{name: a, url: 'http://h:1'}]", r"'devices.0.token_env'"),
    ],
)
def test_bad_recipes_give_one_line_errors(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(RecipeError, match=pattern) as err:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_input_paths_are_relative_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(b"x")
    recipe = load_recipe(write(tmp_path, "model: {factory: 'pkg.mod:make', checkpoint: weights.pt}\n"))
    assert recipe.model.checkpoint == tmp_path / "weights.pt"
    assert recipe.model.zoo is None


def test_tensorrt_settings_are_checked_and_the_timing_cache_is_relative_to_the_recipe(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "backends:\n  tensorrt: {timing_cache: cache/l4.cache, batch: {max: 8}}\n"))
    assert recipe.backends.tensorrt.timing_cache == tmp_path / "cache" / "l4.cache"
    assert recipe.backends.tensorrt.batch.max == 8 and recipe.backends.tensorrt.precisions == ("fp16", "int8")
    for bad, key in (("batch: {min: 4, opt: 2}", "batch"), ("optimization_level: 6", "optimization_level"),
                     ("calibration_method: percentile", "calibration_method"), ("qdq_tool: trtexec", "qdq_tool")):
        with pytest.raises(RecipeError, match=key):
            load_recipe(write(tmp_path, f"backends:\n  tensorrt: {{{bad}}}\n"))


def test_name_defaults_to_file_stem_and_none_gives_default(tmp_path: Path) -> None:
    path = tmp_path / "my-recipe.yaml"
    path.write_text("seed: 3\n")
    assert load_recipe(path).name == "my-recipe"
    assert load_recipe(None) == Recipe()


def test_distill_input_paths_are_relative_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "unlabeled").mkdir()
    (tmp_path / "teacher.pt").write_bytes(b"x")
    recipe = load_recipe(write(tmp_path, "distill:\n  transfer: unlabeled\n  objective: soft\n  transfer_source: unlabeled\n"
                                         "  teacher: {factory: 'pkg.mod:make', checkpoint: teacher.pt}\n"))
    assert recipe.distill.transfer_source == tmp_path / "unlabeled"
    assert recipe.distill.teacher is not None and recipe.distill.teacher.checkpoint == tmp_path / "teacher.pt"


@pytest.mark.parametrize("name", ["../escape", "/etc/cron.d/x", "a/b", "..\\x", "x\n"])
def test_a_recipe_name_cannot_leave_the_reports_folder(name: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"'name'"):
        load_recipe(write(tmp_path, yaml.safe_dump({"name": name})))


def test_run_folders_stay_inside_reports(tmp_path: Path) -> None:
    from edgeship.pipeline.run import _new_run_dir

    assert _new_run_dir(tmp_path, "..").parent == tmp_path, "'..-<stamp>' is a plain folder name"
    with pytest.raises(RecipeError, match=r"would put the run folder outside"):
        _new_run_dir(tmp_path, "../../elsewhere")


def test_unlabeled_transfer_without_an_objective_takes_the_defaults_soft_half(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "distill: {transfer: unlabeled}\n"))
    assert recipe.distill.objective == "soft"
