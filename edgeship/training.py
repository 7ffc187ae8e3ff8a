"""edgeship's one training loop: the teacher, the prune fine-tunes and distillation all train through ``fit``.

``fit`` trains any module whose ``forward(x, labels)`` returns ``(loss, logits)`` (the
distiller, or cross-entropy on labels: ``HardLabels``), with validation each epoch. After every
epoch it writes a checkpoint atomically; started again with the same checkpoint path, it continues
from the last completed epoch and ends with the same weights as an uninterrupted run. A NaN or inf
loss stops training with a clear error and leaves the last good checkpoint in place. ``Loop`` holds
what differs between the callers (schedule, sample order, which weights are kept, an extra loss term);
``train_classifier`` is the classifier's recipe of it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from edgeship.artifacts import write_atomic
from edgeship.data import Split, preprocess
from edgeship.errors import StageError
from edgeship.progress import progress_bar
from edgeship.tensors import standard_strides
from edgeship.zoo.train import accuracy, backward_guard, predict, seed_everything

if TYPE_CHECKING:  # the recipe sits above this module: its sections are only annotations here
    from edgeship.recipe import Preprocessing, TrainConfig


class Batches(Protocol):
    """What ``fit`` trains on: a length and batches of (inputs, labels or ``None``) by sample index."""

    labels: np.ndarray | None

    def __len__(self) -> int: ...

    def batch(self, idx: np.ndarray) -> tuple[Any, torch.Tensor | None]: ...

    def arrange(self, order: np.ndarray, batch_size: int) -> np.ndarray: ...


@dataclass(frozen=True)
class TransferSet:
    """Training inputs with labels (or ``None``): raw uint8 images preprocessed per batch, or ready float32 NCHW inputs."""

    inputs: np.ndarray
    labels: np.ndarray | None
    preprocessing: Preprocessing | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.inputs):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.inputs[idx] if self.preprocessing is None else preprocess(self.inputs[idx], self.preprocessing)
        y = None if self.labels is None else torch.from_numpy(self.labels[idx])
        return torch.from_numpy(standard_strides(np.asarray(x, dtype=np.float32))), y

    def arrange(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        return order


@dataclass(frozen=True)
class ArrayBatches:
    """Named input arrays without labels (token ids, masks, features), batched as a tuple of tensors in the model's
    input order.

    ``padding`` names a right-padded mask (an attention mask): each epoch's order is then grouped by length (Hugging
    Face's ``group_by_length``: windows of 50 batches sorted longest first) and every batch of the ``positions`` arrays is
    cut to its longest row, so training does not pay for padding that reaches no output.
    """

    arrays: Mapping[str, np.ndarray]
    labels: None = None
    padding: str | None = None
    positions: tuple[str, ...] = ()

    GROUP: ClassVar[int] = 50  # batches per length-sorted window: long enough to group, short enough to stay shuffled
    lengths: np.ndarray | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.padding is not None:
            object.__setattr__(self, "lengths", np.count_nonzero(self.arrays[self.padding], axis=1))

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batch(self, idx: np.ndarray) -> tuple[tuple[torch.Tensor, ...], None]:
        longest = None if self.lengths is None else int(self.lengths[idx].max(initial=1))
        return tuple(torch.from_numpy(standard_strides(np.asarray(array[idx][:, :longest] if name in self.positions
                                                                  else array[idx])))
                     for name, array in self.arrays.items()), None

    def arrange(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        if self.lengths is None:
            return order
        lengths, window = self.lengths, batch_size * self.GROUP
        return np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                               for chunk in np.split(order, range(window, len(order), window))])


def right_padded(mask: np.ndarray) -> bool:
    """Every row is its real positions then padding: cutting the trailing positions drops padding only."""
    marked = mask != 0
    return bool((marked == (np.arange(mask.shape[1]) < marked.sum(axis=1, keepdims=True))).all())


def batch_size(x: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    return len(x[0]) if isinstance(x, tuple) else len(x)


class HardLabels(nn.Module):
    """Plain supervised training in ``fit``'s shape: cross-entropy on the labels (with ``label_smoothing``)."""

    def __init__(self, student: nn.Module, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.student = student
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if labels is None:
            raise ValueError("hard-label training needs labels")
        logits = self.student(x)
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing), logits


@dataclass(frozen=True)
class Loop:
    """How ``fit`` trains beyond the recipe's ``TrainConfig``. The defaults are distillation's; ``CLASSIFIER`` is the
    teacher's and the prune fine-tunes'."""

    schedule: Literal["cosine", "onecycle"] = "cosine"  # onecycle: 15% warm-up to cfg.lr, then cosine annealing
    keep: Literal["best", "last"] = "best"  # the weights the module ends with: its best validation epoch's, or the last
    order: Literal["per_epoch", "stream"] = "per_epoch"  # each epoch's sample order from (seed, epoch), or one seeded stream
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None  # added to every step's loss, given the student (BN-γ L1)


CLASSIFIER = Loop(schedule="onecycle", keep="last", order="stream")


