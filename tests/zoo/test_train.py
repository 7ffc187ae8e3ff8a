from __future__ import annotations

import numpy as np
import torch
from rich.console import Console

from edgeship.data import Split
from edgeship.recipe import Preprocessing, TrainConfig
from edgeship.training import train_classifier
from edgeship.zoo import build
from edgeship.zoo.train import accuracy, predict, seed_everything


def separable(n: int, seed: int) -> Split:
    """Two classes anyone can tell apart: bright top half vs bright bottom half."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 40, (n, 12, 12)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, :6] += np.uint8(200 if label == 0 else 0)
        images[i, 6:] += np.uint8(200 if label == 1 else 0)
    return Split(images, labels.astype(np.int64))


def trained(seed: int) -> tuple[torch.nn.Module, object]:
    seed_everything(seed)
    model = build("resnet_small", in_channels=1, num_classes=2, width=4)
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=0.01, weight_decay=0.0)
    history = train_classifier(model, separable(256, 0), separable(64, 1), Preprocessing(), cfg, seed=seed, console=Console(quiet=True))
    return model, history


def test_training_learns_and_records_history() -> None:
    model, history = trained(seed=0)
    held_out = separable(128, 2)
    assert accuracy(predict(model, held_out.images, Preprocessing()), held_out.labels) >= 0.95
    assert len(history.train_loss) == 2 and history.train_loss[1] < history.train_loss[0]
    assert len(history.val_accuracy) == 2


def test_training_is_deterministic_for_a_seed() -> None:
    first, _ = trained(seed=3)
    second, _ = trained(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))


def test_onednn_hazard_detection() -> None:
    from edgeship.zoo.train import onednn_hazards

    assert onednn_hazards(build("resnet_small", in_channels=1, num_classes=10, width=4)) == ["layer2.shortcut.0"]
    assert onednn_hazards(build("resnet_small", in_channels=1, num_classes=10, width=8)) == []
