"""The ``distill`` stage: the pruned (or a named) student recovers accuracy from the teacher.

The student trains on the transfer set with the recipe's objective (soft targets,
soft + hard, logits MSE, optional FitNets hints), validated each epoch on the
held-out split, with early stopping and the best epoch kept; an interrupted run
resumes from its last epoch checkpoint. For the report, the same student is also
fine-tuned on hard labels alone (same epochs, seed and schedule, cached apart), so
the run shows what distillation bought over plain fine-tuning. A model without labels
(declared inputs, named arrays) learns the teacher's outputs on the training arrays and
is scored by its fidelity to them (``pipeline/workload.py``); it has no ablation.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgeship.artifacts import Artifact
from edgeship.data import check_samples, fingerprint_arrays, fingerprint_samples, load_samples, read_arrays
from edgeship.errors import RecipeError
from edgeship.models import input_records, load_model
from edgeship.pipeline.base import Made, RunContext
from edgeship.pipeline.model import ModelStage, check_feed, input_shape
from edgeship.pipeline.workload import Workload, workload_for
from edgeship.recipe import DistillConfig
from edgeship.render.plots import save_png, training_figure

if TYPE_CHECKING:
    from torch import nn

    from edgeship.training import Batches

ABLATION = "distill-ablation"
Source = np.ndarray | dict[str, np.ndarray] | None  # distill.transfer_source read: images, or a named-input model's arrays
STRUCTURE_FILES = ("base.pt", "history.json")  # a pruned student's structure travels with its weights


class DistillStage:
    name: ClassVar[str] = "distill"

    def run(self, inputs: Mapping[str, Artifact], cfg: DistillConfig, ctx: RunContext) -> dict[str, Artifact]:
        teacher = inputs["teacher"] if cfg.teacher is None else ModelStage(role="teacher").run({}, cfg.teacher, ctx)["model"]
        if cfg.student is not None:
            student = ModelStage(role="student", train=False).run({}, cfg.student, ctx)["model"]
        else:
            student = inputs["student"]
            if student.id == teacher.id:
                raise RecipeError("'distill': there is no student: enable prune (the pruned model is the student) or name a "
                                  "model in distill.student")
        mask = _mask_index(cfg, ctx)  # a bad padding_mask fails before any training
        source = self._source_samples(cfg, ctx) if cfg.transfer_source is not None else None  # read once: key and training
        key = {"dataset": ctx.dataset.fingerprint, "seed": ctx.recipe.seed, "transfer": self._transfer_key(cfg, ctx, source)}
        ablation = None
        if cfg.ablation and cfg.transfer == "labeled":
            config = {"train": cfg.train.model_dump(mode="json"), "patience": cfg.patience, "transfer_size": cfg.transfer_size}
            work = ctx.store.scratch(ctx.artifact_id(ABLATION, config=config, parents=[student], extra_key=key))
            ablation = ctx.produce(ABLATION, "hard-label fine-tune", config=config, parents=[student], extra_key=key,
                                   make=lambda folder: self._make(folder, None, student, cfg, ctx, work / "train.ckpt", None, None))
            ctx.save_manifest()
        unset = {"padding_mask"} if cfg.padding_mask is None else set()  # one made before padding_mask keeps its key
        config = cfg.model_dump(mode="json", exclude={"enabled", "ablation"} | unset)
        work = ctx.store.scratch(ctx.artifact_id(self.name, config=config, parents=[teacher, student], extra_key=key))
        distilled = ctx.produce(self.name, _label(cfg), config=config, parents=[teacher, student], extra_key=key,
                                make=lambda folder: self._make(folder, teacher, student, cfg, ctx, work / "train.ckpt", source, mask))
        publish(distilled, ablation, cfg, ctx.run_dir / "distill", figures_split(ctx.recipe.validate_.split))
        ctx.manifest.annotate(self.name, _label(cfg), {"history": distilled.meta["history"]})
        if ablation is not None:
            ctx.manifest.annotate(ABLATION, "hard-label fine-tune", {"history": ablation.meta["history"]})
        return {"model": distilled}

    # -- training ------------------------------------------------------------------------------------------

    def _make(self, folder: Path, teacher_artifact: Artifact | None, student_artifact: Artifact, cfg: DistillConfig,
              ctx: RunContext, checkpoint: Path, source: Source, mask: int | None) -> Made:
        """Distil ``student`` from ``teacher`` (or, with no teacher, fine-tune it on hard labels: the ablation); ``mask``:
        the position of ``padding_mask`` among the inputs."""
        import torch

        from edgeship.distillation import Hint, distiller
        from edgeship.training import HardLabels, fit
        from edgeship.zoo.train import seed_everything

        seed_everything(ctx.recipe.seed)
        student = load_model(student_artifact, ctx.recipe.model)
        work = workload_for(teacher_artifact or student_artifact, ctx.dataset, ctx.recipe.data.preprocessing,
                            lambda artifact: load_model(artifact, ctx.recipe.model))
        transfer = self._transfer(cfg, ctx, source, work)
        score = _scorer(ctx, work)
        scores: dict[str, Any] = {"measure": work.measure, "student_before": score(student)}
        started = time.perf_counter()
        fit_args = {"seed": ctx.recipe.seed, "console": ctx.console, "patience": cfg.patience, "checkpoint": checkpoint,
                    "stage": self.name, "measure": {"top1": "top-1"}.get(work.measure, work.measure)}
        if teacher_artifact is None:
            history = fit(HardLabels(student), transfer, lambda: score(student, val_only=True), cfg.train,
                          label="hard-label fine-tune (ablation)", **fit_args)
        else:
            teacher = load_model(teacher_artifact, ctx.recipe.model)
            scores["teacher"] = score(teacher)
            example = transfer.batch(np.arange(min(len(transfer), 8)))[0]
            hints = [Hint(h.student, h.teacher or h.student) for h in cfg.hints]
            with distiller(student, teacher, example, objective=cfg.objective, temperature=cfg.temperature, alpha=cfg.alpha,
                           hints=hints, hint_weight=cfg.hint_weight, hint_mask=mask) as module:
                history = fit(module, transfer, lambda: score(student, val_only=True), cfg.train, label=f"distill ({_label(cfg)})",
                              **fit_args)
        seconds = time.perf_counter() - started
        scores["student_after"] = score(student)
        target = folder / "model.pt"
        torch.save(student.state_dict(), target)
        for name in STRUCTURE_FILES:
            if (student_artifact.folder / name).is_file():
                shutil.copyfile(student_artifact.folder / name, folder / name)
        metrics = {**scores, "epochs_run": len(history.val_accuracy), "best_epoch": history.best_epoch,
                   "stopped_early": history.stopped_early, "train_seconds": round(seconds, 2),
                   "transfer": {"samples": len(transfer), "labeled": transfer.labels is not None}}
        key = f"val_{work.measure}"
        before, after = scores["student_before"][key], scores["student_after"][key]
        if after < before:
            metrics["warning"] = (f"training left the student worse on validation than it started ({before:.4g} → {after:.4g} "
                                  f"{work.measure}); try a lower learning rate or fewer epochs")
            ctx.console.print(f"[yellow]{self.name}: {metrics['warning']}[/yellow]")
        if teacher_artifact is not None:
            metrics["objective"] = {"name": cfg.objective, "temperature": cfg.temperature, "alpha": cfg.alpha,
                                    "hints": [h.model_dump() for h in cfg.hints], "hint_weight": cfg.hint_weight,
                                    "padding_mask": cfg.padding_mask}
        (folder / "training.json").write_text(json.dumps({"metrics": metrics, "history": history.as_dict()}, indent=2))
        meta = {k: v for k, v in student_artifact.meta.items() if k in ("input_shape", "num_classes", "classes", "architecture",
                                                                         "model_config", "pruning", "inputs", "outputs")}
        meta.update(source="distilled" if teacher_artifact is not None else "hard-label fine-tuned", metrics=metrics,
                    history=history.as_dict())
        return Made(target, "pytorch-state-dict", meta)

    @staticmethod
    def _transfer(cfg: DistillConfig, ctx: RunContext, source: Source, work: Workload) -> Batches:
        """The recipe's unlabeled ``source`` samples (images, or named arrays in the model's input order), the training
        arrays of a model without labels, or the training images (their labels unless transfer: unlabeled)."""
        from edgeship.training import ArrayBatches, TransferSet

        train, p = ctx.dataset.train, ctx.recipe.data.preprocessing
        if isinstance(source, dict):
            arrays = {record["name"]: source[record["name"]] for record in input_records(ctx.recipe.model)}
            return _padded(ArrayBatches(arrays), cfg, ctx, str(cfg.transfer_source))
        if source is not None:
            return TransferSet(source, None)
        if train.arrays:
            return _padded(work.transfer(cfg.transfer_size), cfg, ctx, "the training split")
        labels = train.labels if cfg.transfer == "labeled" else None
        size = cfg.transfer_size or len(train)
        return TransferSet(train.images[:size], None if labels is None else labels[:size], p)

    @staticmethod
    def _source_samples(cfg: DistillConfig, ctx: RunContext) -> Source:
        assert cfg.transfer_source is not None
        if ctx.recipe.model.named_inputs:  # named arrays, checked against the declared inputs like the data
            arrays = read_arrays(cfg.transfer_source)
            check_feed(arrays, input_records(ctx.recipe.model), cfg.transfer_source)
            return {name: array[: cfg.transfer_size or len(array)] for name, array in arrays.items()}
        shape = input_shape(ctx.dataset, ctx.recipe.data.preprocessing)
        samples = load_samples(cfg.transfer_source, ctx.recipe.data.preprocessing, input_shape=shape, what="transfer data")
        samples = samples[: cfg.transfer_size or len(samples)]
        check_samples(samples, str(cfg.transfer_source), shape, what="transfer")
        return samples

    @staticmethod
    def _transfer_key(cfg: DistillConfig, ctx: RunContext, source: Source) -> str:
        if source is None:
            return f"{ctx.dataset.name}:train"
        if isinstance(source, dict):
            return fingerprint_arrays(source)
        return fingerprint_samples(source, ctx.recipe.data.preprocessing, str(cfg.transfer_source))


def _mask_index(cfg: DistillConfig, ctx: RunContext) -> int | None:
    """The position of ``padding_mask`` among the model's declared inputs (the order the student is called with)."""
    if cfg.padding_mask is None:
        return None
    names = [spec.name for spec in ctx.recipe.model.inputs]
    if cfg.padding_mask not in names:
        raise RecipeError(f"'distill.padding_mask': {cfg.padding_mask!r} is not one of the model's declared inputs "
                          f"({', '.join(names) or 'none declared'})")
    return names.index(cfg.padding_mask)


