"""edgeship's engines side by side with what each tool's documented defaults give, on the same data, in one harness.

    python benchmarks/vs_defaults.py RECIPE [--rounds 10] [--out DIR]

Runs the recipe (everything already built is reused from the store), then builds the flows a user would write by hand,
each with its tool's defaults, from the run's own inputs:

- plain export: the recipe's unpruned, undistilled model through ``torch.onnx.export`` (a dynamic batch axis, nothing
  else) on ONNX Runtime FP32 — what a user has before any compression;
- ONNX Runtime ``quantize_static(model, out, reader)`` with every other argument at its default;
- ``nncf.quantize(model, nncf.Dataset(samples))`` with its defaults, saved with ``openvino.save_model``, on OpenVINO;
- onnx2tf, then ``TFLiteConverter`` full-integer INT8 as its guide writes it (``Optimize.DEFAULT``, a representative
  dataset, ``TFLITE_BUILTINS_INT8``, int8 input and output);
- ModelOpt ``quantize(model, calibration_data=…)`` with its defaults (the calibration providers set to the CPU, as its
  default list wants a GPU), scored on ONNX Runtime and labelled a prediction of a TensorRT engine.

The quantizing flows start from the run's exported ONNX (the model edgeship's own engines were built from) and its
calibration samples, so they differ from edgeship's engines only in how they quantize. Beside them: each backend's INT8
engine edgeship built and the engine its report recommends. Every engine is scored by ``edgeship.harness`` in a
process of its own on the evaluation split, against the run's FP32 PyTorch outputs, then timed by
``edgeship.interleave``: every engine loaded in a process of its own, pinned like the run's validation, and
``--rounds`` rounds in which each times a short slice in turn, so a change of the machine's speed falls on all alike;
the speed-ups over the plain export are the median of each round's ratio, with a bootstrap 95% interval over the
rounds. Writes ``vs-defaults.json``, ``vs-defaults.md`` and ``vs-defaults.html`` under ``--out`` (default:
``<run>/vs-defaults``) and prints the table.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgeship.artifacts import ArtifactStore
from edgeship.backends import REGISTRY, display_name
from edgeship.data import calibration_set, save_preprocessed
from edgeship.device import describe_device
from edgeship.harness import HarnessError, HarnessSpec, measure_isolated
from edgeship.interleave import round_figures, time_interleaved_isolated
from edgeship.measure import paired_ratio, scores
from edgeship.models import load_model
from edgeship.pipeline.export import INPUT_NAME, OUTPUT_NAME
from edgeship.pipeline.measurers import settings
from edgeship.pipeline.model import input_shape
from edgeship.pipeline.run import recipe_dataset, run
from edgeship.pipeline.validate import BASELINE
from edgeship.qualification import EngineRow
from edgeship.recipe import Recipe, load_recipe
from edgeship.render import plots
from edgeship.tensors import CalibrationSet


@dataclass
class Flow:
    """One engine in the comparison: how it was made, and what it measured."""

    name: str
    group: str  # the backend it runs on, or that it predicts
    runs_on: str  # the registry backend whose runner measures it
    precision: str
    origin: str  # "plain export" | "tool defaults" | "edgeship"
    how: str  # the call that made it
    engine: Path | None = None
    predicted: bool = False  # scored on ONNX Runtime for a backend that cannot run here: no latency
    recommended: bool = False
    reason: str = ""  # why it has no engine or no measurement
    metrics: dict[str, Any] = field(default_factory=dict)
    hits: np.ndarray | None = None  # per evaluation sample: top-1 right (against labels, or the FP32 model's top-1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds: every engine loaded, each timing a slice in turn "
                                                                "(default 10)")
    parser.add_argument("--out", type=Path, default=None, help="where the results go (default: <run>/vs-defaults)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter stays off the table
    console = Console()
    recipe = load_recipe(args.recipe)
    result = run(recipe, console=console, recipe_path=args.recipe)
    out = args.out or result.run_dir / "vs-defaults"
    out.mkdir(parents=True, exist_ok=True)
    store = ArtifactStore(Path(recipe.store))
    entries = {(e.stage, e.name): e for e in result.manifest.entries if e.status == "ok"}
    exported = store.get(next(e for (stage, _), e in entries.items() if stage == "export").artifact)
    teacher = store.get(next(e for (stage, _), e in entries.items() if stage == "model").artifact)
    assert exported is not None and teacher is not None, "the run's model and export are in its store"
    reference = np.load(Path(entries[("validate", BASELINE)].path).parent / "logits.npy")
    dataset = recipe_dataset(recipe, console)
    shape = input_shape(dataset, recipe.data.preprocessing)
    calibration = calibration_set(dataset, recipe.calibration, recipe.data.preprocessing, input_shape=shape)
    eval_inputs = out / "eval-inputs.npy"
    save_preprocessed(eval_inputs, dataset.eval.images, recipe.data.preprocessing)

    flows = [*_defaults(teacher, exported.path, calibration, shape, out / "flows", console), *_edgeship(result.report)]
    _measure(flows, recipe, eval_inputs, reference, dataset.eval.labels, args.rounds, out / "measure", console)
    document = _document(flows, recipe, result.run_dir, args.rounds, dataset.eval.labels is not None)
    (out / "vs-defaults.json").write_text(json.dumps(document, indent=2) + "\n")
    table = _markdown(document)
    (out / "vs-defaults.md").write_text(table)
    (out / "vs-defaults.html").write_text(_page(document))
    print(table)
    console.print(f"written: {out / 'vs-defaults.html'}")
    return 0


# --- the flows a user writes by hand ------------------------------------------------------------------------------------


def _defaults(teacher: Any, exported: Path, calibration: CalibrationSet, shape: tuple[int, ...], work: Path,
              console: Console) -> list[Flow]:
    work.mkdir(parents=True, exist_ok=True)
    flows = [Flow("plain export (ONNX Runtime FP32)", "onnxruntime", "onnxruntime", "fp32", "plain export",
                  "torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=({0: batch},)) of the unpruned model"),
             Flow("ORT quantize_static defaults", "onnxruntime", "onnxruntime", "int8", "tool defaults",
                  "onnxruntime.quantization.quantize_static(model, out, reader)"),
             Flow("NNCF quantize defaults", "openvino", "openvino", "int8", "tool defaults",
                  "nncf.quantize(openvino.Core().read_model(model), nncf.Dataset(samples)); openvino.save_model"),
             Flow("onnx2tf + TFLiteConverter INT8 defaults", "tflite", "tflite", "int8", "tool defaults",
                  "onnx2tf.convert; TFLiteConverter: Optimize.DEFAULT, representative_dataset, TFLITE_BUILTINS_INT8, int8 I/O"),
             Flow("ModelOpt quantize defaults", "tensorrt", "onnxruntime", "int8", "tool defaults",
                  "modelopt.onnx.quantization.quantize(model, calibration_data=samples, calibration_eps=['cpu'])", predicted=True)]
    makers: list[Callable[[Path], Path]] = [
        lambda folder: _plain_export(teacher, shape, folder),
        lambda folder: _ort_defaults(exported, calibration, folder),
        lambda folder: _nncf_defaults(exported, calibration, folder),
        lambda folder: _tflite_defaults(exported, calibration, folder),
        lambda folder: _modelopt_defaults(exported, calibration, folder)]
    for index, (flow, make) in enumerate(zip(flows, makers, strict=True)):
        folder = work / f"{index}-{flow.group}-{flow.precision}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        with console.status(f"building: {flow.name}"):
            try:
                flow.engine = make(folder)
            except Exception as exc:  # noqa: BLE001 - a tool's failure is that flow's result, not the benchmark's end
                flow.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        flow.metrics["build_seconds"] = round(time.perf_counter() - started, 1)
        said = f": {flow.reason}" if flow.reason else ""
        console.print(f"{'✓' if flow.engine else '✗'} {flow.name} ({flow.metrics['build_seconds']} s){said}")
    return flows


def _plain_export(teacher: Any, shape: tuple[int, ...], folder: Path) -> Path:
    import torch

    model = load_model(teacher)
    target = folder / "model.onnx"
    with _Quiet():
        torch.onnx.export(model, (torch.zeros(2, *shape),), str(target), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    return target


def _ort_defaults(exported: Path, calibration: CalibrationSet, folder: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration.samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            sample = next(self.samples, None)
            return None if sample is None else {INPUT_NAME: sample[None]}

    target = folder / "model.int8.onnx"
    with _Quiet():
        quantize_static(str(exported), str(target), Reader())
    return target


def _nncf_defaults(exported: Path, calibration: CalibrationSet, folder: Path) -> Path:
    import nncf
    import openvino as ov

    target = folder / "model.xml"
    with _Quiet():
        quantized = nncf.quantize(ov.Core().read_model(str(exported)), nncf.Dataset([sample[None] for sample in calibration.samples]))
        ov.save_model(quantized, str(target))
    return target


def _tflite_defaults(exported: Path, calibration: CalibrationSet, folder: Path) -> Path:
    import tensorflow as tf

    from edgeship.backends.tflite import IO_FILE, channels_last, io_layout, onnx_to_saved_model
    from edgeship.tensors import Precision

    saved_model = onnx_to_saved_model(exported, folder, calibration, Precision.INT8)  # onnx2tf, kept offline

    def representative() -> Iterator[list[np.ndarray]]:
        for sample in calibration.samples:
            yield [channels_last(sample[None])]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    target = folder / "model.int8.tflite"
    with _Quiet():
        target.write_bytes(converter.convert())
    (folder / IO_FILE).write_text(json.dumps(io_layout(exported, target), indent=2))  # for edgeship's runner: layouts only
    shutil.rmtree(saved_model, ignore_errors=True)
    return target


def _modelopt_defaults(exported: Path, calibration: CalibrationSet, folder: Path) -> Path:
    from edgeship.backends.tensorrt import run_modelopt_step

    samples = folder / "calibration.npz"
    np.savez(samples, **{INPUT_NAME: calibration.samples})
    target = folder / "model.int8.onnx"
    work = Path(tempfile.mkdtemp(dir=folder, prefix=".work-"))
    code, message, _ = run_modelopt_step({"step": "quantize-defaults", "source": str(exported), "target": str(target),
                                          "calibration": str(samples)}, work)
    shutil.rmtree(work, ignore_errors=True)
    if code != 0:
        raise RuntimeError(message)
    return target


class _Quiet:
    """The tools' own chatter kept off the table (their warnings still reach stderr's log file)."""

    def __enter__(self) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")
        self._saved = os.dup(1), os.dup(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        os.close(self._saved[0])
        os.close(self._saved[1])
        self._log.close()


# --- edgeship's own engines ---------------------------------------------------------------------------------------------


def _edgeship(report: dict[str, Any]) -> list[Flow]:
    """Per backend, edgeship's INT8 engine (the same precision as the default flows) and its recommended engine."""
    rows = [EngineRow.model_validate(row) for row in report["engines"]]
    recommended = {target: choice.get("engine") for target, choice in report["recommendations"].items()}
    flows = []
    for row in rows:
        if row.key.device is not None:
            continue
        chosen = recommended.get(row.target) == row.name
        if row.backend == "tensorrt":  # no engine here: its prepared ONNX, scored on ONNX Runtime
            if row.precision == "int8" and row.prepared and row.prepared.get("path"):
                flows.append(Flow(f"edgeship {row.name} (prepared)", "tensorrt", "onnxruntime", "int8", "edgeship",
                                  row.prepared.get("tool") or "edgeship prepare", engine=Path(row.prepared["path"]), predicted=True))
            continue
        if row.status != "ok" or not (row.precision == "int8" or chosen):
            continue
        flows.append(Flow(f"edgeship {row.name}", row.backend, row.backend, row.precision, "edgeship", "edgeship run",
                          engine=Path(row.path) if row.path else None, recommended=chosen))
    return flows


