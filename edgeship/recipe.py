"""Recipes: YAML files validated by pydantic models, one per stage and per backend.

Every model forbids unknown keys. ``load_recipe`` turns any problem into a
one-line ``RecipeError`` naming the file, the key and what is allowed.
Input paths in a recipe (checkpoints, data folders) are relative to the recipe
file; output folders (store, reports) are relative to the working directory.
"""

from __future__ import annotations

import copy
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from edgeship.backends.onnxruntime import OnnxRuntimeConfig
from edgeship.backends.openvino import OpenVinoConfig
from edgeship.backends.tensorrt import TensorRtConfig
from edgeship.backends.tflite import TfliteConfig
from edgeship.config import Section
from edgeship.device import pinned_cpus
from edgeship.errors import RecipeError
from edgeship.tensors import Precision
from edgeship.zoo import ZOO
from edgeship.zoo.pretrained import PRETRAINED

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
PACKAGE_SCHEME = "package://"
Limit = float | dict[str, float]  # one limit for every output, or one per output name


class Preprocessing(Section):
    """How raw uint8 images become model inputs: ``(pixel * scale - mean) / std``, NCHW float32."""

    scale: PositiveFloat = 1 / 255
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[PositiveFloat, ...] = (0.3530,)
    color: Literal["gray", "rgb"] = "gray"
    resize: tuple[PositiveInt, PositiveInt] | None = Field(default=None, description="(height, width); None keeps the size")

    @model_validator(mode="after")
    def _channels_match(self) -> Preprocessing:
        channels = 1 if self.color == "gray" else 3
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, channels):
                raise ValueError(f"{key} needs 1 or {channels} values for color={self.color!r}")
        return self


class DataConfig(Section):
    """The data: training, validation (held out from training) and evaluation splits.

    ``sample_photos`` has no labels and no training split: crops of the photographs bundled with scikit-learn and
    scikit-image, for a pretrained model's calibration and evaluation (accuracy there is agreement with FP32).
    ``image_folder`` is the user's labelled images: ``root/train/<class>/*`` and ``root/test/<class>/*``.
    ``arrays`` is a model's inputs as they are, one named array per input in an ``.npz`` (token ids and masks, features),
    cut at random into evaluation, calibration, validation and training samples; it has no labels.
    """

    UNLABELLED: ClassVar[frozenset[str]] = frozenset({"sample_photos", "arrays"})

    dataset: Literal["fashion_mnist", "digits", "sample_photos", "image_folder", "arrays"] = "fashion_mnist"
    path: Path | None = Field(default=None, description="arrays: the .npz holding one array per model input, N samples each")
    root: Path = Field(default=FASHION_MNIST_ROOT, description="fashion_mnist: the IDX files; image_folder: the folder holding "
                                                               "train/ and test/, one subfolder of images per class")
    fallback: bool = Field(default=True, description="use scikit-learn digits when the dataset is absent")
    train_size: PositiveInt | None = Field(default=None, description="cap on training images; None uses all")
    val_size: PositiveInt = 5000
    eval_size: PositiveInt | None = Field(default=None, description="cap on evaluation images; None uses the whole test set")
    extra_eval_photos: Literal["opencv-doc"] | None = Field(
        default=None, description="sample_photos: add crops of the natural photos among OpenCV's sample data (Debian's "
                                  "opencv-doc) to the evaluation split only, so it is not 16 photos' crops; calibration and "
                                  "validation stay the same")
    preprocessing: Preprocessing = Preprocessing()

    @model_validator(mode="after")
    def _dataset_needs(self) -> DataConfig:
        if self.dataset == "sample_photos" and self.preprocessing.resize is None:
            raise ValueError("dataset sample_photos needs preprocessing.resize, the model's input (height, width), e.g. [224, 224]")
        if self.extra_eval_photos is not None and self.dataset != "sample_photos":
            raise ValueError(f"extra_eval_photos widens dataset sample_photos's evaluation split; dataset {self.dataset!r} has its own")
        if self.dataset == "image_folder" and self.root == FASHION_MNIST_ROOT:
            raise ValueError("dataset image_folder needs root: the folder holding train/ and test/, one subfolder of images per class")
        if (self.dataset == "arrays") != (self.path is not None):
            raise ValueError("dataset arrays needs path: the .npz of model inputs" if self.path is None else
                             f"path is the .npz of dataset arrays; dataset {self.dataset!r} does not read it")
        return self

    @property
    def labelled(self) -> bool:
        return self.dataset not in self.UNLABELLED


