"""Seeded supervised training of a classifier on a ``Split``, with a rich progress bar."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.console import Console
from torch import nn

from edgeship.data import Split, preprocess
from edgeship.progress import progress_bar

if TYPE_CHECKING:  # the recipe sits above this module: its sections are only annotations here
    from edgeship.recipe import Preprocessing, TrainConfig


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, p: Preprocessing, *, batch_size: int = 500) -> np.ndarray:
    """Logits (N, classes) of ``model`` in eval mode on raw uint8 ``images``."""
    model.eval()
    out = [model(torch.from_numpy(preprocess(images[i : i + batch_size], p))).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


ONEDNN_IC_BLOCK = 8  # AVX2 channel block of oneDNN's 1x1 convolution kernels


def onednn_hazards(model: nn.Module) -> list[str]:
    """1×1 strided convolutions with fewer input channels than oneDNN's AVX2 block.

    Their backward-weights pass hangs or returns wrong gradients in oneDNN's
    ``jit_1x1:avx2`` kernel (uxlfoundation/oneDNN#6035); seen here with torch 2.13
    on a width-4 ResNet. Training such a model must not use oneDNN.
    """
    found = []
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and max(module.stride) > 1
                and module.in_channels // module.groups < ONEDNN_IC_BLOCK):
            found.append(name)
    return found


def backward_guard(model: nn.Module, console: Console) -> contextlib.AbstractContextManager[object]:
    hazards = onednn_hazards(model)
    if not hazards:
        return contextlib.nullcontext()
    console.print(f"[yellow]training without oneDNN (slower): 1×1 strided convolutions with < {ONEDNN_IC_BLOCK} input "
                  f"channels ({', '.join(hazards)}) hit oneDNN bug #6035[/yellow]")
    return _quiet_mkldnn_off()


@contextlib.contextmanager
def _quiet_mkldnn_off() -> Iterator[None]:
    with warnings.catch_warnings():  # flags() warns about Intel-GPU TF32 on every CPU build
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def train_classifier(model: nn.Module, train: Split, val: Split, p: Preprocessing, cfg: TrainConfig, *, seed: int,
                     console: Console, label: str = "train teacher",
                     penalty: Callable[[nn.Module], torch.Tensor] | None = None) -> TrainHistory:
    """Train ``model`` in place: cross-entropy (+ ``penalty``), cosine schedule, validation each epoch."""
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                           weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.15,
                                                   anneal_strategy="cos")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history = TrainHistory()
    with backward_guard(model, console), progress_bar(console) as bar:
        task = bar.add_task(label, total=total, info="")
        for epoch in range(cfg.epochs):
            model.train()
            order = rng.permutation(len(train))
            loss_sum, correct, seen = 0.0, 0, 0
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x = torch.from_numpy(preprocess(train.images[idx], p))
                y = torch.from_numpy(train.labels[idx])
                logits = model(x)
                loss = loss_fn(logits, y)
                if penalty is not None:
                    loss = loss + penalty(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(idx)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
            history.train_loss.append(loss_sum / seen)
            history.train_accuracy.append(correct / seen)
            history.val_accuracy.append(accuracy(predict(model, val.images, p), val.labels))
            summary = f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f} val acc {history.val_accuracy[-1]:.3f}"
            bar.update(task, info=summary)
            if not console.is_terminal:  # a log gets one line per epoch instead of a live bar
                console.print(f"{label}: {summary}")
    model.eval()
    return history
