"""Where an engine is measured: on this host, in a pinned process of its own (``LocalMeasurer``), or on an edge device
through its agent (``DeviceMeasurer``).

The validate stage holds a ``Measurer`` and never calls the harness or an agent itself, so measuring somewhere else
(another device, a node of a cluster) is another ``Measurer``. Both return the harness's result, with the engine's
outputs (``logits.npy``) and timings (``timings.npz``) in the result's folder, so a result is scored the same wherever
it was taken. A measurer may be called from several threads: what it prepares once (the evaluation inputs, their
hash) is made under a lock.
"""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from edgeship.agent.client import AgentClient, AgentError, measure_remote, with_retries
from edgeship.agent.protocol import EngineRef, EngineToTime, JobRequest, TogetherRequest
from edgeship.artifacts import Artifact, sha256_file
from edgeship.backends import REGISTRY
from edgeship.data import save_preprocessed
from edgeship.errors import StageError
from edgeship.harness import HarnessError, HarnessSpec, measure_isolated
from edgeship.pipeline.base import RunContext
from edgeship.progress import progress_bar
from edgeship.recipe import DeviceConfig, ValidateConfig

STAGE = "validate"  # the stage a measurement failure is reported under
BASELINE_RUNTIME = "pytorch"  # the FP32 baseline's runner: not a registered backend


@dataclass(frozen=True)
class MeasureRequest:
    """One engine to measure. ``timed=False`` scores it only (a prediction: its latency there would mean nothing)."""

    name: str  # the result's name: "onnxruntime/int8", "onnxruntime/int8@nuc"
    backend: str  # the runtime that runs the file (a prediction's ``runs_on``), or "pytorch" for the baseline
    engine: Path  # the engine's main file (the baseline: its model artifact's record)
    input_name: str
    timed: bool
    cross_check: bool = False  # also run the backend's own benchmark tool (on a device: there)
    torch_model_config: dict[str, Any] | None = None  # the baseline's model config, for an artifact that records none
    artifact: Artifact | None = None  # the stored engine: every file, its sha256 and input shape
    every_output: bool = False  # keep every output by name (outputs.npz: a generic model), not the one class-score output


class Measurer(abc.ABC):
    """Measures one engine at a time with the recipe's settings (``cfg``) on ``threads`` threads."""

    def __init__(self, cfg: ValidateConfig, threads: int) -> None:
        self.cfg = cfg
        self.threads = threads

    def measure(self, request: MeasureRequest, folder: Path) -> dict[str, Any]:
        """The harness's result for ``request``, its files in ``folder``; ``StageError`` with the cause when the engine
        could not be measured there."""
        if request.backend != BASELINE_RUNTIME and request.backend not in REGISTRY:
            raise ValueError(f"{request.name}: unknown runtime {request.backend!r}")
        if not folder.is_dir():
            raise ValueError(f"{request.name}: the result folder {folder} does not exist")
        self._check(request)
        return self._measure(request, folder)

    def where(self) -> dict[str, Any]:
        """Where the numbers were taken, for the result's metrics; nothing for this host (the manifest names it)."""
        return {}

    def _check(self, request: MeasureRequest) -> None:
        """What this measurer needs of a request beyond the common checks; ``ValueError`` when it is missing."""
        return

    @abc.abstractmethod
    def _measure(self, request: MeasureRequest, folder: Path) -> dict[str, Any]: ...


