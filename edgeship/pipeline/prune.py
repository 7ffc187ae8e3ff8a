"""The ``prune`` stage: a smaller student from the teacher, judged by measured latency.

Structured: Torch-Pruning (DepGraph) removes coupled channels; per-group ratios come
from a sensitivity scan (cached by model + data hash) chosen to meet a MACs target
with the least accuracy loss, then an iterative prune → fine-tune schedule.
Unstructured: global magnitude masks, fine-tuned, made permanent. Either way the
model before and after is exported and timed on ONNX Runtime FP32 with the same
harness as the validate stage: a MACs ratio alone is not a result. What "accuracy"
and "fine-tune" mean is the workload's: top-1 and labels for an image classifier, the
unpruned model's own outputs for a model without labels (``pipeline/workload.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeship.artifacts import RECORD, Artifact, ArtifactStore
from edgeship.backends.onnxruntime import OnnxRuntimeRunner
from edgeship.measure import summarize, time_interleaved
from edgeship.models import load_model
from edgeship.pipeline.base import Made, RunContext
from edgeship.pipeline.export import _simplify
from edgeship.pipeline.workload import Workload, workload_for
from edgeship.progress import progress_bar
from edgeship.recipe import PruneConfig
from edgeship.render.plots import save_png, sensitivity_figure
from edgeship.render.text import student_measure

if TYPE_CHECKING:
    import torch
    from torch import nn


class PruneStage:
    name: ClassVar[str] = "prune"

    def run(self, inputs: Mapping[str, Artifact], cfg: PruneConfig, ctx: RunContext) -> dict[str, Artifact]:
        teacher = inputs["model"]
        key = {"dataset": ctx.dataset.fingerprint, "seed": ctx.recipe.seed, "threads": ctx.recipe.threads(),
               "validate": ctx.recipe.validate_.model_dump(mode="json", include={"warmup", "iterations", "min_seconds", "batch_size"})}
        parents = [teacher]
        curves: Artifact | None = None
        if cfg.method == "structured" and cfg.ratios is None and cfg.sensitivity.enabled and not cfg.global_pruning:
            curves = self._sensitivity(teacher, cfg, ctx)
            parents.append(curves)
        student = ctx.produce(self.name, f"{cfg.method} {cfg.importance}" if cfg.method == "structured" else "magnitude",
                              config=cfg.model_dump(mode="json"), parents=parents, extra_key=key,
                              make=lambda folder: self._make(folder, teacher, curves, cfg, ctx))
        _publish(student, ctx.store, ctx.run_dir / "prune")
        return {"model": student}

    # -- sensitivity ---------------------------------------------------------------------------------------

    def _sensitivity(self, teacher: Artifact, cfg: PruneConfig, ctx: RunContext) -> Artifact:
        config = {"sensitivity": cfg.sensitivity.model_dump(mode="json", exclude={"max_drop"}), "importance": cfg.importance,
                  "ignore_layers": list(cfg.ignore_layers)}
        curves = ctx.produce("prune-sensitivity", "sensitivity", config=config, parents=[teacher],
                             extra_key={"dataset": ctx.dataset.fingerprint},
                             make=lambda folder: self._scan(folder, teacher, cfg, ctx))
        document = json.loads(curves.path.read_text())
        ctx.manifest.annotate("prune-sensitivity", "sensitivity", {**document, "max_drop": cfg.sensitivity.max_drop})
        return curves

    def _scan(self, folder: Path, teacher: Artifact, cfg: PruneConfig, ctx: RunContext) -> Made:
        from edgeship.pruning import layer_groups, sensitivity_scan

        model = load_model(teacher, ctx.recipe.model)
        work = _workload(teacher, ctx)
        example = work.example()
        evaluate = work.scorer(ctx.dataset.val, cfg.sensitivity.val_size)
        base = evaluate(model)
        groups = layer_groups(model, example, cfg.ignore_layers)
        _record_activations(model, cfg, work)
        with progress_bar(ctx.console) as bar:
            task = bar.add_task("sensitivity scan", total=len(groups) * len(cfg.sensitivity.ratios), info=f"{len(groups)} layer groups")
            curves = sensitivity_scan(model, example, groups, cfg.sensitivity.ratios, evaluate, ignore=cfg.ignore_layers,
                                      importance=cfg.importance, on_step=lambda: bar.advance(task))
        document = {"base_accuracy": base, "measure": work.measure, "val_images": min(cfg.sensitivity.val_size, len(ctx.dataset.val)),
                    "importance": cfg.importance if cfg.importance != "taylor" else "l1 (taylor needs gradients; the scan uses L1)",
                    "curves": curves}
        target = folder / "sensitivity.json"
        target.write_text(json.dumps(document, indent=2))
        _plot_sensitivity(document, cfg.sensitivity.max_drop, folder / "sensitivity.png")
        return Made(target, "prune-sensitivity", {"groups": groups, "base_accuracy": base})

    # -- the pruning itself ----------------------------------------------------------------------------------

    def _make(self, folder: Path, teacher: Artifact, curves: Artifact | None, cfg: PruneConfig, ctx: RunContext) -> Made:
        import torch

        from edgeship.pruning import count
        from edgeship.zoo.train import seed_everything

        seed_everything(ctx.recipe.seed)
        model = load_model(teacher, ctx.recipe.model)
        work = _workload(teacher, ctx)
        example = work.example()
        evaluate, measure = work.scorer(ctx.dataset.val), f"val_{work.measure}"
        macs, params = count(model, example)
        before = {"macs": macs, "parameters": params, measure: evaluate(model)}
        original = copy.deepcopy(model)
        torch.save(model.state_dict(), folder / "base.pt")
        if cfg.method == "unstructured":
            details = self._unstructured(model, cfg, ctx, work)
        else:
            details = self._structured(model, example, work, curves, cfg, ctx, folder)
        macs, params = count(model, example)
        after = {"macs": macs, "parameters": params, measure: evaluate(model)}
        timed = _measure_models({"before": original, "after": model}, work, ctx)
        before.update(timed["before"])
        after.update(timed["after"])
        if after["parameters"] == before["parameters"] and cfg.method == "structured":
            details["warning"] = "no channel was removed: every layer group is ignored, fixed at ratio 0 or past max_drop"
            ctx.console.print(f"[yellow]prune: {details['warning']}[/yellow]")
        metrics = {
            "before": before,
            "after": after,
            "macs_kept": round(after["macs"] / before["macs"], 4),
            "parameters_kept": round(after["parameters"] / before["parameters"], 4),
            "latency_speedup_p50": round(before["latency"]["p50_ms"] / after["latency"]["p50_ms"], 3),
            "measure": work.measure,
            f"{measure}_drop_points": round(100 * (before[measure] - after[measure]), 3),
        }
        target = folder / "model.pt"
        torch.save(model.state_dict(), target)
        (folder / "prune.json").write_text(json.dumps({"metrics": metrics, **details}, indent=2))
        ctx.console.print(f"prune: MACs kept {metrics['macs_kept']:.1%}, parameters kept {metrics['parameters_kept']:.1%}, "
                          f"ORT FP32 p50 {before['latency']['p50_ms']:.3f} → {after['latency']['p50_ms']:.3f} ms "
                          f"(×{metrics['latency_speedup_p50']:.2f}), {student_measure(metrics)}")
        meta = {key: teacher.meta[key] for key in ("input_shape", "num_classes", "classes", "architecture", "model_config",
                                                   "inputs", "outputs") if key in teacher.meta}
        meta.update(source="pruned", pruning={"method": cfg.method, "base_file": "base.pt",
                                              "history_file": "history.json" if cfg.method == "structured" else None},
                    metrics=metrics)
        return Made(target, "pytorch-state-dict", meta)

    def _structured(self, model: nn.Module, example: Any, work: Workload, curves: Artifact | None, cfg: PruneConfig,
                    ctx: RunContext, folder: Path) -> dict[str, Any]:
        from edgeship.pruning import check_runs, count, kept_macs, layer_groups, make_pruner, prune_once, search

        if cfg.bn_sparsity.epochs:
            self._bn_sparsity(model, cfg, ctx)
        base_macs = count(model, example)[0]
        groups = layer_groups(model, example, cfg.ignore_layers)
        common = {"ignore": cfg.ignore_layers, "importance": cfg.importance, "round_to": cfg.round_to}
        plan: dict[str, Any] = {"groups": groups, "target_macs_kept": cfg.keep_macs}
        choose = self._chooser(groups, curves, cfg, plan)
        _record_activations(model, cfg, work)
        if cfg.ratios is not None:
            t = 1.0
        elif cfg.latency_target is not None:
            base_ms = _measure(model, work, ctx, quick=True)["latency"]["p50_ms"]
            target = cfg.latency_target.p50_ms / base_ms
            with ctx.console.status(f"searching ratios for p50 ≤ {cfg.latency_target.p50_ms} ms on {cfg.latency_target.backend}"):
                t, kept = search(lambda t: _measure(prune_once(model, example, **choose(t), **common), work, ctx,
                                                    quick=True)["latency"]["p50_ms"] / base_ms, target, iterations=8)
            plan.update(target_p50_ms=cfg.latency_target.p50_ms, base_p50_ms=base_ms, expected_p50_ms=round(kept * base_ms, 4))
            if kept > target:
                plan["warning"] = (f"latency target not reached: {kept * base_ms:.3f} ms at the most pruning allowed, "
                                   f"asked {cfg.latency_target.p50_ms} ms")
        else:
            t, _ = search(lambda t: kept_macs(model, example, base_macs, **choose(t), **common), cfg.keep_macs)
        chosen = choose(t)
        ratios, global_ratio = chosen.get("ratios"), chosen.get("global_ratio")
        plan.update(ratios=ratios, global_ratio=global_ratio,
                    expected_macs_kept=kept_macs(model, example, base_macs, **chosen, **common))
        if cfg.latency_target is None and plan["expected_macs_kept"] > cfg.keep_macs + 0.01:
            plan["warning"] = (f"target not reached: keeping {plan['expected_macs_kept']:.1%} of MACs, asked {cfg.keep_macs:.0%} "
                               f"(layers past sensitivity.max_drop={cfg.sensitivity.max_drop} points are pruned less)")
        if "warning" in plan:
            ctx.console.print(f"[yellow]prune: {plan['warning']}[/yellow]")
        pruner = make_pruner(model, example, ratios=ratios, global_ratio=global_ratio, steps=cfg.steps, **common)
        history_of_steps = []
        for step in range(cfg.steps):
            if cfg.importance == "taylor":
                self._taylor_gradients(model, cfg, work)
            if step:  # the first step's activations were recorded above, before the search
                _record_activations(model, cfg, work)
            pruner.step()
            check_runs(model, example)
            model.zero_grad(set_to_none=True)
            tuned = work.finetune(model, cfg.finetune, seed=ctx.recipe.seed, console=ctx.console, label=f"fine-tune {step + 1}/{cfg.steps}")
            history_of_steps.append({"step": step + 1, "macs": count(model, example)[0], "val_accuracy": tuned})
        (folder / "history.json").write_text(json.dumps(pruner.pruning_history()))
        plan["steps"] = history_of_steps
        return plan

    @staticmethod
    def _chooser(groups: list[str], curves: Artifact | None, cfg: PruneConfig, plan: dict[str, Any]) -> Callable[[float], dict[str, Any]]:
        """How much to prune at strength t in [0, 1]: the recipe's ratios, a global ratio, sensitivity or uniform."""
        from edgeship.pruning import MAX_RATIO, ratios_for_drop

        if cfg.ratios is not None:
            plan["chosen_by"] = "recipe"
            return lambda t: {"ratios": dict(cfg.ratios or {})}
        if cfg.global_pruning:
            plan["chosen_by"] = "global importance ranking"
            return lambda t: {"global_ratio": t}
        if curves is not None:
            document = json.loads(curves.path.read_text())
            base, max_drop = document["base_accuracy"], cfg.sensitivity.max_drop
            plan["chosen_by"] = f"sensitivity (per-group drop ≤ t × {max_drop:g} points)"
            return lambda t: {"ratios": ratios_for_drop(document["curves"], base, t * max_drop)}
        plan["chosen_by"] = "uniform"
        return lambda t: {"ratios": {g: round(MAX_RATIO * t, 4) for g in groups}}

    def _unstructured(self, model: nn.Module, cfg: PruneConfig, ctx: RunContext, work: Workload) -> dict[str, Any]:
        from edgeship.pruning import apply_magnitude_masks, layer_sparsity, make_masks_permanent

        apply_magnitude_masks(model, cfg.sparsity, cfg.ignore_layers)
        tuned = work.finetune(model, cfg.finetune, seed=ctx.recipe.seed, console=ctx.console, label="fine-tune (masked)")
        make_masks_permanent(model)
        sparsity = layer_sparsity(model)
        return {"target_sparsity": cfg.sparsity, "layer_sparsity": sparsity, "fine_tune_val_accuracy": tuned,
                "note": "zeros are stored densely: dense engines (ONNX Runtime, OpenVINO, TFLite, TensorRT) run them no faster"}

    def _bn_sparsity(self, model: nn.Module, cfg: PruneConfig, ctx: RunContext) -> None:
        import torch

        from edgeship.training import train_classifier

        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        weight = cfg.bn_sparsity.weight

        def penalty(_: nn.Module) -> torch.Tensor:
            return weight * sum(bn.weight.abs().sum() for bn in norms)

        train_classifier(model, ctx.dataset.train, ctx.dataset.val, ctx.recipe.data.preprocessing,
                         cfg.finetune.model_copy(update={"epochs": cfg.bn_sparsity.epochs}), seed=ctx.recipe.seed,
                         console=ctx.console, label="BN-γ sparsity training", penalty=penalty)

    def _taylor_gradients(self, model: nn.Module, cfg: PruneConfig, work: Workload) -> None:
        """Accumulate loss gradients over a few training batches: Taylor importance reads weight × grad."""
        model.eval()
        model.zero_grad(set_to_none=True)
        batch = cfg.finetune.batch_size
        for i in range(min(cfg.taylor_batches, -(-len(work.transfer(None)) // batch))):
            work.taylor_loss(model, slice(i * batch, (i + 1) * batch)).backward()


def _record_activations(model: nn.Module, cfg: PruneConfig, work: Workload) -> None:
    if cfg.importance == "activation":
        record_activations(model, work, batches=cfg.activation_batches, batch_size=cfg.finetune.batch_size)


def record_activations(model: nn.Module, work: Workload, *, batches: int, batch_size: int) -> None:
    """Activation importance's statistics: the inputs every layer reads on the first ``batches`` training batches."""
    from edgeship.pruning import recording_activations

    with recording_activations(model):
        for i in range(min(batches, -(-len(work.transfer(None)) // batch_size))):
            work.feed(model, slice(i * batch_size, (i + 1) * batch_size))


def _workload(teacher: Artifact, ctx: RunContext) -> Workload:
    return workload_for(teacher, ctx.dataset, ctx.recipe.data.preprocessing, lambda artifact: load_model(artifact, ctx.recipe.model))


def _measure(model: nn.Module, work: Workload, ctx: RunContext, *, quick: bool = False) -> dict[str, Any]:
    """ONNX size and measured ORT FP32 latency of one model (``quick`` for searches)."""
    return _measure_models({"model": model}, work, ctx, quick=quick)["model"]


def _measure_models(models: Mapping[str, nn.Module], work: Workload, ctx: RunContext, *,
                    quick: bool = False) -> dict[str, dict[str, Any]]:
    """ONNX size and measured ORT FP32 latency (batch 1, threads pinned, the validate harness) of each model.

    Several models are timed in alternating rounds, so their ratio is measured under the same load.
    """
    cfg, threads = ctx.recipe.validate_, ctx.recipe.threads()
    feed = work.timing_feed()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        files, calls = {}, {}
        for name, model in models.items():
            raw, files[name] = Path(tmp) / f"{name}.raw.onnx", Path(tmp) / f"{name}.onnx"
            work.export(model.eval(), raw, ctx.recipe.export.opset)
            _simplify(raw, files[name])
            runner = stack.enter_context(OnnxRuntimeRunner(files[name], threads=threads))
            calls[name] = lambda r=runner: r.infer(feed)
        warmup, iterations, seconds = (5, 50, 0.3) if quick else (cfg.warmup, cfg.iterations, cfg.min_seconds)
        with ctx.occupancy.timing():
            times = time_interleaved(calls, warmup=warmup, iterations=iterations, min_seconds=seconds, rounds=1 if quick else 5)
        return {name: {"onnx_bytes": files[name].stat().st_size, "latency": summarize(times[name], 1).as_dict(), "threads": threads}
                for name in models}


def _plot_sensitivity(document: Mapping[str, Any], max_drop: float, path: Path) -> None:
    save_png(sensitivity_figure(document, max_drop), path)


def _publish(student: Artifact, store: ArtifactStore, target: Path) -> None:
    """Copy the stage's human-readable files (JSON, PNG) into the run folder."""
    target.mkdir(parents=True, exist_ok=True)
    for file in student.folder.glob("*.json"):
        if file.name != RECORD:
            shutil.copyfile(file, target / file.name)
    for parent_id in student.parents:
        parent = store.folder(parent_id)
        for name in ("sensitivity.json", "sensitivity.png"):
            if (parent / name).is_file():
                shutil.copyfile(parent / name, target / name)
