"""What the device loader adds to its runtime's own call, and what it costs to import.

    python benchmarks/loader_overhead.py RELEASE_FOLDER [--key PUB] [--rounds 20] [--seconds 0.2]

Times, in one process and in shuffled alternating rounds, the runtime's own call on one golden input set once
(``runner.bare``), the loader's engine call (``Model.run`` on the preprocessed input) and ``Model.predict`` on the raw
image (preprocessing and softmax included), and prints the medians and the overhead of ``run`` over the bare call.
Run it in the device's own environment (a venv with edgeship-deploy and one runtime) for the import time to mean
anything.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def loop(call, seconds: float) -> list[int]:  # type: ignore[no-untyped-def]
    times = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release", type=Path)
    parser.add_argument("--key", type=Path, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.2)
    args = parser.parse_args()
    imported = subprocess.run([sys.executable, "-X", "importtime", "-c", "import edgeship_deploy"], capture_output=True, text=True)
    total = sum(int(line.split("|")[1]) for line in imported.stderr.splitlines()[1:] if line.count("|") == 2 and line.split("|")[2].strip()
                and not line.split("|")[2].startswith("  "))
    from edgeship_deploy import load, preprocess

    model = load(args.release, args.key, allow_unsigned=not args.key)
    with np.load(args.release / "probe.npz") as probe:
        image = probe["images"][:1]
    x = preprocess(image, model.document["preprocessing"])
    bare = model.runner.bare(x)
    calls = {"runtime call": bare, "loader run": lambda: model.run(x), "predict (with preprocessing)": lambda: model.predict(image)}
    pooled: dict[str, list[int]] = {name: [] for name in calls}
    order, rng = list(calls), np.random.default_rng(0)
    for call in calls.values():
        loop(call, 0.1)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            pooled[name] += loop(calls[name], args.seconds)
    medians = {name: float(np.median(times)) / 1e3 for name, times in pooled.items()}
    print(f"{args.release.name}: import edgeship_deploy {total / 1e3:.0f} ms (its own modules, -X importtime)")
    for name, value in medians.items():
        print(f"  {name:30} {value:8.1f} µs")
    overhead = medians["loader run"] - medians["runtime call"]
    print(f"  loader overhead {overhead:.1f} µs ({overhead / medians['runtime call']:.1%} of the runtime call)")


if __name__ == "__main__":
    main()
