"""ONNX Runtime (CPU): FP32 as exported, FP16 weights and activations (float32 I/O kept), INT8 with ``quantize_static``
(QDQ) from the calibration set."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import json
import logging
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from edgeship.backends.base import Availability, BackendBase, BackendInfo, CalibrationSet, Feed, Precision, Runner, TensorMeta
from edgeship.backends.float_search import choose_float_layers
from edgeship.backends.rounding import WeightGrid, rounded_source, weights_alone
from edgeship.backends.sensitivity import SIMULATED_QDQ
from edgeship.backends.tooling import error_line, import_problem, loggers_at
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
from edgeship.errors import BuildError
from edgeship.profiling import LayerTime, OpProfile

if TYPE_CHECKING:
    from pydantic import BaseModel

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


class OnnxRuntimeConfig(BackendSection):
    BACKEND: ClassVar[str] = "onnxruntime"
    SUPPORTED: ClassVar[frozenset[Precision]] = frozenset(Precision)
    INT8_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"mode", "calibration_method", "percentile", "calibration_size", "per_channel", "activation_type", "reduce_range", "keep_float",
         "accuracy_target", "weight_rounding", "float_outputs"})

    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.INT8)
    mode: Literal["static", "dynamic"] = Field(
        default="static", description="INT8: static (activation ranges calibrated ahead, QDQ) or dynamic (int8 weights of MatMul/Gemm, "
                                      "activations quantized per call from their own range, no calibration: ONNX Runtime's advice "
                                      "for transformers)")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(default=99.999, gt=90, le=100)
    calibration_size: PositiveInt | None = Field(default=None, description="use the first N calibration samples; None uses all")
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    reduce_range: bool = Field(default=True, description="7-bit weights: avoids u8s8 saturation (VPMADDUBSW) on x86 CPUs "
                                                         "without VNNI; false only when every target CPU has VNNI")
    keep_float: KeepFloat = keep_float_field()
    accuracy_target: AccuracyTarget | None = accuracy_target_field()
    weight_rounding: WeightRounding = weight_rounding_field()
    float_outputs: bool = Field(default=True, description="INT8: no Q/DQ pair on the model's outputs; rounding the logits to 8 bits "
                                                          "turns near-ties into ties (top-1 then follows the index)")

    def narrowed_weights(self) -> str | None:
        return "every layer on 7 bits (reduce_range)" if self.reduce_range else None

    @model_validator(mode="after")
    def _dynamic_takes_no_calibration_options(self) -> OnnxRuntimeConfig:
        if self.mode == "dynamic":
            static = [key for key, default in (("keep_float", 0), ("weight_rounding", "nearest"), ("accuracy_target", None))
                      if getattr(self, key) != default]
            if static:
                raise ValueError(f"{static[0]} shapes a static INT8 build; mode: dynamic quantizes MatMul/Gemm weights only "
                                 "and calibrates nothing")
        if self.weight_rounding == "gptq" and not self.per_channel:
            raise ValueError("weight_rounding: gptq rounds each output channel on its own scale, and per_channel: false gives "
                             "a weight one scale, which would round GPTQ's integers again: set per_channel: true")
        return self


INFO = BackendInfo(name="onnxruntime", display_name="ONNX Runtime", colour="#1f77b4", config=OnnxRuntimeConfig,
                   distributions=("onnxruntime",), install="pip install edgeship", runtime_module="onnxruntime",
                   suffixes=(".onnx",), int8_saturates=True, search_revision="/shared-ranges")


class OnnxRuntimeBackend(BackendBase):
    info: ClassVar[BackendInfo] = INFO

    def availability(self) -> Availability:
        installed = onnxruntime_distributions()
        if len(installed) > 1:
            listed = ", ".join(f"{name} {version}" for name, version in installed)
            return Availability(self.name, False, dict(installed),
                                reason=f"{len(installed)} ONNX Runtime distributions are installed ({listed}); they share the "
                                       "onnxruntime package folder and overwrite each other's files",
                                install=f"pip uninstall -y {' '.join(name for name, _ in installed)} && pip install onnxruntime",
                                broken=True)
        problem = import_problem(("onnxruntime",))
        if problem:
            return Availability(self.name, False, dict(installed), reason=problem[0], install="pip install onnxruntime", broken=problem[1])
        import onnxruntime as ort
        providers = ", ".join(p.removesuffix("ExecutionProvider") for p in ort.get_available_providers())
        return Availability(self.name, True, installed_versions(self.info.distributions) or {"onnxruntime": ort.__version__},
                            device=f"CPU (providers: {providers})")

    def _build(self, onnx: Path, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel,
               out_dir: Path) -> Path:
        """Write ``model.onnx`` (FP32), ``model.fp16.onnx`` or ``model.int8.onnx`` (QDQ INT8) under ``out_dir``."""
        if precision is Precision.FP32:
            return self._build_fp32(onnx, out_dir)
        if precision is Precision.FP16:
            return self._build_fp16(onnx, out_dir)
        return self._build_int8(onnx, calibration, cfg, out_dir)  # type: ignore[arg-type]

    def runner(self, engine: Path, *, threads: int) -> OnnxRuntimeRunner:
        return OnnxRuntimeRunner(engine, threads=threads)

    def precision_of(self, engine: Path) -> Precision | None:
        return onnx_precision(engine)

    @staticmethod
    def _build_fp32(source: Path, out_dir: Path) -> Path:
        target = out_dir / "model.onnx"
        shutil.copyfile(source, target)
        return target

    @staticmethod
    def _build_fp16(source: Path, out_dir: Path) -> Path:
        """Every float tensor in FP16 (ONNX Runtime's own converter); the model keeps float32 inputs and outputs, so
        callers feed the same arrays. ONNX Runtime's CPU provider runs ops that lack an FP16 kernel through casts."""
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        target = out_dir / "model.fp16.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(target))
        return target

    def _build_int8(self, source: Path, calibration: CalibrationSet, cfg: OnnxRuntimeConfig, out_dir: Path) -> Path:
        if cfg.mode == "dynamic":
            return loadable(quantize_dynamic_int8(source, out_dir / "model.int8.onnx", per_channel=cfg.per_channel,
                                                  reduce_range=cfg.reduce_range))
        if cfg.calibration_size is not None:
            calibration = calibration.subset(cfg.calibration_size)
        ranges = out_dir / ".activation-ranges.json"  # calibrated by the first candidate, read by the others
        try:
            chosen = choose_float_layers(source, calibration, cfg.keep_float, cfg.accuracy_target, out_dir,
                                         build=lambda nodes, folder: self._quantize(source, calibration, cfg, folder, nodes, ranges),
                                         runner=lambda engine, threads: self.runner(engine, threads=threads), reuse=True,
                                         placement="every_op",  # quantize_static quantizes every op it can
                                         as_written=lambda engine, threads: OnnxRuntimeRunner(engine, threads=threads,
                                                                                             qdq_as_written=True),
                                         # per-tensor weights (per_channel: false) sit on a grid weights_alone does not model
                                         weights_alone=(lambda: weights_alone(source, calibration, cfg.weight_rounding,
                                                                              weight_grid(cfg))) if cfg.per_channel else None,
                                         method_note=SHARED_RANGES)
        finally:
            ranges.unlink(missing_ok=True)
        return loadable(chosen.engine or self._quantize(source, calibration, cfg, out_dir, chosen.nodes))

    @staticmethod
    def _quantize(source: Path, calibration: CalibrationSet, cfg: OnnxRuntimeConfig, out_dir: Path, keep: list[str],
                  ranges: Path | None = None) -> Path:
        """``ranges``: a file of activation ranges to read, or to write when it does not exist yet (``quantize_qdq``)."""
        target = out_dir / "model.int8.onnx"
        extra: dict[str, Any] = {"CalibPercentile": cfg.percentile} if cfg.calibration_method == "percentile" else {}
        with rounded_source(source, calibration, cfg.weight_rounding, keep, out_dir, weight_grid(cfg)) as rounded:
            quantize_qdq(rounded, target, calibration, method=cfg.calibration_method, per_channel=cfg.per_channel,
                         activation_type=cfg.activation_type, reduce_range=cfg.reduce_range, extra_options=extra,
                         nodes_to_exclude=keep, float_outputs=cfg.float_outputs, ranges=ranges)
        return target


REDUCED_QMAX = 64  # quantize_static's symmetric int8 weights with reduce_range: -64..64, scale max|w| / 64


def weight_grid(cfg: OnnxRuntimeConfig) -> WeightGrid:
    """The grid ``quantize_static`` puts every weight on: 7 bits with ``reduce_range``, so GPTQ rounds on that one."""
    return WeightGrid(REDUCED_QMAX) if cfg.reduce_range else WeightGrid()


def mark_simulated(model_path: Path, predicts: str) -> None:
    """Stamp a Q/DQ ONNX that stands in for another runtime's INT8 engine (``predicts``) so that ``OnnxRuntimeRunner`` runs
    its Q/DQ as written instead of through ONNX Runtime's integer kernels, whose u8×s8 pair sums saturate on x86 CPUs
    without VNNI: the prediction is of that runtime's arithmetic, not of this CPU's kernels. Runtimes ignore the stamp."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    kept = [entry for entry in model.metadata_props if entry.key != SIMULATED_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend([*kept, onnx.StringStringEntryProto(key=SIMULATED_KEY, value=predicts)])
    onnx.save(model, str(model_path))


def loadable(engine: Path) -> Path:
    """``engine`` once ONNX Runtime has loaded it: its quantizer can write a graph ONNX Runtime itself refuses (a fused
    bias dequantized with a zero point of the wrong type), which is the build's failure, not the measurement's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(engine), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own kinds
        raise BuildError("onnxruntime", Precision.INT8, f"ONNX Runtime refuses the model its quantizer wrote: "
                                                        f"{error_line(str(exc))}") from None
    return engine


SHARED_RANGES = ("; the candidates share the activation ranges calibrated for the first one built (the fully quantized "
                 "one): a layer kept in float differs from it by its weights' INT8 rounding, and calibrating each candidate "
                 "again was most of its build time")
SIMULATED_KEY = "edgeship.simulated_qdq"  # ONNX metadata of a prediction: the engine it predicts (mark_simulated)
DYNAMIC_OPS = ("MatMul", "Gemm")  # what dynamic INT8 quantizes: the weight products, where a transformer's time goes
CALIBRATION_CHUNK = 16  # feeds a calibrator holds the activations of at once (quantize_qdq)


def _remove_with_external_data(model_path: Path) -> None:
    """Delete an ONNX file and the external data files it names beside it (ONNX Runtime's leftover keeps its weights in a
    uuid-named ``.data`` file)."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - nothing readable: only the file itself to remove
        model = None
    if model is not None:
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location" and Path(entry.value).name == entry.value:
                    (model_path.parent / entry.value).unlink(missing_ok=True)
    model_path.unlink(missing_ok=True)


def quantize_dynamic_int8(source: Path, target: Path, *, per_channel: bool, reduce_range: bool) -> Path:
    """ONNX Runtime's ``quantize_dynamic``: int8 weights for ``DYNAMIC_OPS``, activations quantized at run time from each
    call's own range, so nothing is calibrated (the calibration set is not used)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = target.with_name(f".{target.stem}.prepared.onnx")
    pre_process(source, prepared)
    try:
        with loggers_at(logging.ERROR, ""):  # the quantizer logs a warning per node on the root logger
            quantize_dynamic(str(prepared), str(target), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    return target


def pre_process(source: Path, prepared: Path) -> None:
    """ONNX Runtime's quantization pre-processing (shape inference, graph fusions) before either quantizer."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    leftover = Path.cwd() / SYMBOLIC_LEFTOVER
    had_leftover = leftover.exists()
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 - symbolic shape inference gives up on some graphs (dynamic H×W detectors)
        if not had_leftover:  # ONNX Runtime saves its half-inferred model in the working directory as it gives up
            _remove_with_external_data(leftover)
        # ONNX's own shape inference then, and no graph optimization: on such a graph its Conv+BatchNorm fusion leaves
        # biases the quantizer turns into a model ONNX Runtime refuses (PP-OCRv4's detector)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, skip_optimization=True)


SYMBOLIC_LEFTOVER = "sym_shape_infer_temp.onnx"  # what ONNX Runtime's symbolic shape inference leaves in the cwd on failure


def quantize_qdq(source: Path, target: Path, calibration: CalibrationSet, *, method: str, per_channel: bool,
                 activation_type: str = "int8", reduce_range: bool = False, extra_options: Mapping[str, Any] | None = None,
                 nodes_to_exclude: list[str] | None = None, float_outputs: bool = False, op_types: list[str] | None = None,
                 ranges: Path | None = None) -> None:
    """ONNX Runtime's ``quantize_static`` in QDQ format, calibrated on ``calibration``: int8 weights, symmetric;
    activations int8 (symmetric) or uint8. ``method`` is minmax | entropy | percentile; ``nodes_to_exclude`` stay float;
    ``float_outputs`` drops the Q/DQ pair on each graph output; ``op_types``: only these are quantized (None: every op
    the quantizer can). ``ranges``: ONNX Runtime's calibration cache, read instead of calibrating when it exists, else
    written (the calibrators range every tensor of the op types, whichever nodes are excluded, so a fully quantized
    build's ranges serve every subset). Work files stay beside ``target`` only while it runs."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        """The calibration feeds, in ranges: the calibrators hold every activation of the feeds they read at once, so
        ``quantize_static`` reads ``CalibStridedMinMax`` feeds at a time and merges their ranges or histograms."""

        def __init__(self) -> None:
            self._feeds = iter(calibration)

        def __len__(self) -> int:
            return len(calibration)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._feeds, None)

        def rewind(self) -> None:
            self._feeds = iter(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._feeds = (calibration[index] for index in range(start_index, min(end_index, len(calibration))))

    prepared = target.with_name(f".{target.stem}.prepared.onnx")
    pre_process(source, prepared)
    if nodes_to_exclude:
        nodes_to_exclude = fused_names(prepared, nodes_to_exclude)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    activation = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
    extra = {"ActivationSymmetric": activation_type == "int8", "WeightSymmetric": True,
             "CalibStridedMinMax": calibration_stride(len(calibration)), **(extra_options or {})}
    try:
        # the calibrators print their progress, and the quantizer logs a warning per node on the root logger
        with contextlib.redirect_stdout(io.StringIO()), loggers_at(logging.ERROR, ""):
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=activation, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                            reduce_range=reduce_range, extra_options=extra, nodes_to_exclude=list(nodes_to_exclude or []),
                            op_types_to_quantize=op_types, calibration_cache_path=ranges)
        if float_outputs:
            import onnx

            model = onnx.load(str(target))
            if unquantize_outputs(model):
                onnx.save(model, str(target))
    finally:
        prepared.unlink(missing_ok=True)
        for leftover in target.parent.glob("*.onnx-augmented*"):
            leftover.unlink()


def calibration_stride(feeds: int) -> int:
    """How many feeds a calibrator reads at once: the largest divisor of ``feeds`` up to ``CALIBRATION_CHUNK`` (ONNX
    Runtime wants equal ranges). Min/max ranges merge exactly; a histogram keeps its first chunk's bin width and grows."""
    return max(size for size in range(1, min(feeds, CALIBRATION_CHUNK) + 1) if feeds % size == 0)


def fused_names(prepared: Path, names: list[str]) -> list[str]:
    """``names`` and the nodes ONNX Runtime's pre-processing made of them: a fusion names its node after the first node it
    took, plus a suffix (``mm/MatMulAddFusion``), and the quantizer excludes nodes by exact name."""
    import onnx

    wanted = set(names)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    fused = [node.name for node in graph.node if node.name not in wanted and node.name.rpartition("/")[0] in wanted]
    return list(names) + fused


def unquantize_outputs(model: Any) -> int:
    """Remove the QuantizeLinear → DequantizeLinear pair that ends at a graph output, so the last layer writes the
    output in float; the pair's float input takes the output's name. Returns how many outputs were changed."""
    producer = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    changed = 0
    for output in model.graph.output:
        dequantize = producer.get(output.name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producer.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or consumers.get(quantize.output[0]) != 1:
            continue
        source = quantize.input[0]
        if source not in producer or any(source == o.name for o in model.graph.output):
            continue
        model.graph.node.remove(quantize)
        model.graph.node.remove(dequantize)
        for node in model.graph.node:
            node.input[:] = [output.name if name == source else name for name in node.input]
            node.output[:] = [output.name if name == source else name for name in node.output]
        for info in list(model.graph.value_info):
            if info.name == source:
                model.graph.value_info.remove(info)
        changed += 1
    return changed


@functools.cache
def onnxruntime_distributions() -> tuple[tuple[str, str], ...]:
    """(name, version) of every installed distribution that writes the ``onnxruntime`` package: onnxruntime,
    onnxruntime-gpu, onnxruntime-openvino, ort-nightly… More than one means a broken environment."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.startswith(("onnxruntime", "ort-nightly")):
            continue
        if any(file.parts and file.parts[0] == "onnxruntime" for file in dist.files or ()):
            found.add((name, dist.version))
    return tuple(sorted(found))


class OnnxRuntimeRunner(Runner):
    """One CPU InferenceSession with pinned intra-op threads and sequential execution. ``qdq_as_written``: the model's Q/DQ
    computed as written (dequantize, float op, quantize) instead of fused into integer kernels, which is what a CPU whose
    kernels do not saturate computes; a model stamped by ``mark_simulated`` always runs so."""

    def __init__(self, engine: Path, *, threads: int, qdq_as_written: bool = False) -> None:
        super().__init__(engine, threads=threads)
        self._session: Any = None
        self._as_written = qdq_as_written
        self._simulated = qdq_as_written

    def _activate(self) -> None:
        self._simulated = self._as_written
        self._session = self._new_session()
        if not self._simulated and self._session.get_modelmeta().custom_metadata_map.get(SIMULATED_KEY):
            self._simulated = True  # a prediction (mark_simulated): a second session, stamps being rare
            self._session = self._new_session()
        self._meta = {
            i.name: TensorMeta(i.name, np.dtype(ORT_DTYPES.get(i.type, np.float32)),
                               tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self._session.get_inputs()
        }
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _new_session(self, profile_prefix: str | None = None, model: bytes | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self._simulated:
            options.add_session_config_entry(*SIMULATED_QDQ)
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return ort.InferenceSession(model if model is not None else str(self.engine), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    def _deactivate(self) -> None:
        self._session = None

    def _profile(self, feed: Feed, runs: int) -> OpProfile:
        """ONNX Runtime's profiler: each node's ``*_kernel_time`` events, the first run of each (warm-up) left out."""
        with tempfile.TemporaryDirectory(prefix="edgeship-ort-profile-") as folder:
            session = self._new_session(str(Path(folder) / "profile"))
            for _ in range(runs + 1):
                session.run(self._outputs, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        times: dict[str, list[float]] = defaultdict(list)
        kinds: dict[str, str] = {}
        for event in events:
            name = event.get("name", "")
            if event.get("cat") == "Node" and name.endswith("_kernel_time"):
                node = name.removesuffix("_kernel_time")
                times[node].append(float(event["dur"]))
                kinds[node] = event.get("args", {}).get("op_name", "?")
        layers = [LayerTime(layer=node, op_type=kinds[node], kernel=None, mean_us=float(np.mean(durations[1:] or durations)))
                  for node, durations in times.items()]
        if not layers:
            return OpProfile.unavailable("ONNX Runtime's profile recorded no node times")
        return OpProfile.from_layers("ONNX Runtime profiler", runs, layers)

    def _tap(self, sites: list[TensorSite]) -> Tap:
        """The tensors marked as graph outputs of a copy of the engine. A quantized tensor is read after its
        QuantizeLinear → DequantizeLinear pair, as the next layers see it (the quantizer folds a ``Relu`` into that pair
        and leaves its name on the ``Conv`` before it); names the engine lost are not exposed. Each layer also runs alone
        (``Tap.local``): the engine's graph cut at the FP32 names of its inputs, fed the FP32 values."""
        import onnx

        model = onnx.load(str(self.engine))
        writers = {output: node for node in model.graph.node for output in node.output}
        readers: dict[str, list[Any]] = defaultdict(list)
        for node in model.graph.node:
            for name in node.input:
                readers[name].append(node)

        def dequantized(name: str) -> str:
            for q in readers.get(name, []):
                if q.op_type == "QuantizeLinear":
                    for dq in readers.get(q.output[0], []):
                        if dq.op_type == "DequantizeLinear":
                            return str(dq.output[0])
            return name

        sources = {site.tensor: dequantized(site.tensor) for site in sites if site.tensor in writers}
        local = _local_layers(model, sites, sources, self._new_session)
        outputs = {value.name for value in model.graph.output}
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(source) for source in dict.fromkeys(sources.values())
                                  if source not in outputs)
        session = self._new_session(model=model.SerializeToString())
        names, read = list(sources), list(sources.values())

        def call(feed: Feed) -> dict[str, np.ndarray]:
            return {name: np.asarray(value, np.float32) for name, value in zip(names, session.run(read, feed), strict=True)}

        quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        return Tap(method="ONNX Runtime: the tensors marked as graph outputs", exposed=tuple(names), call=call,
                   note="a marked tensor is not fused away: around it the quantized graph runs its Q/DQ arithmetic in float, "
                        "which its fused INT8 kernels follow up to rounding" if quantized else "", local=local,
                   local_note="the engine's graph cut at the FP32 names of the layer's inputs and fed their FP32 "
                              "values; a layer whose input name the engine lost runs with the layers before it back to names it "
                              "kept (a Conv with the Relu the quantizer folded into it)")

    def _describe(self) -> dict[str, object]:
        options = self._session.get_session_options()
        return {"intra_op_num_threads": options.intra_op_num_threads, "inter_op_num_threads": options.inter_op_num_threads,
                "execution_mode": str(options.execution_mode).split(".")[-1], "providers": self._session.get_providers()}

    def _infer(self, feed: Feed) -> Feed:
        return dict(zip(self._outputs, self._session.run(self._outputs, feed), strict=True))

    def bare_call(self, feed: Feed) -> Callable[[], object]:
        """``InferenceSession.run`` alone on ``feed``: the runtime's own call."""
        self.infer(feed)
        session, outputs = self._session, self._outputs
        return lambda: session.run(outputs, feed)


LOCAL_REACH = 3  # layers a local run may reach back over names the engine lost


def _local_layers(model: Any, sites: list[TensorSite], sources: dict[str, str],
                  new_session: Callable[..., Any]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
    """For each exposed tensor, a session of the engine's graph cut between the FP32 names of its layer's inputs and the
    tensor: the layer alone at the engine's precision. None when the graph cannot be cut (shapes not inferable)."""
    import onnx
    from onnx.utils import Extractor

    try:  # the extractor needs a value info for every name it cuts at or reads
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {value.name for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
        inferred.graph.value_info.extend(onnx.helper.make_empty_tensor_value_info(output) for node in model.graph.node
                                         for output in node.output if output and output not in known)
        extractor = Extractor(inferred)
    except Exception:  # onnx raises its own errors for graphs its shape inference cannot follow
        return None
    present = {output for node in model.graph.node for output in node.output} | {value.name for value in model.graph.input}
    by_tensor = {site.tensor: site for site in sites}

    def cut(name: str, reach: int) -> list[str] | None:
        """The names in the engine this tensor's layer starts from, reaching back over names the engine lost."""
        inputs: list[str] = []
        for source in by_tensor[name].inputs:
            if source in present:
                inputs.append(source)
            elif reach > 0 and source in by_tensor:
                deeper = cut(source, reach - 1)
                if deeper is None:
                    return None
                inputs.extend(deeper)
            else:
                return None
        return list(dict.fromkeys(inputs))

    runs: dict[str, tuple[Any, list[tuple[str, np.dtype]], str]] = {}
    for tensor, source in sources.items():
        inputs = cut(tensor, LOCAL_REACH) if tensor in by_tensor else None
        if not inputs:
            continue
        try:
            layer = extractor.extract_model(inputs, [source])
        except Exception:  # a cut the extractor cannot make (a name without a shape)
            continue
        if {value.name for value in layer.graph.input} != set(inputs):
            continue  # the cut does not isolate the layer
        try:
            session = new_session(model=layer.SerializeToString())
        except Exception:  # noqa: BLE001 - a cut that leaves a node reading a name outside it (an integer graph input)
            continue
        runs[tensor] = (session, [(i.name, np.dtype(ORT_DTYPES.get(i.type, np.float32))) for i in session.get_inputs()], source)

    def local(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for tensor, (session, inputs, source) in runs.items():
            if all(name in values for name, _ in inputs):
                with np.errstate(over="ignore"):  # an FP32 value beyond FP16's range becomes inf, as the engine itself would make it
                    feed = {name: np.asarray(values[name], dtype) for name, dtype in inputs}
                out[tensor] = np.asarray(session.run([source], feed)[0], np.float32)
        return out

    return local if runs else None


def onnx_precision(model_path: Path) -> Precision:
    """An ONNX model's precision from its contents: Q/DQ or integer ops are INT8, FP16 weights FP16, else FP32.
    ``ValueError`` when the file is not a readable ONNX model."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError…
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"not a readable ONNX model: {why}") from None
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger") for node in model.graph.node):
        return Precision.INT8
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return Precision.FP16
    return Precision.FP32
