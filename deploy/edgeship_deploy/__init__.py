"""edgeship-deploy: load an edgeship release on a device, verified, and run it.

The device side of ``edgeship release``: it imports numpy, Pillow (to read images) and the one runtime the release
needs, never torch, onnx, TensorFlow, onnx2tf, NNCF or ModelOpt, and never edgeship itself (a separate distribution:
``pip install ./deploy``).

    model = load("releases/default-1.0.0/openvino-int8", trusted_keys=["keys/lab.pub"])
    model.predict(images)          # top-k classes with probabilities, the release's preprocessing applied
    model.probe()                  # the acceptance probe: golden inputs against the engine's own measured outputs

``load`` verifies the signature over ``release.json`` and every file's sha256 before anything is loaded; a tampered,
wrongly signed or (unless allowed) unsigned release is refused with a ``ReleaseError``. A runtime whose version differs
from the one the engine was qualified with is loaded with a warning (``Model.warnings``); ``strict_runtime=True``
refuses it instead, and ``probe()`` is how a device checks such an engine before trusting it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeship_deploy import ed25519
from edgeship_deploy.runtimes import open_engine

__all__ = ["PROBE_FILE", "RELEASE_FILE", "SCHEMA", "SCHEMA_VERSION", "SIGNATURE_FILE", "Model", "ProbeResult", "ReleaseError",
           "load", "preprocess", "resize", "verify"]

SCHEMA = "edgeship.release"
SCHEMA_VERSION = 1
RELEASE_FILE = "release.json"
SIGNATURE_FILE = "release.sig"
PROBE_FILE = "probe.npz"


class ReleaseError(Exception):
    """A release that must not be loaded: tampered, missing a file, wrongly signed, unsigned, or for another runtime."""


def verify(folder: str | Path, trusted_keys: Iterable[str | Path] = (), *, allow_unsigned: bool = False) -> dict[str, Any]:
    """The release document of ``folder``, once its signature (by one of ``trusted_keys``, PEM public key files) and
    the sha256 of every file it lists are checked, and no other file is there; ``ReleaseError`` otherwise."""
    folder = Path(folder)
    document_path = folder / RELEASE_FILE
    try:
        raw = document_path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{document_path}: cannot read the release: {exc.strerror or exc}") from None
    signature_path = folder / SIGNATURE_FILE
    keys = [_public_key(Path(key)) for key in trusted_keys]
    if signature_path.is_file():
        signature = signature_path.read_bytes()
        if not keys:
            raise ReleaseError(f"{folder}: the release is signed; give the public key to check it (--key)")
        if not any(ed25519.verify(key, raw, signature) for key in keys):
            raise ReleaseError(f"{signature_path}: the signature does not match release.json with any trusted key")
    elif not allow_unsigned:
        raise ReleaseError(f"{folder}: the release is not signed (no {SIGNATURE_FILE}); refused unless unsigned releases are allowed")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise ReleaseError(f"{document_path}: not a readable release document: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ReleaseError(f"{document_path}: not an edgeship release (schema {SCHEMA!r} expected)")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ReleaseError(f"{document_path}: release schema version {document.get('schema_version')}, this loader reads {SCHEMA_VERSION}")
    listed = document.get("files") or {}
    for name, digest in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            raise ReleaseError(f"{path}: missing from the release")
        if _sha256(path) != digest:
            raise ReleaseError(f"{path}: its sha256 differs from the one release.json lists: the file was changed")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in listed and p.name not in (RELEASE_FILE, SIGNATURE_FILE))
    if extra:
        raise ReleaseError(f"{folder}: files the release does not list: {', '.join(extra)}")
    return document


def load(folder: str | Path, trusted_keys: Iterable[str | Path] = (), *, allow_unsigned: bool = False, strict_runtime: bool = False,
         threads: int | None = None) -> Model:
    """The verified release in ``folder``, its engine loaded on its runtime (``threads``: the release's qualified count)."""
    folder = Path(folder)
    document = verify(folder, trusted_keys, allow_unsigned=allow_unsigned)
    engine = document["engine"]
    warnings = []
    wanted = document["runtime"]
    installed = _installed(wanted["distribution"])
    if installed is None:
        raise ReleaseError(f"{folder}: needs {wanted['distribution']} {wanted['version']}, which is not installed: "
                           f"pip install {wanted['distribution']}=={wanted['version']}")
    if installed != wanted["version"]:
        message = (f"{wanted['distribution']} {installed} is installed; the engine was qualified with {wanted['version']}: "
                   "run probe() before trusting it")
        if strict_runtime:
            raise ReleaseError(f"{folder}: {message}")
        warnings.append(message)
    runner = open_engine(engine["backend"], folder / engine["main"], document["io"], threads=threads or document.get("threads") or 1)
    return Model(folder=folder, document=document, runner=runner, warnings=warnings)


@dataclass(frozen=True)
class ProbeResult:
    """The acceptance probe: the golden inputs' outputs against the engine's own outputs measured at qualification."""

    passed: bool
    samples: int
    agreement: float  # top-1 agreement with the reference outputs
    max_abs_error: float
    p50_ms: float
    limits: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    def describe(self) -> str:
        verdict = "pass" if self.passed else "FAIL: " + "; ".join(self.failures)
        return (f"probe {verdict} — {self.samples} golden inputs, top-1 agreement {100 * self.agreement:.2f}% "
                f"(at least {100 * self.limits['min_agreement']:.2f}%), max abs error {self.max_abs_error:.3g} "
                f"(at most {self.limits['max_abs_error']:.3g}), p50 {self.p50_ms:.3f} ms"
                + (f" (at most {self.limits['max_p50_ms']:.3f} ms)" if self.limits.get("max_p50_ms") else ""))


@dataclass
class Model:
    """A loaded release: ``run`` the engine on model inputs, ``predict`` on images, ``probe`` it."""

    folder: Path
    document: dict[str, Any]
    runner: Any
    warnings: list[str]

    @property
    def classes(self) -> list[str]:
        return list(self.document["classes"])

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The engine's outputs (logits) on preprocessed float32 inputs in the model's NCHW layout."""
        return self.runner.run(inputs)

    def predict(self, images: np.ndarray | Sequence[str | Path], *, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The top-k classes and their probabilities for each image (uint8 arrays (N, H, W[, C]), or image files)."""
        if not isinstance(images, np.ndarray):
            images = read_images(images, self.document["preprocessing"])
        logits = self.run(preprocess(images, self.document["preprocessing"]))
        shifted = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        classes = self.classes
        order = np.argsort(-probabilities, axis=1)[:, :top_k]
        return [[(classes[i], float(row[i])) for i in best] for row, best in zip(probabilities, order, strict=True)]

    def probe(self, *, repeats: int = 20) -> ProbeResult:
        """Run the golden inputs and judge them against the engine's reference outputs and the release's limits."""
        limits = self.document["probe"]["limits"]
        with np.load(self.folder / PROBE_FILE) as probe:
            images, reference = probe["images"], probe["reference"]
        outputs = self.run(preprocess(images, self.document["preprocessing"]))
        agreement = float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean())
        error = float(np.abs(outputs.astype(np.float64) - reference).max())
        single = preprocess(images[:1], self.document["preprocessing"])
        self.run(single)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.run(single)
            times.append(time.perf_counter() - started)
        p50 = 1e3 * float(np.median(times))
        failures = []
        if agreement < limits["min_agreement"]:
            failures.append(f"top-1 agreement {100 * agreement:.2f}% < {100 * limits['min_agreement']:.2f}%")
        if error > limits["max_abs_error"]:
            failures.append(f"max abs error {error:.3g} > {limits['max_abs_error']:.3g}")
        if limits.get("max_p50_ms") and p50 > limits["max_p50_ms"]:
            failures.append(f"p50 {p50:.3f} ms > {limits['max_p50_ms']:.3f} ms")
        return ProbeResult(not failures, len(images), agreement, error, p50, dict(limits), failures)


