from __future__ import annotations

import subprocess
import sys

import pytest

from edgeship.backends import REGISTRY, availability, get_backend
from edgeship.backends.base import Precision
from edgeship.recipe import BackendsConfig


def test_every_design_backend_is_registered() -> None:
    assert set(REGISTRY) == {"onnxruntime", "openvino", "tflite", "tensorrt"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_availability_never_pretends(name: str) -> None:
    state = availability(name)
    assert state.backend == name
    assert state.available or (state.reason and state.install)
    assert get_backend(name).info is REGISTRY[name]


def test_every_backend_describes_itself_once() -> None:
    """Names, colours and suffixes are each backend's own; an engine's suffix names one backend first."""
    infos = list(REGISTRY.values())
    assert len({info.display_name for info in infos}) == len({info.colour for info in infos}) == len(infos)
    assert all(info.suffixes and info.install and info.runtime_module for info in infos)
    assert REGISTRY["onnxruntime"].precisions == frozenset(Precision), "ONNX Runtime builds FP16 too"


def test_the_recipe_has_a_section_for_every_backend() -> None:
    assert set(BackendsConfig.model_fields) == set(REGISTRY)


def test_import_edgeship_loads_no_backend_runtime() -> None:
    code = ("import sys, edgeship, edgeship.backends, edgeship.recipe; "
            "heavy = [m for m in ('onnxruntime', 'openvino', 'tensorflow', 'tensorrt', 'torch') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
