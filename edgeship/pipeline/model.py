"""The ``model`` stage: the FP32 PyTorch model everything starts from.

A zoo model is trained here (seeded) and cached by a hash of the data and the
config; a user's ``factory`` is imported and, with a ``checkpoint``, loaded with
``torch.load(weights_only=True)`` (trained here when no checkpoint is given).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeship.artifacts import Artifact
from edgeship.errors import DataError, RecipeError
from edgeship.pipeline.base import Made, RunContext
from edgeship.recipe import ModelConfig, Preprocessing

if TYPE_CHECKING:
    from torch import nn

    from edgeship.data import Dataset


def input_shape(dataset: Dataset, p: Preprocessing) -> tuple[int, int, int]:
    """(C, H, W) of the model input the data and preprocessing produce."""
    height, width = p.resize or dataset.eval.images.shape[1:3]
    return (1 if p.color == "gray" else 3, int(height), int(width))


def instantiate(cfg: ModelConfig, *, in_channels: int, num_classes: int, weights: bool = True) -> nn.Module:
    """A fresh model from the zoo, a pretrained network (with its weights unless ``weights=False``) or the user's
    factory (trusted code named in the recipe)."""
    from edgeship import zoo

    if cfg.pretrained is not None:
        from edgeship.zoo import pretrained

        return pretrained.build(cfg.pretrained, weights=weights)
    if cfg.zoo is not None:
        return zoo.build(cfg.zoo, in_channels=in_channels, num_classes=num_classes, width=cfg.width)
    module_name, _, function = cfg.factory.partition(":")  # type: ignore[union-attr]
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"'model.factory': cannot import {cfg.factory!r}: {exc}") from None
    model = factory()
    import torch

    if not isinstance(model, torch.nn.Module):
        raise RecipeError(f"'model.factory': {cfg.factory!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a weights-only state_dict into ``model``; refuse pickles and other architectures."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line.split("error:", 1)[1].split(". Please")[0].strip() for line in lines if "WeightsUnpickler error:" in line),
                   re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else "unsupported content")
        raise DataError(f"{path}: not a weights-only checkpoint, refused by torch.load(weights_only=True): {why}; "
                        "save the model's state_dict instead") from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails on a non-checkpoint in any way it likes (IndexError on text)
        raise DataError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                        "expected a state_dict saved with torch.save") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: expected a state_dict (mapping of tensors), got {type(state).__name__}")
    problem = _architecture_mismatch(model.state_dict(), state)
    if problem:
        raise DataError(f"{path}: checkpoint is for another architecture than {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=True)


def _architecture_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """What differs between a model's state_dict and a checkpoint's, in a line: missing and unexpected keys, shapes."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f", … ({len(keys)} in all)" if len(keys) > 3 else "")

    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    shapes = [f"{key} {tuple(given[key].shape)} vs {tuple(expected[key].shape)}" for key in expected
              if key in given and hasattr(given[key], "shape") and tuple(given[key].shape) != tuple(expected[key].shape)]
    parts = ([f"missing {some(missing)}"] if missing else []) + ([f"unexpected {some(unexpected)}"] if unexpected else []) + \
            ([f"shape {some(shapes)}"] if shapes else [])
    return "; ".join(parts)


def load_model(artifact: Artifact, cfg: ModelConfig | None = None) -> nn.Module:
    """The model stored in a model artifact, in eval mode.

    The architecture comes from the config recorded in the artifact (a distilled
    student may differ from the recipe's model); ``cfg`` serves artifacts without one.
    """
    import torch

    if "model_config" in artifact.meta:
        cfg = ModelConfig.model_validate(artifact.meta["model_config"])
    if cfg is None:
        raise ValueError(f"artifact {artifact.id} records no model config; pass one")
    model = instantiate(cfg, in_channels=artifact.meta["input_shape"][0], num_classes=artifact.meta["num_classes"], weights=False)
    pruning = artifact.meta.get("pruning") or {}
    if pruning.get("history_file"):  # structured: rebuild the pruned structure from the original model
        from edgeship.pruning import replay

        model.load_state_dict(torch.load(artifact.folder / pruning["base_file"], map_location="cpu", weights_only=True))
        history = json.loads((artifact.folder / pruning["history_file"]).read_text())
        replay(model.eval(), torch.zeros(1, *artifact.meta["input_shape"]), history)
    model.load_state_dict(torch.load(artifact.path, map_location="cpu", weights_only=True))
    return model.eval()


