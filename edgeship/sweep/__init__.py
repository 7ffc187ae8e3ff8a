"""Compression sweeps: many variants of one recipe as Ray Tune trials over one shared store, proposed by Optuna, with a
Pareto report. ``sweep`` is the one verb; ``edgeship sweep`` calls it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from edgeship.sweep.driver import load_config, new_sweep, run_sweep
from edgeship.sweep.node import default_path
from edgeship.sweep.report import SweepReport, add_joined_recipes, build_report, chosen, write_outputs
from edgeship.sweep.together import time_fronts


@dataclass(frozen=True)
class SweepResult:
    folder: Path
    report: SweepReport

    @property
    def html(self) -> Path:
        return self.folder / "sweep.html"


def sweep(recipe: Path | None, space: Path | None, *, trials: int = 16, address: str | None = None, resume: Path | None = None,
          out: Path = Path("sweeps"), cpus_per_trial: float = 1.0, console: Console | None = None) -> SweepResult:
    """Run a new sweep of ``recipe`` over ``space`` (``trials`` trials), or continue the one in ``resume``."""
    console = console or Console()
    if resume is not None:
        folder = resume.resolve()
        config = load_config(folder)
    else:
        assert recipe is not None and space is not None
        folder, config = new_sweep(recipe, space, trials=trials, out=out, cpus_per_trial=cpus_per_trial)
    console.print(f"[bold]edgeship[/bold] sweep [cyan]{config.id}[/cyan] → {folder}: {config.trials} trials of "
                  f"{config.recipe_path.name}, objective {config.target}{' (resumed)' if resume else ''}")
    records, confirmed = run_sweep(folder, config, address=address, resume=resume is not None, console=console,
                                   choose=lambda found: chosen(config, found))
    report = build_report(folder, config, records, confirmed, lock=str(default_path()))
    fronts = {backend: [(p.trial, p.engine, p.accuracy) for p in points] for backend, points in report.fronts.items()}
    near = {backend: [(p.trial, p.engine, p.accuracy) for p in points] for backend, points in report.contenders.items()}
    report.fronts_together = time_fronts(folder, config, fronts, records, console=console, contenders=near)
    add_joined_recipes(report)
    write_outputs(folder, report)
    console.print(f"sweep: {folder / 'sweep.html'}")
    return SweepResult(folder, report)
