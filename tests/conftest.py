"""Shared fixtures: small recipes, a tiny exported CNN and its calibration data."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edgeship.recipe import FASHION_MNIST_ROOT, Recipe

ROOT = Path(__file__).resolve().parents[1]


def load_module(relative: str) -> ModuleType:
    """A script outside the package (``benchmarks/x.py``, another test file), imported by its path in the repository."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HAS_FASHION_MNIST = (FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file()
# tests whose figures or shapes (28×28 images) need the real data, not the 8×8 digits that stand in for it
needs_fashion_mnist = pytest.mark.skipif(not HAS_FASHION_MNIST, reason="needs the Fashion-MNIST package (the 8×8 digits stand-in "
                                                                       "has other shapes): sudo apt-get install dataset-fashion-mnist")


# tests that time a backend's engines together say so (it times each engine again)
TINY_VALIDATE = {"warmup": 2, "iterations": 20, "min_seconds": 0.05, "threads": 1, "throughput_batch_sizes": [4],
                 "throughput_seconds": 0.02, "together_rounds": 0}


def tiny_recipe(tmp: Path, **overrides: object) -> Recipe:
    """A recipe that trains and runs in well under a minute on 2 cores."""
    raw: dict[str, object] = {
        "name": "tiny",
        "store": str(tmp / "store"),
        "reports": str(tmp / "reports"),
        "data": {"train_size": 3000, "val_size": 500, "eval_size": 1000},
        "calibration": {"size": 200},
        "model": {"width": 8, "train": {"epochs": 2, "optimizer": "adamw", "lr": 0.005, "weight_decay": 0.0}},
        "validate": dict(TINY_VALIDATE),
        "prune": {"enabled": False},  # tests that prune or distill say so
        "distill": {"enabled": False},
        "divergence": {"enabled": False},  # tests that compare tensors say so (it loads every engine again)
        # tests that build them say so
        "backends": {"openvino": {"enabled": False}, "tflite": {"enabled": False}, "tensorrt": {"enabled": False}},
    }
    raw.update(overrides)
    return Recipe.model_validate(raw)


@pytest.fixture(scope="session")
def tiny_cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small ResNet (width 4) on 1×28×28, exported with a dynamic batch."""
    import torch

    from edgeship.pipeline.export import _export
    from edgeship.zoo import build

    torch.manual_seed(0)
    model = build("resnet_small", in_channels=1, num_classes=10, width=4).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    _export(model, (1, 28, 28), path, opset=18)
    return path


@pytest.fixture(scope="session")
def calibration_samples() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, 1, 28, 28)).astype(np.float32)


@dataclass(frozen=True)
class TrainedCnn:
    """A small CNN trained on scikit-learn's digits (upscaled to 1×28×28), exported to ONNX,
    with a calibration split and a disjoint evaluation split of preprocessed inputs."""

    onnx: Path
    calibration: np.ndarray
    evaluation: np.ndarray
    labels: np.ndarray


@pytest.fixture(scope="session")
def trained_cnn(tmp_path_factory: pytest.TempPathFactory) -> TrainedCnn:
    import torch
    from sklearn.datasets import load_digits

    from edgeship.pipeline.export import _export
    from edgeship.zoo import build

    digits = load_digits()
    images = np.pad(np.kron(digits.images, np.ones((3, 3))), ((0, 0), (2, 2), (2, 2))) / 16.0
    inputs = ((images - 0.5) / 0.5).astype(np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(inputs))
    train, calibration, evaluation = order[:1200], order[1200:1400], order[1400:]
    torch.manual_seed(0)
    model = build("resnet_small", in_channels=1, num_classes=10, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    x, y = torch.from_numpy(inputs[train]), torch.from_numpy(digits.target[train])
    model.train()
    for epoch in range(10):
        for batch in torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("trained") / "digits.onnx"
    _export(model, (1, 28, 28), path, opset=18)
    return TrainedCnn(path, inputs[calibration], inputs[evaluation], digits.target[evaluation])


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every attempt to open a network connection fails and is recorded."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object, *args: object) -> None:
        attempts.append(address)
        raise OSError(f"network disabled in this test (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or (_ for _ in ()).throw(OSError("no DNS")))
    yield attempts


@dataclass(frozen=True)
class Released:
    """A finished tiny run with an engine of each CPU backend, a key pair, and its signed releases."""

    run_dir: Path
    keys: Path
    archives: list[Path]
    out: Path


@pytest.fixture(scope="session")
def released(tmp_path_factory: pytest.TempPathFactory) -> Released:
    from rich.console import Console

    from edgeship import run
    from edgeship.release import make_releases, new_key_pair

    if not HAS_FASHION_MNIST:
        pytest.skip("needs the Fashion-MNIST package (release probes are compared image for image): "
                    "sudo apt-get install dataset-fashion-mnist")
    tmp = tmp_path_factory.mktemp("released")
    recipe = tiny_recipe(tmp, backends={"onnxruntime": {"precisions": ["fp32"]}, "openvino": {"precisions": ["int8"]},
                                        # int8 I/O: the device loader's own quantization is part of what is released
                                        "tflite": {"precisions": ["int8"], "io_type": "int8"}, "tensorrt": {"enabled": False}},
                         gates={"min_agreement": 0.9, "min_fraction_of_fp32": 0.95})
    result = run(recipe, console=Console(quiet=True))
    assert result.exit_code == 0, result.report["release"]["reasons"]
    private, _ = new_key_pair("lab", tmp / "keys")
    archives = make_releases(result.run_dir, engines=["onnxruntime/fp32", "openvino/int8", "tflite/int8"], version="1.0.0",
                             key=private, out=tmp / "releases")
    return Released(result.run_dir, tmp / "keys", archives, tmp / "releases")


TOKEN = "loopback-test-token-0123456789"


@dataclass(frozen=True)
class RunningAgent:
    url: str
    process: subprocess.Popen[str]
    cache: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def agent_process(folder: Path, *extra: str) -> Iterator[RunningAgent]:
    """``edgeship agent serve`` on a free loopback port, until it answers ``GET /device``."""
    import httpx

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(TOKEN + "\n")
    port = free_port()
    command = [sys.executable, "-m", "edgeship", "agent", "serve", "--port", str(port), "--token-file", str(folder / "token"),
               "--cache", str(folder / "cache"), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/device", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.2)
        yield RunningAgent(url, process, folder / "cache")
    finally:
        process.kill()
        process.wait(timeout=30)
