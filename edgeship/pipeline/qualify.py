"""``edgeship validate ENGINE --recipe R``: qualify an engine file made elsewhere, without the earlier stages.

The engine (with the files it needs beside it: an IR's ``.bin``, edgeship's ``runtime.json`` or ``io.json``)
is checked by loading it once, copied into the store as a ``build`` entry keyed by its path and sha256, then
measured and gated exactly like a built engine: the recipe's model stage gives the FP32 baseline (reused
from the store when it is there), and the report is the same report.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from edgeship.artifacts import sha256_file
from edgeship.backends import REGISTRY, availability, get_backend
from edgeship.errors import DataError
from edgeship.pipeline.base import Made, RunContext
from edgeship.pipeline.model import ModelStage
from edgeship.pipeline.report import ReportConfig, ReportStage
from edgeship.pipeline.run import dataset_record, finish, recipe_dataset, recording, start
from edgeship.pipeline.validate import ValidateStage
from edgeship.recipe import Recipe

if TYPE_CHECKING:
    from edgeship.pipeline.run import RunResult

def engine_backend(engine: Path, backend: str | None) -> str:
    """The backend that runs ``engine``: given, or the one whose engines have the file's suffix (the first declared)."""
    if backend is not None:
        if backend not in REGISTRY:
            raise DataError(f"--backend {backend}: unknown backend; choose from {', '.join(REGISTRY)}")
        return backend
    by_suffix: dict[str, str] = {}
    for info in REGISTRY.values():
        for suffix in info.suffixes:
            by_suffix.setdefault(suffix, info.name)
    found = by_suffix.get(engine.suffix.lower())
    if found is None:
        raise DataError(f"{engine}: cannot tell the backend from the suffix {engine.suffix!r} "
                        f"(known: {', '.join(by_suffix)}); pass --backend")
    return found


def engine_precision(engine: Path, backend: str, precision: str | None) -> str:
    """The engine's precision: given, or read from the file by its backend (Q/DQ or FP16 weights in an ONNX, an IR's
    element types, edgeship's ``model.<precision>.tflite`` name)."""
    if precision is not None:
        return precision
    try:
        found = get_backend(backend).precision_of(engine)
    except ValueError as exc:
        raise DataError(f"{engine}: {exc}") from None
    if found is None:
        raise DataError(f"{engine}: cannot tell its precision; pass --precision fp32|fp16|int8")
    return found.value


def qualify(recipe: Recipe, engine: Path, *, backend: str | None = None, precision: str | None = None,
            console: Console | None = None, recipe_path: Path | None = None) -> RunResult:
    """Validate and gate one engine file; returns the ``RunResult``."""
    console = console or Console()
    if not engine.is_file():
        raise DataError(f"{engine}: no such engine file")
    backend = engine_backend(engine, backend)
    precision = engine_precision(engine, backend, precision)
    state = availability(backend)
    if not state.available:
        raise DataError(f"{engine}: {backend} cannot run here: {state.reason}; install: {state.install}")
    name = f"{backend}/{precision}"
    input_name, input_shape = _probe(get_backend(backend), engine)
    recipe = recipe.model_copy(update={"gates": recipe.gates.model_copy(update={"required": [name]})})
    store, run_dir, manifest = start(recipe, f"{recipe.name}-validate", recipe_path)
    console.print(f"[bold]edgeship[/bold] validate [cyan]{engine}[/cyan] as {name} → {run_dir}")
    with recording(manifest, run_dir):
        dataset = recipe_dataset(recipe, console)
        manifest.dataset = dataset_record(dataset)
        ctx = RunContext(recipe=recipe, store=store, manifest=manifest, run_dir=run_dir, console=console, dataset=dataset)
        model = ModelStage().run({}, recipe.model, ctx)["model"]
        ctx.save_manifest()
        config = {"backend": backend, "precision": precision, "imported_from": str(engine.resolve()), "sha256": sha256_file(engine)}
        imported = ctx.produce("build", name, config=config, parents=[],
                               make=lambda folder: _copy_engine(engine, backend, folder, precision, input_name, input_shape))
        ctx.save_manifest()
        results = ValidateStage().run({"model": model, name: imported}, recipe.validate_, ctx)
        ctx.save_manifest()
        ReportStage().run(results, ReportConfig(), ctx)
    return finish(run_dir, manifest, console)


def _probe(backend: object, engine: Path) -> tuple[str, list[int]]:
    """Load the engine once: its single input's name and per-sample shape, or a one-line error."""
    try:
        with backend.runner(engine, threads=1) as runner:  # type: ignore[attr-defined]
            inputs = runner.input_metadata()
    except (RuntimeError, ValueError, OSError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]  # OpenVINO's last line is the telling one
        raise DataError(f"{engine}: cannot be loaded as a {backend.name} engine "  # type: ignore[attr-defined]
                        f"(truncated or not one?): {lines[-1] if lines else type(exc).__name__}") from None
    if len(inputs) != 1:
        raise DataError(f"{engine}: expected one input (an image batch), the engine has {sorted(inputs)}")
    meta = next(iter(inputs.values()))
    return meta.name, [int(d) if d is not None else -1 for d in meta.shape[1:]]


def _copy_engine(engine: Path, backend: str, folder: Path, precision: str, input_name: str, input_shape: list[int]) -> object:
    target = folder / engine.name
    shutil.copyfile(engine, target)
    for source in REGISTRY[backend].companion_paths(engine):
        if source.is_file():
            shutil.copyfile(source, folder / source.name)
    return Made(target, "engine", {"backend": backend, "precision": precision, "input_name": input_name, "input_shape": input_shape,
                                   "imported_from": str(engine.resolve())})
