"""The ``validate`` stage: latency and accuracy of the FP32 PyTorch baseline and of every engine.

Each engine (and the baseline) is measured by ``edgeship.harness`` in a process of its own, pinned to
the recipe's CPUs and threads: load and first-inference time, latency at the recipe's batch size with
bootstrap 95% intervals, throughput at its other batch sizes, peak RSS, and its outputs on the whole
evaluation split (top-1, and agreement with the FP32 PyTorch outputs). Results are keyed by the
engine, the config and the device, so a rerun on the same machine reuses them and another machine
measures anew. The raw per-iteration timings stay in each result's artifact (``timings.npz``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.markup import escape

from edgeship.agent.client import AgentClient, AgentError, with_retries
from edgeship.artifacts import RECORD, Artifact
from edgeship.backends import display_name, get_backend
from edgeship.data import model_inputs
from edgeship.errors import StageError
from edgeship.harness import HARNESS_VERSION, HarnessError, call_overhead_us
from edgeship.macs import onnx_macs
from edgeship.measure import agreement_interval, output_scores, scores, top1, unpack_hits
from edgeship.peak import PEAK_VERSION, measure_peak_isolated
from edgeship.pipeline.base import Made, RunContext
from edgeship.pipeline.export import INPUT_NAME
from edgeship.pipeline.measurers import BASELINE_RUNTIME, DeviceMeasurer, LocalMeasurer, Measurer, MeasureRequest, retry_note, settings
from edgeship.pipeline.model import ONNX_MODEL
from edgeship.pipeline.together import TOGETHER_VERSION, EngineToTime, time_together, together_name
from edgeship.recipe import DeviceConfig, ValidateConfig

BASELINE = "pytorch/fp32"
ONNX_BASELINE = "onnx/fp32"  # an ONNX entry's own FP32 reference, run on ONNX Runtime
BASELINES = (BASELINE, ONNX_BASELINE)
PEAK = "machine-peak"  # the validate entry holding this machine's GEMM rates
# what of a device's description keys its results: another machine measures anew, a reboot does not
DEVICE_FACTS = ("cpu", "isa_flags", "logical_cores", "gpu")
TOGETHER_SETTINGS = ("warmup", "iterations", "min_seconds", "batch_size", "threads")  # what keys a timed-together entry, with where
MEASURED_KEYS = ("load_ms", "first_inference_ms", "import_ms", "latency", "bare_latency", "throughput", "memory", "cpus", "profile")


class ValidateStage:
    name: ClassVar[str] = "validate"

    def run(self, inputs: Mapping[str, Artifact], cfg: ValidateConfig, ctx: RunContext) -> dict[str, Artifact]:
        threads = ctx.recipe.threads()
        cpus = cfg.affinity(threads)
        # the split is in the key through the data's fingerprint (scored_on_validation gives the validation split its own)
        config = {**cfg.model_dump(mode="json", exclude={"split", "together_rounds"}), "threads": threads,
                  "cpus": list(cpus) if cpus else None}
        device = {k: ctx.manifest.device.get(k) for k in DEVICE_FACTS}
        key = {"eval": ctx.dataset.fingerprint, "device": device, "harness": HARNESS_VERSION}
        model = inputs["model"]
        generic = ctx.recipe.task == "generic"
        with tempfile.TemporaryDirectory(prefix="edgeship-eval-") as scratch:
            measure = LocalMeasurer(cfg, threads, cpus, Path(scratch), ctx)
            name = ONNX_BASELINE if model.kind == ONNX_MODEL else BASELINE
            results = {BASELINE: ctx.produce(self.name, name, config=config, parents=[model], extra_key=key,
                                             make=lambda folder: self._baseline(folder, name, model, inputs.get("onnx"), measure, ctx))}
            ctx.save_manifest()
            reference = load_outputs(results[BASELINE].folder, every_output=generic)
            engines = {name: engine for name, engine in inputs.items() if name not in ("model", "onnx")}
            if engines:
                self._peak(results, threads, cpus, device, ctx)
            macs = _macs(inputs.get("onnx"), ctx)
            for name, engine in engines.items():
                engine_cfg = {**config, "cross_check": _wants_cross_check(ctx, engine)}
                try:
                    results[name] = ctx.produce(self.name, name, config=engine_cfg, parents=[engine, results[BASELINE]], extra_key=key,
                                                make=lambda folder, e=engine, n=name: self._engine(folder, n, e, reference, measure, ctx,
                                                                                                   macs))
                except StageError as exc:
                    ctx.record_problem(self.name, name, "failed", exc.reason, engine_cfg)
                ctx.save_manifest()
            if cfg.together_rounds:
                results.update(self._together(engines, results, config, cfg.together_rounds, key, measure, ctx))
            for device in ctx.recipe.devices:
                chosen = {name: engine for name, engine in engines.items() if "predicts" not in engine.meta
                          and (device.backends is None or engine.meta["backend"] in device.backends)}
                if chosen:
                    results.update(self._on_device(device, chosen, results[BASELINE], reference, config, measure, macs, ctx,
                                                   cfg.together_rounds))
        return results

    def _on_device(self, device: DeviceConfig, engines: Mapping[str, Artifact], baseline: Artifact, reference: Any,
                   config: dict[str, Any], local: LocalMeasurer, macs: int | None, ctx: RunContext,
                   together_rounds: int) -> dict[str, Artifact]:
        """Every engine of the device's backends measured on it through its agent, as ``<engine>@<device>``, then each
        backend's engines timed together there (``timed-together/<backend>@<device>``); a device that cannot be reached,
        or fails a job, is recorded ``failed`` for that engine with the cause, and the run goes on."""
        names = {name: f"{name}@{device.name}" for name in engines}
        policy = {"retries": device.retries, "delay_s": device.retry_delay_s}
        device_cfg = {**config, "device": device.model_dump(mode="json", include={"name", "url", "threads", "outputs_limit_mib"})}
        token = os.environ.get(device.token_env)
        if not token:
            for name in engines:
                ctx.record_problem(self.name, names[name], "failed", f"device {device.name}: the environment variable {device.token_env} "
                                   "(the agent's bearer token) is not set", device_cfg)
            return {}
        results: dict[str, Artifact] = {}
        with AgentClient(device.url, token, timeout_s=device.timeout_s) as client:
            try:
                described = with_retries(client.device, **policy, on_retry=retry_note(ctx, f"device {device.name}"))
            except AgentError as exc:
                for name in engines:
                    ctx.record_problem(self.name, names[name], "failed", f"device {device.name}: {exc}", device_cfg)
                return {}
            threads = device.threads or ctx.recipe.validate_.threads or described["device"].get("usable_cores") or 1
            remote = DeviceMeasurer(local, client, device, described, threads, reference)
            facts = {k: described["device"].get(k) for k in DEVICE_FACTS}
            key = {"eval": ctx.dataset.fingerprint, "device": facts, "device_name": device.name, "harness": HARNESS_VERSION}
            for name, engine in engines.items():
                backend = described["backends"].get(engine.meta["backend"], {})
                engine_cfg = {**device_cfg, "threads": threads, "cpus": None, "cross_check": _wants_cross_check(ctx, engine)}
                if not backend.get("available"):
                    # skipped by design only when the recipe let the device choose (backends: null) and it is not installed there
                    listed, broken = device.backends is not None, bool(backend.get("broken"))
                    ctx.record_problem(self.name, names[name], "failed" if listed or broken else "skipped",
                                       f"{engine.meta['backend']} is not available on {device.name}: "
                                       f"{backend.get('reason') or 'unknown to its edgeship'}"
                                       + (" (the recipe's devices.backends asks for it there)" if listed else ""), engine_cfg)
                    continue
                try:
                    results[names[name]] = ctx.produce(
                        self.name, names[name], config=engine_cfg, parents=[engine, baseline], extra_key=key,
                        make=lambda folder, e=engine, n=names[name]: self._engine(folder, n, e, reference, remote, ctx, macs))
                except StageError as exc:
                    ctx.record_problem(self.name, names[name], "failed", exc.reason, engine_cfg)
                ctx.save_manifest()
            if together_rounds:
                measured = {name: engine for name, engine in engines.items() if names[name] in results}
                results.update(self._together_on_device(device, remote, measured, names, together_rounds,
                                                        {**device_cfg, "threads": threads}, key, ctx))
        return results

    def _together_on_device(self, device: DeviceConfig, remote: DeviceMeasurer, engines: Mapping[str, Artifact],
                            names: Mapping[str, str], rounds: int, config: dict[str, Any], key: dict[str, Any],
                            ctx: RunContext) -> dict[str, Artifact]:
        """``_together`` on the device, through its agent: a device's clock may throttle as it warms, so its engines
        timed one after the other compare two moments there too."""
        groups: dict[str, dict[str, Artifact]] = {}
        for name, engine in sorted(engines.items()):
            groups.setdefault(together_name(f"{engine.meta['backend']}@{device.name}"), {})[names[name]] = engine

        def time_them(mine: Mapping[str, Artifact], folder: Path, entry: str) -> dict[str, Any]:
            backend = next(iter(mine.values())).meta["backend"]
            return {"backend": backend, "device_name": device.name, **remote.time_together(dict(mine), rounds, folder)}

        return self._keep_together(groups, {k: config[k] for k in (*TOGETHER_SETTINGS, "device")}, rounds, key, ctx, time_them)

    def _together(self, engines: Mapping[str, Artifact], results: Mapping[str, Artifact], config: dict[str, Any], rounds: int,
                  key: dict[str, Any], measure: LocalMeasurer, ctx: RunContext) -> dict[str, Artifact]:
        """Per backend, its engines measured here timed again together (``edgeship.pipeline.together``), as
        ``timed-together/<backend>``; kept in the store while the engines are the same, so a rebuilt engine has all of
        its backend's engines timed anew. A failure is recorded and the recommendation ranks the single timings."""
        groups: dict[str, dict[str, Artifact]] = {}
        for name, engine in sorted(engines.items()):
            if "predicts" in engine.meta or name not in results:  # a prediction is not timed; a failed one has no p50
                continue
            groups.setdefault(together_name(engine.meta["backend"]), {})[name] = engine
        settings_ = settings(measure.cfg, measure.threads, timed=False)

        def time_them(mine: Mapping[str, Artifact], folder: Path, entry: str) -> dict[str, Any]:
            timed = [EngineToTime(name, engine.meta["backend"], engine.path, engine.meta["input_name"]) for name, engine in mine.items()]
            try:
                return time_together(timed, settings_, measure.cpus, measure.eval_inputs, rounds=rounds, folder=folder,
                                     console=ctx.console, timing=ctx.occupancy.timing)
            except HarnessError as exc:
                raise StageError(self.name, f"{entry}: {exc}") from None

        return self._keep_together(groups, {k: config[k] for k in (*TOGETHER_SETTINGS, "cpus")}, rounds, key, ctx, time_them)

    def _keep_together(self, groups: Mapping[str, Mapping[str, Artifact]], config: dict[str, Any], rounds: int, key: dict[str, Any],
                       ctx: RunContext, time_them: Callable[[Mapping[str, Artifact], Path, str], dict[str, Any]]) -> dict[str, Artifact]:
        """Each group of two engines or more (entry name → its engines by row name) timed together by ``time_them`` and kept
        as a ``timed-together`` entry, keyed by its engines; a failure is recorded and the run goes on."""
        together: dict[str, Artifact] = {}
        for name, mine in groups.items():
            if len(mine) < 2:
                continue
            together_cfg = {**config, "rounds": rounds, "engines": list(mine)}

            def make(folder: Path, mine: Mapping[str, Artifact] = mine, name: str = name) -> Made:
                return _together_made(folder, time_them(mine, folder, name), ctx.run_dir.name)

            try:
                together[name] = ctx.produce(self.name, name, config=together_cfg, parents=list(mine.values()), make=make,
                                             extra_key={**key, "together": TOGETHER_VERSION})
            except StageError as exc:
                ctx.record_problem(self.name, name, "failed", exc.reason, together_cfg)
            ctx.save_manifest()
        return together

    def _baseline(self, folder: Path, name: str, model_artifact: Artifact, onnx: Artifact | None, measure: Measurer,
                  ctx: RunContext) -> Made:
        """The FP32 reference every engine is scored against: the PyTorch model, or an ONNX entry's own file on ONNX Runtime."""
        generic = ctx.recipe.task == "generic"
        if model_artifact.kind == ONNX_MODEL:
            input_name = onnx.meta["input_name"] if onnx is not None else model_artifact.meta["inputs"][0]["name"]
            request = MeasureRequest(name, "onnxruntime", model_artifact.path, input_name, timed=True, every_output=generic)
        else:
            declared = model_artifact.meta.get("inputs")  # a model with declared inputs is fed by their names
            input_name = declared[0]["name"] if declared else INPUT_NAME
            request = MeasureRequest(name, BASELINE_RUNTIME, model_artifact.folder / RECORD, input_name, timed=True,
                                     torch_model_config=ctx.recipe.model.model_dump(mode="json"), every_output=generic)
        result = measure.measure(request, folder)
        outputs = load_outputs(folder, every_output=generic)
        labels = ctx.dataset.eval.labels  # None on unlabelled data, where agreement with FP32 is the only measure
        count = len(next(iter(outputs.values()))) if generic else len(outputs)
        metrics = {"top1": None if labels is None or generic else top1(outputs, labels), "eval_samples": count,
                   "size_bytes": model_artifact.size,
                   "threads": measure.threads, "runtime": result["runtime"], "isolated": True,
                   **{k: result[k] for k in MEASURED_KEYS if k in result}}
        return self._write(folder, name, metrics, ctx.run_dir.name)

    def _engine(self, folder: Path, name: str, engine: Artifact, reference: Any, measure: Measurer, ctx: RunContext,
                macs: int | None = None) -> Made:
        """Score and time one engine; a prepared ONNX standing in for an engine (``meta["predicts"]``) is scored only,
        on the runtime it names, and labelled as a prediction: its latency there says nothing about its engine."""
        predicts = engine.meta.get("predicts")
        runs_on = engine.meta.get("runs_on", engine.meta["backend"])
        wants_check = _wants_cross_check(ctx, engine)
        generic = ctx.recipe.task == "generic"
        request = MeasureRequest(name, runs_on, engine.path, engine.meta["input_name"], timed=not predicts, cross_check=wants_check,
                                 artifact=engine, every_output=generic)
        result = measure.measure(request, folder)
        try:
            if "scores" in result:  # scored on the device: its outputs were too large to send back
                scored = _device_scores(result["scores"], ctx.dataset.eval.groups)
            else:
                outputs = load_outputs(folder, every_output=generic)
                scored = (output_scores(outputs, reference) if generic
                          else scores(outputs, reference, ctx.dataset.eval.labels, ctx.dataset.eval.groups))
        except ValueError as exc:
            raise StageError(self.name, f"{name}: {exc}") from None
        metrics: dict[str, Any] = {**scored, "threads": measure.threads, "runtime": result["runtime"], "isolated": True,
                                   **measure.where()}
        if predicts:
            metrics["predicted"] = {"engine": predicts, "on": runs_on, "label": prediction_label(engine.meta["backend"], runs_on)}
        else:
            metrics.update(size_bytes=engine_bytes(engine), **{k: result[k] for k in MEASURED_KEYS if k in result})
            if macs is not None:
                metrics["macs_per_sample"] = macs
        if wants_check:  # the harness ran the tool in its timing rounds, here or on the device
            theirs = result.get("cross_check_tool") or {"status": "failed", "reason": "the measuring harness ran no benchmark tool"}
            metrics["cross_check"] = _compare(theirs, result["latency"], result.get("bare_latency"))
        return self._write(folder, name, metrics, ctx.run_dir.name)

    def _peak(self, results: dict[str, Artifact], threads: int, cpus: tuple[int, ...] | None, device: Mapping[str, Any],
              ctx: RunContext) -> None:
        """The machine's FP32 and INT8 GEMM rates on the engines' threads and CPUs (``edgeship.peak``), measured once per
        machine and setting and kept in the store; a failure is recorded and the run goes on without fractions of peak."""
        config = {"threads": threads, "cpus": list(cpus) if cpus else None}

        def make(folder: Path) -> Made:
            with ctx.console.status("measuring this machine's peak FP32 and INT8 GEMM rates"):
                try:
                    with ctx.occupancy.timing():
                        peak = measure_peak_isolated(threads, cpus, folder)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    raise StageError(self.name, f"{PEAK}: {exc}") from None
            return Made(folder / "peak.json", "peak", {"metrics": peak.model_dump(mode="json")})

        try:
            results[PEAK] = ctx.produce(self.name, PEAK, config=config, parents=[], make=make,
                                        extra_key={"device": device, "peak": PEAK_VERSION})
        except StageError as exc:
            ctx.record_problem(self.name, PEAK, "failed", exc.reason, config)

    @staticmethod
    def _write(folder: Path, name: str, metrics: dict[str, Any], run: str) -> Made:
        """``measured_in``: the run that timed the engine; a later run that reuses the result compares its p50 knowing so."""
        metrics["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        metrics["measured_in"] = run
        target = folder / "result.json"
        target.write_text(json.dumps({"engine": name, "metrics": metrics}, indent=2))
        return Made(target, "validation", {"engine": name, "metrics": metrics})


def load_outputs(folder: Path, *, every_output: bool) -> Any:
    """A result's outputs: the class scores (``logits.npy``), or every output by name (``outputs.npz``)."""
    if not every_output:
        return np.load(folder / "logits.npy")
    with np.load(folder / "outputs.npz") as archive:
        return {name: archive[name] for name in archive.files}


def _compare(theirs: dict[str, Any], latency: dict[str, Any], bare: dict[str, Any] | None) -> dict[str, Any]:
    """Our p50 beside the backend tool's median (``theirs``, status ``ok`` or ``failed``).

    ``ratio`` compares our p50 of the timed call (the number the report uses) with the tool's median, round by round
    where the harness kept both (the median of the rounds' ratios: each round's two figures are measured seconds apart,
    so background load that changes between rounds cancels), else as the ratio of the two medians
    (``ratio_of_medians``, kept beside it). ``bare_ratio`` compares the engine call alone, timed by our harness, so a
    difference can be told apart: harness (bare_ratio) or the call around the engine (ratio / bare_ratio).
    """
    if theirs.get("status") != "ok":
        return theirs
    tool_rounds = theirs.get("round_medians_ms") or []
    ours_rounds = theirs.get("ours_round_p50_ms") or {}

    def paired(key: str, whole: float) -> float:
        mine = ours_rounds.get(key) or []
        if len(mine) != len(tool_rounds) or not mine:
            return whole / theirs["median_ms"]
        return float(np.median([m / t for m, t in zip(mine, tool_rounds, strict=True)]))

    ratio = paired("latency", latency["p50_ms"])
    check = {**theirs, "ours_p50_ms": latency["p50_ms"], "ratio": round(ratio, 4),
             "ratio_of_medians": round(latency["p50_ms"] / theirs["median_ms"], 4), "within_5pct": abs(ratio - 1) <= 0.05}
    if bare is not None:
        check.update(ours_bare_p50_ms=bare["p50_ms"], bare_ratio=round(paired("bare", bare["p50_ms"]), 4),
                     call_overhead_ms=round(call_overhead_us(latency, bare) / 1e3, 4))  # the report's overhead figure
    return check


def _macs(onnx: Artifact | None, ctx: RunContext) -> int | None:
    """Multiply-accumulates per sample of the exported model (``edgeship.macs``), or ``None`` with a note on the console."""
    if onnx is None:
        return None
    feed = model_inputs(ctx.dataset.eval, ctx.recipe.data.preprocessing, onnx.meta.get("input_name", INPUT_NAME), count=1)
    try:
        return onnx_macs(onnx.path, feed)
    except ValueError as exc:
        ctx.console.print(f"[yellow]⚠ validate: no MAC count, so no fraction of peak: {escape(str(exc))}[/yellow]", soft_wrap=True)
        return None


def prediction_label(backend: str, runs_on: str) -> str:
    return f"predicted on {display_name(runs_on)}, not measured on {display_name(backend)}"


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


def _device_scores(scored: Mapping[str, Any], groups: Sequence[str] | None) -> dict[str, Any]:
    """A device's scores of its own outputs, with the agreement's interval redone over ``groups`` (the photos, which
    only the host knows) from the per-sample hits it sent back; an agent too old to send them keeps its interval,
    which takes the samples as independent (``top1_agreement_groups`` None says so). ValueError on hits that do not
    match the evaluation split."""
    scored = dict(scored)
    packed = scored.pop("top1_hits", None)
    if packed is not None and groups:  # no groups (an empty tuple): the samples are independent, Wilson's interval stands
        count = scored.get("eval_samples")
        if count != len(groups):
            raise ValueError(f"the device scored {count} samples, the evaluation split has {len(groups)}")
        scored.update(agreement_interval(unpack_hits(packed, len(groups)), groups))
    return scored


def _together_made(folder: Path, metrics: dict[str, Any], run: str) -> Made:
    """A ``timed-together`` entry, stamped with when and in which run its rounds ran."""
    metrics = {**metrics, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "measured_in": run}
    (folder / "together.json").write_text(json.dumps(metrics, indent=2))
    return Made(folder / "together.json", "timed-together", {"metrics": metrics})
