"""How much top-1 agreement a model can keep with itself on a recipe's evaluation data: the noise floor.

    python benchmarks/agreement_noise_floor.py recipes/efficientnet_lite0.yaml [--sigmas 0.125 0.25 0.5 1]

Runs the recipe's FP32 PyTorch model on its evaluation inputs, then again with Gaussian noise added to the
pixels (σ in grey levels of the 0..255 image, after any resize), and prints the top-1 and
top-5 agreement of each noisy run with the clean one, plus how many inputs are near-ties for the model
(top-2 probability margin below 0.05 and 0.10).

An INT8 engine rounds every activation and weight; if a fraction of a grey level of input noise already flips
the model's own top-1 on many inputs, no quantization will agree with FP32 much better than that. Read a
``min_agreement`` gate against this floor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from edgeship.data import load_dataset, preprocess
from edgeship.measure import agreement
from edgeship.models import instantiate, load_checkpoint
from edgeship.pipeline.model import input_shape
from edgeship.recipe import load_recipe


def logits_of(model: torch.nn.Module, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(inputs[i:i + batch])).numpy() for i in range(0, len(inputs), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0], help="grey levels")
    parser.add_argument("--eval-size", type=int, default=None, help="first N evaluation inputs (default: all)")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    if recipe.model.pretrained is None and recipe.model.checkpoint is None:
        parser.error(f"{args.recipe}: model.pretrained or model.checkpoint needed (a zoo model is trained by the run)")
    p = recipe.data.preprocessing
    dataset = load_dataset(recipe.data, recipe.calibration, seed=recipe.seed)
    raw = dataset.eval.images[: args.eval_size]
    if p.resize is not None:  # resize once, then add the noise to the resized pixels
        raw = preprocess(raw, p.model_copy(update={"scale": 1.0, "mean": [0.0], "std": [1.0]})).transpose(0, 2, 3, 1)
    pixels = raw.astype(np.float32)
    unresized = p.model_copy(update={"resize": None})
    shape = input_shape(dataset, p)
    model = instantiate(recipe.model, in_channels=shape[0], num_classes=max(dataset.num_classes, 1))
    if recipe.model.checkpoint is not None:
        load_checkpoint(model, recipe.model.checkpoint)
    model.eval()
    torch.set_num_threads(recipe.threads())
    clean = logits_of(model, preprocess(pixels, unresized))

    probs = np.exp(clean - clean.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    print(f"{len(pixels)} inputs; top-1 probability median {np.median(top2[:, 1]):.3f}; "
          f"top-2 margin < 0.05: {np.mean(margin < 0.05):.1%}, < 0.10: {np.mean(margin < 0.10):.1%}")

    rng = np.random.default_rng(recipe.seed)
    print("σ (grey levels)  top-1 agreement  top-5 agreement")
    for sigma in args.sigmas:
        noisy = pixels + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
        result = agreement(logits_of(model, preprocess(noisy, unresized)), clean)
        print(f"{sigma:15g}  {result['top1_agreement']:15.2%}  {result['top5_agreement']:15.2%}")


if __name__ == "__main__":
    main()