class LocalMeasurer(Measurer):
    """The harness on this host: each engine in a process of its own, pinned to ``cpus``, with a progress bar. The
    preprocessed evaluation split is written once into ``scratch``, on first need (a rerun that reuses every result
    needs none), for every measuring process to map."""

    def __init__(self, cfg: ValidateConfig, threads: int, cpus: tuple[int, ...] | None, scratch: Path, ctx: RunContext) -> None:
        super().__init__(cfg, threads)
        self.cpus, self.scratch, self.ctx = cpus, scratch, ctx
        self._lock = threading.Lock()
        self._eval_inputs: Path | None = None

    @property
    def eval_inputs(self) -> Path:
        """The evaluation inputs: preprocessed images (.npy, fed under the request's input name) or named arrays (.npz)."""
        with self._lock:
            if self._eval_inputs is None:
                arrays = self.ctx.dataset.eval.arrays
                path = self.scratch / ("eval-inputs.npz" if arrays else "eval-inputs.npy")
                if arrays:
                    np.savez(path, **arrays)
                else:
                    save_preprocessed(path, self.ctx.dataset.eval.images, self.ctx.recipe.data.preprocessing)
                self._eval_inputs = path
            return self._eval_inputs

    def _measure(self, request: MeasureRequest, folder: Path) -> dict[str, Any]:
        spec = HarnessSpec(**settings(self.cfg, self.threads, timed=request.timed), cross_check=request.cross_check and request.timed,
                           backend=request.backend, engine=request.engine, torch_model_config=request.torch_model_config,
                           input_name=request.input_name, inputs=self.eval_inputs, outputs=folder / outputs_file(request),
                           timings=folder / "timings.npz" if request.timed else None, cpus=self.cpus)
        with progress_bar(self.ctx.console) as bar:
            task = bar.add_task(f"{request.name}: starting its process", total=None,
                                info=f"batch {self.cfg.batch_size}, {self.threads} threads")

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=f"{request.name}: {what}", completed=done, total=total)

            try:
                with self.ctx.occupancy.timing():  # in a sweep: no other trial works on this machine while it is timed
                    return measure_isolated(spec, folder, progress)
            except HarnessError as exc:
                raise StageError(STAGE, f"{request.name}: {exc}") from None


class DeviceMeasurer(Measurer):
    """The harness on a device agent: the engine's files and the evaluation inputs go up by hash, the job runs there,
    its outputs (or, over the device's ``outputs_limit_mib``, its scores against ``reference``) and timings come back
    into the result's folder. Faults are retried by the device's policy, then a ``StageError`` with the cause."""

    def __init__(self, local: LocalMeasurer, client: AgentClient, device: DeviceConfig, described: dict[str, Any], threads: int,
                 reference: np.ndarray) -> None:
        super().__init__(local.cfg, threads)
        self.local, self.client, self.device, self.described, self.reference = local, client, device, described, reference
        self._lock = threading.Lock()
        self._prepared: dict[str, tuple[str, Path]] = {}

    def where(self) -> dict[str, Any]:
        return {"device_name": self.device.name, "agent": self.device.url, "device": self.described["device"],
                "agent_edgeship": self.described.get("edgeship")}

    def _check(self, request: MeasureRequest) -> None:
        if request.every_output:
            raise ValueError(f"{request.name}: a device measures models with one class-score output; this one keeps every output")
        if request.artifact is None or not request.artifact.files:
            raise ValueError(f"{request.name}: a device measures a stored engine, every file of it; this request has none")

    def _sent(self, role: str) -> tuple[str, Path]:
        """(sha256, file) of what a job may need: the evaluation inputs, or for a device that scores the outputs itself
        the reference outputs and the labels; each written and hashed once, when first needed, for every engine sent."""
        with self._lock:
            if role not in self._prepared:
                if role == "inputs":
                    path = self.local.eval_inputs
                else:
                    path = self.local.scratch / f"{role}.npy"
                    np.save(path, self.reference if role == "reference" else np.asarray(self.local.ctx.dataset.eval.labels))
                self._prepared[role] = (sha256_file(path), path)
            return self._prepared[role]

    def _measure(self, request: MeasureRequest, folder: Path) -> dict[str, Any]:
        artifact, device = request.artifact, self.device
        assert artifact is not None  # _check
        scored_there = self.reference.astype(np.float32).nbytes > device.outputs_limit_mib * 1024 * 1024  # the outputs' size
        roles = ["inputs"]
        if scored_there:
            roles += ["reference"] + (["labels"] if self.local.ctx.dataset.eval.labels is not None else [])
        sent = {role: self._sent(role) for role in roles}
        files = {digest: artifact.folder / file for file, digest in artifact.files.items()}
        files.update(dict(sent.values()))
        scoring = {role: digest for role, (digest, _) in sent.items() if role != "inputs"}
        job = JobRequest(engine=_engine_ref(artifact, request.backend, request.engine.name),
                         inputs=sent["inputs"][0], input_name=request.input_name, input_shape=tuple(artifact.meta["input_shape"]),
                         **settings(self.cfg, self.threads, timed=request.timed), timed=request.timed,
                         cross_check=request.cross_check and request.timed, outputs="metrics" if scored_there else "full", **scoring)
        result = self._remote(request.name, job, files, folder)
        (folder / "harness-result.json").write_text(json.dumps(result, indent=2))
        return result

    def time_together(self, engines: dict[str, Artifact], rounds: int, folder: Path) -> dict[str, Any]:
        """The engines (row name → engine) timed together on the device in ``rounds`` interleaved rounds
        (``POST /together``): each round's figures and the raw times in ``folder/timings.npz``. Raises ``StageError``."""
        timed = tuple(EngineToTime(name=name, input_name=engine.meta["input_name"], engine=_engine_ref(engine))
                      for name, engine in engines.items())
        inputs = self._sent("inputs")
        files = {digest: engine.folder / file for engine in engines.values() for file, digest in engine.files.items()}
        files[inputs[0]] = inputs[1]
        job = TogetherRequest(engines=timed, inputs=inputs[0], rounds=rounds, **settings(self.cfg, self.threads, timed=False))
        label = f"{next(iter(engines.values())).meta['backend']}@{self.device.name}"
        return self._remote(f"{label}: engines timed together", job, files, folder)

    def _remote(self, label: str, job: JobRequest | TogetherRequest, files: dict[str, Path], folder: Path) -> dict[str, Any]:
        """One job on the device, with a progress bar and the device's retry policy."""
        device = self.device
        with progress_bar(self.local.ctx.console) as bar:
            task = bar.add_task(f"{label}: sending it to {device.name}", total=None, info=f"{device.url}, {self.threads} threads")

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=f"{label}: {what}", completed=done, total=total or None)

            try:
                return with_retries(lambda: measure_remote(self.client, job, files, folder, job_timeout_s=device.job_timeout_s,
                                                           progress=progress),
                                    retries=device.retries, delay_s=device.retry_delay_s, on_retry=retry_note(self.local.ctx, label))
            except AgentError as exc:
                raise StageError(STAGE, f"device {device.name}: {exc}") from None


