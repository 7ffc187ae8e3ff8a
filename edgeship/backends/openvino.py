"""OpenVINO (CPU): IR from ``openvino.convert_model``; FP16 compresses the weights; INT8 from ``nncf.quantize``.

An engine is a folder: ``model.xml`` (the main file), ``model.bin`` and ``runtime.json``, the
runtime options the runner (and ``benchmark_app``) compile it with. The execution precision is
pinned there: left alone, OpenVINO runs an "FP32" model in bfloat16 on CPUs with AVX512-BF16 or
AMX, which is a different engine from the one the user asked for.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import subprocess
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PositiveInt

from edgeship.backends.base import (
    Availability,
    BackendBase,
    BackendInfo,
    CalibrationSet,
    Feed,
    InputWrites,
    Precision,
    Runner,
    TensorMeta,
)
from edgeship.backends.float_search import choose_float_layers
from edgeship.backends.openvino_native import NativeError, NativeRequest
from edgeship.backends.rounding import WeightGrid, rounded_source, weights_alone
from edgeship.backends.tooling import import_problem
from edgeship.config import (
    AccuracyTarget,
    BackendSection,
    KeepFloat,
    WeightRounding,
    accuracy_target_field,
    keep_float_field,
    weight_rounding_field,
)
from edgeship.device import installed_versions
from edgeship.divergence import Tap, TensorSite
from edgeship.profiling import LayerTime, OpProfile

if TYPE_CHECKING:
    pass

RUNTIME_FILE = "runtime.json"
DISTRIBUTIONS = ("openvino", "nncf")
# an input this large is handed to the request as it is (a tensor sharing the caller's memory, set on every call) rather
# than copied into a tensor set once: on a 602 KB image the copy cost more than setting the tensor, on a 3 KB one less
# (docs/measurements.md, 2026-12-05)
SHARED_INPUT_FROM = 256 * 1024


class OpenVinoConfig(BackendSection):
    BACKEND: ClassVar[str] = "openvino"
    SUPPORTED: ClassVar[frozenset[Precision]] = frozenset(Precision)
    INT8_ONLY: ClassVar[frozenset[str]] = frozenset({"preset", "subset_size", "fast_bias_correction", "keep_float", "accuracy_target",
                                                     "weight_rounding", "model_type", "smooth_quant_alpha",
                                                     "calibration_method", "overflow_fix"})

    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
    preset: Literal["performance", "mixed"] = Field(
        default="performance", description="nncf.quantize preset: symmetric activations (performance) or asymmetric (mixed)")
    subset_size: PositiveInt = Field(default=300, description="calibration samples nncf.quantize uses")
    fast_bias_correction: bool = Field(default=False, description="NNCF fast bias correction; the full one cost 0.6 pt less top-1 "
                                                                  "on the default model (91.87% vs 91.29%, FP32 91.94%)")
    calibration_method: Literal["mean_minmax", "minmax", "mean_quantile", "histogram"] = Field(
        default="mean_minmax", description="INT8: how NNCF sets each per-tensor activation range from the calibration samples "
                                           "(its RangeEstimatorParametersSet): the mean over samples of each one's min and max "
                                           "(NNCF's default), the global min and max, the mean of each sample's 0.01% / 99.99% "
                                           "quantiles, or the range that minimises the quantization error of a histogram (a "
                                           "per-channel activation range, which it cannot take, falls back to min/max)")
    model_type: Literal["transformer"] | None = Field(
        default=None, description="INT8: nncf.quantize's model_type; transformer keeps attention's sensitive ops (softmax inputs, "
                                  "layer norms) in float, NNCF's advice for transformer models")
    smooth_quant_alpha: float | None = Field(
        default=None, ge=-1, le=1, description="INT8: SmoothQuant's migration strength for MatMul inputs (NNCF's advanced "
                                               "parameter; None keeps NNCF's default, 0.95 with model_type: transformer; -1 "
                                               "turns SmoothQuant off, NNCF's convention): lower moves less of the "
                                               "activations' outliers into the weights")
    overflow_fix: Literal["first_layer_only", "enable", "disable"] | None = Field(
        default=None, description="INT8: NNCF's overflow fix (None keeps its default, first_layer_only): x86 CPUs without VNNI add "
                                  "u8×s8 products in pairs into 16 bits, which saturate with full-range 8-bit weights; "
                                  "enable quantizes every Conv/MatMul weight to half the range (7 bits), first_layer_only the "
                                  "first convolution; disable when every target CPU has VNNI or AMX, or is ARM")
    keep_float: KeepFloat = keep_float_field()
    accuracy_target: AccuracyTarget | None = accuracy_target_field()
    weight_rounding: WeightRounding = weight_rounding_field()
    performance_hint: Literal["latency", "throughput"] = "latency"
    benchmark_app: bool = Field(default=True, description="cross-check our latency with OpenVINO's benchmark_app on the same IR")

    def narrowed_weights(self) -> str | None:
        if self.overflow_fix == "disable":
            return None
        if self.overflow_fix == "enable":
            return "plain convolutions and MatMuls on 7 bits (overflow_fix)"
        return "the first convolutions on 7 bits (overflow_fix: first_layer_only)"  # NNCF's default, None here


INFO = BackendInfo(name="openvino", display_name="OpenVINO", colour="#9467bd", config=OpenVinoConfig, distributions=DISTRIBUTIONS,
                   install="pip install 'edgeship[openvino]'", runtime_module="openvino", suffixes=(".xml",),
                   companions=(".bin", RUNTIME_FILE), int8_saturates=True)


class OpenVinoBackend(BackendBase):
    info: ClassVar[BackendInfo] = INFO

    def availability(self) -> Availability:
        problem = import_problem(("openvino", "nncf"))
        if problem:
            return Availability(self.name, False, installed_versions(self.info.distributions), reason=problem[0],
                                install=self.info.install, broken=problem[1])
        import openvino as ov
        core = ov.Core()
        capabilities = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        return Availability(self.name, True, installed_versions(self.info.distributions),
                            device=f"{core.get_property('CPU', 'FULL_DEVICE_NAME')} (capabilities: {capabilities})")

    def runner(self, engine: Path, *, threads: int) -> OpenVinoRunner:
        return OpenVinoRunner(engine, threads=threads)

    @staticmethod
    def cross_check(engine: Path, *, threads: int, batch_size: int, input_shape: tuple[int, ...], input_name: str,
                    seconds: float, more_inputs: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
        """OpenVINO's ``benchmark_app`` on the same IR, threads and batch (see ``benchmark_app``)."""
        return benchmark_app(engine, threads=threads, batch_size=batch_size, input_shape=input_shape, input_name=input_name,
                             seconds=seconds, more_inputs=more_inputs)

    def precision_of(self, engine: Path) -> Precision | None:
        """From the IR's element types: FakeQuantize or i8/u8 constants are INT8, f16 constants FP16."""
        text = engine.read_text(errors="replace")
        if "FakeQuantize" in text or 'element_type="i8"' in text or 'element_type="u8"' in text:
            return Precision.INT8
        return Precision.FP16 if 'element_type="f16"' in text else Precision.FP32

    @staticmethod
    def _error_text(exc: BaseException) -> str:
        return _first_line(exc)

    def _build(self, source: Path, precision: Precision, calibration: CalibrationSet | None,  # type: ignore[override]
               cfg: OpenVinoConfig, out_dir: Path) -> Path:
        """Write ``model.xml`` + ``model.bin`` + ``runtime.json`` under ``out_dir``; return the ``.xml``."""
        import openvino as ov

        if precision is not Precision.INT8:
            model = ov.convert_model(str(source))
        else:
            assert calibration is not None
            chosen = choose_float_layers(source, calibration, cfg.keep_float, cfg.accuracy_target, out_dir,
                                         build=lambda nodes, folder: self._save(self._quantize(source, calibration, cfg, folder, nodes),
                                                                                source, precision, cfg, folder),
                                         runner=lambda engine, threads: self.runner(engine, threads=threads), reuse=True,
                                         weights_alone=lambda: weights_alone(source, calibration, cfg.weight_rounding,
                                                                             weight_grid(source, cfg, [])))
            if chosen.engine is not None:
                return chosen.engine
            model = self._quantize(source, calibration, cfg, out_dir, chosen.nodes)
        return self._save(model, source, precision, cfg, out_dir)

    @staticmethod
    def _quantize(source: Path, calibration: CalibrationSet, cfg: OpenVinoConfig, out_dir: Path, keep: list[str]) -> Any:
        """NNCF's post-training quantization of ``source``, the ``keep`` nodes left out (ONNX node names survive in the IR's
        op names)."""
        import nncf
        import openvino as ov

        with rounded_source(source, calibration, cfg.weight_rounding, keep, out_dir, weight_grid(source, cfg, keep)) as rounded:
            model = ov.convert_model(str(rounded))
        ignored = nncf.IgnoredScope(patterns=[f"^{re.escape(name)}(/.*)?$" for name in keep], validate=False) if keep else None
        nncf.set_log_level(logging.WARNING)  # it logs every node an ignored scope leaves out, on the user's terminal
        extra: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER} if cfg.model_type == "transformer" else {}
        advanced: dict[str, Any] = {}
        if cfg.smooth_quant_alpha is not None:
            from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

            advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant_alpha)
        if cfg.calibration_method != "mean_minmax":  # NNCF's own default left to NNCF
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            advanced["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet, cfg.calibration_method.upper())
        if cfg.overflow_fix is not None:
            from nncf.quantization.advanced_parameters import OverflowFix

            advanced["overflow_fix"] = OverflowFix(cfg.overflow_fix)
        if advanced:
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

            extra["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
        quiet = _Dropping("does not support per-channel activations")  # histogram: NNCF's note per such tensor, on every call
        logging.getLogger("nncf").addFilter(quiet)
        try:
            return nncf.quantize(model, nncf.Dataset(calibration), preset=nncf.QuantizationPreset(cfg.preset),
                                 subset_size=min(cfg.subset_size, calibration.count),
                                 fast_bias_correction=cfg.fast_bias_correction, ignored_scope=ignored, **extra)
        finally:
            logging.getLogger("nncf").removeFilter(quiet)

    @staticmethod
    def _save(model: Any, source: Path, precision: Precision, cfg: OpenVinoConfig, out_dir: Path) -> Path:
        """``model.xml`` + ``model.bin`` + ``runtime.json`` under ``out_dir``."""
        import openvino as ov

        _name_generated_nodes(model, _onnx_names(source))
        target = out_dir / "model.xml"
        ov.save_model(model, str(target), compress_to_fp16=precision is Precision.FP16)
        runtime = {"device": "CPU", "PERFORMANCE_HINT": cfg.performance_hint.upper(),
                   "INFERENCE_PRECISION_HINT": execution_precision(precision)}
        (out_dir / RUNTIME_FILE).write_text(json.dumps(runtime, indent=2))
        return target


class _Dropping(logging.Filter):
    """Drops the log records that contain ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


GENERATED_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_(\d+)$")


# NNCF's overflow fix puts a weight on 128 levels of step max|w| / 63.5 (stored as INT8 from -64 to 64): every value but
# each channel's largest is a multiple of that step, and the largest, at 63.5 steps, NNCF rounds to 64 itself
OVERFLOW_FIX_QMAX = 63.5


def weight_grid(source: Path, cfg: OpenVinoConfig, keep: list[str]) -> WeightGrid:
    """The grid NNCF puts each weight on: its overflow fix quantizes the weights it fixes to 7 bits (with ``enable``
    every plain convolution and MatMul, not depthwise ones; by default, ``first_layer_only``, the first convolutions
    after the inputs), so GPTQ rounds those on that grid, or NNCF would round GPTQ's integers again."""
    if cfg.overflow_fix == "disable":
        return WeightGrid()
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    if cfg.overflow_fix == "enable":
        fixed = [node.name for node in model.graph.node
                 if node.op_type == "Gemm" or (node.op_type == "Conv" and _attribute(node, "group", 1) == 1)]
    else:
        fixed = first_convolutions(model, set(keep))
    return WeightGrid(narrower=tuple((name, OVERFLOW_FIX_QMAX) for name in fixed))


def first_convolutions(model: Any, keep: set[str]) -> list[str]:
    """The convolutions NNCF's ``first_layer_only`` overflow fix narrows, found as NNCF finds them: from each graph input,
    breadth first, the first quantized plain convolution on every path (a grouped or depthwise one is OpenVINO's
    GroupConvolution, which it walks past, as it walks past a node left in float)."""
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    weights = {init.name for init in model.graph.initializer}
    queue = deque(node for graph_input in model.graph.input for node in consumers[graph_input.name])
    seen: set[str] = set()
    first: list[str] = []
    while queue:
        node = queue.popleft()
        if node.name in seen:
            continue
        seen.add(node.name)
        quantized = node.name not in keep and len(node.input) > 1 and node.input[1] in weights
        if node.op_type == "Conv" and _attribute(node, "group", 1) == 1 and quantized:
            first.append(node.name)
            continue
        queue.extend(consumer for output in node.output for consumer in consumers[output])
    return first


def _attribute(node: Any, name: str, default: int) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == name), default)