# --- measurement --------------------------------------------------------------------------------------------------------


def _measure(flows: list[Flow], recipe: Recipe, eval_inputs: Path, reference: np.ndarray, labels: np.ndarray | None, rounds: int,
             work: Path, console: Console) -> None:
    cfg = recipe.validate_
    threads = recipe.threads()
    # the run's validation settings, without throughput, bare call or profile: only p50 and the outputs are compared
    base = {**settings(cfg, threads, timed=False), "input_name": INPUT_NAME, "inputs": eval_inputs, "cpus": cfg.affinity(threads)}
    ready = [flow for flow in flows if flow.engine is not None and not flow.reason]
    for flow in ready:  # scored once, each in a process of its own
        folder = work / _slug(flow.name) / "scores"
        spec = HarnessSpec(**base, backend=flow.runs_on, engine=flow.engine, outputs=folder / "logits.npy")
        with console.status(f"scoring {flow.name}"):
            try:
                measure_isolated(spec, folder)
            except HarnessError as exc:
                flow.reason = f"measurement failed: {exc}"
                continue
        logits = np.load(folder / "logits.npy")
        flow.metrics.update(scores(logits, reference, labels))
        flow.hits = logits.argmax(1) == (labels if labels is not None else reference.argmax(1))
    timed = {flow.name: flow for flow in ready if not flow.predicted and not flow.reason}
    for name, chunks in _time_together(timed, base, rounds, work / "latency", console).items():
        figures = round_figures(chunks, cfg.batch_size)
        figures["p50_ci"] = figures.pop("p50_ci95")  # this page's name for it
        timed[name].metrics.update(figures)
    for flow in ready:
        if flow.engine is not None and not flow.predicted:
            flow.metrics["size_bytes"] = _engine_bytes(flow.runs_on, flow.engine)


