"""TensorRT 10/11 (NVIDIA GPU): strongly typed engines from ONNX whose precision is decided before the build.

TensorRT 11 has no INT8 calibrators and no FP16/INT8 builder flags, and TensorRT 10 on Jetson
takes the same path: the network is parsed strongly typed, so every tensor keeps the type the
ONNX gives it. The work is therefore in two steps:

1. ``prepare`` (any CPU): the TensorRT-bound ONNX. FP16 from ModelOpt AutoCast (float32 I/O kept);
   INT8 as explicit Q/DQ from ModelOpt's ONNX quantizer, or from ONNX Runtime's ``quantize_static``
   with TensorRT's settings when ModelOpt cannot be imported; FP32 as exported. ``prepare.json``
   records which tool made it. ModelOpt runs in a child process (see ``modelopt_worker``).
2. ``compile`` (needs ``tensorrt`` and a CUDA GPU): Polygraphy parses the prepared ONNX strongly
   typed and builds with a workspace limit, the builder optimization level, a timing cache and an
   optimization profile for the dynamic batch. ``engine.json`` records the TensorRT version, the GPU,
   its compute capability and the timing cache's sha256: an engine runs only there.

Where TensorRT or the GPU is missing, the pipeline still prepares, and scores the prepared ONNX
on ONNX Runtime as a prediction; it never reports a TensorRT number it did not measure.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from edgeship.artifacts import sha256_file
from edgeship.backends.base import PREPARE_INFO, Availability, BackendBase, BackendInfo, CalibrationSet, Feed, Precision, Runner, TensorMeta
from edgeship.backends.float_search import choose_float_layers
from edgeship.backends.modelopt_worker import MODELOPT_MISSING
from edgeship.backends.onnxruntime import OnnxRuntimeRunner, mark_simulated, onnx_precision, quantize_qdq
from edgeship.backends.rounding import rounded_source, weights_alone
from edgeship.backends.tooling import captured_output, error_line, fed_inputs, import_problem, importable
from edgeship.config import (
    AccuracyTarget,
    BackendSection,
    KeepFloat,
    Section,
    WeightRounding,
    accuracy_target_field,
    keep_float_field,
    weight_rounding_field,
)
from edgeship.device import installed_versions, nvidia_gpu
from edgeship.errors import BackendUnavailable, BuildError

if TYPE_CHECKING:
    from pydantic import BaseModel

INSTALL = ("pip install --extra-index-url https://pypi.nvidia.com 'edgeship[tensorrt]' on a machine with an NVIDIA GPU "
           "(TensorRT's libraries come from NVIDIA's index)")
PREPARE_INSTALL = "pip install 'edgeship[tensorrt-onnx]'"
DISTRIBUTIONS = ("tensorrt", "polygraphy", "nvidia-modelopt")
ENGINE_FILE = "model.engine"
ENGINE_INFO = "engine.json"
AUTOCAST_SAMPLES = 100  # calibration inputs AutoCast runs to find activations that would overflow FP16
CALIBRATION_BATCH = 32  # inputs per ModelOpt calibration step
PREPARE_STEPS = "2"  # edgeship's steps on a prepared ONNX, in its key; 2: the Q/DQ ONNX stamped to run as written
SHARED_SCALES = ("; the candidates share the activation scales calibrated for the first one built (the fully quantized one; "
                 "a TensorRT calibration cache ModelOpt reads): calibrating each candidate again was most of its time")
SCALES_SHARED = "shared: calibrated once, by the search's fully quantized candidate"  # prepare.json's activation_scales
PREDICTS = "a TensorRT INT8 engine"  # what the prepared Q/DQ ONNX stands in for (mark_simulated)
# ModelOpt's calibration holds every activation of every calibration input at once; above this it calibrates node by
# node (``calibrate_per_node``: the same Q/DQ scales, a fraction of the memory, several times the time)
CALIBRATION_MEMORY = 1 << 30
# ONNX Runtime's quantize_static as TensorRT wants Q/DQ: int8 symmetric activations and weights, weights per channel and
# kept float behind their own Q/DQ pair (TensorRT folds them), a dedicated pair per consumer, biases left float (TensorRT
# fuses them; it has no int32 bias DequantizeLinear).
ORT_TENSORRT_OPTIONS: dict[str, Any] = {"AddQDQPairToWeight": True, "DedicatedQDQPair": True, "QuantizeBias": False,
                                        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}


class TensorRtProfile(Section):
    """The optimization profile of the dynamic batch axis: TensorRT tunes for ``opt`` and accepts ``min``…``max``."""

    min: PositiveInt = 1
    opt: PositiveInt = 1
    max: PositiveInt = 64

    @model_validator(mode="after")
    def _ordered(self) -> TensorRtProfile:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min ≤ opt ≤ max, got {self.min}, {self.opt}, {self.max}")
        return self


class TensorRtConfig(BackendSection):
    """TensorRT 10/11, strongly typed: the precision is decided in the ONNX (ModelOpt AutoCast FP16, explicit Q/DQ INT8)
    before the engine build, and that ONNX-side preparation runs on any CPU."""

    BACKEND: ClassVar[str] = "tensorrt"
    SUPPORTED: ClassVar[frozenset[Precision]] = frozenset(Precision)
    INT8_ONLY: ClassVar[frozenset[str]] = frozenset({"qdq_tool", "calibration_method", "calibration_size", "high_precision",
                                                     "keep_float", "accuracy_target", "weight_rounding"})
    ENGINE_ONLY: ClassVar[frozenset[str]] = frozenset({"workspace_mib", "optimization_level", "timing_cache", "batch"})

    precisions: tuple[Precision, ...] = (Precision.FP16, Precision.INT8)
    qdq_tool: Literal["auto", "modelopt", "onnxruntime"] = Field(
        default="auto", description="who writes the INT8 Q/DQ: ModelOpt, or ONNX Runtime's quantize_static with TensorRT's settings; "
                                    "auto takes ModelOpt when it imports")
    calibration_method: Literal["entropy", "max"] = "entropy"
    calibration_size: PositiveInt | None = Field(default=None, description="use the first N calibration samples; None uses all")
    keep_float: KeepFloat = keep_float_field("out of the Q/DQ")
    accuracy_target: AccuracyTarget | None = accuracy_target_field()
    weight_rounding: WeightRounding = weight_rounding_field()
    high_precision: Literal["fp16", "fp32"] = Field(
        default="fp16", description="type of the layers the INT8 model leaves unquantized (ModelOpt's high_precision_dtype); "
                                    "ONNX Runtime's quantizer always leaves them fp32")
    workspace_mib: PositiveInt = Field(default=1024, description="builder workspace memory-pool limit")
    optimization_level: int = Field(default=3, ge=0, le=5, description="builder optimization level (TensorRT's default is 3)")
    timing_cache: Path | None = Field(default=None, description="a timing cache file shared by builds on one GPU; None keeps one "
                                                                "beside each engine")
    batch: TensorRtProfile = TensorRtProfile()

    @model_validator(mode="after")
    def _no_budget(self) -> TensorRtConfig:
        """A latency budget would time the search's candidates, which are predictions run on ONNX Runtime: their p50s say
        nothing of TensorRT's."""
        if self.accuracy_target is not None and self.accuracy_target.max_slowdown is not None:
            raise ValueError("accuracy_target.max_slowdown: TensorRT's search scores predictions on ONNX Runtime, whose "
                             "latency says nothing of TensorRT's engines; time them on the GPU instead")
        return self


