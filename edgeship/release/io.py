"""Every input and output of an engine as a device must feed and read it: name, dtype, shape (``None`` for a dynamic
dimension), the engine's own layout against the model's NCHW (``perm``), and the scale and zero point of integer I/O.

Read from the engine file itself with its runtime, at release time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

RELEASABLE = ("onnxruntime", "openvino", "tflite")  # the backends the device loader runs


def engine_io(backend: str, engine: Path) -> dict[str, list[dict[str, Any]]]:
    readers = {"onnxruntime": _onnx, "openvino": _openvino, "tflite": _tflite}
    return readers[backend](engine)


def _tensor(name: str, dtype: Any, shape: list[int | None], *, perm: list[int] | None = None,
            quantization: dict[str, float] | None = None) -> dict[str, Any]:
    return {"name": name, "dtype": np.dtype(dtype).name, "shape": shape, "layout": "NHWC" if perm == [0, 2, 3, 1] else "model",
            "perm": perm, "quantization": quantization}


def _onnx(engine: Path) -> dict[str, list[dict[str, Any]]]:
    import onnx
    from onnx import helper

    graph = onnx.load(str(engine), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def tensors(values: Any) -> list[dict[str, Any]]:
        return [_tensor(v.name, helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type),
                        [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
                for v in values if v.name not in initializers]

    return {"inputs": tensors(graph.input), "outputs": tensors(graph.output)}


def _openvino(engine: Path) -> dict[str, list[dict[str, Any]]]:
    import openvino as ov

    model = ov.Core().read_model(str(engine))

    def tensors(ports: Any) -> list[dict[str, Any]]:
        return [_tensor(port.get_any_name(), port.get_element_type().to_dtype(),
                        [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]) for port in ports]

    return {"inputs": tensors(model.inputs), "outputs": tensors(model.outputs)}


def _tflite(engine: Path) -> dict[str, list[dict[str, Any]]]:
    from ai_edge_litert.interpreter import Interpreter

    layout = json.loads(engine.with_name("io.json").read_text())
    runner = Interpreter(model_path=str(engine)).get_signature_runner()

    def tensors(details: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        out = []
        for name, detail in details.items():
            scale, zero_point = detail["quantization"]
            dtype = np.dtype(detail["dtype"])
            signature = [int(d) for d in detail["shape_signature"]]
            out.append(_tensor(name, dtype, [None if d < 0 else d for d in signature], perm=layout[kind][name]["perm"],
                               quantization={"scale": float(scale), "zero_point": int(zero_point)} if dtype != np.float32 else None))
        return out

    return {"inputs": tensors(runner.get_input_details(), "inputs"), "outputs": tensors(runner.get_output_details(), "outputs")}