def _padded(batches: Batches, cfg: DistillConfig, ctx: RunContext, where: str) -> Batches:
    """``batches`` grouped by the length ``padding_mask`` marks and cut to it, on the inputs that share its positions."""
    from edgeship.training import ArrayBatches, right_padded

    if cfg.padding_mask is None or not isinstance(batches, ArrayBatches):
        return batches
    mask = batches.arrays[cfg.padding_mask]
    if mask.ndim != 2 or not right_padded(mask):
        raise RecipeError(f"'distill.padding_mask': {where}: array {cfg.padding_mask!r} must be (samples, positions) with each "
                          "row's marked positions first and its padding after")
    declared = {spec.name: spec.shape for spec in ctx.recipe.model.inputs}
    dim = declared[cfg.padding_mask][1]
    positions = tuple(name for name, shape in declared.items() if isinstance(dim, str) and len(shape) > 1 and shape[1] == dim)
    return replace(batches, padding=cfg.padding_mask, positions=positions)


def _label(cfg: DistillConfig) -> str:
    text = {"soft": f"soft T={cfg.temperature:g}", "soft_hard": f"soft+hard T={cfg.temperature:g} alpha={cfg.alpha:g}",
            "mse": "logits MSE", "cosine": "output cosine"}[cfg.objective]
    return text + (f" + {len(cfg.hints)} hint{'s' * (len(cfg.hints) > 1)}" if cfg.hints else "")


