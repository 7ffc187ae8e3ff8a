"""GPTQ weight rounding for INT8: put each Conv/Gemm weight on its per-channel INT8 grid the way that keeps the
layer's outputs closest to FP32 on calibration data, before a backend's quantizer sees the model.

Rounding each weight to the nearest grid point is what every quantizer here does. GPTQ (Frantar et al., 2023, after
Optimal Brain Quantization) rounds one input column at a time and moves the columns not yet rounded to cancel the
error so far, weighted by ``H = Σ x xᵀ`` of the layer's inputs on calibration samples. The grid is the one the
backends use (symmetric, one scale per output channel, ``max|w| / 127``, or the 7-bit grid a backend puts a layer on
instead, a ``WeightGrid``), and each channel's largest weight is pinned, so every backend's quantizer computes the same
scale and reads back exactly the integers chosen here: the result is an ordinary FP32 ONNX that any INT8 path consumes
(ONNX Runtime, NNCF, ModelOpt, the TFLite converter). Rounded on another grid than the quantizer's, the integers would be
rounded again, to the nearest point of the quantizer's grid, and GPTQ's work lost.

On EfficientNet-Lite0 with every weight in INT8 and activations in float it takes top-1 agreement with FP32 from
82.0% to 94.2% on the sample-photo crops (measured, 64 samples); in the recipe's ONNX Runtime INT8 engine, from 93.8%
to 95.8% with the same calibration (and unquantized logits). Layers a backend keeps in float keep their weights.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.backends.sensitivity import QMAX, WEIGHTED_OPS, channel_scales, fake_quantize, keep_peaks
from edgeship.memory import release_freed_memory
from edgeship.tensors import CalibrationSet

WEIGHT_ROUNDING_FILE = "weight_rounding.json"
SAMPLES = 64  # calibration samples the input statistics come from
DAMPING = 0.01  # of the mean diagonal of H, added to it (GPTQ's default)
BLOCK = 128  # columns whose errors reach the later columns in one product (GPTQ's lazy batch update)
BATCH = 1  # samples per run of the model with every layer input as an output: one sample's activations are what it holds


@dataclass(frozen=True)
class WeightGrid:
    """The symmetric per-channel grid a backend's quantizer puts each layer's weights on, as ``max|w|`` over its step:
    ``qmax`` for every layer but the ``narrower`` ones (node name, qmax). 127 is INT8; ONNX Runtime's ``reduce_range``
    puts every layer on 64 and NNCF's overflow fix the layers it fixes on 63.5 (both 7 bits, against saturation on x86
    without VNNI). A half-integer grid leaves each channel's largest weight where it is, between two steps."""

    qmax: float = QMAX
    narrower: tuple[tuple[str, float], ...] = ()

    def of(self, node: str) -> float:
        return dict(self.narrower).get(node, self.qmax)


@contextlib.contextmanager
def rounded_source(source: Path, calibration: CalibrationSet, method: str, keep: Sequence[str], out_dir: Path,
                   grid: WeightGrid = WeightGrid()) -> Iterator[Path]:
    """The ONNX an INT8 quantizer should read: ``source`` itself for ``nearest``, or for ``gptq`` a copy with the
    weights of every Conv/Gemm outside ``keep`` rounded by GPTQ on the quantizer's ``grid``, recorded in
    ``weight_rounding.json`` beside the engine (a side file). The copy, named like ``source``, lives under ``out_dir``
    only while the caller quantizes it."""
    if method == "nearest":
        yield source
        return
    import onnx

    model, record = round_weights(source, calibration.samples, keep, grid)  # one image input: refused with the reason otherwise
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".rounding-"))
    try:
        target = work / source.name
        onnx.save(model, str(target))
        (out_dir / WEIGHT_ROUNDING_FILE).write_text(json.dumps(record, indent=2))
        yield target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def weights_alone(source: Path, calibration: CalibrationSet, method: str, grid: WeightGrid = WeightGrid()) -> tuple[Any, int]:
    """``source`` (an ``onnx.ModelProto``) with the weights of every layer an INT8 engine quantizes here
    (``eligible_layers``) on the values it stores — GPTQ's (``method`` ``gptq``) or the nearest, on ``grid`` — and every
    activation left in float; and how many layers that is. Scored beside the fully quantized engine, it tells how much of
    the engine's INT8 loss its weights account for, and so whether better rounding or better activation ranges would pay."""
    if method == "gptq":
        model, record = round_weights(source, calibration.samples, (), grid)
        return model, len(record["layers"])
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    inits = {init.name: init for init in model.graph.initializer}
    layers, _ = eligible_layers(model, set())
    for node in layers:
        weight = fake_quantize(numpy_helper.to_array(inits[node.input[1]]), grid.of(node.name))
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
    return model, len(layers)


