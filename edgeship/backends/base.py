"""The Backend and Runner interfaces every backend implements, and the facts a backend declares about itself.

This module is imported by ``import edgeship``: it must never import a
backend's runtime package. Backends import theirs lazily, inside methods.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

from edgeship.backends.tooling import error_line
from edgeship.divergence import Tap, TensorSite
from edgeship.errors import BackendUnavailable, BuildError
from edgeship.profiling import OpProfile
from edgeship.tensors import CalibrationSet, Feed, Precision, TensorMeta

if TYPE_CHECKING:
    from pydantic import BaseModel

    from edgeship.artifacts import Artifact
    from edgeship.config import BackendSection

__all__ = ["Availability", "Backend", "BackendBase", "BackendInfo", "CalibrationSet", "Feed", "Precision", "PreparingBackend",
           "Runner", "TensorMeta"]


InputWrites = Sequence[tuple[Callable[[np.ndarray], object], np.ndarray]]  # (a runner's writer, the array it writes) per input

@dataclass(frozen=True)
class BackendInfo:
    """Everything edgeship knows about a backend without importing its runtime: the registry, the recipe, ``edgeship
    backends``, ``edgeship validate``, the plots and the report read these, and nothing about a backend lives elsewhere."""

    name: str  # the recipe key and the first part of an engine's name ("onnxruntime/int8")
    display_name: str  # how people write it: "ONNX Runtime"
    colour: str  # its colour in every plot
    config: type[BackendSection]  # its recipe section
    distributions: tuple[str, ...]  # runtime packages whose versions are reported
    install: str  # the command that makes it available
    runtime_module: str  # what a runner imports; the harness imports it before timing an engine's load
    suffixes: tuple[str, ...]  # main-file suffixes of its engines, for ``edgeship validate`` to tell the backend
    companions: tuple[str, ...] = ()  # files an engine needs beside its main file: ".x" same stem, a name that file
    calibrated: frozenset[Precision] = frozenset({Precision.INT8})  # precisions whose build uses the calibration set
    report_note: str = ""  # what the report says once when an engine of this backend is in it
    build_in_child: bool = False  # the run builds its engines in a child process: its converter keeps memory it never frees
    int8_saturates: bool = False  # its CPU INT8 kernels multiply u8×s8 with VPMADDUBSW, which saturates on x86 without VNNI
    search_revision: str = ""  # how its float-layer search differs from the shared method: a change searches its engines again

    @property
    def precisions(self) -> frozenset[Precision]:
        return self.config.SUPPORTED

    def companion_paths(self, engine: Path) -> list[Path]:
        """The files beside ``engine`` that belong to it (an IR's ``.bin``), whether or not they exist."""
        return [engine.with_suffix(c) if c.startswith(".") else engine.with_name(c) for c in self.companions]


@dataclass(frozen=True)
class Availability:
    """Whether a backend can build and run here, and why not when it cannot. ``broken``: it is installed but cannot
    load (a package that raises on import, two conflicting distributions), which the run reports as a failure; a
    backend that is simply not installed, or lacks the hardware it needs, is skipped by design."""

    backend: str
    available: bool
    versions: dict[str, str] = field(default_factory=dict)
    device: str = ""
    reason: str = ""
    install: str = ""
    broken: bool = False


PROFILE_RUNS = 50  # inferences a profile averages, after as many warm-up calls as the runtime needs


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
        self._checked: dict[str, tuple[object, tuple[int, ...]]] | None = None  # dtype and shape per input of the last feed that passed

    def __enter__(self) -> Runner:
        self._activate()
        self._active = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._active = False
        self._checked = None
        self._deactivate()

    def infer(self, feed: Feed) -> Feed:
        """Check ``feed`` (names, dtypes, shapes), then run the engine on it. A feed shaped like the last one that passed
        is not checked again: the check costs microseconds, which a timed call must not carry on every iteration."""
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} must be entered (use `with runner:`) before infer()")
        checked = self._checked
        if checked is not None and len(feed) == len(checked):
            for name, array in feed.items():
                if checked.get(name) != (array.dtype, array.shape):
                    break
            else:
                return self._infer(feed)
        meta = self._meta  # a feed unlike the last one that passed: check it
        if set(feed) != set(meta):
            raise ValueError(f"feed names {sorted(feed)} do not match engine inputs {sorted(meta)}")
        for name, array in feed.items():
            meta[name].check(array)
        self._checked = {name: (array.dtype, array.shape) for name, array in feed.items()}
        return self._infer(feed)

    def timed_call(self, feed: Feed) -> Callable[[], object]:
        """The call the harness times for the report's p50: ``feed`` checked once here (through ``infer``), then only the
        work every call needs, the feed written into the runtime and the engine run. Outputs are left where the
        runtime put them, as an application reading them in place would; ``infer`` copies them out, because its next
        call overwrites them. Valid until the runner is called with other input shapes."""
        self.infer(feed)
        return self._timed_call(feed)

    def _timed_call(self, feed: Feed) -> Callable[[], object]:
        return functools.partial(self._infer, feed)

    @staticmethod
    def _write_then_run(writes: InputWrites, run: Callable[[], object]) -> Callable[[], None]:
        """A lean ``_timed_call`` for a runner whose outputs stay in buffers it keeps: each input written by the runner's
        own writer for it, then the engine run, nothing read back."""
        def call() -> None:
            for write, array in writes:
                write(array)
            run()

        return call

    def bare_call(self, feed: Feed) -> Callable[[], object] | None:
        """The runtime's own call on ``feed`` set once, nothing of edgeship's around it (what a runtime's benchmark tool
        times): the harness times it beside ``infer`` to report the per-call overhead. ``None`` where the runtime
        offers no call apart from edgeship's. Checks ``feed`` first, through ``infer``."""
        return None

    def profile(self, feed: Feed, runs: int = PROFILE_RUNS) -> OpProfile:
        """Each layer's mean time over ``runs`` inferences on ``feed``, from the runtime's own profiler, in a session of its
        own (a profiler slows what it watches); an ``OpProfile`` saying why where there is none. Checks ``feed`` first."""
        self.infer(feed)
        try:
            return self._profile(feed, runs)
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            return OpProfile.unavailable(f"the profiler failed: {error_line(str(exc)) or type(exc).__name__}")

    def _profile(self, feed: Feed, runs: int) -> OpProfile:
        return OpProfile.unavailable(f"{type(self).__name__}: the runtime offers no per-layer profiler here")

    def tap(self, sites: Sequence[TensorSite]) -> Tap:
        """The engine's own values of the FP32 ONNX's tensors (``edgeship.divergence.tensor_sites``), in a session of its
        own: marking a tensor as an output can change what the runtime fuses around it, so the timed session is never
        touched. ``Tap.exposed`` says which of them the engine has, ``Tap.local`` runs layers alone where the runtime
        can; ``ValueError`` with the reason where the runtime gives none."""
        if not self._active:
            raise RuntimeError("enter the runner before tapping its tensors")
        try:
            return self._tap(list(sites))
        except (RuntimeError, OSError, KeyError) as exc:
            raise ValueError(f"reading the engine's tensors failed: {error_line(str(exc)) or type(exc).__name__}") from None

    def _tap(self, sites: list[TensorSite]) -> Tap:
        raise ValueError(f"{type(self).__name__}: the runtime offers no way to read an engine's intermediate tensors here")

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


