"""``keep_float: auto``: the fewest layers left in float for an INT8 engine to meet its ``accuracy_target``.

1. **Rank once, on the quantized model.** The FP32 ONNX is quantized where the backend puts its quantizers (ONNX
   Runtime's QDQ, min/max ranges from the calibration samples): every op for ONNX Runtime's own ``quantize_static``; only
   the inputs and weights of each Conv/Gemm/MatMul for NNCF and ModelOpt, whose outputs and other ops stay float. Then
   each Conv/Gemm/MatMul in turn gets its float inputs and weights back, and the mean cosine of the outputs with FP32 on
   validation samples (the lowest over outputs) says how much that layer's quantization (its weights *and* the
   activations it reads) costs the model. Backends with the same placement share one ranking.
2. **Search per backend.** Candidates keep the top *k* of the ranking in float (with the convolutions feeding them
   through an activation, ``sensitivity.with_producers``), built by the backend's own mechanism (ONNX Runtime and ModelOpt
   ``nodes_to_exclude``, NNCF ``IgnoredScope``) and scored on the validation split; *k* is bisected between the fully
   quantized engine and the whole ranking, so a search costs about log2(layers) + 2 builds.
3. **Record.** ``float_search.json`` beside the engine: the target, the ranking, every candidate (float layers, output
   cosine, and for class scores top-1 agreement and the top-1 drop where there are labels, an in-process p50, build and
   score time) and the chosen one. Where the backend can run a Q/DQ model as written (ONNX Runtime), the fully quantized
   candidate is scored that way too: on x86 without VNNI the integer kernels saturate, and the gap is what they cost.
   A target no candidate meets keeps the best candidate found, says so, and the engine fails its gate with that reason.
4. **A latency budget** (``max_slowdown``): after the search, each candidate built is timed in interleaved rounds with
   the fully quantized candidate alone (two engines open at a time, whatever the model's size), and one whose p50
   exceeds the budget times the fully quantized candidate's (the median of the round-by-round ratios) is not chosen.
   When the fewest layers that meet the figure do not fit, a second bisection, each step built and timed the same way,
   finds the most float layers that fit, and the best candidate that fits is kept (the target unmet). Each candidate is
   judged once, by its own rounds: judging one at the budget's edge twice would let the noise overturn the first answer.

The target is top-1 agreement or drop for a classifier, output cosine for any model (named inputs of any dtype, several
outputs). It is measured on samples neither calibration nor evaluation touches; the engine's reported figures stay on
the evaluation split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeship.backends.sensitivity import FLOAT_LAYERS_FILE, PASS_THROUGH, keep_float, run_onnx_outputs, with_producers
from edgeship.device import usable_cpus
from edgeship.measure import agreement, agreement_interval, paired_ratio, time_calls, top1, top1_hits
from edgeship.progress import note_step
from edgeship.tensors import Feed, Inputs, feed_of, outputs_in_batches, rows_of

if TYPE_CHECKING:
    from edgeship.backends.base import Runner
    from edgeship.config import AccuracyTarget, KeepFloat
    from edgeship.tensors import CalibrationSet, SearchSet

SEARCH_FILE = "float_search.json"
RANKING_SAMPLES = 64  # validation samples the ranking scores each reverted layer on
RANKING_CALIBRATION = 64  # calibration samples of the fully quantized model the ranking reverts layers in
TIMED_SECONDS = 0.3  # a candidate's in-process latency estimate
RANKED_OPS = ("Conv", "Gemm", "MatMul")  # what the ranking gives back its float inputs: the layers quantizers quantize first
# How the ranking's model is quantized, as the backend quantizes: every op (ONNX Runtime's quantize_static), or only the
# inputs of the ranked layers (NNCF, ModelOpt's explicit Q/DQ: their outputs and the other ops read float)
Placement = Literal["every_op", "layer_inputs"]
SEARCH_METHOD = "placement-ranking-4"  # in the engine's key: engines searched by an earlier method are searched again
# (4: the ranking's Q/DQ run as written, so the ranking no longer depends on the CPU's integer kernels)
BATCH = 16  # samples per call when a candidate is scored
TOGETHER_ROUNDS = 9  # interleaved rounds that time every candidate against a latency budget (max_slowdown)
TOGETHER_SECONDS = 0.05  # each candidate's timed share of a round
TOGETHER_WARMUP_SECONDS = 0.05  # and its untimed calls before, which outlast the thread spinning the engine before leaves


@dataclass(frozen=True)
class FloatChoice:
    """The layers an INT8 build keeps in float, and, when the search built that very engine (``reuse``), where it now is."""

    nodes: list[str]
    engine: Path | None = None


def choose_float_layers(source: Path, calibration: CalibrationSet, setting: KeepFloat, target: AccuracyTarget | None, out_dir: Path,
                        build: Callable[[list[str], Path], Path], runner: Callable[[Path, int], Runner], *,
                        reuse: bool = False, placement: Placement = "layer_inputs", also_ranked: tuple[str, ...] = (),
                        as_written: Callable[[Path, int], Runner] | None = None,
                        weights_alone: Callable[[], tuple[Any, int]] | None = None, method_note: str = "") -> FloatChoice:
    """The ONNX node names the INT8 build of ``source`` keeps in float: ``setting`` layers of the weight-only ranking, or for
    ``auto`` the smallest top of the activation-aware ranking whose candidate (``build(nodes, folder)``, run by
    ``runner(path, threads)``) meets ``target`` on the validation split. ``reuse``: the chosen candidate's files are moved
    into ``out_dir`` and returned as the engine, instead of the caller building it again. ``placement``: where the backend
    puts its quantizers, so the ranking's model is quantized as the candidates will be. ``also_ranked``: op types beyond
    Conv/Gemm/MatMul whose quantization costs the backend accuracy of its own (TFLite's int8 residual ``Add``), ranked and
    kept in float like layers. ``as_written``: a runner that computes a candidate's Q/DQ as written rather than on this
    CPU's integer kernels; the fully quantized candidate is scored both ways, so the record shows what the kernels cost
    (x86 without VNNI saturates) apart from what the quantization costs. ``weights_alone``: the FP32 ONNX with its weights
    on the values the engine stores and how many layers those are (``rounding.weights_alone``); scored beside the fully
    quantized candidate, it splits that candidate's loss between weights and activations. ``method_note``: how the
    backend's candidates are built beyond that, for the record."""
    if setting != "auto":
        return FloatChoice(keep_float(source, calibration.samples, setting, out_dir) if setting else [])
    if target is None or calibration.search is None:
        raise ValueError("keep_float: auto needs an accuracy_target and validation samples to search on")
    started = time.perf_counter()
    search = calibration.search
    note_step(f"keep_float auto: ranking the layers on {min(RANKING_SAMPLES, len(search))} validation samples")
    reference = _outputs_of(source, search.inputs)
    ranking = rank_by_reverting(source, calibration, rows_of(search.inputs, 0, RANKING_SAMPLES),
                                [output[:RANKING_SAMPLES] for output in reference], placement, also_ranked)
    ranked_at = time.perf_counter() - started
    unranked = None if ranking else _why_unranked(source, (*RANKED_OPS, *also_ranked))
    threads = len(usable_cpus() or ()) or os.cpu_count() or 1
    candidates: dict[int, dict[str, Any]] = {}
    engines: dict[int, Path] = {}  # each candidate's engine, in its own folder under out_dir until the search ends

    def measure(count: int) -> dict[str, Any]:
        if count not in candidates:
            done = ", ".join(f"{k}: {_figure(candidates[k], target)}" for k in sorted(candidates))
            note_step(f"keep_float auto: candidate {len(candidates) + 1} ({count} of {len(ranking)} ranked layers in float)"
                      + (f"; so far {done}" if done else ""))
            nodes = with_producers(source, [row["node"] for row in ranking[:count]]) if count else []
            candidates[count] = _score(nodes, count, build, runner, threads, search, reference, target, out_dir,
                                       as_written if count == 0 else None)
            if "engine" in candidates[count]:
                engines[count] = Path(candidates[count].pop("engine"))
            if count == 0 and weights_alone is not None:
                candidates[0]["weights_alone"] = _score_weights_alone(weights_alone, reference, search, target)
        return candidates[count]

    try:
        low, high = 0, len(ranking)
        if not measure(low)["meets"] and measure(high)["meets"]:
            while high - low > 1:  # low fails, high meets
                middle = (low + high) // 2
                low, high = (low, middle) if measure(middle)["meets"] else (middle, high)
        together = None
        if target.max_slowdown is not None:
            budget = target.max_slowdown
            timings: list[float] = []
            with runner(engines[0], threads) as fully_quantized:  # open once, beside one candidate at a time
                one = feed_of(rows_of(search.inputs, 0, 1), list(fully_quantized.input_metadata()))

                def against_budget(count: int) -> bool:
                    """``count``'s candidate timed with the fully quantized one alone: two engines open at a time,
                    however many candidates there are and however large the model."""
                    note_step(f"keep_float auto: timing {count} float layers against the fully quantized candidate")
                    timings.append(_time_against_budget(candidates[0], candidates[count], fully_quantized, engines[count],
                                                        runner, threads, one, budget))
                    return candidates[count]["within_budget"]

                for count in sorted(candidates)[1:]:
                    against_budget(count)
                candidates[0].update(slowdown=1.0, slowdown_ci95=[1.0, 1.0], within_budget=True)
                fit = max(count for count, c in candidates.items() if c["within_budget"])
                over = min((count for count, c in candidates.items() if count > fit and not c["within_budget"]), default=None)
                if not choose(candidates, target)[1] and over is not None:
                    # the fewest layers that meet the target do not fit: bisect the budget's edge for the most that do
                    while over - fit > 1:
                        middle = (fit + over) // 2
                        measure(middle)
                        fit, over = (middle, over) if against_budget(middle) else (fit, middle)
            together = {"rounds": TOGETHER_ROUNDS, "max_slowdown": budget, "pairs": len(timings), "threads": threads,
                        "seconds": round(sum(timings), 2)}
        chosen, met = choose(candidates, target)
        engine = _adopt(engines[chosen["float_layers"]], out_dir) if reuse and chosen["float_layers"] in engines else None
    finally:
        for folder in {path.parent for path in engines.values()}:
            shutil.rmtree(folder, ignore_errors=True)
    record = {"target": target.model_dump(exclude_none=True), "target_text": target.describe(), "met": met, "together": together,
              "measure": "cosine" if target.min_cosine is not None else "agreement",
              "chosen": chosen["float_layers"], "nodes": chosen["nodes"], "samples": len(search), "split": "validation",
              "ranking_samples": min(RANKING_SAMPLES, len(search)), "ranking_seconds": round(ranked_at, 2),
              "seconds": round(time.perf_counter() - started, 2), "threads": threads,
              "candidates": sorted(candidates.values(), key=lambda c: c["float_layers"]), "ranking": ranking,
              "placement": placement, "ranked_ops": [*RANKED_OPS, *also_ranked], "unranked": unranked,
              "method": f"each {'/'.join((*RANKED_OPS, *also_ranked))} given back its float inputs and weights in a QDQ model with "
                        + ("every op quantized" if placement == "every_op" else "the inputs of all of them quantized")
                        + "; ranked by the gain in output cosine with FP32 on validation samples" + method_note}
    (out_dir / SEARCH_FILE).write_text(json.dumps(record, indent=2))
    (out_dir / FLOAT_LAYERS_FILE).write_text(json.dumps({"count": chosen["float_layers"], "nodes": chosen["nodes"], "auto": True,
                                                         "samples": len(search), "ranking": ranking[:10]}, indent=2))
    return FloatChoice(list(chosen["nodes"]), engine)


def choose(candidates: dict[int, dict[str, Any]], target: AccuracyTarget) -> tuple[dict[str, Any], bool]:
    """The candidate with the fewest float layers that meets the target (and fits the latency budget, where the target
    sets one), and True; else the best by the target's measure among those that fit the budget, and False. Bisection
    leaves the fewest meeting layers among those it built as the smallest meeting candidate, so this is its answer."""
    fitting = [c for c in candidates.values() if c.get("within_budget", True)]
    meeting = [c for c in fitting if c["meets"]]
    if meeting:
        return min(meeting, key=lambda c: c["float_layers"]), True
    return max(fitting, key=lambda c: (_goodness(c, target), -c["float_layers"])), False


def _time_against_budget(full: dict[str, Any], candidate: dict[str, Any], fully_quantized: Runner, engine: Path,
                         runner: Callable[[Path, int], Runner], threads: int, one: Feed, budget: float) -> float:
    """``candidate`` (its engine at ``engine``) and the fully quantized candidate (``full``, already open as
    ``fully_quantized``) timed in the same interleaved rounds, and the candidate's p50 as a ratio to the fully quantized
    one's round by round (``measure.paired_ratio``): the in-search p50s were each taken at another moment of a shared
    machine, and a budget of a few tens of percent is within what the machine's load moves between them. Writes
    ``p50_together_ms`` into both, and ``slowdown``, ``slowdown_ci95`` and ``within_budget`` into ``candidate``; returns
    the seconds it took."""
    started = time.perf_counter()
    per_round: tuple[list[float], list[float]] = ([], [])
    with runner(engine, threads) as run:
        pair = (fully_quantized, run)
        for each in pair:
            time_calls(lambda each=each: each.infer(one), warmup=10, iterations=1, min_seconds=0)
        for _ in range(TOGETHER_ROUNDS):
            for times, each in zip(per_round, pair, strict=True):
                # untimed first: the engine timed before may leave its threads spinning for a while (ONNX Runtime's
                # thread pool does), which would be charged to this one
                time_calls(lambda each=each: each.infer(one), warmup=0, iterations=3, min_seconds=TOGETHER_WARMUP_SECONDS)
                calls = time_calls(lambda each=each: each.infer(one), warmup=0, iterations=10, min_seconds=TOGETHER_SECONDS)
                times.append(float(np.median(calls)) / 1e6)
    ratio, low, high = paired_ratio(per_round[1], per_round[0])
    full["p50_together_ms"] = round(float(np.median(per_round[0])), 4)
    candidate.update(p50_together_ms=round(float(np.median(per_round[1])), 4), slowdown=round(ratio, 4),
                     slowdown_ci95=[round(low, 4), round(high, 4)], within_budget=ratio <= budget)
    return round(time.perf_counter() - started, 2)


def _why_unranked(source: Path, ranked: tuple[str, ...]) -> str:
    """Why the ranking of ``source`` is empty, so a search with nothing to keep in float says so."""
    import onnx

    layers = [node for node in onnx.load(str(source), load_external_data=False).graph.node if node.op_type in ranked]
    kinds = "/".join(ranked)
    unnamed = sum(not node.name for node in layers)
    if not layers:
        return f"no layer to rank: the model has no {kinds} node"
    if unnamed:
        return (f"no layer to rank: {unnamed} of the model's {len(layers)} {kinds} nodes have no name, and a node without one "
                "cannot be named to a backend; give the ONNX nodes names")
    return f"no layer to rank: the quantizer quantized none of the model's {len(layers)} {kinds} nodes"


def _adopt(engine: Path, out_dir: Path) -> Path:
    """The chosen candidate's files moved into ``out_dir``: the build's own output, built once."""
    for item in engine.parent.iterdir():
        shutil.move(str(item), str(out_dir / item.name))
    return out_dir / engine.name


def _figure(candidate: dict[str, Any], target: AccuracyTarget) -> str:
    """A candidate's figure by the target's measure, as the spinner shows it."""
    value = candidate[target.measure]
    if value is None:
        return "—"
    if target.measure == "agreement":
        return f"{100 * value:.2f}%"
    if target.measure == "agreement_low":
        low, high = candidate["agreement_ci95"]
        return f"{100 * candidate['agreement']:.2f}% ({100 * low:.2f}–{100 * high:.2f})"
    return f"{value:+.2f} pt" if target.measure == "top1_drop_points" else f"{value:.5f}"


def _goodness(candidate: dict[str, Any], target: AccuracyTarget) -> float:
    """How good a candidate is by the target's own measure, higher better."""
    value = candidate[target.measure]
    return -value if target.measure == "top1_drop_points" else value


def _score(nodes: list[str], count: int, build: Callable[[list[str], Path], Path], runner: Callable[[Path, int], Runner], threads: int,
           search: SearchSet, reference: list[np.ndarray], target: AccuracyTarget, out_dir: Path,
           as_written: Callable[[Path, int], Runner] | None = None) -> dict[str, Any]:
    """Build one candidate in a folder of its own (kept for the caller, under ``engine``, unless this fails), score it on the
    validation samples and time it; with ``as_written``, also score it run by that (``choose_float_layers``)."""
    samples = search.inputs
    folder = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".candidate-{count}-"))
    try:
        started = time.perf_counter()
        engine = build(nodes, folder)
        built = time.perf_counter() - started
        with runner(engine, threads) as run:
            names = list(run.input_metadata())
            outputs = outputs_in_batches(lambda feed: list(run.infer(feed).values()), samples, names, BATCH)
            one = feed_of(rows_of(samples, 0, 1), names)
            p50 = float(np.median(time_calls(lambda: run.infer(one), warmup=10, iterations=30, min_seconds=TIMED_SECONDS))) / 1e6
        written = None
        if as_written is not None:
            with as_written(engine, threads) as run:
                written = outputs_in_batches(lambda feed: list(run.infer(feed).values()), samples, names, BATCH)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    scores = _fidelity(outputs, reference, search, target)
    if written is not None:
        scores["as_written"] = _fidelity(written, reference, search, target)
    if target.min_agreement is not None:
        meets = scores[target.measure] >= target.min_agreement
    elif target.min_cosine is not None:
        meets = scores["cosine"] >= target.min_cosine
    else:
        if scores["top1_drop_points"] is None:
            raise ValueError("accuracy_target.max_drop_points needs labels on the validation split; this data has none: "
                             "use min_agreement")
        meets = scores["top1_drop_points"] <= target.max_drop_points
    return {"float_layers": count, "nodes": nodes, **scores, "meets": meets, "p50_ms": round(p50, 4),
            "build_seconds": round(built, 2), "seconds": round(time.perf_counter() - started, 2), "engine": str(engine)}


