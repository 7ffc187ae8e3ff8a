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
the report recorded. ``--benchmark-app`` adds OpenVINO's ``benchmark_app`` median for each OpenVINO engine, with the
runner's settings.
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


def measure(row: dict[str, Any], *, threads: int, seconds: float, rounds: int, rng: np.random.Generator) -> dict[str, float]:
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
        pooled: dict[str, list[np.ndarray]] = {key: [] for key in calls}
        order = list(calls)
        for _ in range(rounds):
            rng.shuffle(order)
            for key in order:
                pooled[key].append(calls[key]())
    return {key: float(np.median(np.concatenate(parts))) / 1e3 for key, parts in pooled.items()}


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
    print(header + ("  benchmark_app  report/tool" if args.benchmark_app else ""))
    for row in report["engines"]:
        if row["status"] != "ok" or row["backend"] not in BACKENDS or row["key"]["device"] is not None:
            continue
        got = measure(row, threads=threads, seconds=args.seconds, rounds=args.rounds, rng=rng)
        overhead = got["harness"] - got["runtime"]
        line = (f"{row['name']:18} {got['runtime']:8.1f} {got['infer']:8.1f} {got['harness']:8.1f} {overhead:9.1f} "
                f"{overhead / got['runtime']:6.1%}  {1e3 * row['latency']['p50_ms']:10.1f} "
                f"{row['call_overhead_us'] if row.get('call_overhead_us') is not None else float('nan'):10.1f}")
        if args.benchmark_app and row["backend"] == "openvino":
            tool = benchmark_app(Path(row["path"]), threads=threads, batch_size=1, input_shape=tuple(row_input_shape(args.run, row)),
                                 input_name="input", seconds=5.0)
            median = 1e3 * tool["median_ms"]
            line += f"  {median:13.1f}  {1e3 * row['latency']['p50_ms'] / median:11.3f}"
        print(line, flush=True)


def row_input_shape(run: Path, row: dict[str, Any]) -> list[int]:
    """The engine's input shape without the batch, from the run's export record in its manifest."""
    manifest = json.loads((run / "manifest.json").read_text())
    export = next(e for e in manifest["entries"] if e["stage"] == "export" and e["status"] == "ok")
    artifact = json.loads((Path(export["path"]).parent / "artifact.json").read_text())
    return list(artifact["meta"]["input_shape"])


if __name__ == "__main__":
    main()