class CalibrationConfig(Section):
    """The INT8 calibration set, shared by every backend."""

    size: PositiveInt = 1000
    source: Path | None = Field(default=None, description="folder of images or .npy/.npz files; None holds out images from the train set")


class TrainConfig(Section):
    epochs: PositiveInt = 4
    batch_size: PositiveInt = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.1
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class InputDecl(Section):
    """One input of a PyTorch model that does not take one image: name, dtype and shape. A dimension given by a name
    (``batch``, ``sequence``) is dynamic in the exported ONNX; inputs that name the same dimension share it."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = "float32"
    shape: tuple[PositiveInt | Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], ...]

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, value: tuple[int | str, ...]) -> tuple[int | str, ...]:
        if not value or not isinstance(value[0], str):
            raise ValueError("the first dimension is the batch: give it a name, e.g. [batch, sequence]")
        return value


class ModelConfig(Section):
    """A bundled zoo architecture (trained here), a ``pretrained`` network from an installed package, a user's
    ``factory`` (+ ``checkpoint``), or an ``onnx`` model, which is its own FP32 reference (no PyTorch: no pruning or
    distillation)."""

    zoo: str | None = None
    onnx: str | None = Field(default=None, description="an ONNX file (relative to the recipe), or 'package://<package>/<file>' "
                                                       "inside an installed package, found without importing it")
    width: PositiveInt = Field(default=32, description="zoo models: channels of the first stage")
    pretrained: str | None = Field(default=None, description="a pretrained network loaded from its installed package, never "
                                                             "downloaded; e.g. efficientnet_lite0")
    factory: str | None = Field(default=None, description="'package.module:function' or 'path/to/file.py:function' (relative to "
                                                          "the recipe) returning an nn.Module; trusted code")
    checkpoint: Path | None = Field(default=None, description="state_dict loaded with torch.load(weights_only=True)")
    inputs: tuple[InputDecl, ...] = Field(default=(), description="factory: the model's named inputs, in its forward's order, for a "
                                                                  "model that does not take one image (task: generic)")
    outputs: tuple[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")], ...] = Field(
        default=(), description="factory with inputs: names of its outputs, in the order it returns them")
    train: TrainConfig = TrainConfig()

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        if value is not None and not FACTORY.fullmatch(value):
            raise ValueError("expected 'package.module:function' or 'path/to/file.py:function'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [key for key in ("zoo", "pretrained", "factory", "onnx") if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of zoo, pretrained, factory or onnx, not {' and '.join(given)}")
        if self.onnx is not None and not (self.onnx.startswith(PACKAGE_SCHEME) or self.onnx.lower().endswith(".onnx")):
            raise ValueError(f"onnx: expected a .onnx file or '{PACKAGE_SCHEME}<package>/<file>.onnx'")
        if (self.inputs or self.outputs) and self.factory is None:
            raise ValueError("inputs and outputs declare a factory model's tensors; an ONNX model has its own, and zoo and pretrained "
                             "models take one image")
        if self.outputs and not self.inputs:
            raise ValueError("outputs name the outputs of a model with declared inputs: give inputs too")
        for kind in ("inputs", "outputs"):
            names = [getattr(item, "name", item) for item in getattr(self, kind)]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{kind}: {repeated[0]!r} appears twice")
        if self.checkpoint is not None and self.factory is None and self.pretrained is None:
            raise ValueError("checkpoint needs factory or pretrained (zoo models are trained here)")
        if not given:
            object.__setattr__(self, "zoo", "resnet_small")
        if self.zoo is not None and self.zoo not in ZOO:
            raise ValueError(f"unknown zoo model {self.zoo!r}; the zoo has {', '.join(sorted(ZOO))}")
        if self.pretrained is not None and self.pretrained not in PRETRAINED:
            raise ValueError(f"unknown pretrained model {self.pretrained!r}; known: {', '.join(sorted(PRETRAINED))}")
        return self

    @property
    def named_inputs(self) -> bool:
        """Whether this is a PyTorch model with declared inputs (not one image): run and exported by its inputs' names."""
        return bool(self.inputs)

    @property
    def label(self) -> str:
        """How the manifest and the report name the architecture."""
        return self.zoo or self.pretrained or self.factory or (self.onnx and Path(self.onnx).name) or "model"


