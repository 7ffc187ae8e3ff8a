"""What a sweep hands over: ``sweep.json``, ``sweep.html`` (a Pareto chart per backend, every trial with a link to its
run's report) and the Pareto-optimal trials' recipes as YAML files a user can run."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from edgeship.recipe import recipe_from_document
from edgeship.render import html, plots
from edgeship.sweep.driver import SweepConfig, elapsed
from edgeship.sweep.space import SweepSpace, recipe_point
from edgeship.sweep.together import FrontTogether, TogetherPoint
from edgeship.sweep.trial import EnginePoint, TrialRecord

SWEEP_SCHEMA_VERSION = 1
SECTIONS = ("summary", "fronts", "together", "confirmed", "versus", "trials")
TIMING = ("Each engine was timed holding the machine's timing lock ({lock}) exclusively: no other trial on the same machine "
          "trained, built or converted while it was timed (the others paused at their next wait or finished their step first), "
          "and trials on other machines do not share its CPUs. Ray's own processes (raylet, GCS, the driver) were not paused.")
MAX_TIMED_TOGETHER = 8  # engines per backend timed together after the trials: the front, then its nearest contenders
LABELS = {"top1": ("top-1 (%)", 100.0), "top1_agreement": ("top-1 agreement with FP32 (%)", 100.0),
          "min_cosine": ("output cosine with FP32 (worst output)", 1.0)}


class FrontPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    trial: str
    engine: str
    same_in: list[str] = []  # other trials whose values built this very engine (one store artifact, measured once)
    accuracy: float
    p50_ms: float
    size_mib: float


class Versus(BaseModel):
    """The recipe's own engine (its values, the sweep's first trial) and the trials' engines of its backend that beat it:
    at least as accurate and as fast, and better in one (medians, on this machine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    engine: str
    recipe: FrontPoint
    dominated_by: list[FrontPoint]


class SweepReport(BaseModel):
    """Trials are scored on the validation split, which chooses the fronts; the chosen trials and the recipe's own are
    scored again on the evaluation split (``confirmed``), the figures to quote."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SWEEP_SCHEMA_VERSION
    id: str
    recipe: str
    space: dict[str, Any]
    objective: str
    accuracy_key: str | None
    trials_requested: int
    trials: list[TrialRecord]
    wall_seconds: float
    sessions: list[dict[str, Any]]
    reuse: dict[str, Any]
    timing: str
    fronts: dict[str, list[FrontPoint]]  # per backend: the Pareto-optimal engines (accuracy up, p50 down, size down), on validation
    contenders: dict[str, list[FrontPoint]] = Field(default_factory=dict)  # per backend: off the front within their trial's noise
    fronts_together: dict[str, FrontTogether] = Field(default_factory=dict)  # per backend: its front (and contenders) timed together
    recipe_trial: str | None
    versus_recipe: list[Versus]  # on the validation split, as the sweep chose
    confirmed: list[TrialRecord]  # the chosen trials and the recipe's, scored on the evaluation split
    versus_recipe_confirmed: list[Versus]  # the same comparison among the confirmed trials, on the evaluation split
    pareto_recipes: dict[str, str]  # trial -> its YAML file, relative to the sweep folder


def build_report(folder: Path, config: SweepConfig, records: Sequence[TrialRecord], confirmed: Sequence[TrialRecord], *,
                 lock: str) -> SweepReport:
    ok = [r for r in records if r.status == "ok"]
    key = next((r.accuracy_key for r in ok if r.accuracy_key), None)
    shared = sharing(ok)
    fronts = {backend: [_front_point(r, p, shared) for r, p in pareto(points)] for backend, points in by_backend(ok).items()}
    recipe_trial = _recipe_trial(config, ok)
    confirmed_ok = [r for r in confirmed if r.status == "ok"]
    confirmed_recipe = next((r for r in confirmed_ok if recipe_trial and r.name == recipe_trial.name), None)
    optimal = sorted({trial for points in fronts.values() for trial in (p.trial for p in points)})
    near = {backend: [_front_point(r, p, shared) for r, p in found] for backend, found in contenders(ok).items() if found}
    return SweepReport(id=config.id, recipe=str(config.recipe_path), space=config.space, objective=config.target, accuracy_key=key,
                       trials_requested=config.trials, trials=list(records), wall_seconds=round(elapsed(folder, config), 1),
                       sessions=config.sessions, reuse=reuse(records), timing=TIMING.format(lock=lock), fronts=fronts, contenders=near,
                       recipe_trial=recipe_trial.name if recipe_trial else None,
                       versus_recipe=_versus(recipe_trial, ok) if recipe_trial else [], confirmed=list(confirmed),
                       versus_recipe_confirmed=_versus(confirmed_recipe, confirmed_ok) if confirmed_recipe else [],
                       pareto_recipes={t: f"pareto/{t}.yaml" for t in optimal})


def chosen(config: SweepConfig, records: Sequence[TrialRecord], also: Sequence[str] = ()) -> list[TrialRecord]:
    """The trials to confirm on the evaluation split: every Pareto-optimal one of any backend, the recipe's own, and
    ``also`` (the trials of contenders that joined a front timed together)."""
    ok = [r for r in records if r.status == "ok"]
    names = {r.name for points in by_backend(ok).values() for r, _ in pareto(points)} | set(also)
    recipe_trial = _recipe_trial(config, ok)
    if recipe_trial is not None:
        names.add(recipe_trial.name)
    return [r for r in ok if r.name in names]


def _recipe_trial(config: SweepConfig, records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The first finished trial that ran the recipe's own values, when the space holds them."""
    space = SweepSpace.model_validate(config.space)
    values = recipe_point(space, recipe_from_document(config.base, config.recipe_path))
    return next((r for r in records if values is not None and r.values == values), None)


def by_backend(records: Sequence[TrialRecord]) -> dict[str, list[tuple[TrialRecord, EnginePoint]]]:
    """Every measured engine of every trial, per backend, once: an engine several trials share (the same store
    artifact, e.g. the FP32 engine of trials that differ only in INT8 settings) is the first such trial's point."""
    out: dict[str, list[tuple[TrialRecord, EnginePoint]]] = defaultdict(list)
    seen: set[str] = set()
    for record in records:
        for point in record.engines:
            if point.measured and point.status == "ok" and (point.artifact is None or point.artifact not in seen):
                out[point.backend].append((record, point))
                seen.add(point.artifact or "")
    return dict(sorted(out.items()))


def sharing(records: Sequence[TrialRecord]) -> dict[str, list[str]]:
    """Engine artifact → the trials that have it, in order."""
    out: dict[str, list[str]] = defaultdict(list)
    for record in records:
        for point in record.engines:
            if point.artifact:
                out[point.artifact].append(record.name)
    return out


def dominates(a: EnginePoint, b: EnginePoint, *, size: bool = True) -> bool:
    """``a`` is at least as accurate, fast (and small) as ``b``, and better in one."""
    assert a.accuracy is not None and b.accuracy is not None and a.p50_ms is not None and b.p50_ms is not None
    pairs = [(a.accuracy, b.accuracy), (-a.p50_ms, -b.p50_ms)]
    if size:
        assert a.size_mib is not None and b.size_mib is not None
        pairs.append((-a.size_mib, -b.size_mib))
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto(points: Sequence[tuple[TrialRecord, EnginePoint]]) -> list[tuple[TrialRecord, EnginePoint]]:
    """The points no other point dominates, fastest first."""
    front = [(r, p) for r, p in points if not any(dominates(q, p) for _, q in points)]
    return sorted(front, key=lambda rp: (rp[1].p50_ms, rp[0].name))


def contenders(records: Sequence[TrialRecord]) -> dict[str, list[tuple[TrialRecord, EnginePoint]]]:
    """Per backend, the engines off the front that their trial's own timing may have put there: at the lower end of its
    p50 interval, no engine at least as accurate is faster. The sweep times them with the front, so that one a slow
    moment pushed off can come back. The most accurate first, at most ``MAX_TIMED_TOGETHER`` engines with the front."""
    out = {}
    for backend, points in by_backend(records).items():
        front = pareto(points)
        on_front = {id(p) for _, p in front}
        near = []
        for record, point in points:
            if id(point) in on_front:
                continue
            assert point.accuracy is not None and point.p50_ms is not None
            best_case = point.p50_ci[0] if point.p50_ci else point.p50_ms
            if not any(q is not point and q.accuracy is not None and q.p50_ms is not None and q.accuracy >= point.accuracy
                       and q.p50_ms < best_case for _, q in points):
                near.append((record, point))
        near.sort(key=lambda rp: (-(rp[1].accuracy or 0.0), rp[1].p50_ms or 0.0, rp[0].name))
        out[backend] = near[:max(0, MAX_TIMED_TOGETHER - len(front))]
    return out


def reuse(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """What the shared store saved: per stage, artifacts built and reused, the seconds building took and the seconds
    reuse saved (an artifact reused by a trial had been built by another trial of this sweep in ``seconds``; one built
    before the sweep counts as reused from before)."""
    built: dict[str, float] = {}
    for record in records:
        for work in record.work:
            if not work.reused:
                built.setdefault(work.artifact, work.seconds)
    stages: dict[str, dict[str, float]] = defaultdict(lambda: {"built": 0, "reused": 0, "seconds_building": 0.0,
                                                               "seconds_saved": 0.0, "reused_from_before": 0})
    for record in records:
        for work in record.work:
            row = stages[work.stage]
            if work.reused:
                row["reused"] += 1
                if work.artifact in built:
                    row["seconds_saved"] += built[work.artifact]
                else:
                    row["reused_from_before"] += 1
            else:
                row["built"] += 1
                row["seconds_building"] += work.seconds
    teacher = stages.get("model", {})
    return {"stages": {k: {n: round(v, 1) if isinstance(v, float) else v for n, v in row.items()} for k, row in stages.items()},
            "models_trained": int(teacher.get("built", 0)),
            "seconds_building": round(sum(r["seconds_building"] for r in stages.values()), 1),
            "seconds_saved": round(sum(r["seconds_saved"] for r in stages.values()), 1),
            "trial_seconds": round(sum(r.seconds for r in records), 1)}


def _front_point(record: TrialRecord, point: EnginePoint, shared: Mapping[str, list[str]] | None = None) -> FrontPoint:
    assert point.accuracy is not None and point.p50_ms is not None and point.size_mib is not None
    same = [t for t in (shared or {}).get(point.artifact or "", []) if t != record.name]
    return FrontPoint(trial=record.name, engine=point.engine, same_in=same, accuracy=point.accuracy, p50_ms=point.p50_ms,
                      size_mib=point.size_mib)


def _versus(recipe_trial: TrialRecord, records: Sequence[TrialRecord]) -> list[Versus]:
    out = []
    for own in recipe_trial.engines:
        if not (own.measured and own.status == "ok"):
            continue
        better = [(r, p) for r, p in by_backend(records).get(own.backend, []) if r.name != recipe_trial.name
                  and p.artifact != own.artifact and dominates(p, own, size=False)]
        out.append(Versus(engine=own.engine, recipe=_front_point(recipe_trial, own),
                          dominated_by=[_front_point(r, p) for r, p in sorted(better, key=lambda rp: rp[1].p50_ms or 0.0)]))
    return out


def write_outputs(folder: Path, report: SweepReport) -> None:
    """sweep.json, the Pareto-optimal recipes and sweep.html, each written whole and renamed into place."""
    records = {r.name: r for r in report.trials}
    (folder / "pareto").mkdir(exist_ok=True)
    for trial, relative in report.pareto_recipes.items():
        _atomic(folder / relative, _recipe_yaml(records[trial], report))
    _atomic(folder / "sweep.json", report.model_dump_json(indent=2))
    _atomic(folder / "sweep.html", render_html(folder, report))


def timed_points(records: Sequence[TrialRecord]) -> tuple[dict[str, list[tuple[str, str, float]]], dict[str, list[tuple[str, str, float]]]]:
    """Per backend, the (trial, engine, accuracy) of the front's engines and of its contenders, as ``time_fronts`` takes them."""
    ok = [r for r in records if r.status == "ok"]

    def points(found: Sequence[tuple[TrialRecord, EnginePoint]]) -> list[tuple[str, str, float]]:
        return [(r.name, p.engine, p.accuracy) for r, p in found if p.accuracy is not None]

    near = contenders(ok)
    return ({backend: points(pareto(found)) for backend, found in by_backend(ok).items()},
            {backend: points(found) for backend, found in near.items()})


def joined(fronts_together: Mapping[str, FrontTogether]) -> list[tuple[str, str]]:
    """(trial, engine) of each contender that joined its front when timed together."""
    return [(p.trial, p.engine) for front in fronts_together.values() for p in front.points
            if not p.on_front and p.no_faster_than is None]


def add_joined_recipes(report: SweepReport) -> None:
    """The recipes of the trials whose contender joined a front join the Pareto-optimal ones, to run again."""
    for trial, _ in joined(report.fronts_together):
        report.pareto_recipes.setdefault(trial, f"pareto/{trial}.yaml")


def _recipe_yaml(record: TrialRecord, report: SweepReport) -> str:
    places = [f"{p.engine} ({p.accuracy:.4f}, p50 {p.p50_ms:.3f} ms, {p.size_mib:.2f} MiB)"
              for points in report.fronts.values() for p in points if p.trial == record.name]
    came_back = set(joined(report.fronts_together))
    places += [f"{p.engine} ({p.accuracy:.4f}, p50 {p.p50_ms:.3f} ms in its trial; off the front, it joined it timed together)"
               for points in report.contenders.values() for p in points if p.trial == record.name and (p.trial, p.engine) in came_back]
    values = ", ".join(f"{k}={v}" for k, v in record.values.items())
    head = (f"# Sweep {report.id}, trial {record.name}: {values}\n# Pareto-optimal: " + "; ".join(places) +
            "\n# Measured in the sweep on its machine. `edgeship run` this file to rebuild and measure it; the store reuses what "
            "the sweep built.\n")
    document = {**record.recipe, "name": f"{record.recipe.get('name', 'recipe')}-{record.name}"}
    return head + yaml.safe_dump(document, sort_keys=False)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# -- the page ------------------------------------------------------------------------------------------------------

CSS = html.CSS + ".ok{color:#16794a;font-weight:600}.failed{color:#b3261e;font-weight:600}\n"


def render_html(folder: Path, report: SweepReport) -> str:
    ok = [t for t in report.trials if t.status == "ok"]
    title = f"edgeship sweep · {report.id}"
    head = (f"<h1>{escape(title)}</h1><p class=muted>recipe {escape(report.recipe)} · objective {escape(report.objective)} · "
            f"{len(report.trials)} of {report.trials_requested} trials recorded, {len(ok)} ok · wall {report.wall_seconds:.0f} s "
            f"over {len(report.sessions)} session(s)</p>")
    sections = [_summary(report), _fronts(report), _together(report), _confirmed(report), _versus_section(report),
                _trials(folder, report)]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n{head}\n" + "\n".join(sections) + "\n</body></html>\n")


def _summary(report: SweepReport) -> str:
    reuse_ = report.reuse
    rows = [[escape(stage), str(r["built"]), str(r["reused"]), f"{r['seconds_building']:.0f}", f"{r['seconds_saved']:.0f}",
             str(r["reused_from_before"])] for stage, r in reuse_["stages"].items()]
    text = (f"<p>Models trained (stage <code>model</code>): <b>{reuse_['models_trained']}</b>. Building took "
            f"{reuse_['seconds_building']:.0f} s across trials; reusing what another trial of this sweep had built saved "
            f"{reuse_['seconds_saved']:.0f} s; the trials ran {reuse_['trial_seconds']:.0f} s in all.</p>"
            f"<p><b>Timing.</b> {escape(report.timing)}</p>")
    return html.section("summary", "Summary", text + html.table(["stage", "built", "reused", "s building", "s saved by reuse",
                                                         "reused from before the sweep"], rows))


def _fronts(report: SweepReport) -> str:
    records = [t for t in report.trials if t.status == "ok"]
    if not records:
        return html.section("fronts", "Pareto fronts", "<p>No trial finished with measured engines.</p>")
    ylabel, scale = LABELS.get(report.accuracy_key or "", ("accuracy", 1.0))
    figures = []
    for backend, points in by_backend(records).items():
        optimal = {(p.trial, p.engine) for p in report.fronts.get(backend, [])}
        data = [{"trial": r.name, "precision": p.precision, "accuracy": p.accuracy, "p50_ms": p.p50_ms, "size_mib": p.size_mib,
                 "optimal": (r.name, p.engine) in optimal, "recipe": r.name == report.recipe_trial} for r, p in points]
        names = ", ".join(f"{p.trial} {p.engine}" + (f" (= {', '.join(p.same_in)})" if p.same_in else "")
                          for p in report.fronts.get(backend, []))
        figures.append(html.figure(lambda data=data, backend=backend: plots.sweep_figure(data, backend, ylabel=ylabel, scale=scale),
                                   f"{backend}: Pareto-optimal (accuracy up, p50 down, size down): {names}"))
    links = ", ".join(f"<a href='{escape(path)}'>{escape(trial)}</a>" for trial, path in report.pareto_recipes.items())
    return html.section("fronts", "Pareto fronts", "\n".join(figures) + f"<p>Recipes of the Pareto-optimal trials: {links}</p>")


def _together(report: SweepReport) -> str:
    """Each front's engines, and its contenders, timed together: which of the fronts' speed differences hold."""
    intro = ("<p>Each trial timed its engines at its own moment (on a cluster, on its own node), so the fronts compare p50s "
             "taken apart. Afterwards each front's engines were timed again together on the driver's machine, holding its timing "
             "lock: each loaded once in a process of its own, taking turns in short slices, so that a change of the machine's "
             "speed falls on all of them alike. With them went the contenders: engines off the front that their own trial's "
             "timing may have put there (at the lower end of their p50 interval, no engine at least as accurate was faster). "
             "Speed is against the most accurate engine, round by round, with its 95% interval.</p>")
    timed = [backend for backend, points in report.fronts.items() if len(points) + len(report.contenders.get(backend, [])) >= 2]
    if not timed:
        return html.section("together", "Fronts timed together", intro + "<p>No front has two engines or more, with its "
                                                                          "contenders.</p>")
    parts = [intro]
    for backend in timed:
        front = report.fronts_together.get(backend)
        if front is None:
            parts.append(f"<p><b>{escape(backend)}</b>: not timed together.</p>")
        elif front.reason:
            parts.append(f"<p><b>{escape(backend)}</b>: not timed together: {escape(front.reason)}.</p>")
        else:
            parts.append(_together_figure(report, backend, front) + _together_table(backend, front))
    return html.section("together", "Fronts timed together", "\n".join(parts))


def _together_figure(report: SweepReport, backend: str, front: FrontTogether) -> str:
    """Where each engine moved from its trial's p50 to the rounds taken together: the fronts' speed differences that hold
    are the ones that survive the move, and a contender that no more accurate engine beats joins the front."""
    trial_p50 = {(p.trial, p.engine): p.p50_ms for p in [*report.fronts.get(backend, []), *report.contenders.get(backend, [])]}
    data = [{"label": f"{p.trial} {p.engine.split('/')[-1]}", "precision": p.engine.split("/")[-1], "accuracy": p.accuracy,
             "trial_p50_ms": trial_p50.get((p.trial, p.engine), p.p50_ms), "p50_ms": p.p50_ms,
             "low_ms": min(p.round_p50_ms), "high_ms": max(p.round_p50_ms), "beaten": p.no_faster_than is not None,
             "on_front": p.on_front}
            for p in front.points]
    ylabel, scale = LABELS.get(report.accuracy_key or "", ("accuracy", 1.0))
    beaten = [f"{p.trial} {p.engine}" for p in front.points if p.on_front and p.no_faster_than]
    joined = [f"{p.trial} {p.engine}" for p in front.points if not p.on_front and not p.no_faster_than]
    stayed = [f"{p.trial} {p.engine}" for p in front.points if not p.on_front and p.no_faster_than]
    verdict = []
    if beaten:
        verdict.append(f"No faster than a more accurate engine, timed together (grey): {', '.join(beaten)}.")
    if joined:
        verdict.append(f"Off the trials' front, and beaten by no engine as accurate when timed together, so it joins the front: "
                       f"{', '.join(joined)}.")
    if stayed:
        verdict.append(f"Contenders that stay off the front (grey, dashed): {', '.join(stayed)}.")
    if not beaten and not joined:
        verdict.append("Timed together, each front engine is faster than every more accurate one: the front holds.")
    caption = (f"{backend}: each engine where its trial timed it (hollow) and timed together, {front.rounds} rounds (filled; "
               f"the bar spans its round p50s; dashed arrows: contenders from off the front). {' '.join(verdict)}")
    return html.figure(lambda: plots.together_figure(data, backend, ylabel=ylabel, scale=scale), caption)


def _together_table(backend: str, front: FrontTogether) -> str:
    def outcome(p: TogetherPoint) -> str:
        if p.no_faster_than:
            return escape(f"no faster than {p.no_faster_than} (at least as accurate)" if not p.on_front
                          else f"no faster than {p.no_faster_than} (more accurate)")
        return "" if p.on_front else "joins the front"

    rows = [[escape(p.trial), escape(p.engine), "front" if p.on_front else "contender", f"{p.accuracy:.4f}", f"{p.p50_ms:.4f}",
             f"×{p.speedup[0]:.2f} ({p.speedup[1]:.2f}–{p.speedup[2]:.2f})", outcome(p)] for p in front.points]
    return (f"<p><b>{escape(backend)}</b>: {front.rounds} rounds, {escape(front.measured_at)}; against {escape(front.reference)}.</p>"
            + html.table(["trial", "engine", "trials' p50s put it", "accuracy (validation)", "p50 ms timed together (median of rounds)",
                          "speed vs the most accurate", "timed together"], rows))


def _confirmed(report: SweepReport) -> str:
    """Validation figures (what chose) beside evaluation figures (what to quote) for each chosen engine."""
    scored = {(r.name, p.engine): p for r in report.confirmed if r.status == "ok" for p in r.engines}
    trials = {r.name: r for r in report.confirmed}
    rows = []
    came_back = set(joined(report.fronts_together))
    for backend, points in report.fronts.items():
        for p in [*points, *(q for q in report.contenders.get(backend, []) if (q.trial, q.engine) in came_back)]:
            evaluation = scored.get((p.trial, p.engine))
            failed = trials.get(p.trial)
            rows.append([escape(backend), escape(p.trial), escape(p.engine), f"{p.accuracy:.4f} · {p.p50_ms:.3f} ms",
                         f"{evaluation.accuracy:.4f} · {evaluation.p50_ms:.3f} ms" if evaluation and evaluation.measured
                         else escape(failed.reason if failed else "not confirmed")])
    return html.section("confirmed", "Confirmed on the evaluation split",
                    "<p>Trials are scored on the validation split, which chose the fronts above; the chosen trials (the fronts', "
                    "the contenders' that joined them when timed together) and the recipe's own ran again with their engines scored "
                    "on the evaluation split (everything else reused). Quote these.</p>"
                    + html.table(["backend", "trial", "engine", "validation: accuracy · p50", "evaluation: accuracy · p50"], rows))


def _versus_section(report: SweepReport) -> str:
    if report.recipe_trial is None:
        return html.section("versus", "Against the recipe", "<p>The recipe's own values are not in the space (or its trial failed): "
                                                        "no trial ran it as it is.</p>")
    rows = []
    for split, versus in (("evaluation", report.versus_recipe_confirmed), ("validation", report.versus_recipe)):
        rows += _versus_rows(split, versus)
    return html.section("versus", "Against the recipe",
                    f"<p>Trial {escape(report.recipe_trial)} ran the recipe's own values. Engines of the same backend that beat "
                    "it (at least as accurate and as fast, better in one; medians on this machine), among the confirmed trials on the "
                    "evaluation split and among all trials on the validation split:</p>"
                    + html.table(["split", "recipe's engine", "its accuracy · p50", "beaten by"], rows))


def _versus_rows(split: str, versus: Sequence[Versus]) -> list[list[str]]:
    rows = []
    for v in versus:
        best = v.dominated_by[:3]
        rows.append([split, escape(v.engine), f"{v.recipe.accuracy:.4f} · {v.recipe.p50_ms:.3f} ms",
                     "; ".join(f"{escape(p.trial)}: {p.accuracy:.4f} · {p.p50_ms:.3f} ms ({escape(p.engine)})" for p in best)
                     or "none: no trial's engine of this backend is both as accurate and as fast"])
    return rows


def _trials(folder: Path, report: SweepReport) -> str:
    rows = []
    for t in report.trials:
        link = "—"
        if t.run_dir:
            page = Path(t.run_dir) / "report.html"
            link = f"<a href='{escape(os.path.relpath(page, folder))}'>{escape(Path(t.run_dir).name)}</a>"
        o = t.objective
        figures = (f"{o.accuracy:.4f} · {o.p50_ms:.3f} ms · {o.size_mib:.2f} MiB" if t.status == "ok" and o is not None and o.measured
                   else escape(t.reason))
        rows.append([escape(t.name), escape(", ".join(f"{k}={_short(v)}" for k, v in t.values.items())),
                     f"<span class={t.status}>{t.status}</span>", figures, f"{t.seconds:.0f}", escape(t.host),
                     str(t.attempt), link])
    headers = ["trial", "values", "status", f"{report.objective} on validation: accuracy · p50 · size", "s", "host", "lost attempts",
               "run report"]
    return html.section("trials", "Every trial", html.table(headers, rows))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