def _onnx_names(source: Path) -> set[str]:
    """Every node, tensor and initializer name of the ONNX model (read without its weights)."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    return ({node.name for node in graph.node} | {name for node in graph.node for name in node.output}
            | {tensor.name for tensor in graph.initializer} | {value.name for value in graph.input})


def _name_generated_nodes(model: Any, onnx_names: set[str]) -> None:
    """Name the nodes OpenVINO made itself by their position, so one ONNX gives one IR byte for byte.

    The converter and its constant folding name new nodes from a process-global counter
    (``Reshape_15`` in a fresh process, ``Reshape_2925`` after a few builds), so the same
    build in another process wrote another ``model.xml``. Names that come from the ONNX
    are kept; ``Type_<n>`` names that do not become ``Type_ov<position>``.
    """
    for position, node in enumerate(model.get_ordered_ops()):
        name = node.get_friendly_name()
        match = GENERATED_NAME.match(name)
        if match and name not in onnx_names:
            node.set_friendly_name(f"{match.group(1)}_ov{position}")


def execution_precision(precision: Precision) -> str:
    """The CPU execution precision an engine of ``precision`` is compiled with.

    FP16 runs in f16 only where the CPU has native FP16 arithmetic (OpenVINO lists ``FP16``
    among the CPU's capabilities); elsewhere its FP16 weights are decompressed to f32.
    INT8 layers run in INT8 whatever this says; the hint covers the layers NNCF left in float.
    """
    if precision is Precision.FP16:
        import openvino as ov

        return "f16" if "FP16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
    return "f32"


def runtime_options(engine: Path) -> dict[str, str]:
    """The runtime options recorded beside ``engine`` at build time."""
    path = Path(engine).with_name(RUNTIME_FILE)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"device": "CPU", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable OpenVINO runtime options: {exc}") from None


class OpenVinoRunner(Runner):
    """One compiled model with a single synchronous infer request, threads and precision pinned."""

    def __init__(self, engine: Path, *, threads: int) -> None:
        super().__init__(engine, threads=threads)
        self._compiled: Any = None
        self._request: Any = None
        self._native: NativeRequest | None = None  # the C API's request the harness times, made at the first timed call
        self._native_problem: str | None = None  # why the timed call goes through the Python binding instead

    def _activate(self) -> None:
        import openvino as ov

        options = runtime_options(self.engine)
        config = {"PERFORMANCE_HINT": options["PERFORMANCE_HINT"], "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": options["INFERENCE_PRECISION_HINT"], "NUM_STREAMS": 1}
        self._config = config
        self._core = ov.Core()
        self._compiled = self._core.compile_model(str(self.engine), options["device"], config)
        self._request = self._compiled.create_infer_request()
        self._run = _lean_infer(self._request)
        self._tensor = ov.Tensor  # kept, so the per-call path does no import lookup
        self._meta = {}
        for port in self._compiled.inputs:
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            name = port.get_any_name()
            self._meta[name] = TensorMeta(name, np.dtype(port.get_element_type().to_dtype()), shape)
        self._outputs = [port.get_any_name() for port in self._compiled.outputs]
        # input name → (the shape it was planned for, how a new value goes into the request), while the shapes hold
        self._writes: dict[str, tuple[tuple[int, ...], Callable[[np.ndarray], None]]] = {}
        self._results: dict[str, np.ndarray] = {}  # output name → the memory its request tensor shares
        self._held: dict[str, np.ndarray] = {}  # input name → the memory its request tensor reads (OpenVINO does not hold it)
        self._static_outputs = all(not d.is_dynamic for port in self._compiled.outputs for d in list(port.get_partial_shape())[1:])

    def _deactivate(self) -> None:
        if self._native is not None:
            self._native.close()
        self._native = None
        self._request = None
        self._compiled = None
        self._core = None

    def _describe(self) -> dict[str, Any]:
        keys = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "NUM_STREAMS", "EXECUTION_DEVICES")
        described = {key.lower(): str(self._compiled.get_property(key)) for key in keys}
        if self._native is not None:
            described["timed_call"] = "OpenVINO C API (libopenvino_c through ctypes)"
        elif self._native_problem is not None:
            described["timed_call"] = f"Python binding: {self._native_problem}"
        return described

    def _infer(self, feed: Feed) -> Feed:
        # Inputs and outputs live in buffers the request's tensors share, set once per input shape: setting a new input
        # tensor on every call costs a dynamic-shape model ~20 µs of re-planning, and fetching each output tensor after
        # the call ~3 µs, neither of which an application reusing its buffers pays. A large input is the exception
        # (``SHARED_INPUT_FROM``): copying it costs more than setting it.
        writes = self._writes
        for name, array in feed.items():
            plan = writes.get(name)
            if plan is None or plan[0] != array.shape:
                return self._plan(feed)
            plan[1](array)
        self._run()
        return {name: buffer.copy() for name, buffer in self._results.items()}

    def _plan(self, feed: Feed) -> Feed:
        """The first call with these input shapes: new shared buffers for the inputs (a large one then set from the
        caller's array on each call), then for the outputs once their shapes are known (only where they follow from the
        input shapes: every output dimension but the batch static; otherwise every call comes here)."""
        # a fresh request: one whose outputs were set for other shapes would be written wrongly
        request = self._request = self._compiled.create_infer_request()
        buffers = self._held = {name: np.array(array, copy=True) for name, array in feed.items()}
        for name, buffer in buffers.items():
            request.set_tensor(name, self._tensor(buffer, shared_memory=True))
        request.infer()
        outputs = {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self._outputs)}
        self._results, self._writes = {}, {}
        if self._static_outputs:
            for i, (name, value) in enumerate(outputs.items()):
                self._results[name] = np.empty_like(value)
                request.set_output_tensor(i, self._tensor(self._results[name], shared_memory=True))
            self._writes = {name: (buffer.shape, self._sharing(request, name) if buffer.nbytes >= SHARED_INPUT_FROM
                                   else functools.partial(np.copyto, buffer))
                            for name, buffer in buffers.items()}
        self._run = _lean_infer(request)
        return outputs

    def _sharing(self, request: Any, name: str) -> Callable[[np.ndarray], None]:
        """Each new value of input ``name`` set as a tensor on the caller's own memory (a copy only if it is not
        contiguous). OpenVINO's tensor does not keep that memory alive, so the runner does until the next call."""
        set_tensor, tensor, held = request.set_tensor, self._tensor, self._held

        def write(array: np.ndarray) -> None:
            held[name] = array = np.ascontiguousarray(array)
            set_tensor(name, tensor(array, shared_memory=True))

        return write

    def _profile(self, feed: Feed, runs: int) -> OpProfile:
        """OpenVINO's performance counters (``PERF_COUNT``) on a model compiled for them: each executed node's real time
        and the kernel the CPU plugin chose (``exec_type``), averaged over ``runs`` after one warm-up call."""
        config = {**self._config, "PERF_COUNT": True}
        request = self._core.compile_model(str(self.engine), runtime_options(self.engine)["device"], config).create_infer_request()
        for name, array in feed.items():
            request.set_tensor(name, self._tensor(np.ascontiguousarray(array)))
        request.infer()
        totals: dict[str, float] = defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for _ in range(runs):
            request.infer()
            for info in request.profiling_info:
                if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
                    totals[info.node_name] += info.real_time.total_seconds() * 1e6
                    kinds[info.node_name] = (info.node_type, info.exec_type)
        layers = [LayerTime(layer=node, op_type=kinds[node][0], kernel=kinds[node][1] or None, mean_us=total / runs)
                  for node, total in totals.items()]
        if not layers:
            return OpProfile.unavailable("OpenVINO's performance counters reported no executed node")
        return OpProfile.from_layers("OpenVINO performance counters", runs, layers)

    def _tap(self, sites: list[TensorSite]) -> Tap:
        """Outputs added to a fresh copy of the IR by tensor name (the IR keeps the ONNX names its conversion did not fuse
        away), compiled with the runner's settings."""
        tensors = [site.tensor for site in sites]
        model = self._core.read_model(str(self.engine))
        existing = {name for port in model.outputs for name in port.get_names()}
        exposed = []
        for name in tensors:
            if name in existing:
                exposed.append(name)
                continue
            try:
                model.add_outputs(name)
            except RuntimeError:  # no tensor of that name in the IR
                continue
            exposed.append(name)
        request = self._core.compile_model(model, runtime_options(self.engine)["device"], self._config).create_infer_request()

        def call(feed: Feed) -> dict[str, np.ndarray]:
            request.infer({name: np.ascontiguousarray(array) for name, array in feed.items()})
            return {name: np.array(request.get_tensor(name).data, np.float32) for name in exposed}

        return Tap(method="OpenVINO: outputs added to the IR by tensor name", exposed=tuple(exposed), call=call,
                   note="an added output keeps its layer's result in the precision the layer computes; layers fused into it "
                        "(an activation into a convolution) are read after the fusion",
                   local_note="not measured: OpenVINO compiles the whole IR, and a layer cannot be fed values of one's choosing "
                              "without rebuilding the graph around it")

    def _timed_call(self, feed: Feed) -> Callable[[], object]:
        # each input written as ``_infer`` writes it, the request run, its outputs left in the request: through the C API
        # where it loads and gives ``infer``'s outputs bit for bit, else through the binding
        if set(self._writes) != set(feed):  # outputs not fixed by the input shapes: every call plans anew
            return super()._timed_call(feed)
        native = self._native_call(feed)
        if native is not None:
            return self._write_then_run(*native)
        return self._write_then_run([(self._writes[name][1], array) for name, array in feed.items()], self._run)

    def bare_call(self, feed: Feed) -> Callable[[], object]:
        """``infer`` alone on tensors set once: what ``benchmark_app`` times, for the latency cross-check. Through the C
        API where the timed call goes through it, so that the difference is only the writing of the inputs."""
        self.infer(feed)  # checks the feed, and leaves it in the request's tensors
        native = self._native_call(feed) if set(self._writes) == set(feed) else None
        return native[1] if native is not None else self._run

    def _native_call(self, feed: Feed) -> tuple[InputWrites, Callable[[], None]] | None:
        """The C API request bound to ``feed``'s shapes (written once and checked: its outputs must be the binding's, byte
        for byte), as (writes, run); ``None`` after noting why where it cannot be."""
        if self._native_problem is not None:
            return None
        try:
            if self._native is None:
                self._native = NativeRequest(self.engine, runtime_options(self.engine)["device"], self._config)
            share = frozenset(name for name, array in feed.items() if array.nbytes >= SHARED_INPUT_FROM)
            writes = self._native.bind(feed, share)
            run = self._native.run_call()
            for write, array in writes:
                write(array)
            run()
            expected = self._infer(feed)
            for index, name in enumerate(self._outputs):
                if self._native.output_bytes(index) != np.ascontiguousarray(expected[name]).tobytes():
                    raise NativeError(f"the C API's output {name} differs from the binding's")
        except NativeError as exc:
            self._native_problem = str(exc)
            if self._native is not None:
                self._native.close()
                self._native = None
            return None
        return writes, run


