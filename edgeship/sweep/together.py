"""A sweep's Pareto-optimal engines timed together, on the driver's machine, after its trials and before the
confirmations.

Each trial timed its engines at its own moment, and on a cluster on its own node: a front compares p50s taken minutes
and machines apart, and on a shared machine one moment can be half again as slow as another. So every backend's
front engines are timed again together (``edgeship.interleave``): each loaded once in a process of its own, taking
turns in the base recipe's ``validate.together_rounds`` short slices, holding the machine's timing lock. Each engine's
speed is then given against the front's most accurate engine, round by round, with its interval, and an engine that is
no faster than a more accurate one, timed together, is said to be. The engines just off a front that their trial's own
timing noise may have put there (``report.contenders``) are timed with it, and one that no more accurate engine beats
together is said to join the front, and its trial is confirmed on evaluation with the fronts'. The fronts stay as the
trials drew them (the validation split chose them); these figures say which of their speed differences hold.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.console import Console

from edgeship.artifacts import ArtifactStore
from edgeship.data import model_inputs
from edgeship.errors import EdgeshipError
from edgeship.harness import HarnessError, HarnessSpec
from edgeship.interleave import time_together_into
from edgeship.measure import faster_round_by_round, paired_ratio
from edgeship.pipeline.measurers import settings
from edgeship.pipeline.run import recipe_dataset
from edgeship.recipe import Recipe, recipe_from_document
from edgeship.sweep.driver import SweepConfig
from edgeship.sweep.node import NodeLock
from edgeship.sweep.trial import TrialRecord

TOGETHER_FOLDER = "together"  # <sweep>/together/<backend>/: the raw times and each child's log


class TogetherPoint(BaseModel):
    """One front engine's figures from the rounds that timed its front together."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    trial: str
    engine: str
    accuracy: float  # on the validation split, as the front was drawn
    p50_ms: float  # the median of its round p50s
    round_p50_ms: tuple[float, ...]
    speedup: tuple[float, float, float]  # times faster than the front's most accurate engine: median round ratio, 95% interval
    no_faster_than: str | None = None  # a more accurate engine timed with it that it does not beat beyond the noise
    on_front: bool = True  # False: a contender, off the front the trials' own p50s drew