class SensitivityConfig(Section):
    """Prune each layer group alone at several ratios and measure validation accuracy."""

    enabled: bool = True
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    max_drop: float = Field(default=40.0, ge=0, description="points of validation top-1 (without labels: of output cosine "
                                                           "with the unpruned model, × 100) a layer group may cost when "
                                                           "pruned alone, before any fine-tuning; groups past it are pruned "
                                                           "less or not at all")
    val_size: PositiveInt = Field(default=2000, description="validation images per evaluation")

    @field_validator("ratios")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < r < 1 for r in value):
            raise ValueError("ratios must be fractions strictly between 0 and 1")
        return tuple(sorted(set(value)))


class BnSparsityConfig(Section):
    """Network slimming: L1 on BatchNorm γ while training briefly before pruning."""

    epochs: int = Field(default=0, ge=0)
    weight: PositiveFloat = 1e-4


class LatencyTarget(Section):
    """Prune until the measured FP32 latency (batch 1, p50) on ``backend`` is at most ``p50_ms``."""

    backend: Literal["onnxruntime"] = "onnxruntime"
    p50_ms: PositiveFloat


class PruneConfig(Section):
    """Structured channel pruning (Torch-Pruning, DepGraph) or unstructured magnitude pruning."""

    enabled: bool = True
    method: Literal["structured", "unstructured"] = "structured"
    importance: Literal["l1", "bn_gamma", "taylor", "activation"] = Field(
        default="l1", description="how channels are ranked: weight magnitude (l1), BatchNorm scale (bn_gamma), loss gradient "
                                  "(taylor, needs labels) or what each channel carries into the next layer (activation)")
    keep_macs: float = Field(default=0.25, gt=0, lt=1, description="structured: fraction of MACs to keep")
    latency_target: LatencyTarget | None = Field(default=None, description="structured: a measured latency target instead of keep_macs")
    sparsity: float = Field(default=0.5, gt=0, lt=1, description="unstructured: fraction of weights set to zero")
    global_pruning: bool = False
    round_to: PositiveInt | None = Field(default=8, description="keep channel counts multiples of this: CPU/GPU kernels vectorize "
                                                               "over 8 or 16 channels, and odd counts (11, 22, …) run no faster")
    ratios: dict[str, float] | None = Field(default=None, description="per-layer-group ratios by module name; skips the sensitivity search")
    ignore_layers: tuple[str, ...] = Field(default=(), description="module names never pruned, or shell patterns of them "
                                                                   "(encoder.layer.*.attention.*); the classifier always is")
    steps: PositiveInt = Field(default=2, description="iterative schedule: prune → fine-tune, this many times")
    sensitivity: SensitivityConfig = SensitivityConfig()
    bn_sparsity: BnSparsityConfig = BnSparsityConfig()
    finetune: TrainConfig = TrainConfig(epochs=1, lr=0.02)
    taylor_batches: PositiveInt = Field(default=8, description="taylor: training batches whose gradients score channels")
    activation_batches: PositiveInt = Field(default=8, description="activation: training batches whose layer inputs score channels")

    @field_validator("ratios")
    @classmethod
    def _ratio_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        bad = {k: v for k, v in (value or {}).items() if not 0 <= v < 1}
        if bad:
            raise ValueError(f"a prune ratio must be in [0, 1), got {bad}")
        return value


class HintConfig(Section):
    """FitNets: match a student feature map to a teacher's (a learned 1×1 regressor bridges different widths)."""

    student: str = Field(description="module name in the student whose output is the hint's guided layer")
    teacher: str | None = Field(default=None, description="module name in the teacher; None uses the student's name")