def _time_together(timed: dict[str, Flow], base: dict[str, Any], rounds: int, work: Path, console: Console) -> dict[str, list[np.ndarray]]:
    """Each engine's times per round, every engine loaded and taking turns; one that cannot run is left out with its
    reason, and the others are timed again without it."""
    while timed:
        specs = {name: HarnessSpec(**base, backend=flow.runs_on, engine=flow.engine) for name, flow in timed.items()}
        with console.status("loading every engine to time them together") as status:
            try:
                times, _ = time_interleaved_isolated(specs, rounds=rounds, work=work,
                                                     on_slice=lambda i, name: status.update(f"round {i + 1}/{rounds}: {name}"))
            except HarnessError as exc:
                failed = next((name for name in timed if str(exc).startswith(f"{name}: ")), None)
                if failed is None:
                    raise
                timed.pop(failed).reason = f"latency not measured: {exc}"
                shutil.rmtree(work, ignore_errors=True)
                continue
        console.print(f"{rounds} interleaved latency rounds measured")
        return times
    return {}


def _engine_bytes(backend: str, engine: Path) -> int:
    return engine.stat().st_size + sum(p.stat().st_size for p in REGISTRY[backend].companion_paths(engine) if p.is_file()
                                       and p.suffix != ".json")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


# --- results ------------------------------------------------------------------------------------------------------------