def round_weights(source: Path, samples: np.ndarray, keep: Sequence[str] = (),
                  grid: WeightGrid = WeightGrid()) -> tuple[Any, dict[str, Any]]:
    """``source`` with GPTQ-rounded weights (an ``onnx.ModelProto``), and what was done: per layer, its grid, the
    relative output error ``‖ΔW X‖ / ‖W X‖`` on the calibration inputs with nearest rounding and with GPTQ, and which
    of the two the layer keeps (the lower)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    inits = {init.name: init for init in model.graph.initializer}
    layers, skipped = eligible_layers(model, set(keep))
    every_layer = _rounded_layers(str(source), source.stat().st_mtime_ns, samples[:SAMPLES].tobytes(), samples[:SAMPLES].shape, grid)
    rows = []
    for node in layers:
        weight, row = every_layer[node.name]
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
        rows.append(dict(row))
    ratios = [min(row["gptq_error"], row["nearest_error"]) / row["nearest_error"] for row in rows if row["nearest_error"] > 0]
    record = {"method": "gptq", "samples": min(len(samples), SAMPLES), "damping": DAMPING, "layers": rows, "skipped": skipped,
              "kept_float": sorted(keep), "median_error_ratio": round(float(np.median(ratios)), 4) if ratios else None}
    return model, record


@functools.lru_cache(maxsize=2)
def _rounded_layers(path: str, _mtime: int, data: bytes, shape: tuple[int, ...],
                    grid: WeightGrid) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Every eligible layer's rounded weight and record: computed once per model, samples and grid, as each INT8 backend
    of a run asks for the same rounding (a backend's ``keep`` only leaves some of them out)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {init.name: init for init in model.graph.initializer}
    statistics = _hessians_of(path, data, shape)
    out = {}
    for node in eligible_layers(model, set())[0]:
        weight, qmax = numpy_helper.to_array(inits[node.input[1]]), grid.of(node.name)
        rounded, before, after = gptq(weight, statistics[node.name], qmax)
        if not np.array_equal(fake_quantize(rounded, qmax), rounded):  # a backend's quantizer would pick other integers
            raise RuntimeError(f"GPTQ rounding of {node.input[1]} is not reproducible by a per-channel max-abs quantizer")
        chosen = "gptq" if after < before else "nearest"  # GPTQ is greedy: on a layer it does not help, nearest stays
        out[node.name] = (rounded if chosen == "gptq" else fake_quantize(weight, qmax),
                          {"node": node.name, "weight": node.input[1], "qmax": qmax, "nearest_error": round(before, 6),
                           "gptq_error": round(after, 6), "chosen": chosen})
    return out


@functools.lru_cache(maxsize=1)
def _hessians_of(path: str, data: bytes, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``_hessians`` once per model and samples, whichever grids the run's backends round on."""
    statistics = _hessians(path, np.frombuffer(data, np.float32).reshape(shape))
    release_freed_memory()  # the activations' pages, before a converter loads beside the result
    return statistics


