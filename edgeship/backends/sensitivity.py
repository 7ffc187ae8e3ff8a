"""Which layers INT8 hurts most: a weight-only sensitivity analysis on the exported ONNX.

Each Conv/Gemm weight alone is rounded to per-channel symmetric INT8 (what every backend here does to weights)
while the rest of the model stays FP32; the model then runs on calibration samples (never the evaluation split)
and the mean cosine of its outputs against the FP32 outputs scores the layer. The lowest scores are the layers
to keep in float (``keep_float: N`` in a backend section). On EfficientNet-Lite0 one layer dominates: the first
depthwise 3×3 convolution alone takes top-1 agreement with FP32 to 79.5% (cosine 0.978), although its per-channel
rounding error is small (0.56% median relative error per channel, measured): the model amplifies it.

A layer kept in float takes the convolution that feeds it (through a Clip/Relu) along: otherwise quantizers put
that producer's output Q/DQ before the activation, over its whole unclipped range (measured on ONNX Runtime:
keeping only the first depthwise conv in float gave 52% agreement, keeping it with the stem 87.5%).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.measure import agreement
from edgeship.tensors import Inputs, outputs_in_batches

WEIGHTED_OPS = ("Conv", "Gemm")
QMAX = 127  # symmetric INT8 weights use -127..127
PASS_THROUGH = ("Clip", "Relu", "Identity")
SAMPLES = 64
SIMULATED_QDQ = ("session.disable_quant_qdq", "1")  # ONNX Runtime session entry: Q/DQ nodes run as written, not fused
FLOAT_LAYERS_FILE = "float_layers.json"


def keep_float(source: Path, samples: np.ndarray, count: int, out_dir: Path) -> list[str]:
    """The ONNX node names an INT8 build keeps in float (a backend's ``keep_float``), recorded in ``float_layers.json``
    beside the engine (a side file: it does not count towards the engine's size)."""
    if count == 0:
        return []
    chosen = float_layers(source, samples, count)
    (out_dir / FLOAT_LAYERS_FILE).write_text(json.dumps(chosen, indent=2))
    return chosen["nodes"]


def float_layers(onnx_path: Path, samples: np.ndarray, count: int) -> dict[str, Any]:
    """The ``count`` most sensitive weighted nodes plus the producers they pull along, and the ranking they came from."""
    ranking = rank(onnx_path, samples[:SAMPLES])
    chosen = [row["node"] for row in ranking[:count]]
    names = with_producers(onnx_path, chosen)
    return {"count": count, "nodes": names, "samples": min(len(samples), SAMPLES),
            "ranking": ranking[: max(count + 5, 10)]}


def rank(onnx_path: Path, samples: np.ndarray) -> list[dict[str, Any]]:
    """Every weighted node, most INT8-sensitive first: ``cosine`` of the outputs with that weight alone in INT8."""
    return [dict(row) for row in _rank(str(onnx_path), onnx_path.stat().st_mtime_ns, samples.tobytes(), samples.shape)]


@functools.lru_cache(maxsize=4)
def _rank(path: str, _mtime: int, data: bytes, shape: tuple[int, ...]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    import onnx
    from onnx import numpy_helper

    samples = np.frombuffer(data, np.float32).reshape(shape)
    model = onnx.load(path)
    weights = {init.name: index for index, init in enumerate(model.graph.initializer)}
    reference = run_onnx(model, samples)
    rows = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in weights:
            continue
        init = model.graph.initializer[weights[node.input[1]]]
        original = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(fake_quantize(original), init.name))
        try:
            cosine = agreement(run_onnx(model, samples), reference)["mean_cosine"]
        finally:
            init.CopyFrom(numpy_helper.from_array(original, init.name))
        rows.append({"node": node.name, "weight": node.input[1], "op": node.op_type, "cosine": round(cosine, 6)})
    rows.sort(key=lambda row: row["cosine"])
    return tuple(tuple(row.items()) for row in rows)


def channel_scales(weight: np.ndarray, qmax: float = QMAX) -> np.ndarray:
    """The per-output-channel (axis 0) symmetric scale a backend's quantizer gives a weight: ``max|w| / qmax`` (127 for
    INT8; the 7-bit grids of ONNX Runtime's ``reduce_range`` and NNCF's overflow fix are 64 and 63.5)."""
    return (np.maximum(np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1), np.finfo(np.float32).tiny) / qmax).astype(np.float32)


def fake_quantize(weight: np.ndarray, qmax: float = QMAX) -> np.ndarray:
    """Round to the symmetric grid of ``qmax`` with one scale per output channel (axis 0), back in float32."""
    scale = channel_scales(weight, qmax).reshape(-1, *[1] * (weight.ndim - 1))
    return keep_peaks(weight, (np.clip(np.round(weight / scale), -qmax, qmax) * scale).astype(np.float32), qmax)


def keep_peaks(weight: np.ndarray, rounded: np.ndarray, qmax: float) -> np.ndarray:
    """``rounded`` with each channel's largest weight as it was, on a half-integer grid (``qmax`` 63.5): that weight sets
    the scale and sits between two steps, where the quantizer itself rounds it; on an integer grid, ``rounded``."""
    if float(qmax).is_integer():
        return rounded
    flat = weight.reshape(weight.shape[0], -1)
    peaks = np.abs(flat) == np.abs(flat).max(axis=1, keepdims=True)
    return np.where(peaks, flat, rounded.reshape(flat.shape)).reshape(weight.shape).astype(np.float32)


def run_onnx(model: Any, samples: Inputs) -> np.ndarray:
    """An ``onnx.ModelProto``'s first output on ``samples``, 16 at a time, on ONNX Runtime's CPU provider."""
    return run_onnx_outputs(model, samples)[0]


def run_onnx_outputs(model: Any, samples: Inputs) -> list[np.ndarray]:
    """Every output of an ``onnx.ModelProto`` on ``samples`` (one input's batch, or named arrays), in the graph's order.

    A QDQ model runs as written: each DequantizeLinear, the float op, each QuantizeLinear (``SIMULATED_QDQ``). ONNX
    Runtime would otherwise fuse them into its integer kernels, and on an x86 CPU without VNNI those add u8×s8 products
    in pairs into 16 bits, which saturate: what a model's quantization costs would then depend on the machine measuring
    it, and no other backend's kernels saturate that way."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry(*SIMULATED_QDQ)
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    return outputs_in_batches(lambda feed: session.run(None, feed), samples, [meta.name for meta in session.get_inputs()], 16)


def with_producers(onnx_path: Path, chosen: list[str]) -> list[str]:
    """``chosen`` plus, for each layer (Conv/Gemm/MatMul), the weighted node feeding it through pass-through activations
    (in graph order). A chosen ``Add`` takes none: it reads its producers' outputs after their own output quantizers."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {output: node for node in graph.node for output in node.output}
    by_name = {node.name: node for node in graph.node}
    keep = set(chosen)
    for name in chosen:
        if by_name[name].op_type not in (*WEIGHTED_OPS, "MatMul"):
            continue
        source = producer.get(by_name[name].input[0])
        while source is not None and source.op_type in PASS_THROUGH:
            source = producer.get(source.input[0])
        if source is not None and source.op_type in WEIGHTED_OPS:
            keep.add(source.name)
    return [node.name for node in graph.node if node.name in keep]