def _score_weights_alone(weights_alone: Callable[[], tuple[Any, int]], reference: list[np.ndarray], search: SearchSet,
                         target: AccuracyTarget) -> dict[str, Any]:
    """The figures of the FP32 model with its weights on their INT8 values (``weights_alone``) and how many layers those are;
    only the count where the model has no such layer (``weights_alone`` rounds Conv and Gemm weights; a transformer's
    weights are MatMul inputs)."""
    note_step("keep_float auto: scoring the weights alone in INT8, the activations in float")
    model, layers = weights_alone()
    if not layers:
        return {"layers": 0}
    outputs = [output.astype(np.float32) for output in run_onnx_outputs(model, search.inputs)]
    return {**_fidelity(outputs, reference, search, target), "layers": layers}


def _fidelity(outputs: list[np.ndarray], reference: list[np.ndarray], search: SearchSet, target: AccuracyTarget) -> dict[str, Any]:
    """A candidate's figures against FP32: the output cosine, and for class scores the top-1 agreement with its 95% interval
    (over the samples' groups where they have them: ``agreement_groups``) and the drop."""
    scores: dict[str, Any] = {"cosine": round(output_cosine(outputs, reference), 7)}
    if target.min_cosine is None:  # class scores: the first output's top class
        scores["agreement"] = round(agreement(outputs[0], reference[0])["top1_agreement"], 6)
        interval = agreement_interval(top1_hits(outputs[0], reference[0]), search.groups)
        scores["agreement_ci95"] = [round(bound, 6) for bound in interval["top1_agreement_ci95"]]
        scores["agreement_low"] = scores["agreement_ci95"][0]
        scores["agreement_groups"] = interval["top1_agreement_groups"]
        labels = search.labels
        scores["top1_drop_points"] = None if labels is None else round(100 * (top1(reference[0], labels) - top1(outputs[0], labels)), 4)
    return scores


