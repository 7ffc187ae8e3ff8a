"""TFLite / LiteRT (CPU, XNNPACK): onnx2tf → SavedModel → ``TFLiteConverter`` at FP32, FP16 or INT8 (full integer, or weights only).

An engine is a folder: ``model.<precision>.tflite`` (the main file) and ``io.json``, which says how
each tensor's layout differs from the ONNX model's (onnx2tf makes image tensors NHWC). The runner
reads it, so feeds and outputs stay in the ONNX layout and in float32 whatever the model's I/O is.

A full-integer INT8 build may keep chosen ONNX nodes in float (``keep_float``): the converter calibrates once, and
TFLite's own selective quantization (``QuantizationDebugger`` with ``denylisted_nodes``) leaves the TFLite ops those
nodes became in float. onnx2tf renames every tensor, so the ONNX nodes are matched to the TFLite ops by value, on one
calibration sample through the calibrated float model.

onnx2tf fetches sample images from the internet for a static-batch, 3-channel image input.
edgeship hands it local data instead, so a build never touches the network. PyTorch's five-node erf GELU is fused
into one ``Gelu`` first: TFLite has a builtin GELU but no builtin Erf.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from edgeship.backends.base import Availability, BackendBase, BackendInfo, CalibrationSet, Feed, Precision, Runner, TensorMeta
from edgeship.backends.float_search import choose_float_layers
from edgeship.backends.rounding import WEIGHT_ROUNDING_FILE, round_weights, rounded_source, weights_alone
from edgeship.backends.sensitivity import PASS_THROUGH, run_onnx_outputs
from edgeship.backends.tooling import captured_output, error_line, fed_inputs, import_problem, importable
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
from edgeship.divergence import Tap, TensorSite, match_by_value
from edgeship.errors import BuildError
from edgeship.profiling import OpProfile
from edgeship.tensors import rows_of
from edgeship_deploy.runtimes import Quantizer, dequantize_table

IO_FILE = "io.json"
FLOAT_OPS_FILE = "float_ops.json"  # which TFLite ops the kept ONNX nodes became (a side file)
DISTRIBUTIONS = ("ai-edge-litert", "onnx2tf", "tensorflow")
# onnx2tf's layout for channel-first tensors of each rank: ONNX (N, C, ...) → (N, ..., C)
TO_CHANNELS_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}
FEW_CHANNELS = 4  # up to this many channels an input is written channel by channel (``_Write``)
PLANE_WRITES_FROM = 16384  # values; below, the transposing copy costs a few microseconds either way


class TfliteConfig(BackendSection):
    BACKEND: ClassVar[str] = "tflite"
    SUPPORTED: ClassVar[frozenset[Precision]] = frozenset(Precision)
    INT8_ONLY: ClassVar[frozenset[str]] = frozenset({"mode", "io_type", "calibration_size", "weight_rounding", "keep_float",
                                                     "accuracy_target"})

    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
    mode: Literal["static", "dynamic"] = Field(
        default="static", description="INT8: static (full integer: activation ranges calibrated ahead) or dynamic (the "
        "converter's dynamic range quantization: int8 weights, activations quantized per call from their own range, float "
        "I/O, no calibration; what keeps a transformer's attention and normalisation usable)")
    io_type: Literal["int8", "float32"] = Field(
        default="float32", description="model input/output type of the full-integer INT8 build. float32: the engine quantizes "
        "its input and dequantizes its output itself, on LiteRT's kernels (what every other backend's INT8 engine does, so "
        "their p50s time the same work); int8: the caller does, as a device feeding integer data directly would")
    calibration_size: PositiveInt | None = Field(default=300, description="representative samples; None uses the whole set")
    weight_rounding: WeightRounding = weight_rounding_field()
    keep_float: KeepFloat = keep_float_field("in float (TFLite's selective quantization; static mode, float32 I/O)")
    accuracy_target: AccuracyTarget | None = accuracy_target_field()
    fixed_shape: dict[str, tuple[PositiveInt, ...]] | None = Field(
        default=None, description="per input name, the whole shape to convert at, batch included, for a model whose dimensions "
                                  "onnx2tf cannot follow dynamically (a detector's height, width and its transposed "
                                  "convolutions' batch): the engine takes that shape only, and is scored that batch at a time")

    @model_validator(mode="after")
    def _dynamic_takes_no_calibration_options(self) -> TfliteConfig:
        if self.mode == "dynamic":
            static = [key for key, default in (("io_type", "float32"), ("weight_rounding", "nearest"), ("keep_float", 0))
                      if getattr(self, key) != default]
            if static:
                raise ValueError(f"{static[0]} shapes a full-integer INT8 build; mode: dynamic keeps float I/O, quantizes the "
                                 "weights as they are and calibrates nothing")
        if self.keep_float and self.io_type == "int8":
            raise ValueError("keep_float: TFLite's selective quantization keeps float32 model I/O; use io_type: float32")
        return self


INFO = BackendInfo(name="tflite", display_name="TFLite", colour="#ff7f0e", config=TfliteConfig, distributions=DISTRIBUTIONS,
                   install="pip install 'edgeship[tflite]'", runtime_module="ai_edge_litert.interpreter", suffixes=(".tflite",),
                   companions=(IO_FILE,), build_in_child=True)  # TensorFlow and onnx2tf keep gigabytes after a conversion


class TfliteBackend(BackendBase):
    info: ClassVar[BackendInfo] = INFO

    def availability(self) -> Availability:
        missing = [module for module in ("ai_edge_litert", "onnx2tf", "tensorflow") if not importable(module)]
        if missing:
            return Availability(self.name, False, installed_versions(self.info.distributions), reason=f"cannot import {', '.join(missing)}",
                                install=self.info.install)
        # the runtime is imported (it is quick); the converters are not (seconds): a broken one fails its build instead
        problem = import_problem((self.info.runtime_module,))
        if problem:
            return Availability(self.name, False, installed_versions(self.info.distributions), reason=problem[0], install=self.info.install,
                                broken=problem[1])
        return Availability(self.name, True, installed_versions(self.info.distributions), device="CPU (XNNPACK)")

    def _build(self, onnx: Path, precision: Precision, calibration: CalibrationSet | None,  # type: ignore[override]
               cfg: TfliteConfig, out_dir: Path) -> Path:
        """Write ``model.<precision>.tflite`` and ``io.json`` under ``out_dir``; return the ``.tflite``."""
        import onnx as onnx_lib

        graph = onnx_lib.load(str(onnx), load_external_data=False).graph
        unnamed = [value.name for value in fed_inputs(graph) if not value.name.isidentifier()]
        if unnamed:  # the SavedModel's signature keys are Python identifiers: another name cannot be fed by name
            raise BuildError(self.name, precision, f"input {unnamed[0]!r} is not a plain identifier, which a TFLite signature's "
                                                   "input names must be; rename the ONNX input")
        static_int8 = precision is Precision.INT8 and cfg.mode == "static"
        if static_int8 and cfg.calibration_size is not None:
            calibration = calibration.subset(cfg.calibration_size)  # type: ignore[union-attr]
        work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".work-"))
        try:
            if cfg.fixed_shape:
                onnx = with_fixed_shape(onnx, cfg.fixed_shape, work / "fixed", precision)
            if static_int8 and cfg.keep_float:
                assert calibration is not None
                return self._build_selective(onnx, calibration, cfg, out_dir, work)
            if static_int8:
                assert calibration is not None
                with rounded_source(onnx, calibration, cfg.weight_rounding, (), out_dir) as source:
                    saved_model = onnx_to_saved_model(source, work, calibration, precision)
            else:
                saved_model = onnx_to_saved_model(onnx, work, calibration, precision)
            model = _convert(saved_model, precision, calibration, cfg)
            target = out_dir / f"model.{precision.value}.tflite"
            target.write_bytes(model)
            (out_dir / IO_FILE).write_text(json.dumps(io_layout(onnx, target), indent=2))
            return target
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _build_selective(self, onnx: Path, calibration: CalibrationSet, cfg: TfliteConfig, out_dir: Path, work: Path) -> Path:
        """Full-integer INT8 with the ``keep_float`` layers (a number, or searched) left in float; every candidate of a search
        with the same source reuses one conversion and calibration."""
        quantizer = SelectiveInt8(calibration, cfg, work)
        chosen = choose_float_layers(onnx, calibration, cfg.keep_float, cfg.accuracy_target, out_dir,
                                     build=lambda nodes, folder: quantizer.build(onnx, nodes, folder),
                                     runner=lambda engine, threads: self.runner(engine, threads=threads), reuse=True,
                                     placement="every_op",  # the converter quantizes every op it has an INT8 kernel for
                                     also_ranked=("Add",),  # its int8 Adds (residual sums) cost accuracy of their own
                                     weights_alone=lambda: weights_alone(onnx, calibration, cfg.weight_rounding))
        return chosen.engine or quantizer.build(onnx, chosen.nodes, out_dir)

    def runner(self, engine: Path, *, threads: int) -> TfliteRunner:
        return TfliteRunner(engine, threads=threads)


class SelectiveInt8:
    """Full-integer INT8 engines with chosen ONNX nodes left in float, through TFLite's selective quantization.

    One onnx2tf conversion and one calibration of the source (with GPTQ, of the source with every weight rounded, plus a
    float conversion of the unrounded source, whose weights the kept layers get back); then per float set, the calibrated
    model quantized with those nodes' TFLite ops denylisted (``QuantizationDebugOptions.denylisted_nodes``: the ops'
    output tensor names)."""

    def __init__(self, calibration: CalibrationSet, cfg: TfliteConfig, work: Path) -> None:
        self.calibration = calibration
        self.cfg = cfg
        self.work = work
        self._converted: tuple[str, Any, dict[str, str]] | None = None  # model key, debugger, ONNX node → TFLite tensor
        self._unrounded_model: Any = None  # with GPTQ: the unrounded weights kept layers get back

    def build(self, onnx: Path, nodes: list[str], out_dir: Path) -> Path:
        """``model.int8.tflite`` + ``io.json`` + ``float_ops.json`` under ``out_dir``; ``BuildError`` naming a node that became
        no TFLite op of its own (it cannot be kept in float)."""
        # with GPTQ, one conversion of the source with every weight rounded serves every float set: a kept layer gets its
        # own weights back in the calibrated model (``_with_weights_of``) instead of a conversion of its own
        debugger, tflite_names = self._calibrated(onnx)
        import tensorflow as tf  # imported by the conversion, inside its captured output (TensorFlow logs on import)
        lost = [node for node in nodes if node not in tflite_names]
        if lost:
            raise BuildError("tflite", Precision.INT8, f"keep_float: ONNX node {lost[0]!r} matches no TFLite op's output by value "
                                                       f"(onnx2tf split or fused it away), so it cannot be kept in float")
        denylist = [tflite_names[node] for node in nodes]
        calibrated = debugger.calibrated_model
        if self.cfg.weight_rounding != "nearest":
            _, record = round_weights(onnx, self.calibration.samples, nodes)  # what this float set's engine has rounded
            (out_dir / WEIGHT_ROUNDING_FILE).write_text(json.dumps(record, indent=2))
            if nodes:
                debugger.calibrated_model = _with_weights_of(calibrated, self._unrounded(onnx), denylist)
        with captured_output() as log:
            try:
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
                model = debugger.get_nondebug_quantized_model()
            except Exception as exc:
                raise BuildError("tflite", Precision.INT8, f"TFLite selective quantization: {type(exc).__name__}: "
                                                           f"{error_line(str(exc) or log.getvalue())}") from exc
            finally:
                debugger.calibrated_model = calibrated
        target = out_dir / f"model.{Precision.INT8.value}.tflite"
        target.write_bytes(model)
        (out_dir / IO_FILE).write_text(json.dumps(io_layout(onnx, target), indent=2))
        (out_dir / FLOAT_OPS_FILE).write_text(json.dumps({"method": "QuantizationDebugOptions.denylisted_nodes",
                                                          "float_ops": dict(zip(nodes, denylist, strict=True))}, indent=2))
        return target

    def _calibrated(self, onnx: Path) -> tuple[Any, dict[str, str]]:
        """The calibrated converter (a ``QuantizationDebugger``) of ``onnx`` (with GPTQ, its every weight rounded) and its
        ONNX node → TFLite op names: the last model's are kept, as a search's candidates share them."""
        stat = onnx.stat()
        key = f"{onnx.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
        if self._converted is None or self._converted[0] != key:
            self._converted = None  # the last model's debugger and its models go before the next conversion
            self.work.mkdir(parents=True, exist_ok=True)
            with rounded_source(onnx, self.calibration, self.cfg.weight_rounding, (), self.work) as source:
                self._converted = (key, *self._calibrate(source))
        return self._converted[1], self._converted[2]

    def _calibrate(self, source: Path) -> tuple[Any, dict[str, str]]:
        folder = self.work / "saved_model_source"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            saved_model = onnx_to_saved_model(source, folder, self.calibration, Precision.INT8)
            import tensorflow as tf  # imported by the conversion, inside its captured output (TensorFlow logs on import)

            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = functools.partial(_representative, self.calibration)
            with captured_output() as log:
                try:
                    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                                         debug_dataset=converter.representative_dataset)
                except Exception as exc:
                    raise BuildError("tflite", Precision.INT8, f"TFLite calibration: {type(exc).__name__}: "
                                                               f"{error_line(str(exc) or log.getvalue())}") from exc
            return debugger, tflite_op_names(source, debugger.calibrated_model, self.calibration)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # calibrated: the SavedModel is read no more


    def _unrounded(self, onnx: Path) -> Any:
        """The float TFLite model (flatbuffer object) of ``onnx`` as it is, its weights unrounded: once per build."""
        if self._unrounded_model is None:
            folder = self.work / "saved_model_unrounded"
            folder.mkdir(parents=True, exist_ok=True)
            saved_model = onnx_to_saved_model(onnx, folder, self.calibration, Precision.INT8)
            import tensorflow as tf  # imported by the conversion, inside its captured output (TensorFlow logs on import)

            with captured_output() as log:
                try:
                    model = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
                except Exception as exc:
                    raise BuildError("tflite", Precision.INT8, f"TFLite converter: {type(exc).__name__}: "
                                                               f"{error_line(str(exc) or log.getvalue())}") from exc
            shutil.rmtree(folder, ignore_errors=True)
            self._unrounded_model = _flatbuffer_utils().convert_bytearray_to_object(bytearray(model))
        return self._unrounded_model


def _flatbuffer_utils() -> Any:
    import importlib

    return importlib.import_module("tensorflow.lite.tools.flatbuffer_utils")  # not under TensorFlow's public tf.lite


def _with_weights_of(calibrated: bytes, unrounded: Any, outputs: list[str]) -> bytes:
    """``calibrated`` (a calibrated float TFLite model whose weights GPTQ rounded) with the weights and biases of the ops
    writing ``outputs`` taken from ``unrounded`` (the same graph converted from the unrounded ONNX): what a conversion
    of the ONNX with those layers' weights left as they were gives, but for activation ranges calibrated on the rounded
    weights. ``BuildError`` when the two conversions differ in a tensor they should share."""
    utils = _flatbuffer_utils()
    model = utils.convert_bytearray_to_object(bytearray(calibrated))
    graph, other = model.subgraphs[0], unrounded.subgraphs[0]
    theirs = {tensor.name: index for index, tensor in enumerate(other.tensors)}
    writers = {graph.tensors[index].name: op for op in graph.operators for index in op.outputs}
    for output in outputs:
        op = writers.get(output.encode())
        if op is None:
            raise BuildError("tflite", Precision.INT8, f"keep_float: no op of the calibrated model writes {output!r}")
        for index in op.inputs[1:]:  # the weights and the bias; the first input is the activation
            tensor = graph.tensors[index] if index >= 0 else None
            if tensor is None or model.buffers[tensor.buffer].data is None:  # an activation, not a constant
                continue
            twin = other.tensors[theirs[tensor.name]] if tensor.name in theirs else None
            if twin is None or list(twin.shape) != list(tensor.shape) or unrounded.buffers[twin.buffer].data is None:
                raise BuildError("tflite", Precision.INT8, f"keep_float: the conversions with and without GPTQ's weights differ "
                                                           f"at tensor {tensor.name.decode()!r}")
            model.buffers[tensor.buffer].data = unrounded.buffers[twin.buffer].data
    return bytes(utils.convert_object_to_bytearray(model))


def tflite_op_names(source: Path, tflite_model: bytes, calibration: CalibrationSet) -> dict[str, str]:
    """Each ONNX node of ``source`` whose output a TFLite op of ``tflite_model`` (float: converted, not yet quantized) writes:
    node name → that op's output tensor name. Matched by value on the first calibration sample (``match_by_value``); a node
    whose output TFLite fused into the next one's (a Conv's into its Clip: one ``CONV_2D`` with a fused ReLU6) takes the
    op of the pass-through activation it feeds."""
    import onnx as onnx_lib

    model = onnx_lib.load(str(source))
    graph = model.graph
    tensors = [output for node in graph.node for output in node.output if output]
    del graph.output[:]
    graph.output.extend(onnx_lib.ValueInfoProto(name=name) for name in tensors)
    sample = rows_of(calibration.arrays, 0, 1)
    reference = dict(zip(tensors, run_onnx_outputs(model, sample), strict=True))
    engine = _tensors_of(tflite_model, {name: _engine_layout(array) for name, array in sample.items()})
    matched = {name: match.engine for name, match in match_by_value(reference, engine).items()}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = {}
    for node in graph.node:
        tensor = node.output[0] if node.output else ""
        while tensor and tensor not in matched and len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in PASS_THROUGH:
            tensor = consumers[tensor][0].output[0]
        if tensor in matched:
            names[node.name] = matched[tensor]
    return names


def _tensors_of(tflite_model: bytes, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every op output of a float TFLite model on one feed (in the engine's layout), by tensor name."""
    interpreter, written = keeping_every_tensor(model_content=tflite_model)
    signature = interpreter.get_signature_runner()
    indices = {name: details["index"] for name, details in signature.get_input_details().items()}
    del signature  # it holds views of the interpreter's buffers, which forbid invoking it directly
    for name, array in feed.items():
        interpreter.set_tensor(indices[name], array)
    interpreter.invoke()
    return op_outputs(interpreter, written)