INFO = BackendInfo(
    name="tensorrt", display_name="TensorRT", colour="#2ca02c", config=TensorRtConfig, distributions=DISTRIBUTIONS, install=INSTALL,
    runtime_module="tensorrt", suffixes=(".engine", ".plan", ".onnx"), companions=(ENGINE_INFO,), search_revision="/shared-scales",
    calibrated=frozenset({Precision.FP16, Precision.INT8}),  # FP16 too: AutoCast runs calibration inputs to find FP16 overflows
    report_note=("A TensorRT engine runs only on the GPU model (compute capability) and the TensorRT version it was built with (each "
                 "engine's runtime shows both); rebuild it for any other. Where no engine was built, the TensorRT-bound ONNX was "
                 "scored on ONNX Runtime on the CPU: those figures are predictions, not TensorRT measurements, and never pass a gate."))


class TensorRtBackend(BackendBase):
    info: ClassVar[BackendInfo] = INFO

    def availability(self) -> Availability:
        """Whether engines can be built and run here: ``tensorrt`` and Polygraphy importable, and a CUDA GPU present."""
        problems = []
        missing = [module for module in ("tensorrt", "polygraphy") if not importable(module)]
        gpu = nvidia_gpu()
        # imported only where engines could run: without a GPU, TensorRT's libraries may well fail to load, by design
        broken = import_problem(("tensorrt", "polygraphy")) if gpu and not missing else None
        if missing:
            problems.append(f"cannot import {', '.join(missing)} (TensorRT is not installed)")
        elif broken:
            problems.append(broken[0])
        if not gpu:
            problems.append("no CUDA GPU (nvidia-smi finds none)")
        return Availability(self.name, not problems, installed_versions(self.info.distributions), device=gpu or "no CUDA GPU",
                            reason="; ".join(problems), install=self.info.install, broken=bool(broken and broken[1]))

    def precision_of(self, engine: Path) -> Precision | None:
        """A prepared ONNX tells its precision; a serialized engine does not."""
        return onnx_precision(engine) if engine.suffix == ".onnx" else super().precision_of(engine)

    def _build(self, onnx: Path, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel,
               out_dir: Path) -> Path:
        """``prepare`` then ``compile``: write ``model.engine`` and ``engine.json`` under ``out_dir``."""
        work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".work-"))
        try:
            prepared = self.prepare(onnx, precision, calibration, cfg, work)
            return self.compile(prepared, precision, cfg, out_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def prepare(self, onnx: Path, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel, out_dir: Path) -> Path:
        """Write the TensorRT-bound ONNX (``model.<precision>.onnx``) and ``prepare.json`` under ``out_dir``. Runs on the CPU.

        Raises ``BackendUnavailable`` when the tool it needs is missing, ``BuildError`` when the tool fails.
        """
        self._check_config(cfg)
        self._check_calibration(precision, calibration)
        target = out_dir / f"model.{precision.value}.onnx"
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".work-"))
        try:
            with self._build_errors(precision):
                if precision is Precision.FP32:
                    shutil.copyfile(onnx, target)
                    info: dict[str, Any] = {"tool": "none", "note": "the exported FP32 model as is"}
                elif precision is Precision.FP16:
                    info = self._autocast(onnx, target, calibration, work)
                else:
                    info = self._quantize(onnx, target, calibration, cfg, work)  # type: ignore[arg-type]
        except (BuildError, BackendUnavailable):
            target.unlink(missing_ok=True)  # a tool that failed after writing must not leave a model that looks finished
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info.update(precision=precision.value, seconds=round(time.perf_counter() - started, 3), io=_io_types(target))
        if precision is Precision.INT8:
            info["qdq"] = qdq_summary(target)
        (out_dir / PREPARE_INFO).write_text(json.dumps(info, indent=2))
        return target

    def compile(self, prepared: Path, precision: Precision, cfg: BaseModel, out_dir: Path) -> Path:
        """Build the engine from a prepared ONNX with Polygraphy, strongly typed; write ``model.engine`` and ``engine.json``."""
        self._check_config(cfg)
        self._require_available()
        with self._build_errors(precision):
            return _compile(prepared, precision, cfg, out_dir)

    def runner(self, engine: Path, *, threads: int) -> TensorRtRunner:
        return TensorRtRunner(engine, threads=threads)

    def preparation_versions(self) -> dict[str, str]:
        """The tools that may write a prepared ONNX: ModelOpt, or ONNX Runtime's quantizer in its place; and edgeship's
        own steps on it (``PREPARE_STEPS``)."""
        return {**installed_versions(("nvidia-modelopt", "onnxruntime", "onnx")), "edgeship-prepare": PREPARE_STEPS}

    # -- the ONNX-side steps -------------------------------------------------------------------------------------

    def _autocast(self, source: Path, target: Path, calibration: CalibrationSet | None, work: Path) -> dict[str, Any]:
        request: dict[str, Any] = {"step": "autocast", "source": str(source), "target": str(target)}
        info: dict[str, Any] = {"tool": "modelopt.onnx.autocast", "keep_io_types": True, "low_precision_type": "fp16",
                                "reference_inputs": "random inputs in [-1, 1] (no calibration set given)"}
        if calibration is not None:
            reference = calibration.subset(AUTOCAST_SAMPLES)
            request["calibration"] = str(_write_npz(reference, work))
            request["chunk"] = reference_chunk(source, reference)
            info.update(reference_inputs=f"{reference.count} calibration samples", reference_chunk=request["chunk"])
        code, message, version = run_modelopt_step(request, work)
        if code == MODELOPT_MISSING:
            raise BackendUnavailable(self.name, f"FP16 needs ModelOpt AutoCast: {message}; install: {PREPARE_INSTALL}")
        if code:
            raise BuildError(self.name, Precision.FP16, message)
        return {**info, "version": version}

    def _quantize(self, source: Path, target: Path, calibration: CalibrationSet, cfg: TensorRtConfig, work: Path) -> dict[str, Any]:
        if cfg.calibration_size is not None:
            calibration = calibration.subset(cfg.calibration_size)

        shared = Path(tempfile.mkdtemp(dir=target.parent, prefix=".shared-calibration-"))  # the first candidate's, for the others

        def candidate(nodes: list[str], folder: Path) -> Path:
            self._write_qdq(source, folder / target.name, calibration, cfg, folder, nodes, shared)
            mark_simulated(folder / target.name, PREDICTS)
            return folder / target.name

        # the prepared ONNX is what a CPU can score: candidates run on ONNX Runtime, as its prediction does
        # built again once chosen: the preparation record comes from that build, and candidates leave work files
        try:
            chosen = choose_float_layers(source, calibration, cfg.keep_float, cfg.accuracy_target, target.parent, build=candidate,
                                         runner=lambda engine, threads: OnnxRuntimeRunner(engine, threads=threads),
                                         weights_alone=lambda: weights_alone(source, calibration, cfg.weight_rounding),
                                         method_note=SHARED_SCALES)
            info = self._write_qdq(source, target, calibration, cfg, work, chosen.nodes, shared)  # the scales the search scored
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        mark_simulated(target, PREDICTS)
        return info

    def _write_qdq(self, source: Path, target: Path, calibration: CalibrationSet, cfg: TensorRtConfig, work: Path,
                   keep: list[str], shared: Path | None = None) -> dict[str, Any]:
        """The Q/DQ ONNX TensorRT builds from, ``keep`` left out of the Q/DQ: ModelOpt's, or ONNX Runtime's quantizer with
        TensorRT's settings. ``shared``: a folder where the first build leaves its activation scales (a TensorRT
        calibration cache for ModelOpt, a range file for ONNX Runtime) and later builds read them instead of calibrating:
        the calibrators range the float model's tensors whichever nodes are excluded, so one calibration serves every
        subset, and calibrating again was most of a candidate's time."""
        settings: dict[str, Any] = {"calibration_method": cfg.calibration_method, "calibration_samples": calibration.count,
                                    "calibration_fingerprint": calibration.fingerprint}
        scales = shared / "scales.cache" if shared is not None else None
        reused = scales is not None and scales.is_file()
        if reused:
            settings["activation_scales"] = SCALES_SHARED
        if keep:
            settings["float_layers"] = keep
        settings["weight_rounding"] = cfg.weight_rounding
        with rounded_source(source, calibration, cfg.weight_rounding, keep, target.parent) as rounded:
            fallback_reason = ""
            if cfg.qdq_tool in ("auto", "modelopt"):
                static = _static_batch(rounded, calibration.input_name)
                feed = calibration.subset(static or 1) if reused else calibration  # the scales come from the cache
                batch = static or min(CALIBRATION_BATCH, feed.count)
                held = activation_bytes(rounded, calibration.arrays) * feed.count
                settings["calibrated_per_node"] = held > CALIBRATION_MEMORY
                if settings["calibrated_per_node"]:
                    settings["per_node_reason"] = (f"{held / (1 << 30):.1f} GiB of activations held at once otherwise "
                                                   f"(limit {CALIBRATION_MEMORY / (1 << 30):g} GiB)")
                request = {"step": "quantize", "source": str(rounded), "target": str(target), "method": cfg.calibration_method,
                           "per_node": settings["calibrated_per_node"], "calibration_cache": str(scales) if reused else None,
                           "calibration": str(_write_npz(feed, work)), "high_precision": cfg.high_precision,
                           "nodes_to_exclude": [f"^{re.escape(name)}$" for name in keep],
                           "calibration_shapes": ",".join(f"{name}:" + "x".join(map(str, (batch, *array.shape[1:])))
                                                          for name, array in calibration.arrays.items())}
                code, message, version = run_modelopt_step(request, work)
                if code == 0:
                    if scales is not None and not reused:
                        write_calibration_cache(target, scales)
                    return {"tool": "modelopt.onnx.quantization", "version": version, **settings, "high_precision": cfg.high_precision}
                if code != MODELOPT_MISSING:
                    raise BuildError(self.name, Precision.INT8, message)
                if cfg.qdq_tool == "modelopt":
                    raise BackendUnavailable(self.name, f"qdq_tool: modelopt: {message}; install: {PREPARE_INSTALL}")
                fallback_reason = message
            ranges = shared / "ranges.json" if shared is not None else None
            if ranges is not None and ranges.is_file():
                settings["activation_scales"] = SCALES_SHARED
            try:
                quantize_qdq(rounded, target, calibration, method={"entropy": "entropy", "max": "minmax"}[cfg.calibration_method],
                             per_channel=True, activation_type="int8", reduce_range=False, extra_options=ORT_TENSORRT_OPTIONS,
                             nodes_to_exclude=keep, ranges=ranges)
            except Exception as exc:  # the quantizer raises anything; record its words
                message = f"onnxruntime quantize_static: {type(exc).__name__}: {error_line(str(exc))}"
                raise BuildError(self.name, Precision.INT8, message) from exc
        info = {"tool": "onnxruntime.quantization.quantize_static", "version": installed_versions(("onnxruntime",)).get("onnxruntime"),
                **settings, "high_precision": "fp32", "settings": {"quant_format": "QDQ", "per_channel": True,
                                                                    "activation_type": "int8", "symmetric": True, **ORT_TENSORRT_OPTIONS}}
        if fallback_reason:
            info["fallback_reason"] = fallback_reason
        return info


