"""Ray Tune and Optuna for a sweep: the trials scheduled by Ray Tune, proposed by Optuna, sharing one store.

Ray Tune runs the trials (``tune.Tuner``; a trial whose node or process dies is run again elsewhere,
``FailureConfig``), Optuna's multi-objective TPE proposes them through Tune's ``OptunaSearch`` (accuracy up, p50
down, size down, of the objective's engine), and Tune's experiment folder inside the sweep folder is what
``--resume`` restores after a killed driver. The store is the only state the trials share: whatever one trial built
(the teacher, the sensitivity scan, an engine, its measurement) the others reuse, under the store's per-artifact file
locks. So the store and the sweep folder must be on a filesystem every node sees; ``check_nodes`` proves it at start.

Imported only by a sweep: ``import edgeship`` never loads Ray.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console

from edgeship.errors import EdgeshipError, RecipeError
from edgeship.recipe import recipe_from_document
from edgeship.sweep.driver import MAX_FAILURES, SweepConfig, finished_record, save_record, trial_name
from edgeship.sweep.space import SweepSpace, optuna_distributions, recipe_point
from edgeship.sweep.trial import TrialRecord, TrialRequest, outcome, run_trial

TUNE_FOLDER = "tune"
# what Optuna is told of a trial whose objective engine was not measured (a failed build or run): the trial is
# "failed" in the sweep's record, shown with its reason, and never on a front
WORST = {"accuracy": -1.0, "p50_ms": 1e9, "size_mib": 1e9}
MODES = ["max", "min", "min"]


class SweepError(EdgeshipError):
    """A sweep cannot start or go on: Ray cannot start, a node cannot see the store."""


def start_ray(address: str | None) -> None:
    """An embedded local Ray (nothing to set up), or the cluster at ``address``."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV loggers: sweep.json is the record
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # Tune's experiment state, what --resume restores, saved often
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's classic reporter, silent at verbose=0: the Recorder prints each trial
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if address is None:
            ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 (Ray raises plain RuntimeError/ConnectionError: the cause is its first line)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(f"Ray could not start{f' at {address}' if address else ''}: {text}") from None


def stop_ray() -> None:
    ray.shutdown()


