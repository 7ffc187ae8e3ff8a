"""``edgeship sweep``'s folder: its config (what ``--resume`` continues), the trials' records as they finish, and the
session that fills them (Ray itself is ``tuning``'s: this module never imports it)."""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from edgeship.errors import RecipeError
from edgeship.recipe import read_recipe_document, recipe_from_document
from edgeship.sweep.space import load_space
from edgeship.sweep.trial import TrialRecord, TrialRequest

CONFIG_FILE = "sweep-config.json"
MAX_FAILURES = 3  # a trial is run again this often after its node or process died


class SweepConfig(BaseModel):
    """What a sweep was started with, kept in its folder for ``--resume``."""

    model_config = ConfigDict(extra="forbid")
    id: str
    recipe_path: Path
    space_path: Path
    base: dict[str, Any]
    space: dict[str, Any]
    target: str
    trials: int
    cpus_per_trial: float
    store: Path
    created: float
    sessions: list[dict[str, Any]] = Field(default_factory=list)  # one per start or resume: when, where, wall seconds


def new_sweep(recipe_path: Path, space_path: Path, *, trials: int, out: Path, cpus_per_trial: float) -> tuple[Path, SweepConfig]:
    """Check the recipe and the space, and make the sweep's folder with its config."""
    if trials < 1:
        raise RecipeError(f"--trials: at least 1 (got {trials})")
    base = read_recipe_document(recipe_path)
    recipe = recipe_from_document(base, recipe_path)
    space = load_space(space_path, base, recipe_path)
    target = space.target(recipe)
    store = recipe.store if recipe.store.is_absolute() else (Path.cwd() / recipe.store)
    out.mkdir(parents=True, exist_ok=True)
    sweep_id = f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    folder = out / sweep_id
    folder.mkdir()
    config = SweepConfig(id=sweep_id, recipe_path=recipe_path.resolve(), space_path=space_path.resolve(), base=base,
                         space=space.model_dump(mode="json"), target=target, trials=trials, cpus_per_trial=cpus_per_trial,
                         store=store.resolve(), created=time.time())
    save_config(folder, config)
    return folder.resolve(), config


def load_config(folder: Path) -> SweepConfig:
    path = folder / CONFIG_FILE
    try:
        return SweepConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"--resume {folder}: not a sweep folder (no {CONFIG_FILE})") from None
    except ValueError as exc:
        raise RecipeError(f"{path}: not a readable sweep config: {str(exc).splitlines()[0]}") from None


def save_config(folder: Path, config: SweepConfig) -> None:
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(folder / CONFIG_FILE)


def run_sweep(folder: Path, config: SweepConfig, *, address: str | None, resume: bool, console: Console,
              choose: Callable[[list[TrialRecord]], list[TrialRecord]]) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """Start (or join) Ray, run the sweep's trials to its count (``resume``: restore Tune's experiment first), confirm
    the trials ``choose`` picks from them on the evaluation split, and return every trial's record (finished or failed)
    and the confirmations."""
    try:
        from edgeship.sweep import tuning  # Ray and Optuna load only for a sweep
    except ImportError as exc:
        raise RecipeError(f"a sweep needs Ray Tune and Optuna ({exc.name} is not installed): pip install 'edgeship[sweep]'") from None

    started = time.time()
    session = {"started": started, "seconds": None, "address": address or "local", "resumed": resume, "host": socket.gethostname()}
    config.sessions.append(session)  # saved now: a killed driver's session stays on record, its length read from its trials
    save_config(folder, config)
    tuning.start_ray(address)
    try:
        tuning.check_nodes(folder, config.store)
        grid = tuning.tuner(folder, config, resume=resume).fit()
        for result in grid:  # the recorder writes each as it finishes; a trial ended as the driver was killed may be only here
            text = (result.metrics or {}).get("record")
            record = TrialRecord.model_validate_json(text) if text else None
            if record is not None and not (folder / "trials" / f"{record.name}.json").exists():
                save_record(folder, record)
        records = collect(folder, [result.path for result in grid if result.error is not None],
                          [str(result.error) for result in grid if result.error is not None])
        chosen = choose(records)
        console.print(f"confirming the {len(chosen)} chosen trial(s) on the evaluation split: {', '.join(r.name for r in chosen)}")
        confirmed = tuning.confirm(folder, config, chosen)
    finally:
        session["seconds"] = round(time.time() - started, 1)
        save_config(folder, config)
        tuning.stop_ray()
    return records, confirmed


def save_record(folder: Path, record: TrialRecord, *, kind: str = "trials") -> None:
    trials = folder / kind
    trials.mkdir(exist_ok=True)
    tmp = trials / f".{record.name}.json.tmp"
    tmp.write_text(record.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(trials / f"{record.name}.json")


def finished_record(folder: Path, request: TrialRequest, *, kind: str) -> TrialRecord | None:
    """The trial's record (``kind``: trials, or confirmed on the evaluation split) when it already finished with these
    values: a resumed sweep whose driver was killed between a trial's end and Tune's next save of its state restarts
    that trial, which then hands back what it found."""
    path = folder / kind / f"{request.name}.json"
    if not path.is_file():
        return None
    record = TrialRecord.model_validate_json(path.read_text(encoding="utf-8"))
    return record if record.status == "ok" and record.values == request.values else None


def collect(folder: Path, lost: Sequence[str] = (), errors: Sequence[str] = ()) -> list[TrialRecord]:
    """Every trial's record: those written as trials finished, and a failed record for each trial Ray Tune gave up on
    (``lost``: their folders, ``errors``: why)."""
    records = {r.name: r for r in (TrialRecord.model_validate_json(p.read_text(encoding="utf-8"))
                                   for p in sorted((folder / "trials").glob("*.json")))}
    for path, error in zip(lost, errors, strict=True):
        name = trial_name(path)
        if name not in records:
            records[name] = TrialRecord(name=name, values={}, status="failed",
                                        reason=f"Ray Tune gave up after {MAX_FAILURES + 1} attempts: {error.strip().splitlines()[0]}")
    return [records[name] for name in sorted(records)]


def elapsed(folder: Path, config: SweepConfig) -> float:
    """The sweep's wall time over its sessions. A session whose driver was killed has no end on record: it lasted at
    least until the last trial record written in it."""
    total = 0.0
    starts = [float(s["started"]) for s in config.sessions] + [float("inf")]
    written = [p.stat().st_mtime for p in (folder / "trials").glob("*.json")]
    for session, start, following in zip(config.sessions, starts, starts[1:], strict=False):
        if session.get("seconds") is not None:
            total += float(session["seconds"])
        else:
            total += max((t - start for t in written if start <= t < following), default=0.0)
    return total


def trial_name(trial_dir: str) -> str:
    """``t003`` for Ray Tune's trial folder ``trial_function_ab12cd34_3_p0=…``: the trial's number, which names its run and
    its record (Tune's trial ids are random)."""
    found = re.search(r"_[0-9a-f]{5,}_(\d+)(?:_|$)", Path(trial_dir).name)
    return f"t{int(found.group(1)):03d}" if found else Path(trial_dir).name