def _document(flows: list[Flow], recipe: Recipe, run_dir: Path, rounds: int, labelled: bool) -> dict[str, Any]:
    key = "top1" if labelled else "top1_agreement"
    plain = next((f for f in flows if f.origin == "plain export" and f.metrics.get("p50_ms")), None)
    rows = []
    for flow in flows:
        row: dict[str, Any] = {"name": flow.name, "backend": flow.group, "runs_on": flow.runs_on, "precision": flow.precision,
                               "origin": flow.origin, "how": flow.how, "engine": str(flow.engine) if flow.engine else None,
                               "predicted": flow.predicted, "recommended": flow.recommended, "reason": flow.reason, **flow.metrics}
        if plain is not None and flow.metrics.get("p50_ms"):  # round by round: each round's two figures were taken seconds apart
            speedup, low, high = paired_ratio(plain.metrics["round_p50_ms"], flow.metrics["round_p50_ms"])
            row["speedup_vs_plain"] = round(speedup, 3)
            row["speedup_vs_plain_ci"] = [round(low, 3), round(high, 3)]
        if plain is not None and flow.metrics.get("size_bytes"):
            row["size_vs_plain"] = round(flow.metrics["size_bytes"] / plain.metrics["size_bytes"], 4)
        if plain is not None and flow.metrics.get(key) is not None and plain.metrics.get(key) is not None:
            row["accuracy_vs_plain_points"] = round(100 * (flow.metrics[key] - plain.metrics[key]), 2)
        rows.append(row)
    return {"recipe": recipe.name, "run": str(run_dir), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": _machine(),
            "threads": recipe.threads(), "rounds": rounds, "accuracy_key": key,
            "accuracy": "top-1 on the labelled evaluation split" if labelled else "top-1 agreement with the FP32 PyTorch model",
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "rows": rows,
            "verdicts": _verdicts(rows, key, {flow.name: flow.hits for flow in flows if flow.hits is not None})}


