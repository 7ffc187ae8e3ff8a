from __future__ import annotations

import subprocess
import sys

import pytest

from edgeship.backends import REGISTRY, availability, get_backend


def test_every_design_backend_is_registered() -> None:
    assert set(REGISTRY) == {"onnxruntime", "openvino", "tflite", "tensorrt"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_availability_never_pretends(name: str) -> None:
    state = availability(name)
    assert state.backend == name
    if REGISTRY[name].adapter is None:
        assert not state.available and "not built yet" in state.reason
        with pytest.raises(LookupError):
            get_backend(name)


def test_import_edgeship_loads_no_backend_runtime() -> None:
    code = ("import sys, edgeship, edgeship.backends, edgeship.recipe; "
            "heavy = [m for m in ('onnxruntime', 'openvino', 'tensorflow', 'tensorrt', 'torch') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