def eligible_layers(model: Any, keep: set[str]) -> tuple[list[Any], dict[str, str]]:
    """The Conv (2-D) and Gemm (``transB=1``) nodes whose weight is an initializer of their own; the others and why."""
    inits = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers, skipped = [], {}
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        reason = None
        weight = inits[node.input[1]]
        if node.name in keep:
            reason = "kept in float"
        elif uses[node.input[1]] > 1:
            reason = "weight shared with another node"
        elif weight.data_type != 1:  # TensorProto.FLOAT
            reason = "weight is not float32"
        elif node.op_type == "Conv" and len(weight.dims) != 4:
            reason = "not a 2-D convolution"
        elif node.op_type == "Gemm" and (_attributes(node).get("transB", 0) != 1 or _attributes(node).get("transA", 0) != 0):
            reason = "Gemm without transB=1 (weight rows are not its output channels)"
        if reason:
            skipped[node.name] = reason
        else:
            layers.append(node)
    return layers, skipped


def gptq(weight: np.ndarray, hessian: np.ndarray, qmax: float = QMAX) -> tuple[np.ndarray, float, float]:
    """``weight`` (output channels first) on its per-channel symmetric grid of ``±qmax`` by GPTQ, given ``hessian`` of
    shape (groups, K, K) for the K inputs each output channel sees; and the relative output error of nearest and of GPTQ."""
    import torch

    out_channels = weight.shape[0]
    groups = hessian.shape[0]
    flat = weight.reshape(groups, out_channels // groups, -1).astype(np.float64)
    scale = channel_scales(weight, qmax)
    integers = _gptq_groups(torch.from_numpy(flat), torch.from_numpy(scale.reshape(groups, -1).astype(np.float64)),
                            torch.from_numpy(hessian), qmax).numpy()
    rounded = keep_peaks(weight, (integers.astype(np.float32).reshape(out_channels, -1) * scale[:, None]).reshape(weight.shape), qmax)
    nearest = fake_quantize(weight, qmax)
    return rounded, _output_error(weight, nearest, hessian), _output_error(weight, rounded, hessian)


def _gptq_groups(weight: Any, scale: Any, hessian: Any, qmax: float = QMAX) -> Any:
    """Integers for ``weight`` (groups, rows, K), each group's rows sharing one (K, K) ``hessian``: columns in order of
    decreasing input energy, the error of each spread over the columns left through the Cholesky factor of ``H⁻¹``;
    each row's largest weight is never moved, so it stays ``±qmax`` and keeps the row's scale.

    Every group goes at once (a depthwise layer is hundreds of groups of nine inputs), and the error reaches the
    columns beyond a block of ``BLOCK`` in one product per block, GPTQ's lazy batch update: the same arithmetic as
    column by column, without touching every later column at each step."""
    import torch

    groups, rows, width = weight.shape
    weight, hessian = weight.clone(), hessian.clone()
    dead = torch.diagonal(hessian, dim1=1, dim2=2) == 0
    torch.diagonal(hessian, dim1=1, dim2=2)[dead] = 1.0
    order = torch.argsort(torch.diagonal(hessian, dim1=1, dim2=2), dim=1, descending=True, stable=True)
    weight = torch.gather(weight, 2, order[:, None, :].expand(groups, rows, width))
    hessian = torch.gather(torch.gather(hessian, 1, order[:, :, None].expand(groups, width, width)), 2,
                           order[:, None, :].expand(groups, width, width))
    movable = torch.ones_like(weight, dtype=torch.bool)
    movable.scatter_(2, weight.abs().argmax(dim=2, keepdim=True), False)
    mean_diagonal = torch.diagonal(hessian, dim1=1, dim2=2).mean(dim=1)
    hessian += DAMPING * mean_diagonal[:, None, None] * torch.eye(width, dtype=hessian.dtype)
    factor = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    integers = torch.empty_like(weight)
    half_steps = not float(qmax).is_integer()
    bound = math.floor(qmax)  # on a half-integer grid the others stay a step inside the peak, which sets the scale
    for start in range(0, width, BLOCK):
        end = min(start + BLOCK, width)
        errors = torch.empty(groups, rows, end - start, dtype=weight.dtype)
        for j in range(start, end):
            q = torch.clamp(torch.round(weight[:, :, j] / scale), -bound, bound)
            if half_steps:  # the pinned peak of a half-integer grid stays where it is (``keep_peaks``): no error to spread
                q = torch.where(movable[:, :, j], q, weight[:, :, j] / scale)
            integers[:, :, j] = q
            error = (weight[:, :, j] - q * scale) / factor[:, j, j, None]
            errors[:, :, j - start] = error
            weight[:, :, j + 1 : end] -= error[:, :, None] * factor[:, None, j, j + 1 : end] * movable[:, :, j + 1 : end]
        weight[:, :, end:] -= torch.bmm(errors, factor[:, start:end, end:]) * movable[:, :, end:]
    return torch.gather(integers, 2, torch.argsort(order, dim=1)[:, None, :].expand(groups, rows, width))


def _output_error(weight: np.ndarray, rounded: np.ndarray, hessian: np.ndarray) -> float:
    """``‖(W' − W) X‖ / ‖W X‖`` from ``H = X Xᵀ``, summed over groups."""
    groups = hessian.shape[0]
    w = weight.reshape(groups, weight.shape[0] // groups, -1).astype(np.float64)
    d = rounded.reshape(w.shape).astype(np.float64) - w
    energy = float(np.sum(np.matmul(w, hessian) * w))  # a batched product: the three-operand einsum loops in C, not BLAS
    return math.sqrt(max(float(np.sum(np.matmul(d, hessian) * d)), 0.0) / energy) if energy > 0 else 0.0


def _hessians(path: str, samples: np.ndarray) -> dict[str, np.ndarray]:
    """``H = Σ x xᵀ`` per group of every eligible layer, from the FP32 model's own inputs to it on the samples."""
    import onnx
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F  # noqa: N812

    model = onnx.load(path)
    layers, _ = eligible_layers(model, set())
    outputs = {output.name for output in model.graph.output}
    for name in dict.fromkeys(node.input[0] for node in layers):
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    feed_name = session.get_inputs()[0].name
    sums: dict[str, Any] = {}
    for start in range(0, len(samples), BATCH):
        values = dict(zip(names, session.run(names, {feed_name: samples[start : start + BATCH]}), strict=True))
        for node in layers:
            x = torch.from_numpy(values[node.input[0]])
            # (groups, N, K): a Gemm is one group of its input rows; a Conv's patches one sample at a time, which bounds
            # the memory (a 3×3 conv over 64 channels at 256×256 unfolds to 300 MB per sample in float64)
            if node.op_type == "Gemm":
                parts: Iterator[Any] = iter([x.reshape(x.shape[0], -1)[None]])
            else:
                parts = (_im2col(x[i : i + 1], node, F) for i in range(len(x)))
            for part in parts:
                columns = part.double()
                update = torch.bmm(columns.transpose(1, 2), columns)
                sums[node.name] = update if node.name not in sums else sums[node.name] + update
    return {name: value.numpy() for name, value in sums.items()}


def _im2col(x: Any, node: Any, functional: Any) -> Any:
    """The Conv's input patches as (groups, positions, channels-per-group × kh × kw), in the weight's column order."""
    a = _attributes(node)
    kernel = list(a["kernel_shape"]) if "kernel_shape" in a else None
    groups = a.get("group", 1)
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    if kernel is None:
        raise ValueError(f"{node.name}: Conv without kernel_shape")
    pads = _pads(a, x.shape[2:], kernel, strides, dilations)
    if kernel == [1, 1] and strides == [1, 1] and groups == 1 and not any(pads):  # pointwise: the patches are the pixels
        return x.permute(0, 2, 3, 1).reshape(1, -1, x.shape[1])
    x = functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    patches = functional.unfold(x, kernel, dilation=dilations, stride=strides)  # (B, C·kh·kw, L)
    batch, width, positions = patches.shape
    per_group = width // groups
    return patches.reshape(batch, groups, per_group, positions).permute(1, 0, 3, 2).reshape(groups, batch * positions, per_group)


def _pads(a: dict[str, Any], spatial: Sequence[int], kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """(top, left, bottom, right) padding, from ``pads`` or ``auto_pad``."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(a.get("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return [begin[0], begin[1], end[0], end[1]]


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