def preprocess(images: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """uint8 images (N, H, W[, C]) to float32 model inputs: resize (bilinear), colour, ``(pixel * scale - mean) / std``,
    NCHW with standard strides. The one definition: edgeship's own ``data.preprocess`` calls it, so a device computes
    its inputs exactly as they were computed at qualification. ``ValueError`` for images whose channels cannot be made.

    Written into the output a block of images and a channel at a time: a whole evaluation set at once held three float
    copies of it, and NumPy's NHWC → NCHW copy of float32 is several times slower than these per-channel writes."""
    if images.ndim == 3:
        images = images[..., None]
    channels = 1 if p["color"] == "gray" else 3
    height, width = tuple(p["resize"]) if p.get("resize") is not None else images.shape[1:3]
    scale = np.float32(p["scale"])
    mean, std = (np.asarray(p[key], np.float32).reshape(-1) for key in ("mean", "std"))
    for key, values in (("mean", mean), ("std", std)):
        if values.size not in (1, channels):
            raise ValueError(f"preprocessing {key} has {values.size} values for {channels}-channel inputs (give 1 or {channels})")
    out = np.empty((len(images), channels, height, width), np.float32)
    for start in range(0, len(images), PREPROCESS_BLOCK):
        block = _with_channels(images[start:start + PREPROCESS_BLOCK], channels, (height, width))
        for channel in range(channels):
            out[start:start + PREPROCESS_BLOCK, channel] = ((block[..., channel].astype(np.float32) * scale - mean[channel % mean.size])
                                                            / std[channel % std.size])
    return out


PREPROCESS_BLOCK = 64  # images per block of ``preprocess``


def _with_channels(images: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, C) images resized to ``size`` with ``channels`` channels (grey repeated, or colour averaged)."""
    if images.shape[1:3] != size:
        images = resize(images, size)
    if images.shape[-1] != channels:
        if images.shape[-1] == 1:
            images = np.repeat(images, channels, axis=-1)
        elif channels == 1:
            images = images[..., :3].mean(axis=-1, keepdims=True)
        else:
            raise ValueError(f"cannot make {channels} channels from images of shape {images.shape[1:]}")
    return images


def read_images(paths: Sequence[str | Path], p: dict[str, Any]) -> np.ndarray:
    """Image files as uint8 arrays of one size (the release's resize, else the first image's)."""
    from PIL import Image

    size = tuple(p["resize"]) if p.get("resize") else None
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("L" if p["color"] == "gray" else "RGB")
            if size is not None:
                image = image.resize(size[::-1], Image.BILINEAR)
            arrays.append(np.asarray(image))
    return np.stack(arrays)


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 images (N, H, W, C) resized to (height, width), bilinear, as edgeship reads every image."""
    from PIL import Image

    out = [np.asarray(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).resize(size[::-1], Image.BILINEAR)) for img in images]
    arr = np.stack(out)
    return arr[..., None] if arr.ndim == 3 else arr


def _public_key(path: Path) -> bytes:
    try:
        return ed25519.public_key_from_pem(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path}: cannot read the public key: {getattr(exc, 'strerror', None) or exc}") from None
    except ValueError as exc:
        raise ReleaseError(f"{path}: {exc}") from None


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