def _lean_infer(request: Any) -> Callable[[], object]:
    """``request.infer()`` without the Python wrapper's input dispatch and result dictionary: the binding's own call on
    the tensors already set, outputs left in the tensors the runner shares. The wrapper's microseconds are paid on every
    call and not by ``benchmark_app``'s C++ loop (docs/measurements.md). Where the binding is laid out otherwise, the
    public call."""
    try:
        from openvino._pyopenvino import InferRequest as Binding
    except ImportError:
        return request.infer
    return functools.partial(Binding.infer, request, {}, True, True)  # (inputs, share_outputs, decode_strings)


def benchmark_app(engine: Path, *, threads: int, batch_size: int, input_shape: tuple[int, ...], input_name: str,
                  seconds: float, more_inputs: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """OpenVINO's own ``benchmark_app`` on ``engine`` with our runner's settings: its median latency and command.

    Synchronous API, one stream and one request, the same thread count and execution
    precision, and the input shape given as data shape so the model stays dynamic, as
    our runner compiles it (``more_inputs``: the per-sample shapes of a model's other inputs). Raises ``RuntimeError`` with
    the tool's words when it fails.
    """
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(tool).is_file():
        raise RuntimeError("benchmark_app not found (it ships with the openvino package)")
    options = runtime_options(engine)
    shapes = {input_name: input_shape, **(more_inputs or {})}
    data_shape = ",".join(f"{name}[{','.join(str(d) for d in (batch_size, *shape))}]" for name, shape in shapes.items())
    command = [tool, "-m", str(engine), "-d", options["device"], "-api", "sync", "-hint", "none", "-nstreams", "1", "-nireq", "1",
               "-nthreads", str(threads), "-infer_precision", options["INFERENCE_PRECISION_HINT"],
               "-data_shape", data_shape, "-t", str(max(1, round(seconds)))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120 + seconds)
    text = done.stdout + done.stderr
    median = re.search(r"Median:\s+([\d.]+)\s+(ms|us)", text)
    if done.returncode != 0 or median is None:
        errors = [line for line in text.splitlines() if "ERROR" in line] or text.strip().splitlines()[-1:]
        raise RuntimeError(f"benchmark_app exit {done.returncode}: {errors[0] if errors else 'no output'}")
    scale = 1e-3 if median.group(2) == "us" else 1.0
    count = re.search(r"Count:\s+(\d+)", text)
    return {"tool": "benchmark_app", "median_ms": float(median.group(1)) * scale, "iterations": int(count.group(1)) if count else None,
            "command": " ".join(command[1:])}


def _first_line(exc: BaseException) -> str:
    """The telling line of an OpenVINO error: the frontend's summary of what it could not convert (``No conversion rule
    found for operations: Det-20``) when there is one, else the first line."""
    lines = [line.strip().lstrip("- ").strip() for line in str(exc).splitlines() if line.strip()]
    summary = [line for line in lines if line.startswith(("No conversion rule", "Model wasn't fully converted"))]
    return (summary or lines or [""])[-1]