class DistillConfig(Section):
    """Knowledge distillation: the (pruned) student learns from the teacher's outputs."""

    SOFT_OBJECTIVES: ClassVar[frozenset[str]] = frozenset({"soft", "soft_hard"})

    enabled: bool = True
    teacher: ModelConfig | None = Field(default=None, description="None: the pipeline's model before pruning")
    student: ModelConfig | None = Field(default=None, description="None: the pruned model; else a zoo/factory model, "
                                                                  "trained from its init or checkpoint")
    objective: Literal["soft", "soft_hard", "mse", "cosine"] = Field(
        default="soft_hard", description="soft: KL at temperature T scaled by T²; soft_hard: alpha·soft + (1-alpha)·CE on "
                                         "labels; mse: MSE between logits (or any outputs); cosine: 1 - cosine between "
                                         "outputs. A model with declared inputs (no labels) defaults to mse")
    temperature: PositiveFloat = 2.0
    alpha: float = Field(default=0.7, ge=0, le=1, description="soft_hard: weight of the soft part; the hard part gets 1 - alpha")
    hints: tuple[HintConfig, ...] = Field(default=(), description="FitNets hint losses on named intermediate features")
    hint_weight: PositiveFloat = 1.0
    padding_mask: str | None = Field(
        default=None, description="a declared input that marks a right-padded sequence's real positions (an attention "
                                  "mask): training batches are grouped by length and cut to their longest row, and hints on "
                                  "(batch, positions, channels) features compare only the marked positions")
    transfer: Literal["labeled", "unlabeled"] = Field(
        default="labeled", description="labeled: the training split with its labels; unlabeled: the teacher supplies every target")
    transfer_source: Path | None = Field(default=None, description="unlabeled: a folder of images or .npy/.npz inputs (a "
                                                                   "model with declared inputs: an .npz of named arrays, one "
                                                                   "per input); None uses the training split without labels")
    transfer_size: PositiveInt | None = Field(default=None, description="use the first N transfer samples; None uses all")
    train: TrainConfig = TrainConfig(epochs=2, lr=0.01)
    patience: PositiveInt | None = Field(default=2, description="early stopping: epochs without a better validation top-1; "
                                                               "None trains every epoch")
    ablation: bool = Field(default=True, description="also fine-tune the same student on hard labels only (same epochs "
                                                     "and seed) to show what distillation bought")

    @model_validator(mode="after")
    def _labels_needed(self) -> DistillConfig:
        if self.transfer == "unlabeled" and self.objective == "soft_hard":
            if "objective" in self.model_fields_set:
                raise ValueError("objective soft_hard needs labels; with transfer: unlabeled use soft, mse or cosine")
            object.__setattr__(self, "objective", "soft")  # the default's label-free half
        if self.transfer_source is not None and self.transfer != "unlabeled":
            raise ValueError("transfer_source is unlabeled data: set transfer: unlabeled")
        return self


class ExportConfig(Section):
    opset: int = Field(default=18, ge=13, le=23)
    simplify: bool = True
    parity_atol: PositiveFloat = Field(default=1e-4, description="max abs error vs PyTorch on an evaluation batch")
    parity_batch: PositiveInt = 64


class BackendsConfig(Section):
    onnxruntime: OnnxRuntimeConfig = OnnxRuntimeConfig()
    openvino: OpenVinoConfig = OpenVinoConfig()
    tflite: TfliteConfig = TfliteConfig()
    tensorrt: TensorRtConfig = TensorRtConfig()


class ValidateConfig(Section):
    warmup: int = Field(default=20, ge=0)
    iterations: PositiveInt = Field(default=200, description="at least this many timed iterations")
    min_seconds: float = Field(default=2.0, ge=0, description="and at least this long")
    batch_size: PositiveInt = Field(default=1, description="the latency batch: p50/p99 and the latency gate are taken here")
    throughput_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [8, 64],
                                                      description="also time these batch sizes, for samples per second")
    throughput_seconds: float = Field(default=1.0, ge=0, description="at least this long per throughput batch size")
    threads: PositiveInt | None = Field(default=None, description="inference threads, pinned; None uses every core")
    cpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="CPU affinity of each engine's measuring process; None: the first `threads` usable CPUs")
    eval_batch_size: PositiveInt = 250
    together_rounds: int = Field(default=10, ge=0, description="after validation, each backend's engines are timed again together: "
                                 "each loaded once, then taking turns in this many short slices (min_seconds and iterations "
                                 "shared out), and the recommendation compares them round by round; 0: it ranks the p50 each "
                                 "engine was timed with alone, perhaps in another run")
    split: Literal["evaluation", "validation"] = Field(
        default="evaluation", description="the split engines are scored on: validation for choosing settings (a sweep's "
                                          "trials), so that the evaluation split's figures stay honest")

    def affinity(self, threads: int) -> tuple[int, ...] | None:
        """The CPUs each engine is pinned to, or ``None`` where the OS has no affinity call."""
        try:
            return pinned_cpus(threads, self.cpus)
        except ValueError as exc:
            raise RecipeError(f"'validate.cpus': {exc}") from None