def write_calibration_cache(model_path: Path, target: Path) -> None:
    """The activation scales of a Q/DQ ONNX as a TensorRT calibration cache (``name: big-endian float32 hex`` after a
    header line), which ModelOpt's ``calibration_cache_path`` reads. Nothing is written when a tensor's name could not be
    read back from such a line (it holds ``": "``): ModelOpt would leave its node unquantized, so each build calibrates."""
    import struct

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    constants = {init.name: init for init in model.graph.initializer}
    lines = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants or node.input[1] not in constants:
            continue
        scale = numpy_helper.to_array(constants[node.input[1]])
        if scale.size != 1 or ": " in node.input[0] or "\n" in node.input[0]:
            return
        lines.append(f"{node.input[0]}: {struct.pack('!f', float(scale.reshape(()))).hex()}")
    target.write_text("TRT-8501-EntropyCalibration2\n" + "".join(f"{line}\n" for line in dict.fromkeys(lines)))


def run_modelopt_step(request: dict[str, Any], work: Path) -> tuple[int, str, str | None]:
    """Run one ModelOpt step in a child process; (exit code, its last telling line, ModelOpt's version).

    ModelOpt writes its model, and intermediate files beside it, in ``work``; only a finished model is moved to the target."""
    target = Path(request["target"])
    path = work / "request.json"
    path.write_text(json.dumps({**request, "target": str(work / target.name)}))
    done = subprocess.run([sys.executable, "-m", "edgeship.backends.modelopt_worker", str(path)], capture_output=True, text=True,
                          check=False)
    version = installed_versions(("nvidia-modelopt",)).get("nvidia-modelopt")
    if done.returncode == 0 and not (work / target.name).is_file():
        return 1, f"ModelOpt {request['step']} wrote no model: {error_line(done.stderr + done.stdout)}", version
    if done.returncode == 0:
        shutil.move(work / target.name, target)
    if done.returncode < 0:  # killed: its last line is whatever it logged before, not why it stopped
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else str(-done.returncode)
        return done.returncode, f"ModelOpt's {request['step']} process was killed by {name} (out of memory, or stopped by hand)", version
    message = done.stderr.strip().splitlines()[-1] if done.returncode and done.stderr.strip() else error_line(done.stderr + done.stdout)
    return done.returncode, message[:400], version


