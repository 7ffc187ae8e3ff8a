"""What the host and the device agent exchange: an engine by the sha256 of its files, a job, and its state.

Files travel by hash (``PUT /files/<sha256>``), so an engine or a feed sent once is never sent again, and a
name in a request can only ever be a plain file name inside the agent's cache.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeship.harness import MeasureSettings

PROTOCOL = 1
SHA256 = r"^[0-9a-f]{64}$"
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"  # one path component, never '.', '..' or hidden
ENGINE_HEADER = "X-Edgeship-Engine-Sha256"
RESULT_FILES = ("logits.npy", "timings.npz")


def matches(pattern: str, value: str) -> bool:
    """``value`` is all ``pattern`` (one of the anchored patterns above) and nothing more: ``re.match`` with ``$`` would
    also take a trailing newline."""
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineRef(_Message):
    """An engine as the agent rebuilds it: its backend, its main file and every file by sha256."""

    backend: str = Field(pattern=r"^[a-z0-9_]+$")
    main: str = Field(pattern=FILE_NAME)
    sha256: str = Field(pattern=SHA256, description="the main file's sha256: the engine's identity in every reply")
    files: dict[str, str] = Field(description="file name → sha256, the main file included")

    @model_validator(mode="after")
    def _consistent(self) -> EngineRef:
        for name, digest in self.files.items():
            if not matches(FILE_NAME, name) or not matches(SHA256, digest):
                raise ValueError(f"files: {name!r} → {digest!r} is not a plain file name and a sha256")
        if self.files.get(self.main) != self.sha256:
            raise ValueError(f"files: the main file {self.main!r} must be listed with the engine's sha256")
        return self


class JobRequest(MeasureSettings):
    """Measure one engine: the harness's settings, the inputs by sha256, and how much to send back."""

    engine: EngineRef
    inputs: str = Field(pattern=SHA256, description=".npy of preprocessed inputs in the ONNX layout")
    input_name: str
    input_shape: tuple[int, ...] = Field(description="one sample's shape, as the engine was built for it")
    timed: bool = True
    outputs: Literal["full", "metrics"] = Field(
        default="full", description="full: send the outputs back; metrics: score them here against `reference` (and `labels`)")
    reference: str | None = Field(default=None, pattern=SHA256, description=".npy of the FP32 reference outputs (metrics mode)")
    labels: str | None = Field(default=None, pattern=SHA256, description=".npy of the evaluation labels (metrics mode), if labelled")

    @model_validator(mode="after")
    def _scoring_inputs(self) -> JobRequest:
        if self.outputs == "metrics" and self.reference is None:
            raise ValueError("outputs 'metrics' needs the reference outputs' sha256 in 'reference'")
        return self

    def hashes(self) -> dict[str, str]:
        """Every file the job needs, by role, for the 'missing file' answer."""
        needed = {f"engine file {name}": digest for name, digest in self.engine.files.items()}
        needed["inputs"] = self.inputs
        for role in ("reference", "labels"):
            if getattr(self, role):
                needed[role] = getattr(self, role)
        return needed


class EngineToTime(_Message):
    """One engine of a ``TogetherRequest``: the name its figures come back under, and how it is fed."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./@-]{0,127}$")
    engine: EngineRef
    input_name: str


class TogetherRequest(MeasureSettings):
    """Time engines together on the device (``edgeship.interleave``): each loaded once in a process of its own, then
    taking turns in ``rounds`` short slices, so that a change of the device's speed (a throttled clock, another load)
    falls on all of them alike. Latency only; ``min_seconds`` and ``iterations`` are shared out among the slices. The
    job's state names the first engine (``engine``), and its ``timings.npz`` comes back under that engine's sha256."""

    engines: tuple[EngineToTime, ...] = Field(min_length=2)
    inputs: str = Field(pattern=SHA256, description=".npy of preprocessed inputs in the ONNX layout")
    rounds: int = Field(ge=1, le=1000)

    @model_validator(mode="after")
    def _distinct(self) -> TogetherRequest:
        names = [engine.name for engine in self.engines]
        if len(set(names)) != len(names):
            raise ValueError(f"engines: each name once, not {names}")
        return self

    @property
    def engine(self) -> EngineRef:
        return self.engines[0].engine

    def hashes(self) -> dict[str, str]:
        needed = {f"engine file {timed.name}/{name}": digest for timed in self.engines for name, digest in timed.engine.files.items()}
        needed["inputs"] = self.inputs
        return needed


class ProbeRequest(_Message):
    """Run a release's acceptance probe on the device (``edgeship release verify --device``): the release folder's files
    by sha256 (``engine.main`` is its ``release.json``), the public keys it must be signed with (PEM text), and the
    threads to run it on. The device verifies and probes it with the device loader, ``edgeship_deploy``."""

    engine: EngineRef
    trusted_keys: tuple[str, ...] = ()
    allow_unsigned: bool = False
    threads: int | None = Field(default=None, ge=1)

    def hashes(self) -> dict[str, str]:
        return {f"release file {name}": digest for name, digest in self.engine.files.items()}


class JobState(_Message):
    """A job as the agent reports it. ``engine`` is repeated in every reply, so the host can check it."""

    id: str
    state: Literal["queued", "running", "done", "failed"]
    engine: EngineRef
    position: int | None = Field(default=None, description="jobs ahead of this one, while queued")
    progress: dict[str, Any] | None = None
    submitted: float
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    files: tuple[str, ...] = ()