@dataclass
class FitHistory:
    """Per-epoch curves and how training ended."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float | None] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    resumed_from_epoch: int = 0

    @property
    def best_val_accuracy(self) -> float | None:
        return self.val_accuracy[self.best_epoch - 1] if self.best_epoch else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "best_val_accuracy": self.best_val_accuracy}


def fit(module: nn.Module, data: Batches, evaluate: Callable[[], float], cfg: TrainConfig, *, seed: int, console: Console,
        label: str, patience: int | None = None, checkpoint: Path | None = None, stage: str = "train",
        on_epoch: Callable[[int], None] | None = None, loop: Loop = Loop(), measure: str = "top-1") -> FitHistory:  # noqa: B008 - frozen
    """Train ``module`` in place; it ends with the weights ``loop.keep`` names (by default its best validation epoch's).

    ``evaluate`` returns the validation score of the current weights (top-1, or fidelity to the teacher's outputs). ``checkpoint``
    (a file path) makes the run resumable. ``on_epoch(epoch)`` is called after each
    saved epoch (tests use it to interrupt a run). ``measure`` names the score in progress lines.
    """
    seed_everything(seed)
    stream = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    optimizer = make_optimizer(module, cfg)
    schedule = _schedule(loop, optimizer, cfg, cfg.epochs * steps_per_epoch)
    keep_best = loop.keep == "best"
    history, best_state, bad_epochs = FitHistory(), _copy_state(module) if keep_best else None, 0
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        saved = _load_checkpoint(checkpoint, stage)
        module.load_state_dict(saved["module"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["torch_rng"])
        if "order_rng" in saved:  # a checkpoint of a per-epoch order has no use for it
            stream.bit_generator.state = json.loads(saved["order_rng"])
        best_state, bad_epochs, start = saved["best_state"], saved["bad_epochs"], saved["epoch"]
        history = FitHistory(**saved["history"])
        history.resumed_from_epoch = start
        console.print(f"{label}: resuming after epoch {start}/{cfg.epochs} from {checkpoint}")
    student = getattr(module, "student", module)
    with backward_guard(student, console), progress_bar(console) as bar:
        task = bar.add_task(label, total=cfg.epochs * steps_per_epoch, completed=start * steps_per_epoch, info="")
        for epoch in range(start, cfg.epochs):
            if history.stopped_early:
                break
            module.train()
            order = (stream if loop.order == "stream" else np.random.default_rng([seed, epoch])).permutation(len(data))
            order = data.arrange(order, cfg.batch_size)
            loss_sum, correct, labelled, seen = 0.0, 0, 0, 0
            for step in range(steps_per_epoch):
                x, y = data.batch(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
                loss, logits = module(x, y)
                if loop.extra_loss is not None:
                    loss = loss + loop.extra_loss(student)
                if not torch.isfinite(loss):
                    raise StageError(stage, _diverged(label, float(loss.item()), epoch, step, checkpoint, start_epoch=epoch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * batch_size(x)
                seen += batch_size(x)
                if y is not None:
                    correct += int((logits.detach().argmax(1) == y).sum())
                    labelled += len(y)
                accuracy = f" acc {correct / labelled:.3f}" if labelled else ""
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.4f}{accuracy}")
            history.train_loss.append(loss_sum / seen)
            history.train_accuracy.append(correct / labelled if labelled else None)
            history.val_accuracy.append(evaluate())
            if history.best_epoch == 0 or history.val_accuracy[-1] > history.val_accuracy[history.best_epoch - 1]:
                history.best_epoch, best_state, bad_epochs = epoch + 1, _copy_state(module) if keep_best else None, 0
            else:
                bad_epochs += 1
                history.stopped_early = patience is not None and bad_epochs >= patience and epoch + 1 < cfg.epochs
            summary = (f"epoch {epoch + 1}/{cfg.epochs} loss {history.train_loss[-1]:.4f} val {measure} {history.val_accuracy[-1]:.4f}"
                       + (f" (best epoch {history.best_epoch})" if history.best_epoch != epoch + 1 else " (best)")
                       + (" — early stop" if history.stopped_early else ""))
            bar.update(task, info=summary)
            if not console.is_terminal:  # a log gets one line per epoch instead of a live bar
                console.print(f"{label}: {summary}")
            if checkpoint is not None:
                _save_checkpoint(checkpoint, {"epoch": epoch + 1, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                                              "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
                                              "order_rng": json.dumps(stream.bit_generator.state),
                                              "best_state": best_state, "bad_epochs": bad_epochs, "history": asdict(history)})
            if on_epoch is not None:
                on_epoch(epoch + 1)
        bar.update(task, completed=cfg.epochs * steps_per_epoch)
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history


def train_classifier(model: nn.Module, train: Split, val: Split, p: Preprocessing, cfg: TrainConfig, *, seed: int,
                     console: Console, label: str = "train teacher", penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                     checkpoint: Path | None = None) -> FitHistory:
    """Train a classifier in place on labelled raw images: cross-entropy (+ ``penalty``), one-cycle schedule, the last
    epoch's weights kept (``CLASSIFIER``); resumable with a ``checkpoint`` path."""
    return fit(HardLabels(model, label_smoothing=cfg.label_smoothing), TransferSet(train.images, train.labels, p),
               lambda: accuracy(predict(model, val.images, p), val.labels), cfg, seed=seed, console=console, label=label,
               checkpoint=checkpoint, loop=replace(CLASSIFIER, extra_loss=penalty))


def _schedule(loop: Loop, optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if loop.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.15, anneal_strategy="cos")
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def _load_checkpoint(path: Path, stage: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, never trusted
        raise StageError(stage, f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); delete it to start "
                                  "over") from None


def _diverged(label: str, value: float, epoch: int, step: int, checkpoint: Path | None, *, start_epoch: int) -> str:
    if checkpoint is not None and checkpoint.is_file():
        kept = f"the last good checkpoint (after epoch {start_epoch}) is kept at {checkpoint}"
    else:
        kept = "no epoch had completed, so there is no checkpoint to keep"
    return (f"{label}: the loss became {value} at epoch {epoch + 1}, step {step + 1}; training stopped and {kept}. "
            "Lower the learning rate or the temperature")
