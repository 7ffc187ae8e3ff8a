"""The backend registry: every backend edgeship knows, read from the backends' own descriptions.

Importing it imports each backend module, never a runtime package: backends import theirs lazily, so
``edgeship backends`` can say what is installed and what to install on a machine that has none of them.
"""

from __future__ import annotations

from edgeship.backends.base import Availability, Backend, BackendInfo
from edgeship.backends.onnxruntime import OnnxRuntimeBackend
from edgeship.backends.openvino import OpenVinoBackend
from edgeship.backends.tensorrt import TensorRtBackend
from edgeship.backends.tflite import TfliteBackend

_CLASSES: dict[str, type[Backend]] = {cls.info.name: cls for cls in (OnnxRuntimeBackend, OpenVinoBackend, TfliteBackend, TensorRtBackend)}
REGISTRY: dict[str, BackendInfo] = {name: cls.info for name, cls in _CLASSES.items()}


def get_backend(name: str) -> Backend:
    """The backend ``name``; ``KeyError`` for an unknown name."""
    return _CLASSES[name]()


def availability(name: str) -> Availability:
    return get_backend(name).availability()


def display_name(backend: str) -> str:
    """How people write a backend's name ("ONNX Runtime"); an unknown name as it is."""
    info = REGISTRY.get(backend)
    return info.display_name if info else backend
