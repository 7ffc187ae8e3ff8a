"""Engines timed in interleaved slices, each in a process of its own that stays loaded.

Timing one engine and then another lets whatever the machine does in between decide their ratio, and on a shared
machine a process's speed can change by half for seconds at a time. Here each engine is loaded once in a child of its
own, pinned like the harness's, and warmed up; then the engines take turns, a short slice each per round, so that a
change of speed falls on all of them alike and the figures of one round compare with each other. The rounds rotate a
shuffled order, so each engine takes each place in turn.

The child, ``python -m edgeship.interleave SPEC.json``, answers ``ready`` once loaded, then for each line
``SECONDS ITERATIONS PATH`` on its stdin times that slice (a few warm-up calls first), writes the per-call times (ns,
.npy) to PATH and answers ``ok``; end of input ends it. Waiting for a line, it uses no CPU. A child that does not
answer in time (a runtime hung in a call) is killed and named, so a hung engine cannot hang the run.
"""

from __future__ import annotations

import math
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeship.harness import HarnessError, HarnessSpec, child_environment, first_rows, load_inputs, one_line, open_runner, start_child
from edgeship.measure import summarize, time_calls

SLICE_WARMUP = 5  # calls before each slice: another engine's threads may still be settling
READY_TIMEOUT_S = 900.0  # to load and warm up an engine (an OpenVINO compile or a TensorRT engine's load included)
SLICE_GRACE_S = 300.0  # a slice's answer may take this long beyond SLICE_SLACK times its seconds (its calls, one slow)
SLICE_SLACK = 10.0


class _Child:
    """One engine loaded in its child; ``time`` runs a slice there."""

    def __init__(self, name: str, process: subprocess.Popen[str], log: Path) -> None:
        self.name, self.process, self.log = name, process, log

    def time(self, seconds: float, iterations: int, path: Path) -> np.ndarray:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(f"{seconds} {iterations} {path}\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._failure() from None
        if self.reply(SLICE_GRACE_S + SLICE_SLACK * seconds, f"a slice of {seconds:.3g} s") != "ok":
            raise self._failure()
        return np.load(path)

    def reply(self, timeout_s: float, waiting_for: str) -> str:
        """The child's next line; a child silent for ``timeout_s`` is killed and named (one reply per command, so
        nothing waits in the pipe's buffer while ``select`` watches the pipe)."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            self.process.kill()
            self.process.wait()
            raise HarnessError(f"{self.name}: its timing process gave no answer within {timeout_s:.0f} s ({waiting_for}) "
                               "and was stopped: the runtime hung?")
        return self.process.stdout.readline().strip()

    def _failure(self) -> HarnessError:
        self.process.wait(timeout=30)
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return HarnessError(f"{self.name}: " + (lines[-1] if lines else f"its timing process exited with code {self.process.returncode}"))


@contextmanager
def _loaded(name: str, spec: HarnessSpec, work: Path) -> Iterator[_Child]:
    work.mkdir(parents=True, exist_ok=True)
    spec_path, log = work / "interleave-spec.json", work / "interleave-stderr.log"
    spec_path.write_text(spec.model_dump_json(indent=2))
    with log.open("w") as stderr, subprocess.Popen([sys.executable, "-m", "edgeship.interleave", str(spec_path)], stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, stderr=stderr, text=True, env=child_environment()) as process:
        child = _Child(name, process, log)
        try:
            if child.reply(READY_TIMEOUT_S, "loading the engine and its warm-up") != "ready":
                raise child._failure()
            yield child
        finally:
            if process.poll() is None:
                assert process.stdin is not None
                process.stdin.close()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def time_interleaved_isolated(specs: Mapping[str, HarnessSpec], *, rounds: int, work: Path,
                              on_slice: Callable[[int, str], None] | None = None,
                              seed: int = 0) -> tuple[dict[str, list[np.ndarray]], list[list[str]]]:
    """Each engine's per-call times (ns) in each of ``rounds`` rounds, and each round's order. Every engine is loaded
    before the first round; each slice lasts ``min_seconds / rounds`` and at least ``iterations / rounds`` calls of its
    spec. ``on_slice(round, name)`` is told before each slice. Raises ``HarnessError`` naming the engine that failed."""
    if rounds < 1 or not specs:
        raise ValueError("interleaved timing needs one round or more and one engine or more")
    names = list(specs)
    base = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    orders = [base[index % len(base):] + base[:index % len(base)] for index in range(rounds)]
    times: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with ExitStack() as stack:
        children = {name: stack.enter_context(_loaded(name, specs[name], work / _slug(name))) for name in names}
        for index, order in enumerate(orders):
            for name in order:
                spec = specs[name]
                if on_slice is not None:
                    on_slice(index, name)
                path = work / _slug(name) / f"round{index + 1}.npy"
                times[name].append(children[name].time(spec.min_seconds / rounds, math.ceil(spec.iterations / rounds), path))
                path.unlink()
    return times, orders


def time_together_into(folder: Path, specs: Mapping[str, HarnessSpec], *, rounds: int,
                       on_slice: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    """``time_interleaved_isolated`` with its record: the raw times in ``folder/timings.npz`` (``<name>@round<i>``),
    each child's spec and stderr under ``folder/children``; returns the rounds, their orders and each engine's
    ``round_figures``. Here and on a device agent alike."""
    batch_sizes = sorted({spec.batch_size for spec in specs.values()})
    if len(batch_sizes) != 1:
        raise ValueError(f"engines timed together share one batch size, not {batch_sizes}")
    times, orders = time_interleaved_isolated(specs, rounds=rounds, work=folder / "children", on_slice=on_slice)
    np.savez(folder / "timings.npz", **{f"{name}@round{i + 1}": chunk for name, chunks in times.items() for i, chunk in enumerate(chunks)})
    figures = {name: round_figures(chunks, batch_sizes[0]) for name, chunks in times.items()}
    return {"rounds": rounds, "orders": orders, "engines": figures}


def round_figures(chunks: Sequence[np.ndarray], batch_size: int) -> dict[str, Any]:
    """One engine's rounds summarised: its p50 over every call (with its bootstrap 95% interval), p99 and call count,
    and each round's p50, the figures round-by-round comparisons read."""
    stats = summarize(np.concatenate(chunks), batch_size)
    return {"p50_ms": round(stats.p50_ms, 4), "p50_ci95": [round(v, 4) for v in stats.ci95["p50_ms"]], "p99_ms": round(stats.p99_ms, 4),
            "iterations": stats.iterations, "round_p50_ms": [round(float(np.median(chunk)) / 1e6, 5) for chunk in chunks]}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def serve(spec: HarnessSpec, commands: IO[str], replies: IO[str]) -> None:
    """Load and warm the engine, then time a slice for each command line (module docstring)."""
    with open_runner(spec) as runner:
        call = runner.timed_call(first_rows(load_inputs(spec), spec.batch_size))
        for _ in range(spec.warmup):
            call()
        replies.write("ready\n")
        replies.flush()
        for line in commands:
            seconds, iterations, path = line.rstrip("\n").split(" ", 2)
            np.save(path, time_calls(call, warmup=SLICE_WARMUP, iterations=int(iterations), min_seconds=float(seconds)))
            replies.write("ok\n")
            replies.flush()


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m edgeship.interleave SPEC.json``."""
    spec = start_child(sys.argv[1:] if argv is None else argv, "edgeship.interleave SPEC.json")
    if spec is None:
        return 2
    # the replies keep the pipe to themselves: whatever else writes to standard output, a runtime's C code included,
    # goes to standard error
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(spec, sys.stdin, replies)
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as exc:
        print(f"{type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