class BackendBase(abc.ABC):
    """What every backend shares: the public ``build`` checks the request and turns whatever the tool raised into one
    ``BuildError`` with the tool's telling line; the private ``_build`` does the work (Polygraphy's public/private split).
    ``name`` and ``precisions`` come from the subclass's ``info``."""

    info: ClassVar[BackendInfo]
    name: ClassVar[str]
    precisions: ClassVar[frozenset[Precision]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "info" in cls.__dict__:
            cls.name = cls.info.name
            cls.precisions = cls.info.precisions

    @abc.abstractmethod
    def availability(self) -> Availability: ...

    @abc.abstractmethod
    def runner(self, engine: Path, *, threads: int) -> Runner: ...

    def build(self, onnx: Artifact, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel,
              out_dir: Path) -> Path:
        """Write the engine under ``out_dir`` and return its main file; ``BuildError`` with the tool's words otherwise.

        The pipeline wraps the returned file into an ``Artifact`` (hash, store path, manifest entry), so backends
        never deal with the store.
        """
        self._check_request(cfg, precision, calibration)
        with self._build_errors(precision):
            return self._build(onnx.path, precision, calibration, cfg, out_dir)

    @abc.abstractmethod
    def _build(self, onnx: Path, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel,
               out_dir: Path) -> Path: ...

    def _check_request(self, cfg: object, precision: Precision, calibration: CalibrationSet | None) -> None:
        """Its own config section, a supported precision, the runtime installed, a calibration set for INT8."""
        self._check_config(cfg)
        if precision not in self.precisions:
            raise BuildError(self.name, precision, f"unsupported precision; {self.name} builds {sorted(self.precisions)}")
        self._require_available()
        self._check_calibration(precision, calibration)

    def _check_config(self, cfg: object) -> None:
        if not isinstance(cfg, self.info.config):
            raise TypeError(f"{self.name} needs a {self.info.config.__name__}, got {type(cfg).__name__}")

    def _require_available(self) -> None:
        state = self.availability()
        if not state.available:
            raise BackendUnavailable(self.name, f"{state.reason}; install: {state.install}")

    def _check_calibration(self, precision: Precision, calibration: CalibrationSet | None) -> None:
        if precision is Precision.INT8 and calibration is None:
            raise BuildError(self.name, precision, "INT8 needs a calibration set")

    @contextlib.contextmanager
    def _build_errors(self, precision: Precision) -> Iterator[None]:
        """The one place a tool's exception becomes a ``BuildError``: converters and quantizers raise anything."""
        try:
            yield
        except (BuildError, BackendUnavailable):
            raise
        except Exception as exc:
            raise BuildError(self.name, precision, f"{type(exc).__name__}: {self._error_text(exc)}") from exc

    def precision_of(self, engine: Path) -> Precision | None:
        """The precision of an engine file made elsewhere (``edgeship validate``), or ``None`` when the file does not
        tell. By default edgeship's own ``model.<precision>.<suffix>`` name; a backend whose files say more reads them."""
        parts = engine.name.split(".")
        return Precision(parts[1]) if len(parts) == 3 and parts[1] in set(Precision) else None

    @staticmethod
    def _error_text(exc: BaseException) -> str:
        """A tool error's telling line; a backend whose tool puts it elsewhere overrides this."""
        return error_line(str(exc))


@runtime_checkable
class Backend(Protocol):
    """Builds engines from an exported ONNX model and runs them (``BackendBase`` is the shared implementation)."""

    info: ClassVar[BackendInfo]
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

    def precision_of(self, engine: Path) -> Precision | None: ...


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