def activation_bytes(model_path: Path, arrays: dict[str, np.ndarray]) -> int:
    """The bytes of every tensor the model computes for one sample shaped like ``arrays``' rows (ONNX shape inference;
    a tensor whose shape it cannot settle counts nothing): what a calibrator holds per calibration input."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for value in model.graph.input:
        if value.name in arrays:
            for dim, size in zip(value.type.tensor_type.shape.dim, (1, *arrays[value.name].shape[1:]), strict=False):
                dim.Clear()
                dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model shape inference cannot follow: nothing to count
        return 0
    total = 0
    for value in inferred.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if dims and all(dim.HasField("dim_value") for dim in dims):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize
            total += int(np.prod([dim.dim_value for dim in dims])) * itemsize
    return total


def reference_chunk(model_path: Path, reference: CalibrationSet) -> int:
    """How many of AutoCast's reference batches to run at once so that their activations fit in ``CALIBRATION_MEMORY``
    (at least one); every batch at once when shape inference cannot size them."""
    per_sample = activation_bytes(model_path, reference.arrays)
    if not per_sample:
        return reference.count
    per_batch = per_sample * (_static_batch(model_path, reference.input_name) or 1)
    return max(1, min(reference.count, CALIBRATION_MEMORY // per_batch))


def _static_batch(model_path: Path, input_name: str) -> int | None:
    """The input's batch size when the ONNX fixes it (calibration steps must match it), else None."""
    import onnx

    for value in onnx.load(str(model_path), load_external_data=False).graph.input:
        if value.name == input_name and value.type.tensor_type.shape.dim:
            first = value.type.tensor_type.shape.dim[0]
            return first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None
    return None


