"""Property-based tests (hypothesis): whatever a recipe file or a calibration file holds, edgeship either accepts it
or says why in a RecipeError / DataError; it never fails with anything else."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeship.data import check_samples, load_samples
from edgeship.errors import DataError, RecipeError
from edgeship.recipe import Preprocessing, Recipe, load_recipe

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEFAULT = Recipe().model_dump(mode="json", by_alias=True)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner,
                                                                                                     max_size=3)), max_leaves=8)


def leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [path for key, value in node.items() for path in leaf_paths(value, (*prefix, key))] or [prefix]
    return [prefix]


LEAVES = [path for path in leaf_paths(DEFAULT) if path and path[0] not in ("store", "reports")]


def write_and_load(text: str) -> Recipe | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            return load_recipe(path)
        except RecipeError as exc:
            message = str(exc)
            assert message.startswith(str(path)) and "\n" not in message.strip(), message
            return None


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_is_a_recipe_or_a_one_line_recipe_error(text: str) -> None:
    write_and_load(text)


@SETTINGS
@given(st.sampled_from(LEAVES), VALUES)
def test_any_value_at_any_key_is_accepted_or_named(path: tuple[str, ...], value: Any) -> None:
    raw = copy.deepcopy(DEFAULT)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    recipe = write_and_load(yaml.safe_dump(raw))
    if recipe is not None:  # accepted: it survives a round trip unchanged
        assert Recipe.model_validate(recipe.model_dump(mode="json", by_alias=True)) == recipe


@SETTINGS
@given(st.dictionaries(st.text(min_size=1, max_size=10), VALUES, min_size=1, max_size=3))
def test_unknown_keys_are_named(extra: dict[str, Any]) -> None:
    unknown = {key: value for key, value in extra.items() if key not in DEFAULT}
    recipe = write_and_load(yaml.safe_dump({**DEFAULT, **extra}))
    if unknown:
        assert recipe is None


# -- calibration files ------------------------------------------------------------------------------------------

SHAPE = (1, 8, 8)
PREPROCESSING = Preprocessing(scale=1 / 255, mean=(0.5,), std=(0.25,), color="gray")
DTYPES = st.sampled_from([np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64])
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9))


def check(samples: np.ndarray) -> None:
    """What every accepted calibration set is: float32 model inputs of the right shape, finite, non-empty."""
    assert samples.dtype == np.float32 and samples.shape[1:] == SHAPE and len(samples) > 0
    assert np.isfinite(samples).all()


@SETTINGS
@given(ARRAYS, st.sampled_from([".npy", ".npz"]))
def test_any_array_file_is_calibration_data_or_a_data_error_naming_it(array: np.ndarray, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"cal{suffix}"
        if suffix == ".npy":
            np.save(path, array)
        else:
            np.savez(path, first=array, second=array)
        try:
            samples = load_samples(path, PREPROCESSING, input_shape=SHAPE)
            check_samples(samples, str(path), SHAPE)
        except DataError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
            return
        check(samples)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".png", ".jpg", ".npy", ".npz"]))
def test_any_bytes_are_calibration_data_or_a_data_error_naming_the_file(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"sample{suffix}"
        path.write_bytes(content)
        try:
            samples = load_samples(Path(folder), PREPROCESSING.model_copy(update={"resize": (8, 8)}), input_shape=SHAPE)
            check_samples(samples, folder, SHAPE)
        except DataError as exc:
            assert folder in str(exc), str(exc)
            return
        check(samples)


@pytest.mark.parametrize("count", [1, 3])
def test_valid_uint8_images_are_preprocessed(count: int, tmp_path: Path) -> None:
    images = np.arange(count * 64, dtype=np.uint8).reshape(count, 8, 8)
    np.save(tmp_path / "cal.npy", images)
    samples = load_samples(tmp_path, PREPROCESSING, input_shape=SHAPE)
    check(samples)
    np.testing.assert_allclose(samples[:, 0], (images / 255 - 0.5) / 0.25, atol=1e-6)
