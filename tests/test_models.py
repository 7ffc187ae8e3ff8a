"""Models as users write them: ``view`` flattens, factory files, training-loop checkpoints, and their own failures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from edgeship.data import Split
from edgeship.errors import RecipeError, UserCodeError
from edgeship.models import instantiate, load_checkpoint, user_code_failure
from edgeship.recipe import ModelConfig, Preprocessing, TrainConfig
from edgeship.tensors import standard_strides
from edgeship.training import train_classifier
from edgeship.zoo.train import predict


class ViewFlatten(torch.nn.Module):
    """Convolutions then ``x.view(x.size(0), -1)``: the flatten that channels-last strides break."""

    def __init__(self, channels: int, size: int = 8) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * size * size, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


def test_preprocessed_inputs_have_standard_strides_for_gray_and_rgb() -> None:
    rng = np.random.default_rng(0)
    for images, color, channels in ((rng.integers(0, 255, (5, 8, 8), np.uint8), "gray", 1),
                                    (rng.integers(0, 255, (5, 8, 8, 3), np.uint8), "rgb", 3)):
        p = Preprocessing(color=color, mean=(0.5,), std=(0.5,))
        model = ViewFlatten(channels)
        logits = predict(model, images, p, batch_size=2)  # raised "view size is not compatible" before
        assert logits.shape == (5, 10)
        split = Split(images, np.arange(5) % 10)
        train_classifier(model, split, split, p, TrainConfig(epochs=1, batch_size=2), seed=0, console=Console(quiet=True))


def test_standard_strides_copies_only_what_needs_it() -> None:
    nhwc = np.zeros((2, 4, 4, 1), np.float32)
    nchw = nhwc.transpose(0, 3, 1, 2)
    assert nchw.flags.c_contiguous and nchw.strides == (64, 4, 16, 4), "NumPy calls it contiguous; PyTorch reads it as channels-last"
    fixed = standard_strides(nchw)
    assert fixed.strides == (64, 64, 16, 4) and np.array_equal(fixed, nchw)
    assert standard_strides(fixed) is fixed
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        conv(torch.from_numpy(nchw)).view(2, -1)
    assert conv(torch.from_numpy(fixed)).view(2, -1).shape == (2, 32)


THIRD_PARTY_INIT = "from shop.training import fit\nfrom shop.nets import build\n"
THIRD_PARTY_NETS = """import torch
from helpers import width  # a neighbour of this file, not of edgeship


def build():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(784, width()))


def broken():
    return torch.nn.Sequential(torch.nn.Unflatten(1, (7, 7)))