def _write_npz(calibration: CalibrationSet, work: Path) -> Path:
    path = work / "calibration.npz"
    np.savez(path, **calibration.arrays)
    return path


def _io_types(model_path: Path) -> dict[str, dict[str, str]]:
    """Each graph input's and output's element type, e.g. {"inputs": {"input": "FLOAT"}}."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def kind(value: Any) -> str:
        return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)

    return {"inputs": {v.name: kind(v) for v in fed_inputs(graph)},
            "outputs": {v.name: kind(v) for v in graph.output}}


def qdq_summary(model_path: Path) -> dict[str, Any]:
    """What the Q/DQ in a model looks like: node counts, zero-point types, whether every zero point is 0 (symmetric),
    how many scales are per channel, and how many FP16 scale values are subnormal (below 2^-14).

    Subnormal FP16 scales come from channels whose weights are all but zero (dead channels after BatchNorm folding)
    when ``high_precision: fp16``. ONNX Runtime's CPU DequantizeLinear mishandles them: on EfficientNet-Lite0 the stem
    convolution's dequantized weights came out as 0.5 instead of ~1e-7, the output became inf and the prediction's
    agreement with FP32 fell to 0.96%. The count lets the report say why.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name: init for init in graph.initializer}
    constants.update({node.output[0]: next(a.t for a in node.attribute if a.name == "value")
                      for node in graph.node if node.op_type == "Constant" and any(a.name == "value" for a in node.attribute)})
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    zero_types: set[str] = set()
    symmetric, per_channel, subnormal = True, 0, 0
    for node in graph.node:
        if node.op_type not in counts:
            continue
        counts[node.op_type] += 1
        scale = constants.get(node.input[1])
        values = numpy_helper.to_array(scale) if scale is not None else None
        if values is not None and values.size > 1:
            per_channel += 1
        if values is not None and values.dtype == np.float16 and node.op_type == "DequantizeLinear":
            subnormal += int((np.abs(values) < np.finfo(np.float16).tiny).sum())
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None:
            zero_types.add(onnx.TensorProto.DataType.Name(zero.data_type))
            symmetric = symmetric and not numpy_helper.to_array(zero).any()
    return {"quantize_linear": counts["QuantizeLinear"], "dequantize_linear": counts["DequantizeLinear"],
            "zero_point_types": sorted(zero_types), "symmetric": symmetric, "per_channel_scales": per_channel,
            "subnormal_fp16_scales": subnormal}


