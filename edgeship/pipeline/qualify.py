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
from edgeship.errors import DataError
from edgeship.recipe import Recipe

if TYPE_CHECKING:
    from edgeship.pipeline.run import RunResult

SUFFIX_BACKEND = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "tflite", ".engine": "tensorrt", ".plan": "tensorrt"}
COMPANIONS = {"openvino": (".bin", "runtime.json"), "tflite": ("io.json",)}  # ".x": same stem; a name: that file beside it


def engine_backend(engine: Path, backend: str | None) -> str:
    """The backend that runs ``engine``: given, or from the file's suffix."""
    from edgeship.backends import REGISTRY

    if backend is not None:
        if backend not in REGISTRY:
            raise DataError(f"--backend {backend}: unknown backend; choose from {', '.join(REGISTRY)}")
        return backend
    found = SUFFIX_BACKEND.get(engine.suffix.lower())
    if found is None:
        raise DataError(f"{engine}: cannot tell the backend from the suffix {engine.suffix!r} "
                        f"(known: {', '.join(SUFFIX_BACKEND)}); pass --backend")
    return found


def engine_precision(engine: Path, backend: str, precision: str | None) -> str:
    """The engine's precision: given, or read from the file (Q/DQ or FP16 weights in an ONNX, an IR's element types,
    edgeship's ``model.<precision>.tflite`` name)."""
    if precision is not None:
        return precision
    if backend in ("onnxruntime", "tensorrt") and engine.suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(engine), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, ValueError, OSError…
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{engine}: not a readable ONNX model: {why}") from None
        if any(node.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger") for node in model.graph.node):
            return "int8"
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
            return "fp16"
        return "fp32"
    if backend == "openvino":
        text = engine.read_text(errors="replace")
        if "FakeQuantize" in text or 'element_type="i8"' in text or 'element_type="u8"' in text:
            return "int8"
        return "fp16" if 'element_type="f16"' in text else "fp32"
    parts = engine.name.split(".")
    if len(parts) == 3 and parts[1] in ("fp32", "fp16", "int8"):
        return parts[1]
    raise DataError(f"{engine}: cannot tell its precision; pass --precision fp32|fp16|int8")


def qualify(recipe: Recipe, engine: Path, *, backend: str | None = None, precision: str | None = None,
            console: Console | None = None, recipe_path: Path | None = None) -> RunResult:
    """Validate and gate one engine file; returns the ``RunResult``."""
    from edgeship.backends import availability, get_backend
    from edgeship.pipeline.base import RunContext
    from edgeship.pipeline.model import ModelStage
    from edgeship.pipeline.report import ReportConfig, ReportStage
    from edgeship.pipeline.run import dataset_record, finish, recipe_dataset, recording, start
    from edgeship.pipeline.validate import ValidateStage

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
    from edgeship.pipeline.base import Made

    target = folder / engine.name
    shutil.copyfile(engine, target)
    for companion in COMPANIONS.get(backend, ()):
        source = engine.with_suffix(companion) if companion.startswith(".") else engine.with_name(companion)
        if source.is_file():
            shutil.copyfile(source, folder / source.name)
    return Made(target, "engine", {"backend": backend, "precision": precision, "input_name": input_name, "input_shape": input_shape,
                                   "imported_from": str(engine.resolve())})
