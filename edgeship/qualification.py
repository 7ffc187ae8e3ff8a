"""The qualification report as types: who an engine is (``EngineKey``), what was measured of it (``EngineRow``), what
each gate said of it (``GateResult``), what to ship (``Recommendation``) and the release verdict (``Release``).

The report stage builds a ``Report`` from the manifest, the gates judge ``EngineRow``s, and ``report.json`` is the
``Report`` written out, so an engine's identity is never a string to parse back: ``"onnxruntime/int8@nuc"`` is
``EngineKey(backend="onnxruntime", precision="int8", device="nuc")``, and the name, the recommendation group
(``target``) and the device come from it. The deep measurement records (latency statistics, throughput, memory, runtime
description, cross-check, INT8 side files) stay plain mappings here; their producers (``measure``, the harness, the
backends) define them.
"""

from __future__ import annotations

import statistics
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from edgeship.divergence import Divergence
from edgeship.peak import Peak
from edgeship.profiling import OpProfile

Outcome = Literal["pass", "fail", "not-applicable"]
Verdict = Literal["pass", "fail", "skipped", "error"]
Status = Literal["ok", "failed", "skipped"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineKey(_Record):
    """One engine on one machine: its backend and precision, and the edge device that measured it (``None``: this host)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    precision: str
    device: str | None = None

    @property
    def engine(self) -> str:
        """The engine's name wherever it runs: ``onnxruntime/int8``."""
        return f"{self.backend}/{self.precision}"

    @property
    def name(self) -> str:
        """The row's name: ``onnxruntime/int8``, or ``onnxruntime/int8@nuc`` when a device measured it."""
        return self.engine if self.device is None else f"{self.engine}@{self.device}"

    @property
    def target(self) -> str:
        """What the recommendation is grouped by: the backend, per device (``onnxruntime@nuc``)."""
        return self.backend if self.device is None else f"{self.backend}@{self.device}"


class GatePrediction(_Record):
    """What an accuracy gate would say on a prediction (TensorRT's prepared ONNX scored on ONNX Runtime): never a pass."""

    value: float
    would: Literal["pass", "fail"]
    label: str | None = None


class GateResult(_Record):
    gate: str
    title: str
    outcome: Outcome
    value: float | None
    limit: float | None
    detail: str
    prediction: GatePrediction | None = None


class Scores(_Record):
    """What the outputs scored on the evaluation split: top-1 against labels (None without), agreement with the FP32
    reference, and the drop against the FP32 baseline. An engine's row and a prediction both have them."""

    eval_samples: int | None = None
    top1: float | None = None
    top1_agreement: float | None = None
    top1_agreement_ci95: tuple[float, float] | None = None  # 95% interval (``measure.agreement_interval``)
    top1_agreement_groups: int | None = None  # the groups (photos) the interval resampled; None: samples as independent
    top5_agreement: float | None = None
    max_abs_error: float | None = None
    mean_cosine: float | None = None
    # output fidelity against the FP32 reference (every model; the measures of a generic one): the worst output's figures,
    # and each output's (``measure.fidelity``)
    min_cosine: float | None = None
    min_sqnr_db: float | None = None
    max_relative_l2: float | None = None
    fidelity: dict[str, dict[str, float]] | None = None
    top1_drop_points: float | None = None
    top1_relative_to_fp32: float | None = None


class Prediction(Scores):
    """A prepared ONNX standing in for an engine that could not be built here, scored on another runtime."""

    engine: str
    on: str
    label: str
    top1_drop_vs_onnx_fp32_points: float | None = None


class Reused(_Record):
    build: bool
    validate_: bool | None = Field(alias="validate")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TimedTogether(_Record):
    """An engine's p50 from rounds that timed its backend's engines together (``edgeship.pipeline.together``): what the
    recommendation ranks, where the row has it."""

    p50_ms: float
    p50_ci95: tuple[float, float]
    p99_ms: float
    iterations: int
    round_p50_ms: list[float]
    rounds: int
    engines: list[str]  # every engine timed in those rounds
    measured_in: str
    measured_at: str

    @property
    def round_median_ms(self) -> float:
        """The median of the rounds' p50s: what the recommendation quotes, beside its round-by-round ratios."""
        return statistics.median(self.round_p50_ms)


class EngineRow(Scores):
    """One engine (on one machine): how it was built, what was measured, and what the gates said."""

    key: EngineKey
    status: Status
    reason: str = ""
    artifact: str | None = None
    sha256: str | None = None
    path: str | None = None
    build_seconds: float | None = None
    reused: Reused
    # measured (null when the engine was not built or not measured); the scores come from ``Scores``
    size_bytes: int | None = None
    top1_drop_vs_backend_fp32_points: float | None = None
    latency: dict[str, Any] | None = None
    bare_latency: dict[str, Any] | None = None  # the runtime's own call on a feed set once, timed beside ``latency``
    call_overhead_us: float | None = None  # timed call minus bare call, round by round: what edgeship's call adds
    throughput: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    load_ms: float | None = None
    first_inference_ms: float | None = None
    import_ms: float | None = None
    threads: int | None = None
    cpus: list[int] | None = None
    runtime: dict[str, Any] | None = None
    isolated: bool | None = None
    measured_at: str | None = None
    measured_in: str | None = None  # the run that timed it (None: a result stored before runs were recorded)
    timed_together: TimedTogether | None = None  # its p50 timed again beside its backend's other engines
    cross_check: dict[str, Any] | None = None
    profile: OpProfile | None = None  # each layer's time from the runtime's profiler, taken after timing
    divergence: Divergence | None = None  # each tensor against the FP32 ONNX's, on validation samples
    macs_per_sample: int | None = None  # of the exported FP32 model (``edgeship.macs``)
    achieved_gmacs: float | None = None  # macs_per_sample × batch / p50
    fraction_of_peak: float | None = None  # achieved_gmacs over this machine's GEMM rate at the engine's precision
    # what the build left beside an INT8 engine, and a preparing backend's prepared ONNX and its prediction
    float_layers: dict[str, Any] | None = None
    float_search: dict[str, Any] | None = None  # keep_float: auto: the target, the ranking, every candidate and the choice
    weight_rounding: dict[str, Any] | None = None
    prepared: dict[str, Any] | None = None
    predicted: Prediction | None = None
    # judged
    verdict: Verdict | None = None
    gates: list[GateResult] = Field(default_factory=list)
    required: bool = False

    @model_validator(mode="before")
    @classmethod
    def _without_derived(cls, data: Any) -> Any:
        """A row read back from ``report.json`` carries its key's derived fields too; the key alone is the identity."""
        if isinstance(data, dict) and "key" in data:
            return {k: v for k, v in data.items() if k not in DERIVED}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str:
        return self.key.name

    @computed_field  # type: ignore[prop-decorator]
    @property
    def backend(self) -> str:
        return self.key.backend

    @computed_field  # type: ignore[prop-decorator]
    @property
    def precision(self) -> str:
        return self.key.precision

    @computed_field  # type: ignore[prop-decorator]
    @property
    def target(self) -> str:
        return self.key.target

    @property
    def p50_ms(self) -> float:
        """The measured p50 the recommendation ranks by; only for a measured row."""
        assert self.latency is not None, f"{self.name} has no latency"
        return float(self.latency["p50_ms"])


class Recommendation(_Record):
    """The engine to ship for one backend (per device), or none, and why in words."""

    engine: str | None
    precision: str | None = None
    reason: str


DERIVED = ("name", "backend", "precision", "target")  # an engine row's fields computed from its key


class Release(_Record):
    """The verdict the exit code follows, decided once (``gates.release``) and read by every rendering: a pass needs a
    finished run, at least one required engine built, measured and passing, and no required engine that did not pass.
    ``reasons`` says in words why it failed."""

    required: list[str]
    qualified: list[str]  # required engines that were built, measured and passed every gate
    failing: list[str]  # required engines that did not pass: a failed gate, a failed build or run, a skip
    finished: bool  # whether the run reached its report: a killed run's missing rows cannot be judged
    reasons: list[str]
    passed: bool
    exit_code: int


class Report(_Record):
    """``report.json``: everything a rendering shows, built from the run's manifest alone."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(alias="schema")
    schema_version: int
    run_id: str
    recipe: str | None
    recipe_path: str | None
    created: str
    edgeship: str
    source: dict[str, Any]
    device: dict[str, Any]
    tools: dict[str, Any]
    threads: int | None
    cpus: list[int] | None
    dataset: dict[str, Any] | None
    task: Literal["classification", "generic"] = "classification"
    accuracy: dict[str, str]
    calibration: dict[str, Any] | None
    baseline: dict[str, Any] | None
    prune: dict[str, Any] | None
    sensitivity: dict[str, Any] | None
    distill: dict[str, Any] | None
    gates: dict[str, Any]
    engines: list[EngineRow]
    devices: dict[str, Any]
    recommendations: dict[str, Recommendation]
    release: Release
    notes: list[str]
    recipe_document: dict[str, Any]
    artifacts: list[dict[str, Any]]
    student_vs_teacher: dict[str, Any] | None = None
    peak: Peak | None = None  # this machine's FP32 and INT8 GEMM rates, which ``fraction_of_peak`` is measured against

    def document(self) -> dict[str, Any]:
        """The report as plain data, exactly as ``report.json`` holds it."""
        return self.model_dump(mode="json", by_alias=True)