class DivergenceConfig(Section):
    """Layer-wise divergence: every FP16 and INT8 engine's tensors against the FP32 ONNX's, on validation samples
    (never calibration or evaluation), for ``edgeship debug`` and the report."""

    enabled: bool = True
    samples: PositiveInt = Field(default=32, description="validation samples, run one at a time; the figures are sums over them")


class DeviceConfig(Section):
    """An edge device running ``edgeship agent serve``: engines of its backends are measured there too, and reported
    under its name (``onnxruntime/int8@nuc``). The host itself (``local``) always measures every engine."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the device's name in the report")
    url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", description="the agent's address, e.g. http://10.0.0.7:8765")
    token_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="the environment variable holding the agent's bearer token")
    backends: list[str] | None = Field(default=None, description="backends to measure there; null: every one available there")
    threads: PositiveInt | None = Field(default=None, description="inference threads there; null: validate.threads, else all its cores")
    timeout_s: PositiveFloat = Field(default=30.0, description="one request's timeout (the connection: at most 10 s)")
    job_timeout_s: PositiveFloat = Field(default=1800.0, description="one engine's measurement, queueing there included")
    retries: int = Field(default=2, ge=0, le=10, description="attempts after the first when the device is unreachable, times out "
                                                             "or loses the job")
    retry_delay_s: float = Field(default=2.0, ge=0, description="before the first retry; doubled before each next one")
    outputs_limit_mib: float = Field(default=64.0, ge=0, description="outputs up to this size come back and are scored here; "
                                                                     "larger ones are scored on the device")

    @field_validator("name")
    @classmethod
    def _not_local(cls, value: str) -> str:
        if value == "local":
            raise ValueError("'local' is the host itself, which always measures every engine; give the remote device another name")
        return value

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str] | None) -> list[str] | None:
        known = list(BackendsConfig.model_fields)
        unknown = [name for name in value or [] if name not in known]
        if unknown:
            raise ValueError(f"unknown backend {unknown[0]!r}; expected some of {known}")
        return value


class GatesConfig(Section):
    """Release gates, the same for every engine. A limit left at null is not applied (the gate is not-applicable)."""

    max_drop_points: PositiveFloat | None = Field(default=None, description="top-1 at most this many points below the FP32 baseline")
    min_fraction_of_fp32: float | None = Field(default=0.99, gt=0, le=1,
                                               description="top-1 at least this fraction of the FP32 baseline's (MLPerf: 0.99)")
    min_agreement: float | None = Field(default=0.95, gt=0, le=1,
                                        description="top-1 agreement with the FP32 baseline's outputs, at least")
    min_cosine: Limit | None = Field(default=None, description="output fidelity: mean per-sample cosine with the FP32 reference's "
                                                                "outputs, at least; one limit, or one per output name")
    min_sqnr_db: Limit | None = Field(default=None, description="output fidelity: signal-to-quantization-noise ratio against the FP32 "
                                                                 "reference's outputs, in dB, at least; one limit, or one per output")
    max_p99_ms: PositiveFloat | None = Field(default=None, description="p99 latency at validate.batch_size, judged on its upper 95% bound")
    max_size_mib: PositiveFloat | None = Field(default=None, description="engine size on disk, at most")
    required: list[str] | None = Field(
        default=None, description="engines that must pass for exit code 0 ('openvino/int8', 'tflite/*'); "
                                  "null: every engine requested whose backend is available here")

    CLASSIFICATION: ClassVar[tuple[str, ...]] = ("max_drop_points", "min_fraction_of_fp32", "min_agreement")  # class scores only

    @field_validator("min_cosine", "min_sqnr_db")
    @classmethod
    def _limits(cls, value: Limit | None) -> Limit | None:
        if isinstance(value, dict) and not value:
            raise ValueError("give one limit, or one per output name (a mapping that is not empty)")
        return value


class Recipe(Section):
    version: Literal[1] = 1
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["classification", "generic"] = Field(
        default="classification", description="classification: class scores out, judged by top-1 and agreement; generic: any "
                                              "outputs (embeddings, maps, boxes), judged by output fidelity against FP32")
    seed: int = 0
    store: Path = Path(".edgeship/store")
    reports: Path = Path("reports")
    data: DataConfig = DataConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    model: ModelConfig = ModelConfig()
    prune: PruneConfig = PruneConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    backends: BackendsConfig = BackendsConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    divergence: DivergenceConfig = DivergenceConfig()
    gates: GatesConfig = GatesConfig()
    devices: list[DeviceConfig] = Field(default_factory=list, description="edge devices running `edgeship agent serve`")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, value: list[DeviceConfig]) -> list[DeviceConfig]:
        names = [device.name for device in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"device name {repeated[0]!r} appears twice; each device needs its own name")
        return value

    def threads(self) -> int:
        return self.validate_.threads or os.cpu_count() or 1

    def engine_names(self) -> list[str]:
        """'backend/precision' of every engine the recipe asks for, in backend order."""
        names = []
        for backend in type(self.backends).model_fields:
            section = getattr(self.backends, backend)
            if getattr(section, "enabled", True):
                names.extend(f"{backend}/{p.value if isinstance(p, Precision) else p}" for p in getattr(section, "precisions", ()))
        return names

    @model_validator(mode="after")
    def _task_fits(self) -> Recipe:
        """What a generic model, an ONNX entry and named arrays can and cannot go through."""
        if self.model.onnx is not None:
            for stage in ("prune", "distill"):
                section = getattr(self, stage)
                if "enabled" in section.model_fields_set and section.enabled:
                    raise ValueError(f"{stage}.enabled: {stage} changes a PyTorch model, and model.onnx is an ONNX file; set "
                                     f"{stage}.enabled: false")
                # not asked for: such a model is not pruned or distilled (a copy: the default section is shared)
                object.__setattr__(self, stage, section.model_copy(update={"enabled": False}))
        elif self.model.named_inputs:
            for stage in ("prune", "distill"):  # pruned and distilled only when the recipe has the section (no labels: opt in)
                if stage not in self.model_fields_set:
                    object.__setattr__(self, stage, getattr(self, stage).model_copy(update={"enabled": False}))
            self._label_free_compression()
        if self.model.named_inputs and self.task != "generic":
            raise ValueError("model.inputs: a model with declared inputs is judged by output fidelity: set task: generic")
        if self.data.dataset == "arrays":
            if self.model.onnx is None and not self.model.named_inputs:
                raise ValueError("data.dataset arrays feeds a model's named inputs as they are: give the model as model.onnx, or "
                                 "a factory with its inputs declared (model.inputs)")
            if self.task != "generic":
                raise ValueError("data.dataset arrays has no labels or class scores to judge: set task: generic (judged by output "
                                 "fidelity: gates.min_cosine, gates.min_sqnr_db)")
        if self.task == "generic":
            chosen = sorted(set(GatesConfig.CLASSIFICATION) & self.gates.model_fields_set)
            chosen = [name for name in chosen if getattr(self.gates, name) is not None]
            if chosen:
                raise ValueError(f"gates.{chosen[0]}: a class-score gate, and task is generic; judge a generic model by output "
                                 "fidelity (gates.min_cosine, gates.min_sqnr_db)")
            for backend, section in self.backends:
                target = getattr(section, "accuracy_target", None)
                if target is not None and target.min_cosine is None:
                    raise ValueError(f"backends.{backend}.accuracy_target: top-1 needs class scores, and task is generic; search "
                                     "against the outputs' cosine (accuracy_target: {min_cosine: 0.99})")
            if self.devices:
                raise ValueError("devices: measuring a generic model on an edge device is not supported yet (the agent takes one "
                                 "image input); remove devices or use task: classification")
        return self

    def _label_free_compression(self) -> None:
        """A model with declared inputs has no labels: pruning fine-tunes and distillation learn the unpruned model's
        outputs, so what needs labels or class scores is refused, and distill's label-bound defaults become label-free."""
        prune, distill = self.prune, self.distill
        if prune.enabled:
            if prune.importance == "taylor":
                raise ValueError("prune.importance: taylor ranks channels by the gradients of a loss, and a model without labels "
                                 "has no loss before it is pruned (its outputs are its own targets); use l1 or activation")
            if prune.bn_sparsity.epochs:
                raise ValueError("prune.bn_sparsity.epochs: sparsity training trains on labels, and a model with declared inputs "
                                 "has none; set it to 0")
        if not distill.enabled:
            return
        given = distill.model_fields_set
        if "objective" in given and distill.objective in DistillConfig.SOFT_OBJECTIVES:
            raise ValueError(f"distill.objective: {distill.objective} matches class probabilities, and a model with declared "
                             "inputs is judged by its outputs; use mse or cosine")
        if "transfer" in given and distill.transfer == "labeled":
            raise ValueError("distill.transfer: a model with declared inputs has no labels; it learns the teacher's outputs on "
                             "the training arrays (transfer: unlabeled)")
        if distill.ablation and "ablation" in given:
            raise ValueError("distill.ablation: the hard-label fine-tune needs labels, and a model with declared inputs has "
                             "none; set it to false")
        if distill.transfer_source is not None and distill.transfer_source.suffix.lower() != ".npz":
            raise ValueError(f"distill.transfer_source: {distill.transfer_source}: a model with declared inputs learns on named "
                             "arrays, one per input (an .npz like data.path's)")
        update = {"objective": distill.objective if "objective" in given else "mse", "transfer": "unlabeled", "ablation": False}
        object.__setattr__(self, "distill", distill.model_copy(update=update))

    @model_validator(mode="after")
    def _labels_for_training(self) -> Recipe:
        """Every stage that trains or scores against labels needs a labelled dataset."""
        if self.data.labelled:
            return self
        why = f"data.dataset {self.data.dataset!r} has no labels or training images"
        trained_here = self.model.factory is not None and self.model.checkpoint is None and not self.model.named_inputs
        if self.model.zoo is not None or trained_here:
            raise ValueError(f"model: a {'zoo' if self.model.zoo else 'factory'} model without a checkpoint is trained here, and {why}; "
                             "use model.pretrained or a checkpoint")
        for stage in ("prune", "distill"):
            if getattr(self, stage).enabled and not self.model.named_inputs:  # declared inputs: label-free, their outputs
                raise ValueError(f"{stage}.enabled: {stage} fine-tunes and scores on labelled images, and {why}; set {stage}.enabled: "
                                 "false, or use labelled images of your own (data.dataset: image_folder)")
        return self

    @model_validator(mode="after")
    def _required_engines_exist(self) -> Recipe:
        import fnmatch

        names = self.engine_names()
        for pattern in self.gates.required or []:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ValueError(f"gates.required: {pattern!r} matches no engine this recipe builds ({', '.join(names) or 'none'})")
        return self