def _verdicts(rows: list[dict[str, Any]], key: str, hits: dict[str, np.ndarray]) -> list[str]:
    """Per backend, whether edgeship's INT8 engine is at least as accurate as the tool's defaults, with the paired 95%
    interval of the difference (the two engines scored on the same samples, so only the samples they disagree on count),
    and the shipped engine against the plain export."""
    lines = []
    for default in (r for r in rows if r["origin"] == "tool defaults"):
        ours = next((r for r in rows if r["origin"] == "edgeship" and r["backend"] == default["backend"]
                     and r["precision"] == "int8"), None)
        if ours is None or ours.get(key) is None or default.get(key) is None:
            lines.append(f"{default['name']}: no comparison ({default.get('reason') or 'edgeship built no INT8 engine for it'})")
            continue
        met = ours[key] >= default[key]
        low, high = paired_interval(hits[ours["name"]], hits[default["name"]])
        lines.append(f"{display_name(default['backend'])} INT8: edgeship {100 * ours[key]:.2f}% vs defaults {100 * default[key]:.2f}% "
                     f"({100 * (ours[key] - default[key]):+.2f} pt, paired 95% interval {100 * low:+.2f} to {100 * high:+.2f} pt): "
                     + ("at least as accurate" if met else "LESS accurate" + (", within the data's noise" if low <= 0 <= high else "")))
    for ours in (r for r in rows if r["recommended"] and r.get("speedup_vs_plain")):
        change = ours.get("accuracy_vs_plain_points", 0.0)
        lines.append(f"shipped {ours['name'].removeprefix('edgeship ')}: {ours['speedup_vs_plain']:.2f}× the plain export's speed, "
                     f"accuracy {change:+.2f} pt")
    return lines


