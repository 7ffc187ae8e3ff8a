"""What the compression stages train and judge on: labelled images, or a model's own outputs when there are no labels.

The prune and distill stages never look at the task: they ask a ``Workload`` for an example input, a score on the
validation split, the transfer set, a fine-tune and the export they time. ``LabelledImages`` is the image classifier's
(top-1 against labels, cross-entropy fine-tunes). ``TeacherOutputs`` serves a model with declared inputs and no labels
(token ids, masks, features): the uncompressed model's outputs are the only targets, so a score is the output fidelity
of the compressed model against them (the worst output's mean cosine, as ``gates.min_cosine`` judges engines) and a
fine-tune is distillation from them (MSE on every output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from edgeship.data import Dataset, Split, preprocess
from edgeship.errors import StageError
from edgeship.measure import fidelity, fidelity_summary, top1
from edgeship.models import call_model, example_inputs
from edgeship.pipeline.export import INPUT_NAME, _export, _export_named

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn

    from edgeship.artifacts import Artifact
    from edgeship.recipe import Preprocessing, TrainConfig
    from edgeship.tensors import Feed
    from edgeship.training import Batches


class Workload(Protocol):
    """The data side of pruning and distillation."""

    measure: ClassVar[str]  # the score's name in stage records: "top1" or "cosine"

    def example(self) -> Any:
        """The example input Torch-Pruning traces and counts MACs with (a tensor, or a tuple of tensors)."""

    def scorer(self, split: Split, limit: int | None = None) -> Callable[[nn.Module], float]:
        """``score(model)`` on the first ``limit`` samples of ``split``: higher is better, 1.0 is perfect."""

    def transfer(self, size: int | None) -> Batches:
        """The training samples a fine-tune or a distillation learns from (the first ``size``)."""

    def finetune(self, model: nn.Module, cfg: TrainConfig, *, seed: int, console: Console, label: str) -> list[float]:
        """Recover ``model`` in place after pruning; the validation score of every epoch."""

    def timing_feed(self) -> Feed:
        """One sample (batch 1) as the exported model's feed."""

    def export(self, model: nn.Module, path: Path, opset: int) -> None:
        """``model`` as ONNX with the same inputs as the pipeline's export."""

    def taylor_loss(self, model: nn.Module, index: slice) -> torch.Tensor:
        """The loss on a slice of the training split whose gradients Taylor importance reads (weight × gradient)."""

    def feed(self, model: nn.Module, index: slice) -> None:
        """Run ``model`` on a slice of the training split, without gradients: activation importance records what each
        layer reads."""


class LabelledImages:
    """An image classifier with labelled images: top-1 against labels; fine-tunes on cross-entropy."""

    measure: ClassVar[str] = "top1"

    def __init__(self, dataset: Dataset, p: Preprocessing, input_shape: tuple[int, ...]) -> None:
        self.dataset, self.p, self.shape = dataset, p, tuple(input_shape)

    def example(self) -> torch.Tensor:
        import torch

        return torch.zeros(1, *self.shape)

    def scorer(self, split: Split, limit: int | None = None) -> Callable[[nn.Module], float]:
        from edgeship.zoo.train import predict

        images, labels = split.images[:limit], split.labels[:limit] if split.labels is not None else None
        assert labels is not None, "a labelled workload scores labelled splits"
        return lambda model: top1(predict(model, images, self.p), labels)

    def transfer(self, size: int | None) -> Batches:
        from edgeship.training import TransferSet

        train = self.dataset.train
        return TransferSet(train.images[:size], None if train.labels is None else train.labels[:size], self.p)

    def finetune(self, model: nn.Module, cfg: TrainConfig, *, seed: int, console: Console, label: str) -> list[float]:
        from edgeship.training import train_classifier

        return train_classifier(model, self.dataset.train, self.dataset.val, self.p, cfg, seed=seed, console=console,
                                label=label).val_accuracy

    def timing_feed(self) -> Feed:
        return {INPUT_NAME: np.zeros((1, *self.shape), np.float32)}

    def export(self, model: nn.Module, path: Path, opset: int) -> None:
        _export(model, self.shape, path, opset)

    def taylor_loss(self, model: nn.Module, index: slice) -> torch.Tensor:
        """Cross-entropy on a slice of the training split: Taylor importance reads weight × its gradient."""
        import torch

        train = self.dataset.train
        assert train.labels is not None
        x = torch.from_numpy(preprocess(train.images[index], self.p))
        return torch.nn.functional.cross_entropy(model(x), torch.from_numpy(train.labels[index]))

    def feed(self, model: nn.Module, index: slice) -> None:
        import torch

        with torch.no_grad():
            model.eval()(torch.from_numpy(preprocess(self.dataset.train.images[index], self.p)))