def load_recipe(path: str | os.PathLike[str] | None = None) -> Recipe:
    """Read and validate a recipe; ``None`` gives the bundled default."""
    if path is None:
        return Recipe()
    return recipe_from_document(read_recipe_document(path), Path(path))


def read_recipe_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe file's mapping, not yet validated, its input paths made absolute (relative to the file) and its name
    defaulted to the file's stem: what a sweep changes key by key before ``recipe_from_document`` checks it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise RecipeError(f"{path}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    raw = _resolve_input_paths(raw, path.parent)
    raw.setdefault("name", path.stem)
    return raw


def recipe_from_document(raw: Mapping[str, Any], path: Path) -> Recipe:
    """Validate a recipe mapping; errors name ``path`` (the file it came from) and the key."""
    try:
        recipe = Recipe.model_validate(dict(raw))
    except ValidationError as exc:
        raise RecipeError(f"{path}: {_describe(exc)}") from None
    _check_files(recipe, path)
    return recipe


FACTORY = re.compile(r"(?:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*|[^:]+\.py):[A-Za-z_]\w*")
FACTORIES = (("model",), ("distill", "teacher"), ("distill", "student"))  # where a recipe may name a factory
INPUT_PATHS = (("model", "checkpoint"), ("model", "onnx"), ("calibration", "source"), ("data", "root"), ("data", "path"),
               ("distill", "transfer_source"),
               ("distill", "teacher", "checkpoint"), ("distill", "student", "checkpoint"), ("backends", "tensorrt", "timing_cache"))