def paired_interval(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """95% interval of the accuracy difference of two classifiers scored on the same samples (normal approximation on the
    discordant pairs, as McNemar's test uses them)."""
    n = len(ours)
    better, worse = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
    difference = (better - worse) / n
    spread = 1.96 * np.sqrt(max(better + worse - (better - worse) ** 2 / n, 0.0)) / n
    return difference - spread, difference + spread


def _machine() -> str:
    return f"{describe_device()['cpu']}, {os.cpu_count()} logical CPUs"


HEADERS = ("engine", "origin", "accuracy", "p50 ms (95% CI)", "size", "speed vs plain (round by round, 95% CI)", "size vs plain",
           "Δ vs plain")


def _cells(row: dict[str, Any], key: str) -> list[str]:
    if row.get("reason") and row.get(key) is None:
        return [row["name"], row["origin"], f"— ({row['reason']})", "—", "—", "—", "—", "—"]
    accuracy = "—" if row.get(key) is None else f"{100 * row[key]:.2f}%"
    latency = "predicted, not timed" if row["predicted"] else (
        f"{row['p50_ms']:.4f} ({row['p50_ci'][0]:.4f}–{row['p50_ci'][1]:.4f})" if row.get("p50_ms") else "—")
    size = f"{row['size_bytes'] / 1024:,.0f} KiB" if row.get("size_bytes") else "—"
    name = row["name"] + (" (shipped)" if row["recommended"] else "")
    speed = (f"×{row['speedup_vs_plain']:.2f} (×{row['speedup_vs_plain_ci'][0]:.2f}–×{row['speedup_vs_plain_ci'][1]:.2f})"
             if row.get("speedup_vs_plain") else "—")
    return [name, row["origin"], accuracy, latency, size, speed,
            f"{row['size_vs_plain']:.3f}" if row.get("size_vs_plain") else "—",
            f"{row['accuracy_vs_plain_points']:+.2f} pt" if row.get("accuracy_vs_plain_points") is not None else "—"]


def _markdown(document: dict[str, Any]) -> str:
    key = document["accuracy_key"]
    lines = [f"# {document['recipe']}: edgeship vs each tool's defaults", "",
             f"{document['date']}, {document['machine']}, {document['threads']} threads, {document['rounds']} interleaved latency rounds; "
             f"accuracy: {document['accuracy']}; command: `{document['command']}`", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(row, key)) + " |" for row in document["rows"]]
    lines += ["", *(f"- {line}" for line in document["verdicts"]), ""]
    return "\n".join(lines)


def _page(document: dict[str, Any]) -> str:
    key = document["accuracy_key"]
    points = [{"name": r["name"].removeprefix("edgeship "), "backend": r["backend"], "precision": r["precision"], "accuracy": r[key],
               "p50_ms": r["p50_ms"], "p50_ci": r["p50_ci"]} for r in document["rows"] if r.get("p50_ms") and r.get(key) is not None]
    figure = plots.svg(plots.pareto_figure(points, ylabel="top-1 (%)" if key == "top1" else "top-1 agreement with FP32 PyTorch (%)"))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row, key)) + "</tr>" for row in document["rows"])
    hows = "".join(f"<li><b>{html.escape(r['name'])}</b>: <code>{html.escape(r['how'])}</code></li>" for r in document["rows"])
    verdicts = "".join(f"<li>{html.escape(line)}</li>" for line in document["verdicts"])
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>edgeship vs tool defaults</title><style>"
            "body{font:14px/1.45 system-ui,sans-serif;max-width:1180px;margin:0 auto;padding:1em 1.5em}table{border-collapse:collapse}"
            "th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}td:first-child,td:nth-child(2){text-align:left}"
            "th{background:#f4f4f4}figure svg{max-width:100%;height:auto}code{font-size:12px}</style></head><body>"
            f"<h1>{html.escape(document['recipe'])}: edgeship vs each tool's defaults</h1>"
            f"<p>{html.escape(document['date'])} · {html.escape(document['machine'])} · {document['threads']} threads · "
            f"{document['rounds']} interleaved latency rounds · accuracy: {html.escape(document['accuracy'])}</p>"
            f"<ul>{verdicts}</ul><figure>{figure}<figcaption>Every timed engine; predictions are scored, not timed.</figcaption></figure>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><h2>How each was made</h2><ul>{hows}</ul>"
            f"<p>Command: <code>{html.escape(document['command'])}</code></p></body></html>\n")


if __name__ == "__main__":
    sys.exit(main())