def _scorer(ctx: RunContext, work: Workload) -> Any:
    """``score(model)``: the workload's measure (top-1, or fidelity to the teacher's outputs) on the validation split
    (model selection) and the evaluation split (the report)."""
    on_val, on_eval = work.scorer(ctx.dataset.val), work.scorer(ctx.dataset.eval)

    def score(model: nn.Module, *, val_only: bool = False) -> Any:
        val = on_val(model)
        if val_only:
            return val
        return {f"val_{work.measure}": val, f"eval_{work.measure}": on_eval(model)}

    return score


# -- the comparison in the run folder --------------------------------------------------------------------------

def figures_split(validate_split: str) -> str:
    """The split a run's distillation figures are shown on: ``val`` when the run is scored on validation (``validate.split``),
    so that a search reading them never sees the evaluation split; ``eval`` otherwise."""
    return "val" if validate_split == "validation" else "eval"


def comparison(distilled: Mapping[str, Any], ablation: Mapping[str, Any] | None, split: str = "eval") -> dict[str, Any]:
    """Teacher, student before recovery, hard-label fine-tune and distilled, side by side (the measure, val and eval):
    under ``top1`` for a classifier, ``cosine`` (fidelity to the teacher's outputs) for a model without labels. ``split``:
    the one the differences are taken on and the renderings show, ``val`` in a run scored on validation (a sweep's trial),
    whose figures must not come from the evaluation split."""
    measure = distilled.get("measure", "top1")
    rows = {"teacher": distilled["teacher"], "student_before": distilled["student_before"],
            "hard_label_finetune": ablation["student_after"] if ablation else None, "distilled": distilled["student_after"]}
    if split == "val":  # the evaluation figures stay in the artifact (a later run scored on evaluation shows them), not here
        rows = without_evaluation(rows)
    out: dict[str, Any] = {"measure": measure, "split": split, measure: rows}
    on_eval = f"{split}_{measure}"
    out["distilled_drop_vs_teacher_points"] = round(100 * (rows["teacher"][on_eval] - rows["distilled"][on_eval]), 3)
    if ablation:
        out["gain_over_hard_labels_points"] = round(100 * (rows["distilled"][on_eval] - rows["hard_label_finetune"][on_eval]), 3)
    else:
        out["hard_label_finetune_note"] = "not run: distill.ablation is off or the transfer set has no labels"
    return out