"""


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A third-party package whose ``__init__`` imports a training stack that is not installed."""
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text(THIRD_PARTY_INIT)
    (package / "training.py").write_text("import pytorch_lightning\n")
    (package / "nets.py").write_text(THIRD_PARTY_NETS)
    (package / "helpers.py").write_text("def width():\n    return 10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m == "shop" or m.startswith(("shop.", "helpers"))]:
        sys.modules.pop(name)


def test_a_factory_may_name_a_file_so_the_package_init_is_never_imported(shop: Path) -> None:
    with pytest.raises(RecipeError, match=r"imports 'pytorch_lightning', which is not installed; install it, or name the file .*"
                                          r"factory: .*shop/nets\.py:build$"):
        instantiate(ModelConfig(factory="shop.nets:build"), in_channels=1, num_classes=10)
    model = instantiate(ModelConfig(factory=f"{shop / 'nets.py'}:build"), in_channels=1, num_classes=10)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and "shop" not in sys.modules
    again = instantiate(ModelConfig(factory=f"{shop / 'nets.py'}:build"), in_channels=1, num_classes=10)
    assert type(again[2]) is type(model[2]), "loaded once"


def test_a_recipe_factory_file_is_relative_to_the_recipe(shop: Path, tmp_path: Path) -> None:
    from edgeship.recipe import load_recipe

    (tmp_path / "r.yaml").write_text("model: {factory: shop/nets.py:build, checkpoint: w.pt}\n")
    (tmp_path / "w.pt").write_bytes(b"")
    assert load_recipe(tmp_path / "r.yaml").model.factory == f"{shop / 'nets.py'}:build"
    (tmp_path / "r.yaml").write_text("model: {factory: shop/absent.py:build}\n")
    with pytest.raises(RecipeError, match=r"'model\.factory': file not found: .*shop/absent\.py$"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("model: {factory: 'shop nets build'}\n")
    with pytest.raises(RecipeError, match=r"'model\.factory': expected 'package\.module:function' or 'path/to/file\.py:function' "
                                          r"\(got 'shop nets build'\)$"):
        load_recipe(tmp_path / "r.yaml")


def test_a_factory_is_known_by_its_file(shop: Path) -> None:
    """An edited factory file is another model to the store: its forward is what gets exported."""
    from edgeship.models import factory_source_sha256

    spec = f"{shop / 'helpers.py'}:width"
    before = factory_source_sha256(spec)
    assert before == factory_source_sha256("shop.helpers:width"), "a file and the module it is give one fingerprint"
    assert "shop" not in sys.modules, "found without importing the package (its __init__ needs what is not installed)"
    (shop / "helpers.py").write_text("def width():\n    return 12\n")
    assert factory_source_sha256(spec) not in (None, before)
    assert factory_source_sha256(f"{shop / 'absent.py'}:build") is None and factory_source_sha256("no_such_module:build") is None


@pytest.mark.parametrize("wrap", ["plain", "dataparallel", "nested under model", "nested under state_dict", "lightning prefix"])
def test_training_loop_checkpoints_load(wrap: str, shop: Path, tmp_path: Path) -> None:
    source = instantiate(ModelConfig(factory=f"{shop / 'nets.py'}:build"), in_channels=1, num_classes=10)
    weights = source.state_dict()
    saved = {"plain": weights, "dataparallel": {f"module.{k}": v for k, v in weights.items()},
             "nested under model": {"epoch": 3, "model": {f"module.{k}": v for k, v in weights.items()}, "optimizer": {"lr": 0.1}},
             "nested under state_dict": {"state_dict": weights, "epoch": 1},
             "lightning prefix": {"state_dict": {f"model.{k}": v for k, v in weights.items()}}}[wrap]
    torch.save(saved, tmp_path / "ckpt.pt")
    model = instantiate(ModelConfig(factory=f"{shop / 'nets.py'}:build"), in_channels=1, num_classes=10)
    load_checkpoint(model, tmp_path / "ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), weights.values(), strict=True))


def test_a_failure_is_the_users_only_when_their_code_is_on_the_stack(shop: Path) -> None:
    spec = f"{shop / 'nets.py'}:broken"
    model = instantiate(ModelConfig(factory=spec), in_channels=1, num_classes=10)
    try:
        model(torch.zeros(2, 1, 28, 28))
    except RuntimeError as exc:
        assert user_code_failure(exc, {"model.factory": spec}, stage="prune") is None, "torch's own module, not the user's code"
    try:
        instantiate(ModelConfig(factory=f"{shop / 'nets.py'}:build"), in_channels=1, num_classes=10)(torch.zeros(2, 3))
    except RuntimeError as exc:
        assert user_code_failure(exc, {"model.factory": spec}, stage="prune") is None, "the model ran no code of the user's"
    raised = None
    try:
        exec(compile("def forward(x):\n    raise RuntimeError('boom')\nforward(1)\n", str(shop / "nets.py"), "exec"), {})
    except RuntimeError as exc:
        raised = user_code_failure(exc, {"model.factory": spec}, stage="distill")
    assert isinstance(raised, UserCodeError)
    assert str(raised) == f"model.factory {spec!r}: forward failed in the distill stage: RuntimeError: boom"