class TeacherOutputs:
    """A model with declared inputs and no labels: judged and trained against the uncompressed model's outputs."""

    measure: ClassVar[str] = "cosine"
    BATCH: ClassVar[int] = 32

    def __init__(self, dataset: Dataset, teacher: nn.Module, meta: Mapping[str, Any]) -> None:
        self.dataset, self.teacher = dataset, teacher.eval()
        self.records: list[dict[str, Any]] = list(meta["inputs"])
        self.inputs = [record["name"] for record in self.records]
        self.outputs: list[str] = list(meta["outputs"])
        self._references: dict[tuple[int, int | None], dict[str, np.ndarray]] = {}

    def example(self) -> tuple[torch.Tensor, ...]:
        """The first training sample, so MACs are counted at the data's own sequence length."""
        import torch

        arrays = self.dataset.train.arrays
        if not arrays or not len(self.dataset.train):
            return example_inputs(self.records)
        return tuple(torch.from_numpy(np.ascontiguousarray(arrays[name][:1])) for name in self.inputs)

    def run(self, model: nn.Module, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every named output of ``model`` on ``arrays``, in batches."""
        n = len(arrays[self.inputs[0]])
        parts = [call_model(model.eval(), {k: arrays[k][i : i + self.BATCH] for k in self.inputs}, self.inputs, self.outputs)
                 for i in range(0, n, self.BATCH)]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.outputs}

    def scorer(self, split: Split, limit: int | None = None) -> Callable[[nn.Module], float]:
        assert split.arrays is not None, "a model with declared inputs is scored on named arrays"
        arrays = {name: split.arrays[name][:limit] for name in self.inputs}
        key = (id(split), limit)
        if key not in self._references:
            self._references[key] = self.run(self.teacher, arrays)
        reference = self._references[key]
        return lambda model: float(fidelity_summary(fidelity(self.run(model, arrays), reference))["min_cosine"])

    def transfer(self, size: int | None) -> Batches:
        from edgeship.training import ArrayBatches

        arrays = self.dataset.train.arrays
        assert arrays is not None
        return ArrayBatches({name: arrays[name][:size] for name in self.inputs})

    def finetune(self, model: nn.Module, cfg: TrainConfig, *, seed: int, console: Console, label: str) -> list[float]:
        from edgeship.distillation import distiller
        from edgeship.training import fit

        data = self.transfer(None)
        score = self.scorer(self.dataset.val)
        with distiller(model, self.teacher, data.batch(np.arange(min(len(data), 2)))[0], objective="mse") as module:
            return fit(module, data, lambda: score(model), cfg, seed=seed, console=console, label=label, stage="prune",
                       measure="cosine").val_accuracy

    def taylor_loss(self, model: nn.Module, index: slice) -> torch.Tensor:
        # the unpruned model's loss against its own outputs is zero, and so is every gradient: nothing to rank by
        raise StageError("prune", "importance taylor needs a loss with gradients, and a model without labels has none before "
                                  "it is pruned; use l1 or activation")

    def feed(self, model: nn.Module, index: slice) -> None:
        arrays = self.dataset.train.arrays
        assert arrays is not None
        call_model(model.eval(), {name: arrays[name][index] for name in self.inputs}, self.inputs)

    def timing_feed(self) -> Feed:
        arrays = self.dataset.val.arrays if len(self.dataset.val) else self.dataset.eval.arrays
        assert arrays is not None
        return {name: np.ascontiguousarray(arrays[name][:1]) for name in self.inputs}

    def export(self, model: nn.Module, path: Path, opset: int) -> None:
        import onnx

        from edgeship.pipeline.export import rename_outputs

        arrays = self.dataset.val.arrays if len(self.dataset.val) else self.dataset.eval.arrays
        assert arrays is not None
        _export_named(model.eval(), {name: arrays[name][:2] for name in self.inputs}, self.records, path, opset)
        exported = onnx.load(str(path))
        rename_outputs(exported, self.outputs)
        onnx.save(exported, str(path))


def workload_for(teacher: Artifact, dataset: Dataset, p: Preprocessing, load: Callable[[Artifact], nn.Module]) -> Workload:
    """The workload of a model artifact: labelled images for a one-image model, its own outputs for declared inputs."""
    if teacher.meta.get("inputs"):
        return TeacherOutputs(dataset, load(teacher), teacher.meta)
    return LabelledImages(dataset, p, tuple(teacher.meta["input_shape"]))