def keeping_every_tensor(*, model_path: Path | None = None, model_content: bytes | None = None,
                         threads: int | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """An allocated interpreter that keeps every op output (``experimental_preserve_all_tensors``), on LiteRT's built-in
    kernels (the XNNPACK delegate computes its part of the graph inside itself and leaves those tensors unwritten), and
    the details of the tensors its ops write, in index order."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with captured_output():
        interpreter = Interpreter(model_path=None if model_path is None else str(model_path), model_content=model_content,
                                  num_threads=threads, experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    written = sorted({index for op in interpreter._get_ops_details() for index in op["outputs"] if index >= 0})
    return interpreter, [details[index] for index in written]


def op_outputs(interpreter: Any, written: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The float value of each written tensor after an invoke, by name: integer tensors dequantized with their own scale
    and zero point; unquantized integer tensors (shapes, indices) and other kinds left out."""
    out = {}
    for details in written:
        value = interpreter.get_tensor(details["index"])
        if value.dtype.kind in "iu":
            scale, zero = details["quantization"]
            if not scale:
                continue
            value = (value.astype(np.float32) - zero) * scale
        elif value.dtype.kind != "f":
            continue
        out[details["name"]] = np.asarray(value, np.float32)
    return out


def with_fixed_shape(source: Path, shapes: dict[str, tuple[int, ...]], folder: Path, precision: Precision) -> Path:
    """A copy of ``source`` whose named inputs have the given shapes (``fixed_shape``), simplified by onnxslim so the
    shape arithmetic those sizes settle is folded to constants: onnx2tf loses the rank of a tensor reshaped by a computed
    shape (a transformer's attention heads). ``BuildError`` naming the input when it is not one of the model's or its
    rank differs."""
    import onnx
    import onnxslim

    model = onnx.load(str(source))
    inputs = {value.name: value for value in fed_inputs(model.graph)}
    for name, sizes in shapes.items():
        if name not in inputs:
            raise BuildError("tflite", precision, f"fixed_shape: the model has no input {name!r} (its inputs: {', '.join(inputs)})")
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(sizes):
            raise BuildError("tflite", precision, f"fixed_shape: input {name!r} has {len(dims)} dimensions; give {len(dims)} sizes, "
                                                  "the batch first")
        for dim, size in zip(dims, sizes, strict=True):
            dim.Clear()
            dim.dim_value = size
    with captured_output() as log:
        try:
            slim = onnxslim.slim(model)
        except Exception as exc:  # noqa: BLE001 - onnxslim raises what its passes raise
            raise BuildError("tflite", precision, f"fixed_shape: onnxslim could not simplify the model at those shapes: "
                                                  f"{type(exc).__name__}: {error_line(str(exc) or log.getvalue())}") from exc
    if slim is None:
        raise BuildError("tflite", precision, f"fixed_shape: onnxslim returned no model: {error_line(log.getvalue())}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    onnx.save(slim, str(target))
    return target


def onnx_to_saved_model(source: Path, work: Path, calibration: CalibrationSet | None, precision: Precision) -> Path:
    """onnx2tf, offline and quiet; a failure is a ``BuildError`` with the converter's own message."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    folder = work / "saved_model"
    with captured_output() as log:
        import onnx
        import onnx2tf
        import onnx2tf.onnx2tf as onnx2tf_main
        import tensorflow as tf
        import tf_keras

        from edgeship.backends.gelu import fuse_erf_gelu

    # Keras numbers its layers and models per process (model_5, then model_11 on the next build) and the names land in
    # the .tflite: a fresh session makes every build in a process write the bytes a fresh process writes
    tf_keras.backend.clear_session()

    own_copy = work / source.name  # onnx2tf overwrites its input with its simplified model: never hand it the stored ONNX
    model = onnx.load(str(source))
    if fuse_erf_gelu(model):  # TFLite has no builtin Erf; it has GELU
        onnx.save(model, str(own_copy))
    else:
        shutil.copyfile(source, own_copy)
    with captured_output() as log, _patched(onnx2tf_main, "download_test_image_data", lambda: _local_sample_images(calibration)):
        try:
            # the Keras model only, saved as onnx2tf would save it: its own two .tflite conversions would go unused
            keras_model = onnx2tf.convert(input_onnx_file_path=str(own_copy), output_folder_path=str(folder), non_verbose=True,
                                          copy_onnx_input_output_names_to_tflite=True, disable_model_save=True)
            tf.saved_model.save(keras_model, str(folder))
        except SystemExit as exc:  # onnx2tf exits on errors after printing them
            raise BuildError("tflite", precision, f"onnx2tf failed (exit {exc.code}): {error_line(log.getvalue())}") from None
        except Exception as exc:
            message = error_line(str(exc) or log.getvalue())
            raise BuildError("tflite", precision, f"onnx2tf failed: {type(exc).__name__}: {message}") from exc
    if not (folder / "saved_model.pb").is_file():
        raise BuildError("tflite", precision, f"onnx2tf wrote no SavedModel: {error_line(log.getvalue())}")
    return folder


def _convert(saved_model: Path, precision: Precision, calibration: CalibrationSet | None, cfg: TfliteConfig) -> bytes:
    """SavedModel → ``.tflite`` bytes with the TFLite converter: FP32 as is, FP16 weights, INT8 weights (dynamic range) or
    full-integer INT8."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision is Precision.FP16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision is Precision.INT8 and cfg.mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: weights only
    elif precision is Precision.INT8:
        assert calibration is not None
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = functools.partial(_representative, calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8 if cfg.io_type == "int8" else tf.float32
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    with captured_output() as log:
        try:
            return converter.convert()
        except Exception as exc:
            raise BuildError("tflite", precision, f"TFLite converter: {type(exc).__name__}: "
                                                  f"{error_line(str(exc) or log.getvalue())}") from exc


def _representative(calibration: CalibrationSet) -> Iterator[dict[str, np.ndarray]]:
    """The converter's representative data: one sample at a time, each input in the engine's layout, by name."""
    for index in range(calibration.count):
        yield {name: _engine_layout(array[index : index + 1]) for name, array in calibration.arrays.items()}


def _engine_layout(array: np.ndarray) -> np.ndarray:
    """A calibration sample as onnx2tf's SavedModel takes it: a float image channels-last, anything else as it is."""
    return channels_last(array) if array.dtype.kind == "f" and array.ndim in TO_CHANNELS_LAST else array


def channels_last(array: np.ndarray) -> np.ndarray:
    perm = TO_CHANNELS_LAST.get(array.ndim)
    return np.ascontiguousarray(array.transpose(perm)) if perm else array


def io_layout(onnx_path: Path, tflite_path: Path) -> dict[str, Any]:
    """For each ONNX input and output, the permutation from its ONNX layout to the TFLite tensor's (integer tensors, token
    ids and masks, keep theirs), and its ONNX dtype."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    interpreter = _interpreter(tflite_path, threads=1)
    signature = interpreter.get_signature_runner()
    layout: dict[str, Any] = {"inputs": {}, "outputs": {}}
    for kind, onnx_values, details in (("inputs", fed_inputs(graph), signature.get_input_details()),
                                       ("outputs", graph.output, signature.get_output_details())):
        for value in onnx_values:
            if value.name not in details:
                raise ValueError(f"the TFLite model has no {kind[:-1]} named {value.name!r} (has {sorted(details)})")
            onnx_shape = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            tflite_shape = [int(d) for d in details[value.name]["shape_signature"]]
            dtype = np.dtype(tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name
            layout[kind][value.name] = {"perm": _perm(onnx_shape, tflite_shape) if dtype.startswith("float") else None,
                                        "onnx_shape": onnx_shape, "onnx_dtype": dtype}
    return layout


def _perm(onnx_shape: list[int], tflite_shape: list[int]) -> list[int] | None:
    """``None`` when the TFLite tensor has the ONNX layout, else the ONNX → TFLite axis permutation: of the two layouts
    whose fixed sizes do not contradict the TFLite tensor's, the one that agrees on more fixed sizes. A dynamic image
    input (-1, 3, -1, -1) fits both layouts of (-1, -1, -1, 3) loosely; only channels-last puts its 3 in place."""
    def agreement(a: list[int], b: list[int]) -> int | None:
        """How many fixed sizes agree, or None when one contradicts."""
        if len(a) != len(b) or any(x >= 0 and y >= 0 and x != y for x, y in zip(a, b, strict=True)):
            return None
        return sum(x >= 0 and x == y for x, y in zip(a, b, strict=True))

    perm = TO_CHANNELS_LAST.get(len(onnx_shape))
    candidates = {None: agreement(onnx_shape, tflite_shape)}
    if perm:
        candidates[tuple(perm)] = agreement([onnx_shape[i] for i in perm], tflite_shape)
    fitting = {key: count for key, count in candidates.items() if count is not None}
    if not fitting:
        raise ValueError(f"cannot map the ONNX shape {onnx_shape} to the TFLite shape {tflite_shape}")
    best = max(fitting, key=lambda key: (fitting[key], key is None))  # a tie keeps the ONNX layout
    return list(best) if best is not None else None


class TfliteRunner(Runner):
    """A LiteRT interpreter (XNNPACK, ``num_threads`` pinned) behind ONNX-layout, float32 feeds."""

    def __init__(self, engine: Path, *, threads: int) -> None:
        super().__init__(engine, threads=threads)
        self._interpreter: Any = None

    def _activate(self) -> None:
        try:
            layout = json.loads(self.engine.with_name(IO_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.engine.with_name(IO_FILE)}: the engine's layout record is missing or unreadable: {exc}") from None
        with captured_output():  # LiteRT logs its delegate to the C++ stderr
            self._interpreter = _interpreter(self.engine, threads=self.threads)
            self._interpreter.allocate_tensors()
        signature = self._interpreter.get_signature_runner()
        self._inputs = {name: (details, layout["inputs"][name]["perm"]) for name, details in signature.get_input_details().items()}
        self._outputs = {name: (details, layout["outputs"][name]["perm"]) for name, details in signature.get_output_details().items()}
        del signature  # it holds views of the interpreter's buffers, which forbid re-allocating them
        self._meta = {}
        for name in self._inputs:
            shape = tuple(None if d < 0 else d for d in layout["inputs"][name]["onnx_shape"])
            # a record from before integer inputs has no dtype: every input was float32 then
            self._meta[name] = TensorMeta(name, np.dtype(layout["inputs"][name].get("onnx_dtype", "float32")), shape)
        self._shapes: dict[str, tuple[int, ...]] = {name: tuple(details["shape"]) for name, (details, _) in self._inputs.items()}
        self._allocated = True
        self._prepared: dict[str, _Write] = {}  # input name → how it is written, for the shapes of the last new feed
        self._reads: dict[str, _Read] = {}

    def _deactivate(self) -> None:
        self._interpreter = None

    def _describe(self) -> dict[str, Any]:
        dtypes = {name: np.dtype(details["dtype"]).name for name, (details, _) in self._inputs.items()}
        return {"num_threads": self.threads, "op_resolver": "AUTO (XNNPACK delegate applied by default)", "input_dtypes": dtypes}

    def _infer(self, feed: Feed) -> Feed:
        # The hot path: each input written (transposed, quantized) straight into the interpreter's own buffer, each
        # output read once; everything that depends only on the tensors' types and shapes is computed on the first
        # call with those shapes (``_prepare``).
        inputs = self._prepared
        for name, array in feed.items():
            plan = inputs.get(name)
            if plan is None or plan.shape != array.shape:
                return self._prepare(feed)
            plan.write(array)
        self._interpreter.invoke()
        return {name: plan.read() for name, plan in self._reads.items()}

    def _prepare(self, feed: Feed) -> Feed:
        """A call with new input shapes: resize and re-plan the interpreter where they changed, then the per-tensor plans."""
        interpreter = self._interpreter
        for name, array in feed.items():
            details, perm = self._inputs[name]
            shape = tuple(array.shape[i] for i in perm) if perm else array.shape
            if self._shapes.get(name) != shape:  # a new batch size: resize, then re-plan
                interpreter.resize_tensor_input(details["index"], shape, strict=True)
                self._shapes[name] = shape
                self._allocated = False
        if not self._allocated:
            interpreter.allocate_tensors()
            self._allocated = True
        self._prepared = {name: _Write(interpreter, *self._inputs[name], array.shape) for name, array in feed.items()}
        self._reads = {name: _Read(interpreter, details, perm) for name, (details, perm) in self._outputs.items()}
        return self._infer(feed)

    def _profile(self, feed: Feed, runs: int) -> OpProfile:
        return OpProfile.unavailable("LiteRT's Python interpreter exposes no op profiler (the C++ benchmark_model's "
                                     "--enable_op_profiling has one; it is not distributed on PyPI)")

    def _tap(self, sites: list[TensorSite]) -> Tap:
        """Every op output of a second interpreter that keeps all its tensors (``keeping_every_tensor``), integer tensors
        dequantized. onnx2tf names the tensors after the TensorFlow ops it wrote, so the caller matches them to the ONNX
        tensors by value."""
        interpreter, written = keeping_every_tensor(model_path=self.engine, threads=self.threads)
        inputs = self._inputs

        def call(feed: Feed) -> dict[str, np.ndarray]:
            for name, array in feed.items():  # written as the engine's own runner writes it
                _Write(interpreter, *inputs[name], array.shape).write(array)
            interpreter.invoke()
            return op_outputs(interpreter, written)

        return Tap(method="LiteRT: every op output kept (experimental_preserve_all_tensors), matched to the ONNX tensors by "
                          "shape and value on the first sample", exposed=tuple(details["name"] for details in written), call=call,
                   by_value=True,
                   note="read on LiteRT's built-in kernels, not the XNNPACK delegate that runs the engine (a delegate keeps its "
                        "tensors to itself); both follow the same quantization arithmetic up to rounding",
                   local_note="not measured: the interpreter runs the whole graph, and a layer cannot be fed values of one's "
                              "choosing")

    def _timed_call(self, feed: Feed) -> Callable[[], object]:
        # each input written as ``_infer`` writes it (``infer`` has just planned them for these shapes) and the interpreter
        # run; the outputs stay in its buffers, since reading one is a copy (``get_tensor``), as OpenVINO's stay in its request
        return self._write_then_run([(self._prepared[name].write, array) for name, array in feed.items()],
                                    self._interpreter.invoke)

    def bare_call(self, feed: Feed) -> Callable[[], None]:
        """``invoke()`` alone on the input buffers written once: the interpreter's own call."""
        self.infer(feed)  # checks the feed, and leaves it in the interpreter's input buffers
        return self._interpreter.invoke


class _Write:
    """How one ONNX-layout float32 input goes into the interpreter: transposed to the engine's layout into a buffer kept
    for its shape, for an integer input quantized by the device loader's ``Quantizer`` (so a released engine is fed
    exactly as it was measured), then handed over with ``set_tensor`` (cheaper per call than writing through
    ``tensor()``'s view, except for an image written a channel at a time: that goes into the view, one copy fewer)."""

    def __init__(self, interpreter: Any, details: dict[str, Any], perm: list[int], shape: tuple[int, ...]) -> None:
        self.shape = shape  # the ONNX-layout shape this plan was made for
        self.set = functools.partial(interpreter.set_tensor, details["index"])
        self.perm = perm or None
        # an image of a few channels made channels-last one channel at a time: numpy's transposing copy reads the source
        # with a stride of one channel plane, which is slower per call than a few plane-sized strided writes
        engine_shape = tuple(shape[i] for i in perm) if perm else shape
        dtype = np.dtype(details["dtype"])
        # a float input the engine takes as int8 is quantized; an integer input (token ids) is only cast to the engine's width
        scale = details["quantization"][0] if details.get("quantization") else 0.0
        self.quantizer = Quantizer(dtype, *details["quantization"]) if dtype.kind in "iu" and scale else None
        self.scratch = np.empty(engine_shape, np.float32) if self.quantizer else None
        few = len(shape) in TO_CHANNELS_LAST and tuple(perm or ()) == TO_CHANNELS_LAST[len(shape)] and shape[1] <= FEW_CHANNELS
        self.planes = shape[1] if few and self.quantizer is None and int(np.prod(shape)) >= PLANE_WRITES_FROM else 0
        # written by planes: into a view of the interpreter's input buffer (dropped before each invoke); else into a buffer
        # of this plan's own, handed over with set_tensor
        self.view = interpreter.tensor(details["index"]) if self.planes else None
        self.target = None if self.planes else np.empty(engine_shape, dtype)

    def write(self, array: np.ndarray) -> None:
        if self.view is not None:
            target = self.view()  # LiteRT refuses to invoke while it is held: it goes out of scope on return
            for channel in range(self.planes):
                target[..., channel] = array[:, channel]
            return
        source = array.transpose(self.perm) if self.perm else array
        if self.quantizer is None:
            np.copyto(self.target, source)
        else:
            self.quantizer.into(self.target, source, self.scratch)  # type: ignore[arg-type]
        self.set(self.target)


class _Read:
    """How one output comes back: in the ONNX layout, float32; an integer output dequantized through a table of its 256
    values (``dequantize_table``, shared with the device loader)."""

    def __init__(self, interpreter: Any, details: dict[str, Any], perm: list[int]) -> None:
        self.get = functools.partial(interpreter.get_tensor, details["index"])
        self.order = np.argsort(perm) if perm else None
        dtype = np.dtype(details["dtype"])
        self.table: np.ndarray | None = None
        scale = details["quantization"][0] if details.get("quantization") else 0.0
        if dtype.kind in "iu" and scale:  # a quantized output; an integer one that is not (indices) comes back as it is
            try:
                self.table = dequantize_table(dtype, *details["quantization"])
            except ValueError as exc:
                raise ValueError(f"output {details['name']!r}: {exc}") from None

    def read(self) -> np.ndarray:
        value = self.get()  # a copy of the interpreter's buffer
        if self.table is not None:
            value = self.table[value.view(np.uint8)]
        return np.ascontiguousarray(value.transpose(self.order)) if self.order is not None else value


def _interpreter(path: Path, *, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=OpResolverType.AUTO)


def _local_sample_images(calibration: CalibrationSet | None) -> np.ndarray:
    """What onnx2tf would download: 20 NHWC float32 images in [0, 1]. From the calibration set when it has
    three-channel images, else a fixed pseudo-random set; onnx2tf resizes them to the input and only checks
    its own conversion with them."""
    if calibration is not None and len(calibration.arrays) == 1 and calibration.samples.ndim == 4 and calibration.samples.shape[1] == 3:
        images = channels_last(calibration.samples[:20]).astype(np.float32)
        low, high = images.min(), images.max()
        return (images - low) / (high - low + 1e-12)
    return np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)