# -- the GPU side -----------------------------------------------------------------------------------------------------

def gpu_facts() -> dict[str, str]:
    """The GPU's name and compute capability, from nvidia-smi ('' when there is no GPU)."""
    name, _, capability = nvidia_gpu().partition(",")
    return {"gpu": name.strip(), "compute_capability": capability.strip()}


def _compile(prepared: Path, precision: Precision, cfg: TensorRtConfig, out_dir: Path) -> Path:
    import onnx
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    graph = onnx.load(str(prepared), load_external_data=False).graph
    profile, profile_info = Profile(), {}
    for value in fed_inputs(graph):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if None in dims[1:]:
            raise BuildError("tensorrt", precision, f"input {value.name!r} has a dynamic axis other than the batch: {dims}")
        if dims and dims[0] is None:
            rest = tuple(dims[1:])
            profile.add(value.name, min=(cfg.batch.min, *rest), opt=(cfg.batch.opt, *rest), max=(cfg.batch.max, *rest))
            profile_info[value.name] = {"min": [cfg.batch.min, *rest], "opt": [cfg.batch.opt, *rest], "max": [cfg.batch.max, *rest]}
    cache = Path(cfg.timing_cache) if cfg.timing_cache else out_dir / "timing.cache"
    config = CreateConfig(profiles=[profile] if profile_info else None,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: cfg.workspace_mib << 20},
                          builder_optimization_level=cfg.optimization_level,
                          load_timing_cache=str(cache) if cache.is_file() else None)
    target = out_dir / ENGINE_FILE
    log = None
    try:
        with captured_output() as log:
            network = NetworkFromOnnxPath(str(prepared), strongly_typed=True)
            SaveEngine(EngineFromNetwork(network, config=config, save_timing_cache=str(cache)), str(target))()
    except Exception as exc:  # the parser's and builder's own words are in what they logged
        said = (log.getvalue() if log is not None else "") + "\n" + str(exc)
        raise BuildError("tensorrt", precision, f"Polygraphy/TensorRT: {type(exc).__name__}: {error_line(said)}") from exc
    if not target.is_file():
        raise BuildError("tensorrt", precision, f"Polygraphy wrote no engine: {error_line(log.getvalue())}")
    prepare_info = prepared.parent / PREPARE_INFO
    info = {"tensorrt": trt.__version__, **gpu_facts(), "strongly_typed": True, "profile": profile_info,
            "max_batch": cfg.batch.max if profile_info else None, "workspace_mib": cfg.workspace_mib,
            "optimization_level": cfg.optimization_level, "timing_cache": str(cache), "timing_cache_sha256": sha256_file(cache),
            "prepared": json.loads(prepare_info.read_text()) if prepare_info.is_file() else None,
            "portability": "runs only on this GPU model (compute capability) with this TensorRT version; rebuild for any other"}
    (out_dir / ENGINE_INFO).write_text(json.dumps(info, indent=2))
    return target