def output_cosine(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """The lowest, over outputs, of the mean per-sample cosine with the FP32 reference: a target holds for every output."""
    return min(agreement(output, expected)["mean_cosine"] for output, expected in zip(outputs, reference, strict=True))


def rank_by_reverting(source: Path, calibration: CalibrationSet, samples: Inputs, reference: list[np.ndarray],
                      placement: Placement = "layer_inputs", also_ranked: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every Conv/Gemm/MatMul (and ``also_ranked`` op) of ``source``, the one whose quantization costs the most first (see
    the module docstring)."""
    # keyed by the samples it reads, not the calibration set's fingerprint: backends calibrating on different subsets of the
    # same samples (and carrying the search samples in their fingerprint) share one ranking
    ranking = _rank(str(source), source.stat().st_mtime_ns, _Keyed(calibration.subset(RANKING_CALIBRATION).arrays),
                    _Keyed(samples), _Keyed(reference), placement, tuple(also_ranked))
    return [dict(row) for row in ranking]


class _Keyed:
    """Arrays made a cache key by their bytes (the ranking is cached per source, calibration and samples)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        arrays = value if isinstance(value, list) else [value] if isinstance(value, np.ndarray) else [value[k] for k in sorted(value)]
        names = sorted(value) if isinstance(value, dict) else []
        self._key = (tuple(names), tuple((a.dtype.str, a.shape, hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest())
                                         for a in arrays))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Keyed) and self._key == other._key


@functools.lru_cache(maxsize=4)
def _rank(path: str, _mtime: int, calibration_arrays: _Keyed, samples_key: _Keyed, reference_key: _Keyed,
          placement: Placement, also_ranked: tuple[str, ...]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    import onnx

    from edgeship.backends.onnxruntime import quantize_qdq
    from edgeship.tensors import CalibrationSet

    source = Path(path)
    ranked = (*RANKED_OPS, *also_ranked)
    calibration = CalibrationSet(calibration_arrays.value, "ranking")
    samples, reference = samples_key.value, reference_key.value
    with tempfile.TemporaryDirectory(prefix="edgeship-ranking-") as folder:
        quantized = Path(folder) / "model.int8.onnx"
        layer_inputs = {} if placement == "every_op" else {
            "op_types": list(RANKED_OPS), "extra_options": {"OpTypesToExcludeOutputQuantization": list(RANKED_OPS)}}
        quantize_qdq(source, quantized, calibration, method="minmax", per_channel=True, activation_type="int8", float_outputs=True,
                     **layer_inputs)  # type: ignore[arg-type]
        model = onnx.load(str(quantized))
    if layer_inputs:
        model = _quantized_inputs_only(model)
    original = onnx.load(str(source))
    names = {node.name: node.op_type for node in original.graph.node}
    base = output_cosine(run_onnx_outputs(model, samples), reference)
    writers = {output: node.op_type for node in model.graph.node for output in node.output}
    rows = []
    for node in model.graph.node:  # a node the quantizer left alone (no input through a DequantizeLinear) has nothing to give back
        name = node.name if node.name in names else node.name.rpartition("/")[0]  # a pre-processing fusion: mm/MatMulAddFusion
        if (node.op_type not in ranked or not name or name not in names  # an unnamed node cannot be named to a backend
                or "DequantizeLinear" not in {writers.get(v) for v in node.input}):
            continue
        reverted = _reverted(model, node.name, original, name)
        cosine = output_cosine(run_onnx_outputs(reverted, samples), reference)
        rows.append({"node": name, "op": names[name], "cosine_gain": round(cosine - base, 7), "cosine": round(cosine, 7)})
    rows.sort(key=lambda row: -row["cosine_gain"])
    return tuple(tuple(row.items()) for row in rows)


def _quantized_inputs_only(model: Any) -> Any:
    """``model`` (a QDQ ONNX) with every node but the ranked ones reading float activations: the quantizer puts one Q/DQ
    pair on a tensor for all its readers, so a residual Add would read the quantized input of the MatMul beside it, and
    no reverted layer could give that back."""
    writers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.op_type in RANKED_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for index, value in enumerate(node.input):
            dq = writers.get(value)
            q = writers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
    return model


def _reverted(model: Any, name: str, original: Any, original_name: str | None = None) -> Any:
    """``model`` (a QDQ ONNX) with node ``name`` reading float again: each activation input taken from before its
    QuantizeLinear (with the Relu or Clip the quantizer folded into that pair put back), each quantized weight or bias
    replaced by the FP32 initializer the node reads in ``original``, the FP32 model, where it is ``original_name`` (a
    pre-processing fusion renames it; by default ``name``)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    writers = {output: node for node in copy.graph.node for output in node.output}
    initializers = {init.name for init in copy.graph.initializer}
    weights = {init.name: init for init in original.graph.initializer}
    original_writers = {output: node for node in original.graph.node for output in node.output}
    source = next(n for n in original.graph.node if n.name == (original_name or name))
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
            weight = source.input[index] if index < len(source.input) else ""
            if weight in weights:
                node.input[index] = restore(weight)
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


def _outputs_of(source: Path, samples: Inputs) -> list[np.ndarray]:
    """The FP32 ONNX's outputs on ``samples``: what candidates are held against."""
    import onnx

    return [output.astype(np.float32) for output in run_onnx_outputs(onnx.load(str(source)), samples)]
