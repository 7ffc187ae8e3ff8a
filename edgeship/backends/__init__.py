"""The backend registry. Nothing here imports a backend's runtime package.

Every backend edgeship knows is listed, so ``edgeship backends`` can say what
is installed and what to install. A backend whose adapter has not landed yet
says so in its availability instead of pretending.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import shutil
import subprocess
from dataclasses import dataclass

from edgeship.backends.base import Availability, Backend, Precision

P = Precision


@dataclass(frozen=True)
class BackendSpec:
    name: str
    adapter: str | None  # "module:Class"; None while the adapter has not landed
    distributions: tuple[str, ...]  # runtime packages whose versions are reported
    install: str
    precisions: frozenset[Precision]
    pending: str = ""  # why there is no adapter yet
    calibrated: frozenset[Precision] = frozenset({Precision.INT8})  # precisions whose build uses the calibration set
    runtime_module: str = ""  # what a runner imports; the harness imports it before timing an engine's load


REGISTRY: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec("onnxruntime", "edgeship.backends.onnxruntime:OnnxRuntimeBackend", ("onnxruntime",),
                               "pip install edgeship", frozenset({P.FP32, P.INT8}), runtime_module="onnxruntime"),
    "openvino": BackendSpec("openvino", "edgeship.backends.openvino:OpenVinoBackend", ("openvino", "nncf"),
                            "pip install 'edgeship[openvino]'", frozenset({P.FP32, P.FP16, P.INT8}), runtime_module="openvino"),
    "tflite": BackendSpec("tflite", "edgeship.backends.tflite:TfliteBackend", ("ai-edge-litert", "onnx2tf", "tensorflow"),
                          "pip install 'edgeship[tflite]'", frozenset({P.FP32, P.FP16, P.INT8}),
                          runtime_module="ai_edge_litert.interpreter"),
    # FP16 is calibrated too: ModelOpt AutoCast runs calibration inputs to keep overflowing nodes in FP32
    "tensorrt": BackendSpec("tensorrt", "edgeship.backends.tensorrt:TensorRtBackend", ("tensorrt", "polygraphy", "nvidia-modelopt"),
                            "pip install --extra-index-url https://pypi.nvidia.com 'edgeship[tensorrt]' on a machine with an NVIDIA GPU",
                            frozenset(P), calibrated=frozenset({P.FP16, P.INT8}), runtime_module="tensorrt"),
}


def get_backend(name: str) -> Backend:
    """The backend adapter ``name``; ``KeyError`` for an unknown name, ``LookupError`` for one not built yet."""
    spec = REGISTRY[name]
    if spec.adapter is None:
        raise LookupError(spec.pending)
    module_name, class_name = spec.adapter.split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def installed_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution, without importing it."""
    found = {}
    for dist in distributions:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def nvidia_gpu() -> str:
    """The first NVIDIA GPU's name from nvidia-smi, or '' when there is none."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def availability(name: str) -> Availability:
    spec = REGISTRY[name]
    if spec.adapter is not None:
        return get_backend(name).availability()
    versions = installed_versions(spec.distributions)
    device = nvidia_gpu() if name == "tensorrt" else "CPU"
    return Availability(name, False, versions, device or "no CUDA GPU", spec.pending, spec.install)