class TensorRtRunner(Runner):
    """Polygraphy's ``TrtRunner`` on a serialized engine. ``threads`` does not apply: the engine runs on the GPU.

    Batches larger than the engine's profile allows are run in chunks of its maximum batch."""

    def __init__(self, engine: Path, *, threads: int) -> None:
        super().__init__(engine, threads=threads)
        self._runner: Any = None
        self._info: dict[str, Any] = {}

    def _activate(self) -> None:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.datatype import DataType

        info_path = self.engine.parent / ENGINE_INFO
        self._info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(str(self.engine))))
        self._runner.activate()
        self._meta = {}
        for name, meta in self._runner.get_input_metadata().items():  # dynamic dims come as -1, None or a name
            dtype = DataType.to_dtype(meta.dtype, "numpy") if isinstance(meta.dtype, DataType) else meta.dtype
            shape = tuple(int(d) if isinstance(d, int) and d >= 0 else None for d in meta.shape)
            self._meta[name] = TensorMeta(name, np.dtype(dtype), shape)

    def _deactivate(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
        self._runner = None

    def _describe(self) -> dict[str, object]:
        return {key: self._info.get(key) for key in ("tensorrt", "gpu", "compute_capability", "profile", "timing_cache_sha256")}

    def _infer(self, feed: Feed) -> Feed:
        limit = self._info.get("max_batch")
        batch = len(next(iter(feed.values())))
        if not limit or batch <= limit:
            return {name: np.array(out) for name, out in self._runner.infer(feed).items()}
        chunks = [self._infer({k: v[start : start + limit] for k, v in feed.items()}) for start in range(0, batch, limit)]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}

    def bare_call(self, feed: Feed) -> Callable[[], object]:
        """Polygraphy's ``TrtRunner.infer`` alone, its input checks off: the copies to and from the GPU and the engine's
        execution, without edgeship's call around it. Not measured on any machine here (no GPU)."""
        self.infer(feed)
        runner = self._runner
        return lambda: runner.infer(feed, check_inputs=False)
