"""A backend's engines timed together, for the ship decision.

Validation times each engine alone, at its own moment, and a rerun reuses a stored result's p50: on a shared machine
two moments can differ more than two engines do, and the recommendation compares exactly those p50s. So after
validation the engines of one backend are timed again in ``rounds`` rounds, each engine in a process of its own,
pinned like its validation, in a new shuffled order each round, so that a change of background load falls on all of
them alike. Their pooled p50s, with bootstrap intervals, are what the recommendation ranks. Latency only: the
validation results keep everything else (accuracy, throughput, memory, profile).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgeship.harness import HarnessSpec, measure_isolated
from edgeship.measure import summarize
from edgeship.progress import progress_bar

TOGETHER = "timed-together"  # the validate entries' prefix: timed-together/<backend>
TOGETHER_VERSION = 1  # part of the entries' key: a change in how the rounds run measures them anew


def together_name(backend: str) -> str:
    return f"{TOGETHER}/{backend}"


@dataclass(frozen=True)
class EngineToTime:
    name: str  # "onnxruntime/int8"
    backend: str  # the runtime that runs it
    engine: Path
    input_name: str


def time_together(engines: Sequence[EngineToTime], settings: dict[str, Any], cpus: tuple[int, ...] | None, inputs: Path, *,
                  rounds: int, folder: Path, console: Console, timing: Callable[[], Any], seed: int = 0) -> dict[str, Any]:
    """Each engine's latency in ``rounds`` shuffled rounds (``settings``: the harness's, untimed extras off), pooled per
    engine; the raw times stay in ``folder/timings.npz``. ``timing``: a context manager held while an engine is timed (a
    sweep keeps other trials off the machine). Raises ``HarnessError`` with the engine's name when one cannot run."""
    if len(engines) < 2 or rounds < 1:
        raise ValueError("timing together needs two engines or more and one round or more")
    rng = np.random.default_rng(seed)
    times: dict[str, list[np.ndarray]] = {engine.name: [] for engine in engines}
    orders: list[list[str]] = []
    with progress_bar(console) as bar:
        task = bar.add_task(f"{engines[0].backend}: engines timed together", total=rounds * len(engines),
                            info=f"{rounds} rounds, a shuffled order each")
        for index in range(rounds):
            order = [engines[i] for i in rng.permutation(len(engines))]
            orders.append([engine.name for engine in order])
            for engine in order:
                work = folder / f"{_slug(engine.name)}-round{index + 1}"
                work.mkdir()
                spec = HarnessSpec(**settings, backend=engine.backend, engine=engine.engine, input_name=engine.input_name, inputs=inputs,
                                   timings=work / "timings.npz", cpus=cpus)
                bar.update(task, description=f"{engine.backend}: engines timed together, round {index + 1}/{rounds}: {engine.name}")
                with timing():
                    measure_isolated(spec, work)
                with np.load(work / "timings.npz") as raw:
                    times[engine.name].append(raw["latency"])
                for path in work.iterdir():  # the pooled times are kept below; a round's own files are not
                    path.unlink()
                work.rmdir()
                bar.advance(task)
    np.savez(folder / "timings.npz", **{f"{name}@round{i + 1}": chunk for name, chunks in times.items() for i, chunk in enumerate(chunks)})
    figures = {}
    for name, chunks in times.items():
        stats = summarize(np.concatenate(chunks), settings["batch_size"])
        figures[name] = {"p50_ms": round(stats.p50_ms, 4), "p50_ci95": [round(v, 4) for v in stats.ci95["p50_ms"]],
                         "p99_ms": round(stats.p99_ms, 4), "iterations": stats.iterations,
                         "round_p50_ms": [round(float(np.median(chunk)) / 1e6, 4) for chunk in chunks]}
    return {"backend": engines[0].backend, "rounds": rounds, "orders": orders, "engines": figures}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