def _resolve_input_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the recipe's input paths relative to the recipe file."""
    raw = copy.deepcopy(raw)
    for *sections, key in INPUT_PATHS:
        block: Any = raw
        for section in sections:
            block = block.get(section) if isinstance(block, dict) else None
        if isinstance(block, dict) and isinstance(block.get(key), str) and not block[key].startswith(PACKAGE_SCHEME):
            path = Path(block[key]).expanduser()
            block[key] = str(path if path.is_absolute() else (base / path).resolve())
    for sections in FACTORIES:  # a factory that names a file: the file, relative to the recipe
        block = raw
        for section in sections:
            block = block.get(section) if isinstance(block, dict) else None
        spec = block.get("factory") if isinstance(block, dict) else None
        if isinstance(spec, str) and spec.rpartition(":")[0].endswith(".py"):
            where, _, function = spec.rpartition(":")
            path = Path(where).expanduser()
            block["factory"] = f"{path if path.is_absolute() else (base / path).resolve()}:{function}"  # type: ignore[index]
    return raw


def factories(recipe: Recipe) -> dict[str, str]:
    """Every factory the recipe names, by its key (``model.factory``): user code whose failures are the user's."""
    found = {}
    for sections in FACTORIES:
        block: Any = recipe
        for section in sections:
            block = getattr(block, section, None)
        if block is not None and block.factory is not None:
            found[".".join((*sections, "factory"))] = block.factory
    return found


