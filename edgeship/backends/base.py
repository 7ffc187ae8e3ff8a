"""The Backend and Runner interfaces every backend implements.

This module is imported by ``import edgeship``: it must never import a
backend's runtime package. Backends import theirs lazily, inside methods.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from pydantic import BaseModel

    from edgeship.artifacts import Artifact

Feed = dict[str, np.ndarray]


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class TensorMeta:
    """Name, dtype and shape of one engine input; ``None`` marks a dynamic axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def check(self, array: np.ndarray) -> None:
        """Raise ``ValueError`` when ``array`` cannot be fed to this input."""
        if array.dtype != self.dtype:
            raise ValueError(f"input {self.name!r}: expected dtype {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape):
            raise ValueError(f"input {self.name!r}: expected {len(self.shape)} dims {self.shape}, got shape {array.shape}")
        for want, got in zip(self.shape, array.shape, strict=True):
            if want is not None and want != got:
                raise ValueError(f"input {self.name!r}: expected shape {self.shape}, got {array.shape}")


@dataclass(frozen=True)
class Availability:
    """Whether a backend can build and run here, and why not when it cannot."""

    backend: str
    available: bool
    versions: dict[str, str] = field(default_factory=dict)
    device: str = ""
    reason: str = ""
    install: str = ""


class CalibrationSet(Sequence[Feed]):
    """A re-iterable sequence of feeds for INT8 calibration, with a fingerprint.

    ``samples`` holds preprocessed model inputs (N, C, H, W) float32; each feed is a
    batch of ``batch_size`` of them under ``input_name``.
    """

    def __init__(self, samples: np.ndarray, fingerprint: str, *, input_name: str = "input", batch_size: int = 1) -> None:
        if samples.ndim < 2 or len(samples) == 0:
            raise ValueError(f"calibration samples must be a non-empty batch, got shape {samples.shape}")
        self.samples = samples
        self.fingerprint = fingerprint
        self.input_name = input_name
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __getitem__(self, index: int) -> Feed:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        start = (index % len(self)) * self.batch_size
        return {self.input_name: self.samples[start : start + self.batch_size]}

    def __iter__(self) -> Iterator[Feed]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, size: int) -> CalibrationSet:
        """The first ``size`` samples, fingerprinted as such."""
        if size >= len(self.samples):
            return self
        return CalibrationSet(self.samples[:size], f"{self.fingerprint}[:{size}]", input_name=self.input_name, batch_size=self.batch_size)

    def renamed(self, input_name: str) -> CalibrationSet:
        return CalibrationSet(self.samples, self.fingerprint, input_name=input_name, batch_size=self.batch_size)


class Runner(abc.ABC):
    """Runs one engine. A context manager: loads on enter, frees on exit.

    ``infer`` checks the feed against ``input_metadata`` and calls ``_infer``;
    feeds and outputs are always in the ONNX model's own layout (NCHW).
    """

    def __init__(self, engine: Path, *, threads: int) -> None:
        self.engine = Path(engine)
        self.threads = threads  # pinned by the runtime; a GPU runner ignores it
        self._active = False
        self._meta: dict[str, TensorMeta] = {}  # filled by ``_activate``

    def __enter__(self) -> Runner:
        self._activate()
        self._active = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._active = False
        self._deactivate()

    def infer(self, feed: Feed) -> Feed:
        """Check ``feed`` (names, dtypes, shapes), then run the engine on it."""
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} must be entered (use `with runner:`) before infer()")
        meta = self.input_metadata()
        if set(feed) != set(meta):
            raise ValueError(f"feed names {sorted(feed)} do not match engine inputs {sorted(meta)}")
        for name, array in feed.items():
            meta[name].check(array)
        return self._infer(feed)

    def input_metadata(self) -> dict[str, TensorMeta]:
        """Name, dtype and shape of each input, in the ONNX layout."""
        if not self._active:
            raise RuntimeError("enter the runner before asking for its inputs")
        return dict(self._meta)

    def describe(self) -> dict[str, object]:
        """How the engine runs (threads, execution precision, delegates), as the runtime reports it."""
        if not self._active:
            raise RuntimeError("enter the runner before asking how it runs")
        return self._describe()

    def _describe(self) -> dict[str, object]:
        return {}

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: Feed) -> Feed: ...


def check_build_request(backend: Backend, cfg: object, config_type: type, precision: Precision,
                        calibration: CalibrationSet | None) -> None:
    """What every ``build`` checks first: its own config section, a supported precision, the runtime
    installed, and a calibration set for INT8. Raises ``TypeError``, ``BuildError`` or ``BackendUnavailable``."""
    from edgeship.errors import BackendUnavailable, BuildError

    if not isinstance(cfg, config_type):
        raise TypeError(f"{backend.name} needs a {config_type.__name__}, got {type(cfg).__name__}")
    if precision not in backend.precisions:
        raise BuildError(backend.name, precision, f"unsupported precision; {backend.name} builds {sorted(backend.precisions)}")
    state = backend.availability()
    if not state.available:
        raise BackendUnavailable(backend.name, f"{state.reason}; install: {state.install}")
    if precision is Precision.INT8 and calibration is None:
        raise BuildError(backend.name, precision, "INT8 needs a calibration set")


@runtime_checkable
class Backend(Protocol):
    """Builds engines from an exported ONNX model and runs them."""

    name: ClassVar[str]
    precisions: ClassVar[frozenset[Precision]]

    def availability(self) -> Availability: ...

    def build(
        self,
        onnx: Artifact,
        precision: Precision,
        calibration: CalibrationSet | None,
        cfg: BaseModel,
        out_dir: Path,
    ) -> Path:
        """Write the engine under ``out_dir`` and return its main file.

        The pipeline wraps the returned file into an ``Artifact`` (hash, store
        path, manifest entry), so backends never deal with the store.
        """
        ...

    def runner(self, engine: Path, *, threads: int) -> Runner: ...


PREPARE_INFO = "prepare.json"


@runtime_checkable
class PreparingBackend(Backend, Protocol):
    """A backend whose precision is decided in the ONNX before an engine build that needs a device (TensorRT).

    ``prepare`` runs anywhere and writes the backend-bound ONNX plus ``prepare.json`` (which tool made it, how);
    ``compile`` turns a prepared ONNX into the engine. ``build`` is the two in one. The pipeline keeps the
    prepared ONNX as an artifact of its own and scores it on ONNX Runtime, labelled as a prediction, where the
    engine cannot be built.
    """

    def prepare(self, onnx: Path, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel, out_dir: Path) -> Path: ...

    def compile(self, prepared: Path, precision: Precision, cfg: BaseModel, out_dir: Path) -> Path: ...

    def preparation_versions(self) -> dict[str, str]: ...