def _engine_ref(engine: Artifact, backend: str | None = None, main: str | None = None) -> EngineRef:
    """A stored engine as the agent rebuilds it, every file by its sha256."""
    return EngineRef(backend=backend or engine.meta["backend"], main=main or engine.path.name, sha256=engine.sha256,
                     files=dict(engine.files))


def outputs_file(request: MeasureRequest) -> str:
    """Where a result keeps the engine's outputs: ``logits.npy`` (class scores), or every output in ``outputs.npz``."""
    return "outputs.npz" if request.every_output else "logits.npy"


def settings(cfg: ValidateConfig, threads: int, *, timed: bool) -> dict[str, Any]:
    """The harness settings of the recipe's ``validate:`` section, for a measurement here or on a device: a timed
    engine's bare runtime call is timed too, beside ``Runner.infer``, so its per-call overhead is reported, and it is
    profiled layer by layer after timing."""
    return {"threads": threads, "warmup": cfg.warmup, "iterations": cfg.iterations, "min_seconds": cfg.min_seconds,
            "batch_size": cfg.batch_size, "throughput_batch_sizes": tuple(cfg.throughput_batch_sizes) if timed else (),
            "throughput_seconds": cfg.throughput_seconds, "eval_batch_size": cfg.eval_batch_size, "bare_call": timed,
            "profile": timed}


def retry_note(ctx: RunContext, what: str) -> Callable[[int, AgentError], None]:
    """A line on the console for each retry of ``what``."""

    def note(attempt: int, exc: AgentError) -> None:
        ctx.console.print(f"[yellow]↻ {escape(what)}: {escape(str(exc))}; retry {attempt}[/yellow]", soft_wrap=True)

    return note
