"""A backend's engines timed together, for the ship decision.

Validation times each engine alone, at its own moment, and a rerun reuses a stored result's p50: on a shared machine
two moments can differ more than two engines do, and the recommendation compares exactly those p50s. So after
validation the engines of one backend are timed again together (``edgeship.interleave``): each loaded once in a
process of its own, pinned like its validation, then taking turns in ``rounds`` short slices, so that a change of speed
falls on all of them alike. Each round's figures compare with each other; the recommendation ranks the engines by
those paired rounds. Latency only: the validation results keep everything else (accuracy, throughput, memory, profile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeship.harness import HarnessSpec
from edgeship.interleave import time_together_into
from edgeship.progress import progress_bar

TOGETHER = "timed-together"  # the validate entries' prefix: timed-together/<backend>
TOGETHER_VERSION = 2  # part of the entries' key: a change in how the rounds run measures them anew. 2: loaded once, slices


def together_name(backend: str) -> str:
    return f"{TOGETHER}/{backend}"


@dataclass(frozen=True)
class EngineToTime:
    name: str  # "onnxruntime/int8"
    backend: str  # the runtime that runs it
    engine: Path
    input_name: str


def time_together(engines: Sequence[EngineToTime], settings: dict[str, Any], cpus: tuple[int, ...] | None, inputs: Path, *,
                  rounds: int, folder: Path, console: Console, timing: Callable[[], Any]) -> dict[str, Any]:
    """Each engine's latency in ``rounds`` interleaved slices (``settings``: the harness's; the validation's
    ``min_seconds`` and ``iterations`` shared out among the slices), per round and pooled; the raw times stay in
    ``folder/timings.npz``. ``timing``: a context manager held the whole time (a sweep keeps other trials off the
    machine). Raises ``HarnessError`` naming the engine that could not run."""
    if len(engines) < 2 or rounds < 1:
        raise ValueError("timing together needs two engines or more and one round or more")
    specs = {engine.name: HarnessSpec(**settings, backend=engine.backend, engine=engine.engine, input_name=engine.input_name,
                                      inputs=inputs, cpus=cpus) for engine in engines}
    with progress_bar(console) as bar, timing():
        task = bar.add_task(f"{engines[0].backend}: loading its engines to time them together", total=rounds * len(engines),
                            info=f"{rounds} rounds, each engine a slice in turn")

        done = [0]

        def on_slice(index: int, name: str) -> None:
            bar.update(task, description=f"{engines[0].backend}: engines timed together, round {index + 1}/{rounds}: {name}",
                       completed=done[0])
            done[0] += 1

        metrics = time_together_into(folder, specs, rounds=rounds, on_slice=on_slice)
        bar.update(task, completed=rounds * len(engines))
    return {"backend": engines[0].backend, **metrics}
