"""One small runner per runtime a release may need, each importing only its own runtime package, lazily.

Each takes float32 inputs in the model's NCHW layout and returns float32 outputs in the model's layout; the
engine's own layout and integer I/O come from the release's ``io`` section. Their hot paths follow edgeship's
runners: buffers kept per input shape, nothing re-checked per call. ``bare(x)`` returns the runtime's own call on
``x`` set once, for measuring what the loader adds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class Quantizer:
    """Float32 values into an integer input: ``clip(round(x / scale) + zero_point)`` in float32, as the converter defines
    it. The one definition: edgeship's TFLite runner uses it too, so a device feeds an engine exactly as it was measured.
    Since ``clip(round(x/s) + z, lo, hi) == clip(round(x/s), lo - z, hi - z) + z`` on integers, the last add casts into
    place; ufuncs with ``out=`` (``np.clip``'s own wrapper costs more than the arithmetic on a small input)."""

    def __init__(self, dtype: Any, scale: float, zero_point: int) -> None:
        info = np.iinfo(np.dtype(dtype))
        self.scale, self.zero_point = scale, zero_point
        self.low, self.high = info.min - zero_point, info.max - zero_point

    def into(self, target: np.ndarray, source: np.ndarray, scratch: np.ndarray) -> None:
        """``source`` (float32, in the engine's layout) quantized into ``target``; ``scratch`` is float32 of its shape."""
        np.divide(source, self.scale, out=scratch)
        np.rint(scratch, out=scratch)
        np.minimum(scratch, self.high, out=scratch)
        np.maximum(scratch, self.low, out=scratch)
        np.add(scratch, self.zero_point, out=target, casting="unsafe")


def dequantize_table(dtype: Any, scale: float, zero_point: int) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32 for each of an 8-bit type's 256 values, indexed by ``q.view(np.uint8)``."""
    dtype = np.dtype(dtype)
    if dtype.itemsize != 1:
        raise ValueError(f"{dtype} outputs are not supported (8-bit only)")
    return np.subtract(np.arange(256, dtype=np.uint8).view(dtype), zero_point, dtype=np.float32) * np.float32(scale)


def open_engine(backend: str, path: Path, io: dict[str, Any], *, threads: int) -> Any:
    runners = {"onnxruntime": OrtEngine, "openvino": OpenVinoEngine, "tflite": TfliteEngine}
    if backend not in runners:
        from edgeship_deploy import ReleaseError

        raise ReleaseError(f"{path}: the loader runs onnxruntime, openvino and tflite releases, not {backend}")
    return runners[backend](path, io, threads=threads)


class OrtEngine:
    def __init__(self, path: Path, io: dict[str, Any], *, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = io["inputs"][0]["name"]
        self.outputs = [output["name"] for output in io["outputs"]]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self.outputs, {self.input: x})[0]

    def bare(self, x: np.ndarray) -> Callable[[], object]:
        session, outputs, feed = self.session, self.outputs, {self.input: x}
        return lambda: session.run(outputs, feed)


class OpenVinoEngine:
    def __init__(self, path: Path, io: dict[str, Any], *, threads: int) -> None:
        import openvino as ov

        options = json.loads(path.with_name("runtime.json").read_text())
        config = {"PERFORMANCE_HINT": options["PERFORMANCE_HINT"], "INFERENCE_NUM_THREADS": threads,
                  "INFERENCE_PRECISION_HINT": options["INFERENCE_PRECISION_HINT"], "NUM_STREAMS": 1}
        self.compiled = ov.Core().compile_model(str(path), options["device"], config)
        self.tensor = ov.Tensor
        self.input = io["inputs"][0]["name"]
        self.shape: tuple[int, ...] | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:  # a new batch size: a fresh request with buffers its tensors share
            self.request = self.compiled.create_infer_request()
            self.buffer = np.array(x, dtype=np.float32, copy=True)
            self.request.set_tensor(self.input, self.tensor(self.buffer, shared_memory=True))
            self.request.infer()
            first = self.request.get_output_tensor(0).data.copy()
            self.result = np.empty_like(first)
            self.request.set_output_tensor(0, self.tensor(self.result, shared_memory=True))
            self.shape = x.shape
            return first
        self.buffer[...] = x
        self.request.infer()
        return self.result.copy()

    def bare(self, x: np.ndarray) -> Callable[[], object]:
        self.run(x)
        return self.request.infer


class TfliteEngine:
    def __init__(self, path: Path, io: dict[str, Any], *, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=OpResolverType.AUTO)
        self.interpreter.allocate_tensors()
        self.spec_in, self.spec_out = io["inputs"][0], io["outputs"][0]
        self.index_in = self.interpreter.get_input_details()[0]["index"]
        self.index_out = self.interpreter.get_output_details()[0]["index"]
        self.perm = self.spec_in.get("perm")
        self.out_order = np.argsort(self.spec_out["perm"]) if self.spec_out.get("perm") else None
        out, into = self.spec_out.get("quantization"), self.spec_in.get("quantization")
        self.table = dequantize_table(self.spec_out["dtype"], out["scale"], out["zero_point"]) if out else None
        self.quantizer = Quantizer(self.spec_in["dtype"], into["scale"], into["zero_point"]) if into else None
        self.shape: tuple[int, ...] | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:
            engine_shape = tuple(x.shape[i] for i in self.perm) if self.perm else x.shape
            self.interpreter.resize_tensor_input(self.index_in, engine_shape, strict=True)
            self.interpreter.allocate_tensors()
            self.target = np.empty(engine_shape, np.dtype(self.spec_in["dtype"]))
            self.scratch = np.empty(engine_shape, np.float32)
            self.shape = x.shape
        source = x.transpose(self.perm) if self.perm else x
        if self.quantizer is None:
            np.copyto(self.target, source)
        else:
            self.quantizer.into(self.target, source, self.scratch)
        self.interpreter.set_tensor(self.index_in, self.target)
        self.interpreter.invoke()
        value = self.interpreter.get_tensor(self.index_out)
        if self.table is not None:
            value = self.table[value.view(np.uint8)]
        return np.ascontiguousarray(value.transpose(self.out_order)) if self.out_order is not None else value

    def bare(self, x: np.ndarray) -> Callable[[], object]:
        self.run(x)
        return self.interpreter.invoke
