"""Make the checkpoint the walk-through deploys, the way a multi-GPU training script leaves one: the weights under
``"model"`` beside the epoch and optimizer state, every key prefixed with ``module.`` by DataParallel.

    python examples/your_model/train.py [--epochs 2] [--out examples/your_model/smallconvnet.pt]

It reads Fashion-MNIST from the Debian package (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent / "netlib"))  # the network alone: netlib's __init__ needs Lightning
from models import NORMALIZE, build  # noqa: E402

ROOT = Path("/usr/share/datasets/fashion-mnist")


def read(images: str, labels: str, root: Path = ROOT) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(root / images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def train(out: Path, *, epochs: int = 2, samples: int | None = None, root: Path = ROOT, seed: int = 0) -> float:
    """Train, save the checkpoint to ``out`` and return the test accuracy."""
    torch.manual_seed(seed)
    x, y = read("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", root)
    x, y = x[:samples], y[:samples]
    inputs = torch.from_numpy(((x / 255.0 - NORMALIZE["mean"]) / NORMALIZE["std"]).astype(np.float32)).unsqueeze(1)
    model = torch.nn.DataParallel(build())
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        for idx in torch.randperm(len(y)).split(128):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs[idx]), torch.from_numpy(y[idx.numpy()])).backward()
            optimizer.step()
    tx, ty = read("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", root)
    test = torch.from_numpy(((tx / 255.0 - NORMALIZE["mean"]) / NORMALIZE["std"]).astype(np.float32)).unsqueeze(1)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test).argmax(1).numpy() == ty).mean())
    torch.save({"epoch": epochs, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "test_accuracy": accuracy}, out)
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "smallconvnet.pt")
    args = parser.parse_args()
    print(f"test accuracy {train(args.out, epochs=args.epochs):.4f}; checkpoint: {args.out}")