class FrontTogether(BaseModel):
    """A backend's front timed together, or why not (``reason``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: str
    rounds: int = 0
    measured_at: str = ""
    reference: str = ""  # "<trial> <engine>": the most accurate engine, every speedup's denominator
    points: tuple[TogetherPoint, ...] = ()
    reason: str = ""


def time_fronts(folder: Path, config: SweepConfig, fronts: Mapping[str, Sequence[tuple[str, str, float]]],
                records: Sequence[TrialRecord], *, console: Console, lock: NodeLock | None = None,
                contenders: Mapping[str, Sequence[tuple[str, str, float]]] | None = None) -> dict[str, FrontTogether]:
    """Each front (backend → (trial, engine, accuracy) points) with its ``contenders``, when they make two engines or more,
    timed together with the base recipe's validation settings, holding ``lock`` (the machine's timing lock) exclusively.
    A front that cannot be timed gets its reason; the sweep goes on."""
    base = _recipe(config, config.base)
    rounds = base.validate_.together_rounds
    near = {backend: list((contenders or {}).get(backend, ())) for backend in fronts}
    timed = {backend: [*points, *near[backend]] for backend, points in fronts.items() if len(points) + len(near[backend]) >= 2}
    if not timed:
        return {}
    if not rounds:
        return {backend: FrontTogether(backend=backend, reason="the recipe's validate.together_rounds is 0") for backend in timed}
    with (lock or NodeLock()).working() as held:
        try:
            inputs = _inputs(folder, config, base, records, console)
        except (EdgeshipError, OSError, ValueError) as exc:
            return {backend: FrontTogether(backend=backend, reason=f"no inputs to time them with: {exc}") for backend in timed}
        artifacts = ArtifactStore(config.store)
        out = {}
        for backend, points in timed.items():
            try:
                specs = {f"{trial} {engine}": _spec(artifacts, records, trial, engine, base, inputs) for trial, engine, _ in points}
                with console.status(f"{backend}: the front's {len(specs)} engines timed together, {rounds} rounds"), held.timing():
                    metrics = time_together_into(_empty(folder / TOGETHER_FOLDER / backend), specs, rounds=rounds)
            except (HarnessError, LookupError, ValueError) as exc:
                out[backend] = FrontTogether(backend=backend, reason=str(exc))
                continue
            accuracy = {f"{trial} {engine}": value for trial, engine, value in points}
            round_p50s = {name: tuple(figures["round_p50_ms"]) for name, figures in metrics["engines"].items()}
            out[backend] = compare_rounds(backend, rounds, accuracy, round_p50s,
                                          off_front=frozenset(f"{trial} {engine}" for trial, engine, _ in near[backend]))
    return out


def compare_rounds(backend: str, rounds: int, accuracy: Mapping[str, float], round_p50s: Mapping[str, tuple[float, ...]],
                   off_front: frozenset[str] = frozenset()) -> FrontTogether:
    """Speedups against the most accurate engine, and which engines a more accurate one matches or beats; ``off_front``:
    the contenders among them."""
    reference = max(accuracy, key=lambda name: accuracy[name])  # the first of equals: the fronts list them in order
    points = []
    for name, rounds_ in round_p50s.items():
        speedup = paired_ratio(round_p50s[reference], rounds_)
        contender = name in off_front  # joins the front only by beating every engine as accurate as it, too
        beaten_by = [other for other in round_p50s if other != name
                     and (accuracy[other] > accuracy[name] or (contender and accuracy[other] == accuracy[name]))
                     and not faster_round_by_round(rounds_, round_p50s[other])]  # as the ship decision tells engines apart
        trial, engine = name.split(" ", 1)
        points.append(TogetherPoint(trial=trial, engine=engine, accuracy=accuracy[name], p50_ms=round(float(np.median(rounds_)), 5),
                                    round_p50_ms=rounds_, speedup=tuple(round(v, 3) for v in speedup),  # type: ignore[arg-type]
                                    no_faster_than=max(beaten_by, key=lambda o: accuracy[o]) if beaten_by else None,
                                    on_front=name not in off_front))
    return FrontTogether(backend=backend, rounds=rounds, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reference=reference,
                         points=tuple(points))


def _spec(artifacts: ArtifactStore, records: Sequence[TrialRecord], trial: str, engine: str, base: Recipe, inputs: Path) -> HarnessSpec:
    record = next(r for r in records if r.name == trial)
    point = next(p for p in record.engines if p.engine == engine)
    artifact = artifacts.get(point.artifact) if point.artifact else None
    if artifact is None:
        raise LookupError(f"{trial} {engine}: its engine is not in the store {artifacts.root} any more")
    cfg, threads = base.validate_, base.threads()
    return HarnessSpec(**settings(cfg, threads, timed=False), backend=artifact.meta.get("runs_on", artifact.meta["backend"]),
                       engine=artifact.path, input_name=artifact.meta["input_name"], inputs=inputs, cpus=cfg.affinity(threads))


def _recipe(config: SweepConfig, document: Mapping[str, object]) -> Recipe:
    return recipe_from_document({**document, "store": str(config.store)}, config.recipe_path)


def _inputs(folder: Path, config: SweepConfig, base: Recipe, records: Sequence[TrialRecord], console: Console) -> Path:
    """The first batch of the evaluation split, as the trials fed their engines; the trials must share their data."""
    datas = {repr(r.recipe.get("data")) for r in records if r.recipe}
    if len(datas) > 1:
        raise ValueError("the trials' data sections differ (the space sweeps data keys), so no one feed fits every engine")
    recipe = _recipe(config, next(r.recipe for r in records if r.recipe)) if datas else base
    with console.status("loading the evaluation split to feed the fronts' engines"):
        feed = model_inputs(recipe_dataset(recipe, console).eval, recipe.data.preprocessing, "input", count=base.validate_.batch_size)
    target = folder / TOGETHER_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    if list(feed) == ["input"]:
        np.save(target / "inputs.npy", feed["input"])
        return target / "inputs.npy"
    np.savez(target / "inputs.npz", **feed)
    return target / "inputs.npz"


def _empty(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