class ModelStage:
    """The FP32 model: ``role`` names it in the manifest (model, teacher, student); ``train=False`` keeps a zoo
    model at its seeded initialisation (a student that distillation trains from scratch)."""

    name: ClassVar[str] = "model"
    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, *, role: str = "model", train: bool = True) -> None:
        self.role = role
        self.train = train

    def run(self, inputs: Mapping[str, Artifact], cfg: ModelConfig, ctx: RunContext) -> dict[str, Artifact]:
        p = ctx.recipe.data.preprocessing
        shape = input_shape(ctx.dataset, p)
        key: dict[str, Any] = {"dataset": ctx.dataset.fingerprint, "preprocessing": p.model_dump(mode="json"), "seed": ctx.recipe.seed}
        if cfg.checkpoint is not None:
            from edgeship.artifacts import sha256_file

            key["checkpoint_sha256"] = sha256_file(cfg.checkpoint)
        if cfg.pretrained is not None:
            from edgeship.zoo.pretrained import PRETRAINED

            key["pretrained_packages"] = PRETRAINED[cfg.pretrained].versions()
        if not self.train:
            key["untrained"] = True
        label = cfg.label
        if self.role != "model":
            label = f"{self.role}: {label}"
        artifact = ctx.produce(self.name, label, config=cfg.model_dump(mode="json"), parents=[], extra_key=key,
                               make=lambda folder: self._make(folder, cfg, ctx, shape))
        return {"model": artifact}

    def _make(self, folder: Path, cfg: ModelConfig, ctx: RunContext, shape: tuple[int, int, int]) -> Made:
        import torch

        from edgeship.measure import top1
        from edgeship.zoo.train import predict, seed_everything, train_classifier

        dataset, p = ctx.dataset, ctx.recipe.data.preprocessing
        seed_everything(ctx.recipe.seed)
        class_names, class_set = _classes(cfg, dataset)
        model = instantiate(cfg, in_channels=shape[0], num_classes=len(class_names))
        meta: dict[str, Any] = {"input_shape": list(shape), "num_classes": len(class_names), "classes": list(class_names),
                                "class_set": class_set, "source": "zoo" if cfg.zoo else "pretrained" if cfg.pretrained else "factory",
                                "architecture": cfg.label, "model_config": cfg.model_dump(mode="json")}
        if cfg.checkpoint is not None:
            load_checkpoint(model, cfg.checkpoint)
            meta["checkpoint"] = str(cfg.checkpoint)
        _check_output(model, shape, len(class_names), label=meta["architecture"])
        if cfg.pretrained is not None:
            from edgeship.zoo.pretrained import PRETRAINED

            meta["pretrained"] = {"name": cfg.pretrained, "packages": PRETRAINED[cfg.pretrained].versions(),
                                  "description": PRETRAINED[cfg.pretrained].description}
        elif cfg.checkpoint is None and not self.train:
            meta["source"] += " (untrained)"
        elif cfg.checkpoint is None:
            history = train_classifier(model, dataset.train, dataset.val, p, cfg.train, seed=ctx.recipe.seed, console=ctx.console)
            meta["history"] = {"train_loss": history.train_loss, "train_accuracy": history.train_accuracy,
                               "val_accuracy": history.val_accuracy}
        meta["parameters"] = sum(t.numel() for t in model.parameters())
        meta["metrics"] = ({"val_top1": top1(predict(model, dataset.val.images, p), dataset.val.labels)}
                           if len(dataset.val) and dataset.val.labels is not None else {})
        target = folder / "model.pt"
        torch.save(model.state_dict(), target)
        return Made(target, "pytorch-state-dict", meta)


def _classes(cfg: ModelConfig, dataset: Dataset) -> tuple[tuple[str, ...], str]:
    """The class names of the model's outputs and where they come from: a pretrained network's own label space, else
    the dataset's classes."""
    if cfg.pretrained is not None:
        from edgeship.zoo.pretrained import PRETRAINED, classes

        class_set = PRETRAINED[cfg.pretrained].class_set
        names = classes(class_set)
        if dataset.labelled and dataset.classes != names:
            raise DataError(f"data.dataset {dataset.name!r} has {dataset.num_classes} classes; the pretrained {cfg.pretrained!r} "
                            f"predicts the {len(names)} {class_set} classes")
        return names, class_set
    return dataset.classes, dataset.name


def _check_output(model: nn.Module, shape: tuple[int, int, int], num_classes: int, *, label: str) -> None:
    import torch

    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(2, *shape))
        except Exception as exc:  # noqa: BLE001 - a user model fails in its own ways
            raise DataError(f"model {label!r} cannot run on inputs of shape (N, {', '.join(map(str, shape))}): {exc}") from None
    if tuple(out.shape) != (2, num_classes):
        raise DataError(f"model {label!r} outputs shape {tuple(out.shape[1:])} per sample, the data has {num_classes} classes")
