"""What the latency harness adds to the engine call it times.

    python benchmarks/harness_overhead.py ENGINE.onnx [--seconds 3] [--rounds 5]

Times one ONNX Runtime session three ways, in alternating rounds so background load falls on all
three alike, and prints the median per-call time of each and their ratios:

- bare: a plain loop, ``perf_counter_ns`` around ``session.run`` and nothing else;
- harness, bare call: the harness's timing loop (``edgeship.harness._timed``: ``time_calls`` with
  its progress step) around the same ``session.run``: the harness's own cost;
- harness, runner.infer: what the report's p50 is, the harness around ``Runner.infer`` (input
  checks, feed wrapping, output dict): harness plus edgeship's call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edgeship.backends import get_backend
from edgeship.harness import _timed


def bare_loop(call, seconds: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    times = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("engine", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runner = get_backend("onnxruntime").runner(args.engine, threads=args.threads)
    with runner:
        meta = runner.input_metadata()
        name, info = next(iter(meta.items()))
        sample = np.random.default_rng(0).normal(size=(1, *[d or 1 for d in info.shape[1:]])).astype(np.float32)
        session = runner._session  # the runtime object the runner wraps
        feed = {name: sample}
        calls = {
            "bare": lambda: session.run(None, feed),
            "harness, bare call": lambda: session.run(None, feed),
            "harness, runner.infer": lambda: runner.infer(feed),
        }
        pooled: dict[str, list[np.ndarray]] = {k: [] for k in calls}
        order = list(calls)
        rng = np.random.default_rng(0)
        for _ in range(args.rounds):
            rng.shuffle(order)  # no variant always first in its round
            for key in order:
                call = calls[key]
                for _ in range(20):
                    call()
                if key == "bare":
                    pooled[key].append(bare_loop(call, args.seconds / args.rounds))
                else:
                    # the harness's own timing loop, with its progress step (a clock read per call, a line per 100 ms)
                    pooled[key].append(_timed(key, call, 0, 1, args.seconds / args.rounds, lambda *_: None))
    medians = {k: float(np.median(np.concatenate(v))) / 1e3 for k, v in pooled.items()}
    counts = {k: sum(len(a) for a in v) for k, v in pooled.items()}
    for key, value in medians.items():
        print(f"{key:24s} median {value:8.2f} µs  ({counts[key]} calls)  ×{value / medians['bare']:.3f} of bare")
    print(f"harness overhead alone: {medians['harness, bare call'] - medians['bare']:+.2f} µs per call; "
          f"Runner.infer adds {medians['harness, runner.infer'] - medians['harness, bare call']:+.2f} µs")


if __name__ == "__main__":
    main()
