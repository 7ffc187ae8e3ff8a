"""A labelled folder of one's own images (``data.dataset: image_folder``) through the whole pipeline, pruning and
distillation on: scikit-learn's digits written out as PNG files, one folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from edgeship import run

from conftest import tiny_recipe

pytestmark = pytest.mark.slow
ADAMW = {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0}


def digits_folder(root: Path) -> Path:
    """root/{train,test}/<digit>/<i>.png: the first 1,400 digits to train, the rest to test, upscaled to 16×16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
        folder = root / ("train" if i < 1400 else "test") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((16, 16), Image.NEAREST).save(folder / f"{i}.png")
    return root


def test_own_labelled_folder_runs_prune_and_distill(tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "digits")
    recipe = tiny_recipe(tmp_path, data={"dataset": "image_folder", "root": str(root), "val_size": 150},
                         calibration={"size": 100},
                         model={"width": 8, "train": {"epochs": 4, **ADAMW}},
                         prune={"enabled": True, "steps": 1, "round_to": None, "ratios": {"layer2.conv1": 0.5, "layer3.conv1": 0.5},
                                "finetune": {"epochs": 1, **ADAMW}},
                         distill={"enabled": True, "train": {"epochs": 2, **ADAMW}})
    report = run(recipe, console=Console(quiet=True)).report
    assert report["dataset"]["name"] == "image_folder" and report["dataset"]["eval"] == 1797 - 1400
    assert report["accuracy"]["basis"] == "labels"
    assert report["baseline"]["top1"] > 0.8
    assert report["prune"]["macs_kept"] < 0.9 and report["prune"]["after"]["val_top1"] > 0.5
    assert report["distill"]["top1"]["distilled"]["eval_top1"] > 0.7
    assert [engine["status"] for engine in report["engines"]] == ["ok", "ok"]
