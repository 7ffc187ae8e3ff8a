"""Run a recipe: model → prune → distill → export → build → validate → report, with the manifest kept current."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from edgeship.artifacts import Artifact, ArtifactStore, Manifest, remove_dead_spills, spill_prefix, store_tmp
from edgeship.backends import REGISTRY
from edgeship.data import calibration_set, load_dataset, scored_on_validation, search_set
from edgeship.device import describe_device, source_revision, tool_versions
from edgeship.errors import RecipeError
from edgeship.pipeline.base import Alone, Occupancy, RunContext
from edgeship.pipeline.build import BuildStage, requested
from edgeship.pipeline.distill import DistillStage
from edgeship.pipeline.divergence import DivergenceStage
from edgeship.pipeline.export import ExportStage
from edgeship.pipeline.model import ModelStage, input_shape
from edgeship.pipeline.prune import PruneStage
from edgeship.pipeline.report import ReportConfig, ReportStage, load_report
from edgeship.pipeline.validate import ValidateStage
from edgeship.recipe import Recipe
from edgeship.zoo.pretrained import label_space

if TYPE_CHECKING:
    from edgeship.data import Dataset

STAGES = ("model", "prune-sensitivity", "prune", "distill-ablation", "distill", "export", "prepare", "build", "validate", "divergence",
          "report")


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    report: dict[str, Any]
    manifest: Manifest
    exit_code: int

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.json"


def run(recipe: Recipe, *, force: Iterable[str] = (), console: Console | None = None, recipe_path: Path | None = None,
        occupancy: Occupancy | None = None, compute_threads: int | None = None) -> RunResult:
    """Run ``recipe`` end to end and return where its report is. ``occupancy`` and ``compute_threads`` are for a run
    sharing its machine (a sweep's trial): how it times alone, and the threads its training uses (timing keeps the
    recipe's)."""
    force = frozenset(force)
    unknown = force - set(STAGES)
    if unknown:
        raise RecipeError(f"--force {', '.join(sorted(unknown))}: unknown stage; stages are {', '.join(STAGES)}")
    console = console or Console()
    store, run_dir, manifest = start(recipe, recipe.name, recipe_path)
    console.print(f"[bold]edgeship[/bold] run [cyan]{run_dir.name}[/cyan] → {run_dir}")
    with recording(manifest, run_dir):
        threads = recipe.threads()
        import torch

        torch.set_num_threads(compute_threads or threads)
        dataset = recipe_dataset(recipe, console)
        console.print(f"data: {dataset.name} ({dataset.source}): train {len(dataset.train)}, val {len(dataset.val)}, "
                      f"calibration {len(dataset.calibration) or recipe.calibration.source}, eval {len(dataset.eval)}")
        manifest.dataset = dataset_record(dataset)
        ctx = RunContext(recipe=recipe, store=store, manifest=manifest, run_dir=run_dir, console=console, dataset=dataset, force=force,
                         occupancy=occupancy or Alone())

        model = ModelStage().run({}, recipe.model, ctx)["model"]
        ctx.save_manifest()
        student = model
        if recipe.prune.enabled:
            student = PruneStage().run({"model": model}, recipe.prune, ctx)["model"]
            ctx.save_manifest()
        if recipe.distill.enabled:
            student = DistillStage().run({"teacher": model, "student": student}, recipe.distill, ctx)["model"]
            ctx.save_manifest()
        onnx = ExportStage().run({"model": student}, recipe.export, ctx)["onnx"]
        ctx.save_manifest()
        built = build_engines(onnx, ctx)
        ctx.save_manifest()
        if recipe.validate_.split == "validation":  # scored on held-out data: a search's trials never see the evaluation split
            ctx = dataclasses.replace(ctx, dataset=scored_on_validation(dataset))
            manifest.dataset = {**dataset_record(ctx.dataset), "scored_on": "validation"}
        results = ValidateStage().run({"model": model, "onnx": onnx, **built}, recipe.validate_, ctx)
        ctx.save_manifest()
        DivergenceStage().run({"onnx": onnx, **built}, recipe.divergence, ctx)  # after timing: it loads every engine again
        ctx.save_manifest()
        ReportStage().run(results, ReportConfig(), ctx)
    return finish(run_dir, manifest, console)


def build_engines(onnx: Artifact, ctx: RunContext) -> dict[str, Artifact]:
    """The build stage with its calibration and search samples, which live only as long as it does: the stages after
    it (and their measuring processes beside the run) do not carry them."""
    recipe, dataset = ctx.recipe, ctx.dataset
    needs_calibration = any(set(getattr(c, "precisions", ())) & REGISTRY[name].calibrated for name, c in requested(recipe.backends))
    calibration = (calibration_set(dataset, recipe.calibration, recipe.data.preprocessing,
                                   input_shape=input_shape(dataset, recipe.data.preprocessing)) if needs_calibration else None)
    if calibration is not None:
        ctx.manifest.calibration = {"samples": calibration.count, "fingerprint": calibration.fingerprint,
                                    "source": str(recipe.calibration.source) if recipe.calibration.source else "held out from train"}
    searching = any(getattr(c, "keep_float", 0) == "auto" for _, c in requested(recipe.backends))
    search = search_set(dataset, recipe.data.preprocessing) if searching else None
    spill = store_tmp(recipe.store)
    spill.mkdir(parents=True, exist_ok=True)
    # on disk, mapped, for as long as the stage runs: the run keeps no copy in memory while a child builds, and a child
    # maps the same files instead of receiving copies (``CalibrationSet.mapped``)
    remove_dead_spills(spill, "build-samples")
    with tempfile.TemporaryDirectory(dir=spill, prefix=spill_prefix("build-samples")) as folder:
        calibration = None if calibration is None else calibration.mapped(Path(folder))
        search = None if search is None else search.mapped(Path(folder))
        return BuildStage(calibration, search).run({"onnx": onnx}, recipe.backends, ctx)


def start(recipe: Recipe, label: str, recipe_path: Path | None) -> tuple[ArtifactStore, Path, Manifest]:
    """The store, a new run folder under ``reports`` and the run's manifest (saved), for ``run`` and ``edgeship validate``."""
    store = ArtifactStore(_writable(recipe.store, "store"))
    run_dir = _new_run_dir(_writable(recipe.reports, "reports"), label)
    manifest = Manifest(run_id=run_dir.name, recipe=recipe.model_dump(mode="json", by_alias=True),
                        recipe_path=str(recipe_path) if recipe_path else None, tools=tool_versions(), device=describe_device(),
                        source=source_revision())
    manifest.save(run_dir / "manifest.json")
    return store, run_dir, manifest


@contextlib.contextmanager
def recording(manifest: Manifest, run_dir: Path) -> Iterator[None]:
    """Mark the manifest ok, interrupted or failed by how the block ends, and save it either way."""
    try:
        yield
        manifest.status = "ok"
    except KeyboardInterrupt:
        manifest.status = "interrupted"
        raise
    except Exception:
        manifest.status = "failed"
        raise
    finally:
        manifest.finished = time.time()
        manifest.save(run_dir / "manifest.json")


def finish(run_dir: Path, manifest: Manifest, console: Console) -> RunResult:
    report = load_report(run_dir)
    console.print(f"report: {run_dir / 'report.html'}")
    return RunResult(run_dir.name, run_dir, report.document(), manifest, exit_code=report.release.exit_code)


def recipe_dataset(recipe: Recipe, console: Console) -> Dataset:
    """The recipe's data; an ``image_folder``'s class folders are named after a pretrained model's classes."""
    return load_dataset(recipe.data, recipe.calibration, seed=recipe.seed,
                        notice=lambda text: console.print(f"[yellow]{text}[/yellow]", soft_wrap=True),
                        label_space=label_space(recipe.model.pretrained) if recipe.model.pretrained else None,
                        spill=store_tmp(recipe.store))


def dataset_record(dataset: Dataset) -> dict[str, Any]:
    """What the manifest keeps of the data: name, source, split sizes, fingerprint, and what it stands in for."""
    return {"name": dataset.name, "source": dataset.source, "labelled": dataset.labelled, "train": len(dataset.train),
            "val": len(dataset.val), "calibration": len(dataset.calibration), "eval": len(dataset.eval), "fingerprint": dataset.fingerprint,
            "substitute_for": dataset.substitute_for or None}


def _writable(folder: Path, key: str) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecipeError(f"'{key}': cannot create folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RecipeError(f"'{key}': folder {folder} is not writable")
    return folder


def _new_run_dir(reports: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        folder = reports / (f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        if folder.resolve().parent != reports.resolve():  # the recipe's name pattern forbids it; a caller's label might not
            raise RecipeError(f"'name': {name!r} would put the run folder outside {reports}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RecipeError(f"'reports': cannot make a new run folder under {reports}")
