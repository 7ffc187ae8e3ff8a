"""What Ray adds to a sweep: the same trials on Ray and one after another in one process, each on a fresh store.

    python benchmarks/sweep_overhead.py RECIPE SPACE [--trials 6] [--work /tmp/sweep-overhead]

1. ``edgeship sweep`` on a local Ray with one trial at a time (``--cpus-per-trial`` = every core: the same
   concurrency as the plain loop, so the difference is Ray's, not parallelism's), on an empty store;
2. the same trials, with the values Optuna chose in step 1 in the same order, then the same confirmations on the
   evaluation split, run by ``run_trial`` in this one process on another empty store.

Prints both wall times and Ray's share, ``(ray - plain) / ray``: Ray's start, its worker processes (each imports
torch and edgeship anew), Tune's bookkeeping, and the per-node store check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from edgeship.sweep import sweep
from edgeship.sweep.driver import load_config
from edgeship.sweep.trial import TrialRequest, run_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("space", type=Path)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sweep-overhead"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    cores = os.cpu_count() or 1

    recipe_on_ray = _with_store(args.recipe, args.work / "ray-store", args.work)
    started = time.perf_counter()
    result = sweep(recipe_on_ray, args.space.resolve(), trials=args.trials, out=args.work / "sweeps", cpus_per_trial=float(cores),
                   console=Console(quiet=True))
    ray_wall = time.perf_counter() - started

    config = load_config(result.folder)
    plain_store = args.work / "plain-store"
    order = sorted(result.report.trials, key=lambda r: r.name)
    started = time.perf_counter()
    for split, records in (("validation", order), ("evaluation", result.report.confirmed)):
        for record in records:
            request = TrialRequest(name=record.name, values=record.values, base=config.base, recipe_path=config.recipe_path,
                                   store=plain_store, reports=args.work / "plain-runs", target=config.target, split=split,
                                   compute_threads=cores, node_lock=args.work / "plain.lock")
            run_trial(request)
    plain_wall = time.perf_counter() - started
    print(f"{len(order)} trials + {len(result.report.confirmed)} confirmations of {args.recipe} over {args.space}, one at a time")
    print(f"  on Ray (edgeship sweep, local Ray, --cpus-per-trial {cores}): {ray_wall:7.1f} s")
    print(f"  in one process, one after another:                   {plain_wall:7.1f} s")
    print(f"  Ray's share of its wall time: {(ray_wall - plain_wall) / ray_wall:+.1%}")
    print(f"  sweep folder: {result.folder}")


def _with_store(recipe: Path, store: Path, work: Path) -> Path:
    """A copy of the recipe beside the work folder with its own empty store (its input paths made absolute)."""
    import yaml

    from edgeship.recipe import read_recipe_document

    document = {**read_recipe_document(recipe), "store": str(store), "reports": str(work / "reports")}
    target = work / recipe.name
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


if __name__ == "__main__":
    main()
