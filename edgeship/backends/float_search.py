"""``keep_float: auto``: the fewest layers left in float for an INT8 engine to meet its ``accuracy_target``.

1. **Rank once, on the quantized model.** The FP32 ONNX is quantized whole (ONNX Runtime's QDQ, min/max ranges from
   the calibration samples); then each Conv/Gemm in turn gets its float input and weights back inside that model, and the
   mean cosine of the outputs with FP32 on validation samples says how much that layer's quantization (its weights *and*
   the activations it reads) costs the model. The ranking is shared by every backend of the run.
2. **Search per backend.** Candidates keep the top *k* of the ranking in float (with the convolutions feeding them
   through an activation, ``sensitivity.with_producers``), built by the backend's own mechanism (ONNX Runtime and ModelOpt
   ``nodes_to_exclude``, NNCF ``IgnoredScope``) and scored on the validation split; *k* is bisected between the fully
   quantized engine and the whole ranking, so a search costs about log2(layers) + 2 builds.
3. **Record.** ``float_search.json`` beside the engine: the target, the ranking, every candidate (float layers, top-1
   agreement, top-1 drop where there are labels, an in-process p50, build and score time) and the chosen one. A target no
   candidate meets keeps the best candidate found, says so, and the engine fails its gate with that reason.

Agreement is measured on samples neither calibration nor evaluation touches; the engine's reported figures stay on the
evaluation split.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeship.backends.sensitivity import FLOAT_LAYERS_FILE, PASS_THROUGH, WEIGHTED_OPS, keep_float, run_onnx, with_producers
from edgeship.device import usable_cpus
from edgeship.measure import agreement, time_calls, top1

if TYPE_CHECKING:
    from edgeship.backends.base import Runner
    from edgeship.config import AccuracyTarget, KeepFloat
    from edgeship.tensors import CalibrationSet

SEARCH_FILE = "float_search.json"
RANKING_SAMPLES = 64  # validation samples the ranking scores each reverted layer on
RANKING_CALIBRATION = 64  # calibration samples of the fully quantized model the ranking reverts layers in
TIMED_SECONDS = 0.3  # a candidate's in-process latency estimate


@dataclass(frozen=True)
class FloatChoice:
    """The layers an INT8 build keeps in float, and, when the search built that very engine (``reuse``), where it now is."""

    nodes: list[str]
    engine: Path | None = None


def choose_float_layers(source: Path, calibration: CalibrationSet, setting: KeepFloat, target: AccuracyTarget | None, out_dir: Path,
                        build: Callable[[list[str], Path], Path], runner: Callable[[Path, int], Runner], *,
                        reuse: bool = False) -> FloatChoice:
    """The ONNX node names the INT8 build of ``source`` keeps in float: ``setting`` layers of the weight-only ranking, or for
    ``auto`` the smallest top of the activation-aware ranking whose candidate (``build(nodes, folder)``, run by
    ``runner(path, threads)``) meets ``target`` on the validation split. ``reuse``: the chosen candidate's files are moved
    into ``out_dir`` and returned as the engine, instead of the caller building it again."""
    if setting != "auto":
        return FloatChoice(keep_float(source, calibration.samples, setting, out_dir) if setting else [])
    if target is None or calibration.search is None:
        raise ValueError("keep_float: auto needs an accuracy_target and validation samples to search on")
    started = time.perf_counter()
    search = calibration.search
    reference = _outputs_of(source, search.samples)
    ranking = rank_by_reverting(source, calibration, search.samples[:RANKING_SAMPLES], reference[:RANKING_SAMPLES])
    ranked_at = time.perf_counter() - started
    threads = len(usable_cpus() or ()) or os.cpu_count() or 1
    candidates: dict[int, dict[str, Any]] = {}
    engines: dict[int, Path] = {}  # each candidate's engine, in its own folder under out_dir until the search ends

    def measure(count: int) -> dict[str, Any]:
        if count not in candidates:
            nodes = with_producers(source, [row["node"] for row in ranking[:count]]) if count else []
            candidates[count] = _score(nodes, count, build, runner, threads, search.samples, search.labels, reference, target, out_dir)
            if "engine" in candidates[count]:
                engines[count] = Path(candidates[count].pop("engine"))
        return candidates[count]

    try:
        low, high = 0, len(ranking)
        if not measure(low)["meets"] and measure(high)["meets"]:
            while high - low > 1:  # low fails, high meets
                middle = (low + high) // 2
                low, high = (low, middle) if measure(middle)["meets"] else (middle, high)
            chosen = measure(high)
        elif candidates[low]["meets"]:
            chosen = candidates[low]
        else:  # not even the whole ranking in float meets it: the best candidate found
            chosen = max(candidates.values(), key=lambda c: (c["agreement"], -c["float_layers"]))
        engine = _adopt(engines[chosen["float_layers"]], out_dir) if reuse and chosen["float_layers"] in engines else None
    finally:
        for folder in {path.parent for path in engines.values()}:
            shutil.rmtree(folder, ignore_errors=True)
    record = {"target": target.model_dump(exclude_none=True), "target_text": target.describe(), "met": chosen["meets"],
              "chosen": chosen["float_layers"], "nodes": chosen["nodes"], "samples": len(search.samples), "split": "validation",
              "ranking_samples": min(RANKING_SAMPLES, len(search.samples)), "ranking_seconds": round(ranked_at, 2),
              "seconds": round(time.perf_counter() - started, 2), "threads": threads,
              "candidates": sorted(candidates.values(), key=lambda c: c["float_layers"]), "ranking": ranking,
              "method": "each Conv/Gemm given back its float input and weights in the fully quantized QDQ model; ranked by the "
                        "gain in output cosine with FP32 on validation samples"}
    (out_dir / SEARCH_FILE).write_text(json.dumps(record, indent=2))
    (out_dir / FLOAT_LAYERS_FILE).write_text(json.dumps({"count": chosen["float_layers"], "nodes": chosen["nodes"], "auto": True,
                                                         "samples": len(search.samples), "ranking": ranking[:10]}, indent=2))
    return FloatChoice(list(chosen["nodes"]), engine)


def _adopt(engine: Path, out_dir: Path) -> Path:
    """The chosen candidate's files moved into ``out_dir``: the build's own output, built once."""
    for item in engine.parent.iterdir():
        shutil.move(str(item), str(out_dir / item.name))
    return out_dir / engine.name


def _score(nodes: list[str], count: int, build: Callable[[list[str], Path], Path], runner: Callable[[Path, int], Runner], threads: int,
           samples: np.ndarray, labels: np.ndarray | None, reference: np.ndarray, target: AccuracyTarget, out_dir: Path) -> dict[str, Any]:
    """Build one candidate in a folder of its own (kept for the caller, under ``engine``, unless this fails), score it on the
    validation samples and time it."""
    folder = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".candidate-{count}-"))
    try:
        started = time.perf_counter()
        engine = build(nodes, folder)
        built = time.perf_counter() - started
        with runner(engine, threads) as run:
            name = next(iter(run.input_metadata()))
            outputs = np.concatenate([next(iter(run.infer({name: samples[i : i + 16]}).values())) for i in range(0, len(samples), 16)])
            one = {name: samples[:1]}
            p50 = float(np.median(time_calls(lambda: run.infer(one), warmup=10, iterations=30, min_seconds=TIMED_SECONDS))) / 1e6
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    agrees = agreement(outputs, reference)["top1_agreement"]
    drop = None if labels is None else round(100 * (top1(reference, labels) - top1(outputs, labels)), 4)
    if target.min_agreement is not None:
        meets = agrees >= target.min_agreement
    else:
        if drop is None:
            raise ValueError("accuracy_target.max_drop_points needs labels on the validation split; this data has none: "
                             "use min_agreement")
        meets = drop <= target.max_drop_points  # type: ignore[operator]
    return {"float_layers": count, "nodes": nodes, "agreement": round(agrees, 6), "top1_drop_points": drop, "meets": meets,
            "p50_ms": round(p50, 4), "build_seconds": round(built, 2), "seconds": round(time.perf_counter() - started, 2),
            "engine": str(engine)}


def rank_by_reverting(source: Path, calibration: CalibrationSet, samples: np.ndarray, reference: np.ndarray) -> list[dict[str, Any]]:
    """Every Conv/Gemm of ``source``, the one whose quantization costs the most first (see the module docstring)."""
    # keyed by the samples it reads, not the calibration set's fingerprint: backends calibrating on different subsets of the
    # same samples (and carrying the search samples in their fingerprint) share one ranking
    ranking = _rank(str(source), source.stat().st_mtime_ns, calibration.samples[:RANKING_CALIBRATION].tobytes(),
                    calibration.samples.shape[1:], calibration.input_name, samples.tobytes(), reference.tobytes(), reference.shape[1:])
    return [dict(row) for row in ranking]


@functools.lru_cache(maxsize=2)
def _rank(path: str, _mtime: int, calibration_bytes: bytes, sample_shape: tuple[int, ...], input_name: str,
          sample_bytes: bytes, reference_bytes: bytes, output_shape: tuple[int, ...]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    import onnx

    from edgeship.backends.onnxruntime import quantize_qdq
    from edgeship.tensors import CalibrationSet

    source = Path(path)
    calibration = CalibrationSet(np.frombuffer(calibration_bytes, np.float32).reshape(-1, *sample_shape), "ranking",
                                 input_name=input_name)
    samples = np.frombuffer(sample_bytes, np.float32).reshape(-1, *sample_shape)
    reference = np.frombuffer(reference_bytes, np.float32).reshape(-1, *output_shape)
    with tempfile.TemporaryDirectory(prefix="edgeship-ranking-") as folder:
        quantized = Path(folder) / "model.int8.onnx"
        quantize_qdq(source, quantized, calibration, method="minmax", per_channel=True, activation_type="int8", float_outputs=True)
        model = onnx.load(str(quantized))
    original = onnx.load(str(source))
    names = {node.name for node in original.graph.node}
    base = agreement(run_onnx(model, samples), reference)["mean_cosine"]
    rows = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or node.name not in names:
            continue
        reverted = _reverted(model, node.name, original)
        cosine = agreement(run_onnx(reverted, samples), reference)["mean_cosine"]
        rows.append({"node": node.name, "op": node.op_type, "cosine_gain": round(cosine - base, 7), "cosine": round(cosine, 7)})
    rows.sort(key=lambda row: -row["cosine_gain"])
    return tuple(tuple(row.items()) for row in rows)


def _reverted(model: Any, name: str, original: Any) -> Any:
    """``model`` (a QDQ ONNX) with node ``name`` reading float again: each activation input taken from before its
    QuantizeLinear (with the Relu or Clip the quantizer folded into that pair put back), each quantized weight or bias
    replaced by the FP32 initializer the node reads in ``original``, the FP32 model."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    writers = {output: node for node in copy.graph.node for output in node.output}
    initializers = {init.name for init in copy.graph.initializer}
    weights = {init.name: init for init in original.graph.initializer}
    original_writers = {output: node for node in original.graph.node for output in node.output}
    source = next(n for n in original.graph.node if n.name == name)
    position, node = next((i, n) for i, n in enumerate(copy.graph.node) if n.name == name)

    def restore(initializer: str) -> str:
        float_name = f"{initializer}__float"
        if float_name not in initializers:
            restored = onnx.TensorProto()
            restored.CopyFrom(weights[initializer])
            restored.name = float_name
            copy.graph.initializer.append(restored)
            initializers.add(float_name)
        return float_name

    for index, value in enumerate(node.input):
        dq = writers.get(value)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] in initializers:  # a quantized weight or bias: the FP32 one back
            original_name = source.input[index] if index < len(source.input) else ""
            if original_name in weights:
                node.input[index] = restore(original_name)
            continue
        q = writers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        float_input = q.input[0]  # a quantized activation: the float one it came from
        folded, writer = original_writers.get(float_input), writers.get(float_input)
        if folded is not None and writer is not None and folded.op_type in PASS_THROUGH and writer.op_type != folded.op_type:
            activation = onnx.NodeProto()  # the quantizer folded it into the Q/DQ range: back on the float path
            activation.CopyFrom(folded)
            activation.name = f"{folded.name}__float"
            activation.input[0] = float_input
            for extra in activation.input[1:]:
                if extra in weights:
                    activation.input[list(activation.input).index(extra)] = restore(extra)
            del activation.output[:]
            activation.output.append(f"{float_input}__float")
            copy.graph.node.insert(position, activation)
            position += 1
            float_input = activation.output[0]
        node.input[index] = float_input
    return copy


def _outputs_of(source: Path, samples: np.ndarray) -> np.ndarray:
    """The FP32 ONNX's outputs on ``samples``: what candidates are held against."""
    import onnx

    return run_onnx(onnx.load(str(source)), samples).astype(np.float32)
