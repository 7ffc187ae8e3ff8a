"""The ``divergence`` stage: where each FP16 and INT8 engine leaves the FP32 model, tensor by tensor (``edgeship.divergence``).

The FP32 ONNX the engines were built from is the reference, run on ONNX Runtime with every float tensor marked as an
output; each engine is run by its own backend's ``Runner.tap`` (a TensorRT engine by its prepared ONNX on ONNX Runtime,
labelled a prediction). Samples come from the validation split, which neither calibration nor evaluation touches, one
at a time, and only running sums are kept. Results are keyed by the engine, the FP32 ONNX and the samples, so a rerun
reuses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeship.artifacts import Artifact
from edgeship.backends import get_backend
from edgeship.backends.base import Runner
from edgeship.data import model_inputs
from edgeship.divergence import Accumulator, Divergence, Match, Tap, TensorSite, match_by_value, renamed, tensor_sites
from edgeship.errors import StageError
from edgeship.pipeline.base import Made, RunContext
from edgeship.progress import progress_bar
from edgeship.recipe import DivergenceConfig
from edgeship.tensors import Feed, Precision

DIVERGENCE_VERSION = 2  # 2: each layer's own error beside the accumulated one
FILE = "divergence.json"


class DivergenceStage:
    name: ClassVar[str] = "divergence"

    def run(self, inputs: Mapping[str, Artifact], cfg: DivergenceConfig, ctx: RunContext) -> dict[str, Artifact]:
        onnx = inputs["onnx"]
        engines = {name: engine for name, engine in inputs.items()
                   if name != "onnx" and engine.meta.get("precision") != Precision.FP32.value}
        if not cfg.enabled or not engines:
            return {}
        val = ctx.dataset.val
        if not len(val):
            for name in engines:
                ctx.record_problem(self.name, name, "skipped", "the data has no validation split to compare tensors on "
                                   "(calibration and evaluation samples are never used for it)")
            return {}
        samples = model_inputs(val, ctx.recipe.data.preprocessing, onnx.meta["input_name"], count=cfg.samples)
        digest = hashlib.sha256()
        for array in samples.values():  # one image input hashes as it always did: its samples' bytes
            digest.update(array.tobytes())
        key = {"samples": digest.hexdigest(), "version": DIVERGENCE_VERSION}
        threads = ctx.recipe.threads()
        try:
            sites = tensor_sites(onnx.path)
        except Exception as exc:  # onnx's shape inference raises its own errors on graphs it cannot follow
            for name in engines:
                ctx.record_problem(self.name, name, "failed", f"cannot list the FP32 model's tensors: {_first_line(exc)}")
            return {}
        out: dict[str, Artifact] = {}
        validated = {e.name for e in ctx.manifest.entries if e.stage == "validate" and e.status == "ok"}
        for name in [name for name in engines if name not in validated]:
            # an engine that could not be measured is not run again: LiteRT's reference kernels abort the whole process on
            # some engines its XNNPACK path refused, which would lose the run's report
            ctx.record_problem(self.name, name, "failed", "not compared: its validation failed")
            del engines[name]
        for name, engine in engines.items():
            def make(folder: Path, e: Artifact = engine, n: str = name) -> Made:
                return self._engine(folder, n, e, onnx, sites, samples, threads, ctx)

            try:
                out[name] = ctx.produce(self.name, name, config=cfg.model_dump(mode="json"), parents=[engine, onnx], extra_key=key,
                                        make=make)
            except StageError as exc:
                ctx.record_problem(self.name, name, "failed", exc.reason)
            ctx.save_manifest()
        return out

    def _engine(self, folder: Path, name: str, engine: Artifact, onnx: Artifact, sites: list[TensorSite], samples: Feed,
                threads: int, ctx: RunContext) -> Made:
        try:
            result = divergence(name, engine, onnx, sites, samples, threads, ctx)
        except ValueError as exc:  # an engine tensor unlike the FP32 one it was read as
            raise StageError(self.name, f"{name}: {_first_line(exc)}") from None
        target = folder / FILE
        target.write_text(json.dumps(result.model_dump(mode="json"), indent=1))
        return Made(target, "divergence", {"engine": name, "metrics": result.model_dump(mode="json")})


def divergence(name: str, engine: Artifact, onnx: Artifact, sites: list[TensorSite], samples: Feed, threads: int,
               ctx: RunContext) -> Divergence:
    """``engine``'s tensors against ``onnx``'s (its ``sites``) on ``samples`` (every input, named); a ``Divergence`` saying
    why where the runtime gives none."""
    tensors = [site.tensor for site in sites]
    count = len(next(iter(samples.values())))
    runs_on = engine.meta.get("runs_on", engine.meta["backend"])
    reference_runner = get_backend("onnxruntime").runner(onnx.path, threads=threads)
    runner = get_backend(runs_on).runner(engine.path, threads=threads)
    accumulator, own = Accumulator(), Accumulator()
    with reference_runner, _loaded(runner, name):
        try:
            reference = reference_runner.tap(sites)
            tap = runner.tap(sites)
        except ValueError as exc:
            return Divergence.unavailable(str(exc))
        with progress_bar(ctx.console) as bar:
            info = (f"{len(tap.exposed)} engine tensors, matched by value" if tap.by_value
                    else f"{len(tap.exposed)} of {len(tensors)} tensors")
            task = bar.add_task(f"divergence {name}", total=count, info=info)
            matches: dict[str, Match] | None = None
            for index in range(count):
                feed = {input_name: np.ascontiguousarray(array[index : index + 1]) for input_name, array in samples.items()}
                expected, got = reference.call(feed), _checked(tap, feed)
                if tap.by_value:
                    matches = matches if matches is not None else match_by_value(expected, got)
                    got = renamed(got, matches)
                accumulator.add(expected, got)
                if tap.local is not None:
                    own.add(expected, tap.local({**expected, **feed}))
                bar.advance(task)
    rows = accumulator.rows(sites, own if tap.local is not None else None)
    exposed = set(matches) if matches is not None else set(tap.exposed)
    note = tap.note
    if "predicts" in engine.meta:
        note = (f"a prediction: the prepared {engine.meta['backend']} ONNX on ONNX Runtime, not the engine; " + note).strip("; ")
    local_note = tap.local_note if tap.local is not None or tap.local_note else "not measured: no layer could be run alone"
    return Divergence(method=tap.method, samples=count, split="validation", rows=rows, note=note, local_note=local_note,
                      unmapped=[t for t in tensors if t not in exposed])


@contextlib.contextmanager
def _loaded(runner: Runner, name: str) -> Iterator[Runner]:
    """``runner`` entered, an engine its runtime refuses to load being this engine's failure (recorded, the run goes on),
    not the run's."""
    try:
        runner.__enter__()
    except Exception as exc:  # noqa: BLE001 - a runtime refuses an engine in its own ways
        raise StageError(DivergenceStage.name, f"{name}: the engine does not load: {_first_line(exc)}") from None
    try:
        yield runner
    finally:
        runner.__exit__(None, None, None)


def _checked(tap: Tap, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return tap.call(feed)
    except (RuntimeError, ValueError) as exc:
        raise StageError(DivergenceStage.name, f"reading the engine's tensors failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
