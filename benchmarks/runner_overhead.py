"""What each backend's runner adds to its runtime's own call, on a run's engines.

    python benchmarks/runner_overhead.py reports/<run> [--seconds 0.2] [--rounds 20] [--threads 2] [--benchmark-app]

For every engine the run built and measured on this host, times three calls in one process, in shuffled alternating
rounds so background load falls on all alike, and prints the median per call of each:

- runtime: the runtime's own call on an input set once (``Runner.bare_call``: ``session.run``, OpenVINO's C API
  ``ov_infer_request_infer``, LiteRT's ``invoke``), what a runtime's benchmark tool times;
- infer: ``Runner.infer`` in a plain loop (edgeship's call: the feed check, layout and (de)quantization, outputs copied);
- harness: the validation harness's own loop around the call the report's p50 times (``Runner.timed_call``: the
  feed checked once, outputs left where the runtime put them).

``overhead`` is harness − runtime, in µs and as a share of the runtime call; beside it the p50 and the per-call overhead
the report recorded. ``--benchmark-app`` adds OpenVINO's ``benchmark_app`` (one second a round, with the runner's settings)
to each OpenVINO engine's shuffled rounds: its median, and ``harness/tool``, the median over rounds of the harness's
round median over the tool's, which is what the report's cross-check gates on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.backends import get_backend
from edgeship.backends.openvino import benchmark_app
from edgeship.harness import _timed
from edgeship.measure import time_calls

BACKENDS = ("onnxruntime", "openvino", "tflite")


def measure(row: dict[str, Any], *, threads: int, seconds: float, rounds: int, rng: np.random.Generator,
            tool_shape: tuple[int, ...] | None = None) -> dict[str, float]:
    """Median µs per call of each call over the rounds; with ``tool_shape``, ``benchmark_app`` (one second a round) in the
    same shuffled rounds, and ``harness/tool``: the median over rounds of the harness's round median over the tool's."""
    runner = get_backend(row["backend"]).runner(Path(row["path"]), threads=threads)
    with runner:
        name, meta = next(iter(runner.input_metadata().items()))
        sample = rng.normal(size=(1, *[d or 1 for d in meta.shape[1:]])).astype(np.float32)
        feed = {name: sample}
        bare = runner.bare_call(feed)
        harness_call = runner.timed_call(feed)
        assert bare is not None
        calls = {"runtime": lambda: time_calls(bare, warmup=0, iterations=1, min_seconds=seconds),
                 "infer": lambda: time_calls(lambda: runner.infer(feed), warmup=0, iterations=1, min_seconds=seconds),
                 "harness": lambda: _timed("harness", harness_call, 0, 1, seconds, lambda *_: None)}
        for run in calls.values():  # warm-up
            run()
        if tool_shape is not None:
            calls["benchmark_app"] = lambda: np.array([1e6 * benchmark_app(Path(row["path"]), threads=threads, batch_size=1,
                                                                           input_shape=tool_shape, input_name=name,
                                                                           seconds=1.0)["median_ms"]])
        pooled: dict[str, list[np.ndarray]] = {key: [] for key in calls}
        order = list(calls)
        for _ in range(rounds):
            rng.shuffle(order)
            for key in order:
                pooled[key].append(calls[key]())
    got = {key: float(np.median(np.concatenate(parts))) / 1e3 for key, parts in pooled.items()}
    if tool_shape is not None:
        got["harness/tool"] = float(np.median([np.median(ours) / tool[0] for ours, tool in zip(pooled["harness"], pooled["benchmark_app"],
                                                                                              strict=True)]))
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (reports/<run>) whose report.json lists the engines")
    parser.add_argument("--seconds", type=float, default=0.2, help="per call and round")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="default: the run's")
    parser.add_argument("--benchmark-app", action="store_true", help="OpenVINO's own tool on each OpenVINO engine too")
    args = parser.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    threads = args.threads or report["threads"] or 1
    rng = np.random.default_rng(0)
    print(f"{report['run_id']}: {threads} threads, {args.rounds} shuffled rounds of {args.seconds} s per call; medians in µs")
    header = f"{'engine':18} {'runtime':>8} {'infer':>8} {'harness':>8} {'overhead':>9} {'share':>6}  {'report p50':>10} {'report ovh':>10}"
    print(header + ("  benchmark_app  harness/tool" if args.benchmark_app else ""))
    for row in report["engines"]:
        if row["status"] != "ok" or row["backend"] not in BACKENDS or row["key"]["device"] is not None:
            continue
        openvino_tool = args.benchmark_app and row["backend"] == "openvino"
        got = measure(row, threads=threads, seconds=args.seconds, rounds=args.rounds, rng=rng,
                      tool_shape=tuple(row_input_shape(args.run, row)) if openvino_tool else None)
        overhead = got["harness"] - got["runtime"]
        line = (f"{row['name']:18} {got['runtime']:8.1f} {got['infer']:8.1f} {got['harness']:8.1f} {overhead:9.1f} "
                f"{overhead / got['runtime']:6.1%}  {1e3 * row['latency']['p50_ms']:10.1f} "
                f"{row['call_overhead_us'] if row.get('call_overhead_us') is not None else float('nan'):10.1f}")
        if openvino_tool:
            line += f"  {got['benchmark_app']:13.1f}  {got['harness/tool']:12.3f}"
        print(line, flush=True)


def row_input_shape(run: Path, row: dict[str, Any]) -> list[int]:
    """The engine's input shape without the batch, from the run's export record in its manifest."""
    manifest = json.loads((run / "manifest.json").read_text())
    export = next(e for e in manifest["entries"] if e["stage"] == "export" and e["status"] == "ok")
    artifact = json.loads((Path(export["path"]).parent / "artifact.json").read_text())
    return list(artifact["meta"]["input_shape"])


if __name__ == "__main__":
    main()