def check_nodes(folder: Path, store: Path) -> None:
    """Every alive node must see the store and the sweep folder (the same files, not copies of their own): a probe
    written here is read there, by a task pinned to each node, which also imports edgeship."""
    store.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    probes = [store / f".sweep-probe-{token}", folder / f".sweep-probe-{token}"]
    for probe in probes:
        probe.write_text(token)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    try:
        seen = ray.get([_read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                        .remote([str(p) for p in probes]) for node in nodes], timeout=300)
    except ray.exceptions.RayTaskError as exc:
        raise SweepError(f"a Ray node cannot run edgeship: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        for probe in probes:
            probe.unlink(missing_ok=True)
    for node, found in zip(nodes, seen, strict=True):
        for path, text in zip(probes, found, strict=True):
            if text != token:
                raise SweepError(f"Ray node {node.get('NodeManagerAddress')} does not see {path.parent}: the store and the sweep "
                                 "folder must be on a filesystem every node mounts at the same path (NFS or similar)")


@ray.remote(num_cpus=0)
def _read(paths: list[str]) -> list[str | None]:
    import edgeship  # noqa: F401  (the node runs edgeship's trials)

    return [Path(p).read_text() if Path(p).is_file() else None for p in paths]


def tuner(folder: Path, config: SweepConfig, *, resume: bool) -> tune.Tuner:
    """The sweep's Tuner: new, or restored from the sweep folder (Tune keeps the searcher's state and which trials
    finished; unfinished and errored trials run again and reuse what the store holds)."""
    import optuna

    space = SweepSpace.model_validate(config.space)
    keys = list(space.parameters)
    template = _request(folder, config, name="", values={}, split="validation")
    trainable = tune.with_resources(tune.with_parameters(trial_function, template=template, keys=keys), {"cpu": config.cpus_per_trial})
    if resume:
        path = folder / TUNE_FOLDER
        if not tune.Tuner.can_restore(str(path)):
            raise RecipeError(f"--resume {folder}: Ray Tune's experiment folder {path} is missing or unreadable")
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    names = {f"p{i}": key for i, key in enumerate(keys)}
    distributions = {f"p{i}": d for i, d in enumerate(optuna_distributions(space).values())}
    point = recipe_point(space, recipe_from_document(config.base, config.recipe_path))
    sampler = optuna.samplers.TPESampler(seed=space.seed, multivariate=True, constant_liar=True,
                                         n_startup_trials=max(2, min(8, config.trials // 2)))
    search = OptunaSearch(distributions, metric=list(WORST), mode=MODES, sampler=sampler,
                          points_to_evaluate=[{p: point[k] for p, k in names.items()}] if point else None)
    return tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=search, num_samples=config.trials),
                      run_config=tune.RunConfig(name=TUNE_FOLDER, storage_path=str(folder), verbose=0,
                                                callbacks=[Recorder(folder, config.trials)],
                                                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)))


def confirm(folder: Path, config: SweepConfig, chosen: list[TrialRecord]) -> list[TrialRecord]:
    """The chosen trials run again with their engines scored on the evaluation split (everything else reused from the
    store), as Ray tasks like the trials: their figures on data no choice was made on. Confirmations already on record
    (a resumed sweep) are kept."""
    requests, found = [], []
    for record in chosen:
        request = _request(folder, config, name=record.name, values=record.values, split="evaluation")
        done = finished_record(folder, request, kind="confirmed")
        if done is not None:
            found.append(done)
        else:
            requests.append(request)
    task = _confirm_task.options(num_cpus=config.cpus_per_trial, max_retries=MAX_FAILURES)
    made = [TrialRecord.model_validate_json(text) for text in ray.get([task.remote(r) for r in requests])]
    for record in made:
        save_record(folder, record, kind="confirmed")
        _say(record, "on the evaluation split")
    return sorted([*found, *made], key=lambda r: r.name)


def _request(folder: Path, config: SweepConfig, *, name: str, values: dict[str, Any], split: str) -> TrialRequest:
    """A trial of this sweep; its node's timing lock is found where it runs (``node_lock=None``)."""
    return TrialRequest(name=name, values=values, base=config.base, recipe_path=config.recipe_path, store=config.store,
                        reports=folder / "runs", target=config.target, split=split, compute_threads=max(1, int(config.cpus_per_trial)))


@ray.remote
def _confirm_task(request: TrialRequest) -> str:
    return run_trial(request, host=socket.gethostname()).model_dump_json()


def trial_function(values: dict[str, Any], template: TrialRequest, keys: list[str]) -> None:
    """Ray Tune's function: one trial, run where Tune placed it; its figures go to Optuna, its record to the driver."""
    name = trial_name(tune.get_context().get_trial_dir())
    request = template.model_copy(update={"name": name, "values": {keys[int(p[1:])]: v for p, v in values.items()}})
    # a driver killed after the trial ended, before Tune saved that: the record on file is the trial's result
    record = finished_record(template.reports.parent, request, kind="trials")
    if record is None:
        record = run_trial(request, host=socket.gethostname())
    objective = record.objective if record.status == "ok" else None
    metrics = ({"accuracy": objective.accuracy, "p50_ms": objective.p50_ms, "size_mib": objective.size_mib}
               if objective is not None else dict(WORST))
    tune.report({**metrics, "record": record.model_dump_json()})


def _say(record: TrialRecord, where: str) -> None:
    mark = "[green]✓[/]" if record.status == "ok" else "[red]✗[/]"
    Console(highlight=False, soft_wrap=True).print(f"{mark} {record.name} {where}: {outcome(record)}")


class Recorder(tune.Callback):
    """Each finished trial's record written to ``trials/<name>.json`` at once, and a line printed. Kept by Tune with the
    experiment (pickled), so a resumed sweep records the same way."""

    def __init__(self, folder: Path, total: int) -> None:
        self.folder, self.total = folder, total

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        text = (trial.last_result or {}).get("record")
        if not text:
            return
        record = TrialRecord.model_validate_json(text)
        record.attempt = trial.num_failures
        if not (self.folder / "trials" / f"{record.name}.json").exists():  # kept as first written when a resume finds it
            save_record(self.folder, record)
        done = len(list((self.folder / "trials").glob("*.json")))
        lost = f" after {record.attempt} lost attempt{'s' * (record.attempt > 1)}" if record.attempt else ""
        _say(record, f"({done}/{self.total}, {record.seconds:.0f} s on {record.host}{lost})")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        Console(highlight=False, soft_wrap=True).print(
            f"[yellow]↻ {trial_name(trial.path)}: its worker was lost; Ray Tune runs it again, reusing what it finished[/yellow]")

