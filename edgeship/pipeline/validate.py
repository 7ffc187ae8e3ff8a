"""The ``validate`` stage: latency and accuracy of the FP32 PyTorch baseline and of every engine.

Each engine is scored on the whole evaluation split (top-1, and agreement with
the FP32 PyTorch outputs) and timed with the shared harness at the recipe's
batch size, threads pinned. Results are keyed by the engine, the config and the
device, so a rerun on the same machine reuses them and another machine measures anew.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeship.artifacts import Artifact
from edgeship.backends import get_backend
from edgeship.backends.base import Runner
from edgeship.errors import StageError
from edgeship.measure import agreement, summarize, time_calls, top1
from edgeship.pipeline.base import Made, RunContext
from edgeship.progress import progress_bar
from edgeship.recipe import ValidateConfig

BASELINE = "pytorch/fp32"


class ValidateStage:
    name: ClassVar[str] = "validate"
    Config: ClassVar[type[ValidateConfig]] = ValidateConfig

    def run(self, inputs: Mapping[str, Artifact], cfg: ValidateConfig, ctx: RunContext) -> dict[str, Artifact]:
        threads = ctx.recipe.threads()
        config = {**cfg.model_dump(mode="json"), "threads": threads}
        device = {k: ctx.manifest.device.get(k) for k in ("cpu", "isa_flags", "logical_cores", "gpu")}
        key = {"eval": ctx.dataset.fingerprint, "device": device}
        model = inputs["model"]
        results = {BASELINE: ctx.produce(self.name, BASELINE, config=config, parents=[model], extra_key=key,
                                         make=lambda folder: self._baseline(folder, model, cfg, threads, ctx))}
        ctx.save_manifest()
        reference = np.load(results[BASELINE].folder / "logits.npy")
        for name, engine in inputs.items():
            if name == "model":
                continue
            engine_cfg = {**config, "cross_check": _wants_cross_check(ctx, engine)}
            try:
                results[name] = ctx.produce(self.name, name, config=engine_cfg, parents=[engine, results[BASELINE]], extra_key=key,
                                            make=lambda folder, e=engine, n=name: self._engine(folder, n, e, reference, cfg, threads, ctx))
            except StageError as exc:
                ctx.record_problem(self.name, name, "failed", exc.reason, engine_cfg)
            ctx.save_manifest()
        return results

    def _baseline(self, folder: Path, model_artifact: Artifact, cfg: ValidateConfig, threads: int, ctx: RunContext) -> Made:
        import torch

        from edgeship.data import preprocess
        from edgeship.pipeline.model import load_model

        torch.set_num_threads(threads)
        model = load_model(model_artifact, ctx.recipe.model)
        p = ctx.recipe.data.preprocessing

        def run_batch(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()

        logits = self._evaluate(BASELINE, run_batch, cfg, ctx)
        sample = preprocess(ctx.dataset.eval.images[: cfg.batch_size], p)
        latency = self._time(BASELINE, lambda: run_batch(sample), cfg, ctx)
        np.save(folder / "logits.npy", logits)
        metrics = {"top1": top1(logits, ctx.dataset.eval.labels), "eval_samples": len(logits), "size_bytes": model_artifact.size,
                   "latency": latency, "threads": threads}
        return self._write(folder, BASELINE, metrics)

    def _engine(self, folder: Path, name: str, engine: Artifact, reference: np.ndarray, cfg: ValidateConfig, threads: int,
                ctx: RunContext) -> Made:
        """Score and time one engine; a prepared ONNX standing in for an engine (``meta["predicts"]``) is scored only,
        on the runtime it names, and labelled as a prediction: its latency there says nothing about its engine."""
        from edgeship.data import preprocess

        predicts = engine.meta.get("predicts")
        runs_on = engine.meta.get("runs_on", engine.meta["backend"])
        backend = get_backend(runs_on)
        input_name = engine.meta["input_name"]
        p = ctx.recipe.data.preprocessing
        wants_check = _wants_cross_check(ctx, engine)
        latency = bare = None
        started = time.perf_counter()
        try:
            with backend.runner(engine.path, threads=threads) as runner:
                load_ms = (time.perf_counter() - started) * 1e3
                sample = preprocess(ctx.dataset.eval.images[: cfg.batch_size], p)
                first_started = time.perf_counter()
                _single_output(runner, {input_name: sample})
                first_ms = (time.perf_counter() - first_started) * 1e3
                logits = self._evaluate(name, lambda x: _single_output(runner, {input_name: x}), cfg, ctx)
                if not predicts:
                    latency = self._time(name, lambda: runner.infer({input_name: sample}), cfg, ctx)
                runtime = runner.describe()
                bare_call = getattr(runner, "bare_call", None) if wants_check else None
                bare = self._time(f"{name} bare call", bare_call({input_name: sample}), cfg, ctx) if bare_call else None
        except (RuntimeError, ValueError, OSError) as exc:
            raise StageError(self.name, f"{name}: {type(exc).__name__}: {exc}") from exc
        metrics: dict[str, Any] = {"top1": top1(logits, ctx.dataset.eval.labels), "eval_samples": len(logits), "threads": threads,
                                   "runtime": runtime, **agreement(logits, reference)}
        if predicts:
            metrics["predicted"] = {"engine": predicts, "on": runs_on, "label": prediction_label(engine.meta["backend"], runs_on)}
        else:
            metrics.update(size_bytes=engine_bytes(engine), latency=latency, load_ms=round(load_ms, 3),
                           first_inference_ms=round(first_ms, 3))
        if wants_check:
            metrics["cross_check"] = self._cross_check(name, backend.cross_check, engine, latency, bare, cfg, threads, ctx)  # type: ignore[attr-defined,arg-type]
        np.save(folder / "logits.npy", logits)
        return self._write(folder, name, metrics)

    @staticmethod
    def _cross_check(name: str, cross_check: Callable[..., dict[str, Any]], engine: Artifact, latency: dict[str, Any],
                     bare: dict[str, Any] | None, cfg: ValidateConfig, threads: int, ctx: RunContext) -> dict[str, Any]:
        """The backend's own benchmark tool on the same engine, threads and batch, beside our p50.

        ``ratio`` compares our p50 per ``infer`` (the number the report uses) with the tool's median;
        ``bare_ratio`` compares the engine call alone, timed by our harness, so a difference
        can be told apart: harness (bare_ratio) or the Python call around the engine (ratio / bare_ratio).
        """
        with ctx.console.status(f"cross-checking {name} latency with the backend's own benchmark tool"):
            try:
                theirs = cross_check(engine.path, threads=threads, batch_size=cfg.batch_size, input_shape=tuple(engine.meta["input_shape"]),
                                     input_name=engine.meta["input_name"], seconds=max(cfg.min_seconds, 1.0))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                return {"status": "failed", "reason": str(exc)}
        ratio = latency["p50_ms"] / theirs["median_ms"]
        check = {"status": "ok", **theirs, "ours_p50_ms": latency["p50_ms"], "ratio": round(ratio, 4),
                 "within_5pct": abs(ratio - 1) <= 0.05}
        if bare is not None:
            check.update(ours_bare_p50_ms=bare["p50_ms"], bare_ratio=round(bare["p50_ms"] / theirs["median_ms"], 4),
                         call_overhead_ms=round(latency["p50_ms"] - bare["p50_ms"], 4))
        return check

    @staticmethod
    def _write(folder: Path, name: str, metrics: dict[str, Any]) -> Made:
        metrics["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        target = folder / "result.json"
        target.write_text(json.dumps({"engine": name, "metrics": metrics}, indent=2))
        return Made(target, "validation", {"engine": name, "metrics": metrics})

    @staticmethod
    def _evaluate(name: str, run_batch: Callable[[np.ndarray], np.ndarray], cfg: ValidateConfig, ctx: RunContext) -> np.ndarray:
        from edgeship.data import preprocess

        images, p = ctx.dataset.eval.images, ctx.recipe.data.preprocessing
        out = []
        with progress_bar(ctx.console) as bar:
            task = bar.add_task(f"accuracy {name}", total=len(images), info="")
            for start in range(0, len(images), cfg.eval_batch_size):
                batch = preprocess(images[start : start + cfg.eval_batch_size], p)
                out.append(run_batch(batch))
                bar.update(task, advance=len(batch))
        return np.concatenate(out)

    @staticmethod
    def _time(name: str, call: Callable[[], object], cfg: ValidateConfig, ctx: RunContext) -> dict[str, Any]:
        with progress_bar(ctx.console) as bar:
            task = bar.add_task(f"latency {name}", total=cfg.iterations, info=f"batch {cfg.batch_size}")
            done = [0]

            def step() -> None:  # runs past ``iterations`` until ``min_seconds`` is reached too
                done[0] += 1
                bar.update(task, completed=done[0], total=max(cfg.iterations, done[0]))

            times = time_calls(call, warmup=cfg.warmup, iterations=cfg.iterations, min_seconds=cfg.min_seconds, on_step=step)
        return summarize(times, cfg.batch_size).as_dict()


def prediction_label(backend: str, runs_on: str) -> str:
    names = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT", "openvino": "OpenVINO", "tflite": "TFLite"}
    return f"predicted on {names.get(runs_on, runs_on)}, not measured on {names.get(backend, backend)}"


def engine_bytes(engine: Artifact) -> int:
    """An engine's size on disk: every file it needs (an OpenVINO IR's .bin too), not just its main file; edgeship's
    JSON side files and build caches (TensorRT's timing cache) are not shipped, so they do not count."""
    if not engine.files:
        return engine.size
    return sum((engine.folder / name).stat().st_size for name in engine.files if not name.endswith((".json", ".cache")))


def _wants_cross_check(ctx: RunContext, engine: Artifact) -> bool:
    """Whether the recipe asks for the engine's backend's own benchmark tool beside our harness (OpenVINO's
    ``benchmark_app``); never for a prediction, which is not timed."""
    if "predicts" in engine.meta:
        return False
    backend = engine.meta["backend"]
    section = getattr(ctx.recipe.backends, backend, None)
    return bool(getattr(section, "benchmark_app", False)) and hasattr(get_backend(backend), "cross_check")


def _single_output(runner: Runner, feed: dict[str, np.ndarray]) -> np.ndarray:
    outputs = runner.infer(feed)
    if len(outputs) != 1:
        raise ValueError(f"expected one output (logits), the engine gave {sorted(outputs)}")
    return next(iter(outputs.values()))
