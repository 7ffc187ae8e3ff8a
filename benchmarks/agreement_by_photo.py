"""Each engine's top-1 agreement with FP32 on a ``sample_photos`` recipe, with the evaluation data's own noise.

    python benchmarks/agreement_by_photo.py recipes/efficientnet_lite0.yaml [--resamples 2000] [--bar 0.97] [--split validation]

Runs the recipe (everything already built is reused from the store) and reads each engine's outputs on the evaluation
crops. The crops of one photo are correlated (an engine that trips on a texture trips on every crop of it), so the
noise of an agreement figure is that of the photos, not of the crops: the 95% interval here resamples whole photos
(``edgeship.measure.grouped_interval``). Agreement is also given on the bundled photos' crops and on the opencv-doc
photos' crops (``data.extra_eval_photos``) apart. An engine meets ``--bar`` beyond the data's noise when its
interval's lower end is above it. ``--split validation`` scores every engine on the validation crops instead (the
float-layer search's; every engine is measured again there): beside the evaluation figures, it shows whether what a
search met on validation carries over. Writes ``agreement-by-photo.json`` and ``.md`` in the run's folder and prints
the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeship.measure import grouped_interval
from edgeship.photos import OPENCV_PHOTOS
from edgeship.pipeline.build import prediction_name
from edgeship.pipeline.run import recipe_dataset, run
from edgeship.pipeline.validate import BASELINE
from edgeship.recipe import load_recipe

EXTRA = frozenset(Path(name).name for name in OPENCV_PHOTOS)


def rates(hits: np.ndarray, groups: np.ndarray, *, resamples: int) -> dict[str, Any]:
    """Agreement on all crops, its photo-resampled interval, and agreement on each photo set's crops."""
    extra = np.isin(groups, list(EXTRA))
    low, high = grouped_interval(hits, groups, resamples=resamples)
    return {"agreement": float(hits.mean()), "ci95": [low, high], "crops": int(len(hits)), "photos": int(len(set(groups))),
            "bundled": float(hits[~extra].mean()) if (~extra).any() else None,
            "opencv_doc": float(hits[extra].mean()) if extra.any() else None,
            "worst_photos": sorted(((str(g), float(hits[groups == g].mean())) for g in set(groups)), key=lambda p: p[1])[:3]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the photos (default 2000)")
    parser.add_argument("--bar", type=float, default=0.97, help="the agreement an engine should meet beyond the noise")
    parser.add_argument("--split", choices=("evaluation", "validation"), default="evaluation",
                        help="the crops every engine is scored on (default evaluation)")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    recipe = load_recipe(args.recipe)
    if args.split == "validation":
        recipe = recipe.model_copy(update={"validate_": recipe.validate_.model_copy(update={"split": "validation"})})
    if recipe.data.dataset != "sample_photos":
        parser.error(f"{args.recipe}: data.dataset is {recipe.data.dataset!r}; this reads the photo of each sample_photos crop")
    result = run(recipe, console=console, recipe_path=args.recipe)
    dataset = recipe_dataset(recipe, console)
    groups = np.asarray((dataset.val if args.split == "validation" else dataset.eval).groups)
    entries = {(e.stage, e.name): e for e in result.manifest.entries if e.status == "ok"}
    reference = np.load(Path(entries[("validate", BASELINE)].path).parent / "logits.npy").argmax(1)
    if len(reference) != len(groups):
        raise SystemExit(f"the run scored {len(reference)} crops, the recipe's data has {len(groups)}: a stale run?")
    engines: dict[str, dict[str, Any]] = {}
    for row in result.report["engines"]:
        entry = entries.get(("validate", row["name"])) or entries.get(("validate", prediction_name(row["name"])))
        logits = Path(entry.path).parent / "logits.npy" if entry else None
        if logits is None or not logits.is_file():
            continue
        hits = (np.load(logits).argmax(1) == reference).astype(np.float64)
        engines[row["name"]] = {**rates(hits, groups, resamples=args.resamples), "predicted": entry.name != row["name"]}
    document = {"run": str(result.run_dir), "recipe": str(args.recipe), "split": args.split, "bar": args.bar,
                "resamples": args.resamples, "engines": engines}
    out = result.run_dir / "agreement-by-photo"
    out.mkdir(exist_ok=True)
    (out / "agreement-by-photo.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [f"| engine | agreement | 95% interval (photos resampled) | bundled photos | opencv-doc photos | above {args.bar:.0%} |",
             "|---|---|---|---|---|---|"]
    table = Table(title=f"top-1 agreement with FP32, {len(groups)} {args.split} crops of {len(set(groups))} photos")
    for column in ("engine", "agreement", "95% interval", "bundled", "opencv-doc", f"> {args.bar:.0%}"):
        table.add_column(column)
    for name, r in engines.items():
        low, high = r["ci95"]
        cells = [name + (" (predicted)" if r["predicted"] else ""), f"{r['agreement']:.2%}", f"{low:.2%} – {high:.2%}",
                 "—" if r["bundled"] is None else f"{r['bundled']:.2%}", "—" if r["opencv_doc"] is None else f"{r['opencv_doc']:.2%}",
                 "yes" if low > args.bar else ("no" if high < args.bar else "within the noise")]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    (out / "agreement-by-photo.md").write_text("\n".join(lines) + "\n")
    console.print(table)
    console.print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
