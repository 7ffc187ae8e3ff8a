"""The sweep's space: shorthand, every value checked against the recipe, the objective's engine, the recipe's own point."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeship.errors import RecipeError
from edgeship.recipe import read_recipe_document, recipe_from_document
from edgeship.sweep.space import Choices, Range, load_space, optuna_distributions, recipe_point, with_values

RECIPE = {"name": "s", "backends": {"openvino": {"enabled": False}, "tflite": {"enabled": False}, "tensorrt": {"enabled": False}}}


def _files(tmp_path: Path, space: object) -> tuple[Path, Path, dict]:
    recipe, space_file = tmp_path / "r.yaml", tmp_path / "space.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    space_file.write_text(yaml.safe_dump(space, sort_keys=False) if not isinstance(space, str) else space)
    return recipe, space_file, read_recipe_document(recipe)


def test_shorthand_ranges_choices_and_the_default_objective(tmp_path: Path) -> None:
    recipe, path, base = _files(tmp_path, {"parameters": {"prune.keep_macs": [0.2, 0.6], "prune.steps": [1, 3],
                                                          "prune.importance": ["l1", "taylor"], "validate.batch_size": {"choices": [1, 8]},
                                                          "distill.temperature": {"low": 1.0, "high": 8.0, "log": True}}})
    space = load_space(path, base, recipe)
    keep, steps, importance, batch, temperature = space.parameters.values()
    assert keep == Range(low=0.2, high=0.6) and not keep.integer
    assert steps.integer and steps.corners() == [1, 3]
    assert importance == Choices(choices=["l1", "taylor"]) and batch == Choices(choices=[1, 8])
    assert temperature.log and not temperature.integer
    assert space.target(recipe_from_document(base, recipe)) == "onnxruntime/int8"  # the first INT8 engine
    kinds = {k: type(d).__name__ for k, d in optuna_distributions(space).items()}
    assert kinds == {"prune.keep_macs": "FloatDistribution", "prune.steps": "IntDistribution",
                     "prune.importance": "CategoricalDistribution", "validate.batch_size": "CategoricalDistribution",
                     "distill.temperature": "FloatDistribution"}
    # the recipe's own values are the sweep's first point when the space holds them
    assert recipe_point(space, recipe_from_document(base, recipe)) == {"prune.keep_macs": 0.25, "prune.steps": 2, "prune.importance": "l1",
                                                                      "validate.batch_size": 1, "distill.temperature": 2.0}


@pytest.mark.parametrize(("space", "message"), [
    ({"parameters": {"prune.keep_macz": [0.2, 0.6]}},
     "'prune.keep_macz': 0.2 does not make a valid recipe: unknown key 'keep_macz' in 'prune'"),
    ({"parameters": {"prune.importance": ["l1", "l2"]}}, "'prune.importance': 'l2' does not make a valid recipe"),
    ({"parameters": {"prune.keep_macs": [0.6, 0.2]}}, "'parameters.prune.keep_macs': low (0.6) must be below high (0.2)"),
    ({"parameters": {"name.x": [1, 2]}}, "'name.x': 'name' is not a section"),
    ({"parameters": {}}, "'parameters'"),
    ({"parameters": {"seed": [0, 3]}, "objective": {"engine": "openvino/int8"}},
     "objective.engine: 'openvino/int8' is not an engine the recipe builds"),
    ({"parameters": {"seed": [0, 3]}, "budget": 3}, "'budget': Extra inputs are not permitted"),
    ("- a list", "a space is a mapping"),
    ({"parameters": {"validate.split": ["evaluation", "validation"]}}, "'validate.split': not a sweep parameter: trials are scored on"),
    ({"parameters": {"validate.together_rounds": [0, 10]}}, "'validate.together_rounds': not a sweep parameter: trials time each"),
])
def test_a_bad_space_is_one_line_naming_the_key(tmp_path: Path, space: object, message: str) -> None:
    recipe, path, base = _files(tmp_path, space)
    with pytest.raises(RecipeError) as caught:
        load_space(path, base, recipe)
    text = str(caught.value)
    assert message in text and "\n" not in text and text.startswith(str(path))


def test_values_set_dotted_keys_on_a_copy() -> None:
    base = {"prune": {"keep_macs": 0.25}, "backends": None}
    changed = with_values(base, {"prune.keep_macs": 0.5, "backends.onnxruntime.calibration_method": "entropy"})
    assert changed == {"prune": {"keep_macs": 0.5}, "backends": {"onnxruntime": {"calibration_method": "entropy"}}}
    assert base == {"prune": {"keep_macs": 0.25}, "backends": None}


@pytest.mark.parametrize(("args", "message"), [
    (["sweep", "RECIPE"], "give a RECIPE and --space SPACE.yaml, or --resume SWEEP_DIR"),
    (["sweep", "RECIPE", "--space", "SPACE", "--resume", "DIR"], "continues with the recipe and space it started with"),
    (["sweep", "RECIPE", "--space", "SPACE", "--trials", "0"], "--trials: at least 1"),
    (["sweep", "--resume", "DIR"], "not a sweep folder (no sweep-config.json)"),
    (["sweep", "RECIPE", "--space", "SPACE"], "'prune.importance': 'l2' does not make a valid recipe"),
])
def test_the_command_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    from edgeship.cli import main

    recipe, space, _ = _files(tmp_path, {"parameters": {"prune.importance": ["l1", "l2"]}})
    (tmp_path / "DIR").mkdir()
    args = [{"RECIPE": str(recipe), "SPACE": str(space), "DIR": str(tmp_path / "DIR")}.get(a, a) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "sweeps").exists() or not any((tmp_path / "sweeps").iterdir())


SPACES = Path(__file__).resolve().parents[2] / "recipes" / "spaces"


def test_the_spaces_the_docs_name_are_bundled() -> None:
    assert {p.name for p in SPACES.glob("*.yaml")} >= {"default.yaml", "default_16.yaml"}


def _recipe_of(space_file: Path) -> Path:
    """spaces/default.yaml and spaces/default_16.yaml both sweep recipes/default.yaml."""
    recipes = {p.stem: p for p in SPACES.parent.glob("*.yaml")}
    return max((p for stem, p in recipes.items() if space_file.stem == stem or space_file.stem.startswith(f"{stem}_")),
               key=lambda p: len(p.stem))


@pytest.mark.parametrize("space_file", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_space_fits_its_recipe_and_holds_its_values(space_file: Path) -> None:
    """The spaces the README and docs/sweeps.md tell users to run: each value valid on the recipe, and the recipe's own
    values among them, so the sweep's first trial is the recipe as it is."""
    recipe = _recipe_of(space_file)
    base = read_recipe_document(recipe)
    space = load_space(space_file, base, recipe)
    point = recipe_point(space, recipe_from_document(base, recipe))
    assert point is not None and set(point) == set(space.parameters)
