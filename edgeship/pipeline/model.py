"""The ``model`` stage: the FP32 PyTorch model everything starts from.

A zoo model is trained here (seeded) and cached by a hash of the data and the
config; a user's ``factory`` is imported and, with a ``checkpoint``, loaded with
``torch.load(weights_only=True)`` (trained here when no checkpoint is given).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeship.artifacts import Artifact, sha256_file
from edgeship.data import model_inputs
from edgeship.errors import DataError, RecipeError
from edgeship.measure import top1
from edgeship.models import call_model, factory_source_sha256, input_records, instantiate, load_checkpoint
from edgeship.pipeline.base import Made, RunContext
from edgeship.recipe import ModelConfig, Preprocessing, onnx_file
from edgeship.zoo.pretrained import PRETRAINED, classes

if TYPE_CHECKING:
    from torch import nn

    from edgeship.data import Dataset


ONNX_MODEL = "onnx-model"  # the artifact kind of an ONNX entry (model.onnx): the export stage adopts it as it is


def model_identity(cfg: ModelConfig) -> dict[str, Any]:
    """A one-image model's config as its artifact's key: the keys added for other entries (``onnx``, ``inputs``,
    ``outputs``) are left out at their defaults, so a model stored before them is reused, not trained again."""
    unset = {key for key in ("onnx", "inputs", "outputs") if not getattr(cfg, key)}
    return cfg.model_dump(mode="json", exclude=unset)


def input_shape(dataset: Dataset, p: Preprocessing) -> tuple[int, int, int]:
    """(C, H, W) of the model input the data and preprocessing produce."""
    height, width = p.resize or dataset.eval.images.shape[1:3]
    return (1 if p.color == "gray" else 3, int(height), int(width))


class ModelStage:
    """The FP32 model: ``role`` names it in the manifest (model, teacher, student); ``train=False`` keeps a zoo
    model at its seeded initialisation (a student that distillation trains from scratch)."""

    name: ClassVar[str] = "model"

    def __init__(self, *, role: str = "model", train: bool = True) -> None:
        self.role = role
        self.train = train

    def run(self, inputs: Mapping[str, Artifact], cfg: ModelConfig, ctx: RunContext) -> dict[str, Artifact]:
        if cfg.onnx is not None:
            return {"model": self._onnx(cfg, ctx)}
        if cfg.named_inputs:
            return {"model": self._declared(cfg, ctx)}
        p = ctx.recipe.data.preprocessing
        shape = input_shape(ctx.dataset, p)
        key: dict[str, Any] = {"dataset": ctx.dataset.fingerprint, "preprocessing": p.model_dump(mode="json"), "seed": ctx.recipe.seed}
        if cfg.checkpoint is not None:
            key["checkpoint_sha256"] = sha256_file(cfg.checkpoint)
        if cfg.pretrained is not None:
            key["pretrained_packages"] = PRETRAINED[cfg.pretrained].versions()
        if not self.train:
            key["untrained"] = True
        label = cfg.label
        if self.role != "model":
            label = f"{self.role}: {label}"
        config = model_identity(cfg)
        work = ctx.store.scratch(ctx.artifact_id(self.name, config=config, parents=[], extra_key=key))  # a killed training resumes
        artifact = ctx.produce(self.name, label, config=config, parents=[], extra_key=key,
                               make=lambda folder: self._make(folder, cfg, ctx, shape, work / "train.ckpt"))
        return {"model": artifact}

    def _onnx(self, cfg: ModelConfig, ctx: RunContext) -> Artifact:
        """An ONNX entry: the file itself, checked, with its inputs and outputs; it is its own FP32 reference."""
        assert cfg.onnx is not None
        try:
            source = onnx_file(cfg.onnx)
        except FileNotFoundError as exc:
            raise DataError(f"model.onnx: {exc}") from None
        config = cfg.model_dump(mode="json")
        key = {"onnx_sha256": sha256_file(source), "dataset": ctx.dataset.fingerprint}

        def make(folder: Path) -> Made:
            target = folder / "model.onnx"
            shutil.copyfile(source, target)
            inputs, outputs = onnx_signature(target)
            meta = {"source": "onnx", "architecture": cfg.label, "onnx_source": str(source), "inputs": inputs, "outputs": outputs,
                    "classes": list(ctx.dataset.classes), "class_set": ctx.dataset.name, "num_classes": ctx.dataset.num_classes or None}
            return Made(target, ONNX_MODEL, meta)

        return ctx.produce(self.name, cfg.label, config=config, parents=[], extra_key=key, make=make)

    def _declared(self, cfg: ModelConfig, ctx: RunContext) -> Artifact:
        """A PyTorch model with declared inputs (token ids, masks, features): the factory's model as it returns it (its
        own weights, or the checkpoint's), run once on evaluation samples to check the data fits it and to name its
        outputs. It is not trained here."""
        config = cfg.model_dump(mode="json")
        key: dict[str, Any] = {"dataset": ctx.dataset.fingerprint, "seed": ctx.recipe.seed}
        if cfg.checkpoint is not None:
            key["checkpoint_sha256"] = sha256_file(cfg.checkpoint)
        if cfg.factory is not None:  # its forward is exported: an edited file is another model
            key["factory_sha256"] = factory_source_sha256(cfg.factory)

        def make(folder: Path) -> Made:
            import torch

            from edgeship.zoo.train import seed_everything

            seed_everything(ctx.recipe.seed)
            model = instantiate(cfg, in_channels=0, num_classes=0).eval()  # a factory takes no arguments: both unused
            if cfg.checkpoint is not None:
                load_checkpoint(model, cfg.checkpoint)
            records = input_records(cfg)
            names = [record["name"] for record in records]
            feed = model_inputs(ctx.dataset.eval, ctx.recipe.data.preprocessing, names[0], count=2)
            check_feed(feed, records, ctx.recipe.data.path or ctx.recipe.data.root)
            try:
                outputs = call_model(model, feed, names, list(cfg.outputs) or None)
            except ValueError as exc:
                if "model.outputs" in str(exc):
                    raise RecipeError(f"'model.outputs': {exc}") from None
                raise
            meta = {"source": "factory", "architecture": cfg.label, "model_config": config, "inputs": records, "outputs": list(outputs),
                    "input_shape": list(feed[names[0]].shape[1:]), "num_classes": None, "classes": [], "class_set": ctx.dataset.name,
                    "parameters": sum(t.numel() for t in model.parameters()), "metrics": {}}
            target = folder / "model.pt"
            torch.save(model.state_dict(), target)
            return Made(target, "pytorch-state-dict", meta)

        return ctx.produce(self.name, cfg.label, config=config, parents=[], extra_key=key, make=make)

    def _make(self, folder: Path, cfg: ModelConfig, ctx: RunContext, shape: tuple[int, int, int], checkpoint: Path) -> Made:
        import torch

        from edgeship.training import train_classifier
        from edgeship.zoo.train import predict, seed_everything

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
            meta["pretrained"] = {"name": cfg.pretrained, "packages": PRETRAINED[cfg.pretrained].versions(),
                                  "description": PRETRAINED[cfg.pretrained].description}
        elif cfg.checkpoint is None and not self.train:
            meta["source"] += " (untrained)"
        elif cfg.checkpoint is None:
            history = train_classifier(model, dataset.train, dataset.val, p, cfg.train, seed=ctx.recipe.seed, console=ctx.console,
                                       checkpoint=checkpoint)
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


def onnx_signature(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """An ONNX model's fed inputs (name, numpy dtype, shape with ``None`` for a named or unknown dimension) and its
    output names; a ``DataError`` naming the file when it is not a model ONNX can read."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValidationError, OSError …
        raise DataError(f"{path}: not a valid ONNX model: {' '.join(str(exc).split())[:300]}") from None
    weights = {init.name for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        inputs.append({"name": value.name, "dtype": str(tensor_dtype_to_np_dtype(tensor.elem_type)), "shape": dims})
    return inputs, [value.name for value in model.graph.output]


def check_feed(feed: Mapping[str, Any], inputs: list[dict[str, Any]], data: Path | None) -> None:
    """The data's arrays against the model's inputs: the same names, dtypes and fixed dimensions; a ``DataError`` naming
    the data and what the model expects otherwise."""
    where = str(data) if data else "the data"
    expected = {i["name"]: i for i in inputs}
    if set(feed) != set(expected):
        raise DataError(f"{where}: arrays {sorted(feed)}; the model's inputs are {sorted(expected)}")
    for name, array in feed.items():
        want = expected[name]
        if str(array.dtype) != want["dtype"]:
            raise DataError(f"{where}: array {name!r} is {array.dtype}; the model's input {name!r} takes {want['dtype']}")
        fixed = zip(want["shape"][1:], array.shape[1:], strict=False)
        if array.ndim != len(want["shape"]) or any(w is not None and w != g for w, g in fixed):
            shape = ["N" if i == 0 else ("?" if w is None else w) for i, w in enumerate(want["shape"])]
            raise DataError(f"{where}: array {name!r} has shape ({', '.join(map(str, ['N', *array.shape[1:]]))}); the model's input "
                            f"{name!r} takes ({', '.join(map(str, shape))})")