def _check_files(recipe: Recipe, path: Path) -> None:
    for key, spec in factories(recipe).items():
        where = spec.rpartition(":")[0]
        if where.endswith(".py") and not Path(where).is_file():
            raise RecipeError(f"{path}: '{key}': file not found: {where}")
    if recipe.model.onnx is not None:
        try:
            onnx_file(recipe.model.onnx)
        except FileNotFoundError as exc:
            raise RecipeError(f"{path}: 'model.onnx': {exc}") from None
    if recipe.data.path is not None and not recipe.data.path.is_file():
        raise RecipeError(f"{path}: 'data.path': file not found: {recipe.data.path}")
    if recipe.model.checkpoint is not None and not recipe.model.checkpoint.is_file():
        raise RecipeError(f"{path}: 'model.checkpoint': file not found: {recipe.model.checkpoint}")
    if recipe.calibration.source is not None and not recipe.calibration.source.exists():
        raise RecipeError(f"{path}: 'calibration.source': no such file or folder: {recipe.calibration.source}")
    for role in ("teacher", "student"):
        model = getattr(recipe.distill, role)
        if model is not None and model.checkpoint is not None and not model.checkpoint.is_file():
            raise RecipeError(f"{path}: 'distill.{role}.checkpoint': file not found: {model.checkpoint}")
    source = recipe.distill.transfer_source
    if source is not None and not source.exists():
        raise RecipeError(f"{path}: 'distill.transfer_source': no such file or folder: {source}")


def onnx_file(spec: str) -> Path:
    """The file ``model.onnx`` names: a path, or ``package://<package>/<file>`` inside an installed package, found through
    the package's import spec without running its code (the PP-OCR models inside ``rapidocr_onnxruntime``, whose
    ``__init__`` imports its whole runtime). ``FileNotFoundError`` says what is missing."""
    if not spec.startswith(PACKAGE_SCHEME):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"file not found: {path}")
        return path
    import importlib.util

    package, _, inner = spec.removeprefix(PACKAGE_SCHEME).partition("/")
    try:
        found = importlib.util.find_spec(package) if package.isidentifier() else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"no installed package {package!r} (pip install the distribution that holds it)")
    for location in found.submodule_search_locations:
        candidate = Path(location) / inner
        if inner and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"package {package!r} has no file {inner!r}")


def _describe(exc: ValidationError) -> str:
    """One line for the first validation error, with the allowed keys for a typo."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo explains the "missing" key beside it
    first = errors[0]
    loc = tuple(first["loc"])
    more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        parent = loc[:-1]
        where = f"in '{_dotted(parent)}'" if parent else "at the top level"
        allowed = _allowed_keys(parent)
        return f"unknown key '{_printable(loc[-1])}' {where}; allowed keys: {', '.join(allowed)}{more}"
    key = _dotted(loc) or "recipe"
    got = first.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, dict) and first["type"] != "missing" else ""
    message = _printable(first["msg"].removeprefix("Value error, "))
    return f"'{key}': {message}{got_text}{more}"


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(_printable(part) for part in loc)


def _printable(value: object) -> str:
    """``value`` as text on one line: control characters (a newline in a YAML key) escaped."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found by walking ``loc`` from ``Recipe``."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is not None:  # Optional[...], tuple[Model, ...], dict[str, Model]
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
