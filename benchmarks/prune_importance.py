"""How well each importance ranks channels, before any fine-tune: every prunable group cut at the same ratio, scored on
the validation split (never the evaluation split, so the choice it informs stays honest).

    python benchmarks/prune_importance.py recipes/minilm_pruned.yaml [--ratios 0.3 0.5] [--importance l1 activation]
        [--val 256] [--batches 8]

For a model with declared inputs (`task: generic`, a factory with `model.inputs`): the score is the worst output's mean
cosine with the unpruned model, as the prune stage's sensitivity scan measures it. Activation importance
records each layer's inputs on the first ``--batches`` batches of the training split (the recipe's fine-tune batch size),
as the prune stage does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeship.artifacts import Artifact
from edgeship.data import load_dataset
from edgeship.models import input_records, instantiate
from edgeship.pipeline.prune import record_activations
from edgeship.pipeline.workload import workload_for
from edgeship.pruning import count, layer_groups, prune_once
from edgeship.recipe import load_recipe


def compare(path: Path, *, ratios: list[float], importances: list[str], val: int, batches: int) -> tuple[str, list[dict[str, float]]]:
    """The score of every importance at every ratio: ``(measure, [{"ratio", "macs_kept", <importance>: score, …}])``."""
    recipe = load_recipe(path)
    if not recipe.model.inputs:
        raise SystemExit(f"{path}: model.inputs: this benchmark takes a model with declared inputs (a task: generic recipe)")
    cfg = recipe.prune
    dataset = load_dataset(recipe.data, recipe.calibration, seed=recipe.seed)
    model = instantiate(recipe.model, in_channels=0, num_classes=0).eval()  # a factory: neither is read
    meta = {"inputs": input_records(recipe.model), "outputs": list(recipe.model.outputs or ["output"])}
    teacher = Artifact(id="benchmark", kind="pytorch-model", stage="model", path=Path("unused"), sha256="", size=0, meta=meta)
    work = workload_for(teacher, dataset, recipe.data.preprocessing, lambda _: model)
    example, score = work.example(), work.scorer(dataset.val, val)
    record_activations(model, work, batches=batches, batch_size=cfg.finetune.batch_size)
    groups = layer_groups(model, example, cfg.ignore_layers)
    base_macs = count(model, example)[0]
    rows = []
    for ratio in ratios:
        row = {"ratio": ratio}
        for importance in importances:
            pruned = prune_once(model, example, ratios=dict.fromkeys(groups, ratio), ignore=cfg.ignore_layers,
                                importance=importance, round_to=cfg.round_to)
            row["macs_kept"], row[importance] = count(pruned, example)[0] / base_macs, score(pruned)
        rows.append(row)
    return work.measure, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--importance", nargs="+", default=["l1", "activation"])
    parser.add_argument("--val", type=int, default=256, help="validation samples scored")
    parser.add_argument("--batches", type=int, default=8, help="training batches activation importance records")
    args = parser.parse_args()
    started = time.perf_counter()
    measure, rows = compare(args.recipe, ratios=args.ratios, importances=args.importance, val=args.val, batches=args.batches)
    table = Table(title=f"{args.recipe.stem}: every prunable group cut at one ratio, no fine-tune, validation {measure} on "
                        f"{args.val} samples at most ({time.perf_counter() - started:.0f} s)")
    for column in ("ratio", "MACs kept", *args.importance):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['ratio']:g}", f"{row['macs_kept']:.1%}", *(f"{row[kind]:.4f}" for kind in args.importance))
    Console().print(table)


if __name__ == "__main__":
    main()
