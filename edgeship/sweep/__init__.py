"""Compression sweeps: many variants of one recipe as Ray Tune trials over one shared store, proposed by Optuna, with a
Pareto report. ``sweep`` is the one verb; ``edgeship sweep`` calls it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from edgeship.sweep.driver import load_config, new_sweep, run_sweep
from edgeship.sweep.node import default_path
from edgeship.sweep.report import SweepReport, add_joined_recipes, build_report, chosen, joined, timed_points, write_outputs
from edgeship.sweep.together import FrontTogether, time_fronts
from edgeship.sweep.trial import TrialRecord


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
    together: dict[str, FrontTogether] = {}

    def choose(found: list[TrialRecord]) -> list[TrialRecord]:
        """The fronts and their contenders timed together first, so the contenders that join a front are confirmed too."""
        fronts, near = timed_points(found)
        together.update(time_fronts(folder, config, fronts, found, console=console, contenders=near))
        return chosen(config, found, also=[trial for trial, _ in joined(together)])

    records, confirmed = run_sweep(folder, config, address=address, resume=resume is not None, console=console, choose=choose)
    report = build_report(folder, config, records, confirmed, lock=str(default_path()))
    report.fronts_together = together
    add_joined_recipes(report)
    write_outputs(folder, report)
    console.print(f"sweep: {folder / 'sweep.html'}")
    return SweepResult(folder, report)
