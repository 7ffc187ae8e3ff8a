"""What training a classifier needs around the loop (``edgeship.training``): seeding, prediction, accuracy, and the
oneDNN guard."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.console import Console
from torch import nn

from edgeship.data import preprocess

if TYPE_CHECKING:  # the recipe sits above this module: its sections are only annotations here
    from edgeship.recipe import Preprocessing


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
