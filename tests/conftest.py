"""Shared fixtures: small recipes, a tiny exported CNN and its calibration data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeship.recipe import FASHION_MNIST_ROOT, Recipe

HAS_FASHION_MNIST = (FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file()


def tiny_recipe(tmp: Path, **overrides: object) -> Recipe:
    """A recipe that trains and runs in well under a minute on 2 cores."""
    raw: dict[str, object] = {
        "name": "tiny",
        "store": str(tmp / "store"),
        "reports": str(tmp / "reports"),
        "data": {"train_size": 3000, "val_size": 500, "eval_size": 1000},
        "calibration": {"size": 200},
        "model": {"width": 8, "train": {"epochs": 2, "optimizer": "adamw", "lr": 0.005, "weight_decay": 0.0}},
        "validate": {"warmup": 2, "iterations": 20, "min_seconds": 0.05, "threads": 1},
        "prune": {"enabled": False},  # tests that prune or distill say so
        "distill": {"enabled": False},
    }
    raw.update(overrides)
    return Recipe.model_validate(raw)


@pytest.fixture(scope="session")
def tiny_cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small ResNet (width 4) on 1×28×28, exported with a dynamic batch."""
    import torch

    from edgeship.pipeline.export import _export
    from edgeship.zoo import build

    torch.manual_seed(0)
    model = build("resnet_small", in_channels=1, num_classes=10, width=4).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    _export(model, (1, 28, 28), path, opset=18)
    return path


@pytest.fixture(scope="session")
def calibration_samples() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, 1, 28, 28)).astype(np.float32)
