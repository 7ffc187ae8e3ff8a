"""``benchmarks/prune_importance.py`` on the label-free token encoder of tests/pipeline/test_label_free.py: each
importance is scored at each ratio on the validation split, and cutting more never scores as if nothing were cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_module


def test_each_importance_is_scored_at_each_ratio_on_validation(tmp_path: Path) -> None:
    tokens = load_module("tests/pipeline/test_label_free.py")
    recipe = tokens.write_recipe(tokens.write_folder(tmp_path))
    benchmark = load_module("benchmarks/prune_importance.py")
    measure, rows = benchmark.compare(recipe, ratios=[0.25, 0.75], importances=["l1", "activation"], val=64, batches=2)
    assert measure == "cosine" and [row["ratio"] for row in rows] == [0.25, 0.75]
    assert rows[0]["macs_kept"] > rows[1]["macs_kept"]
    for row in rows:
        assert 0 < row["l1"] < 1 and 0 < row["activation"] < 1
        assert row["l1"] != pytest.approx(row["activation"], abs=1e-9), "the two rankings cut other channels"


def test_a_recipe_without_declared_inputs_is_refused_in_one_line(tmp_path: Path) -> None:
    benchmark = load_module("benchmarks/prune_importance.py")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nname: r\n")
    with pytest.raises(SystemExit, match="model.inputs"):
        benchmark.compare(recipe, ratios=[0.5], importances=["l1"], val=8, batches=1)