def without_evaluation(value: Any) -> Any:
    """``value`` with every ``eval_*`` figure left out, at any depth."""
    if isinstance(value, Mapping):
        return {k: without_evaluation(v) for k, v in value.items() if not str(k).startswith("eval_")}
    return value


def publish(distilled: Artifact, ablation: Artifact | None, cfg: DistillConfig, target: Path, split: str = "eval") -> None:
    """``distill.json`` (the comparison and both training histories) and ``curves.png`` in the run folder; ``split``: see
    ``comparison``."""
    target.mkdir(parents=True, exist_ok=True)
    shown = without_evaluation if split == "val" else (lambda value: value)
    document = {"objective": _label(cfg),
                **comparison(distilled.meta["metrics"], ablation.meta["metrics"] if ablation else None, split),
                "distill": {"metrics": shown(distilled.meta["metrics"]), "history": distilled.meta["history"]},
                "hard_label_finetune": ({"metrics": shown(ablation.meta["metrics"]), "history": ablation.meta["history"]}
                                        if ablation else None)}
    (target / "distill.json").write_text(json.dumps(document, indent=2))
    plot_curves(document, target / "curves.png")


def plot_curves(document: Mapping[str, Any], path: Path) -> None:
    histories = {f"distilled ({document['objective']})": document["distill"]["history"]}
    if document.get("hard_label_finetune"):
        histories["hard-label fine-tune"] = document["hard_label_finetune"]["history"]
    measure = document.get("measure", "top1")
    save_png(training_figure(histories, document[measure], measure), path)
