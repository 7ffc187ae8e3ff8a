"""PyTorch models from a recipe or a model artifact, and the FP32 baseline behind the ``Runner`` interface.

``instantiate`` builds a zoo, pretrained or factory model; ``load_checkpoint`` loads a user's weights-only checkpoint;
``load_model`` rebuilds a stored model artifact, pruned structure included. ``TorchRunner`` runs such an artifact behind
the same interface as every engine, so the harness times the baseline like an engine; it is not a registered backend
(it builds nothing): its "engine" is a model artifact's record (``artifact.json``).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeship import zoo
from edgeship.artifacts import Artifact
from edgeship.backends.base import Runner
from edgeship.errors import DataError, RecipeError
from edgeship.recipe import ModelConfig
from edgeship.tensors import Feed, TensorMeta
from edgeship.zoo import pretrained

if TYPE_CHECKING:
    from torch import nn

def instantiate(cfg: ModelConfig, *, in_channels: int, num_classes: int, weights: bool = True) -> nn.Module:
    """A fresh model from the zoo, a pretrained network (with its weights unless ``weights=False``) or the user's
    factory (trusted code named in the recipe)."""
    if cfg.pretrained is not None:
        return pretrained.build(cfg.pretrained, weights=weights)
    if cfg.zoo is not None:
        return zoo.build(cfg.zoo, in_channels=in_channels, num_classes=num_classes, width=cfg.width)
    module_name, _, function = cfg.factory.partition(":")  # type: ignore[union-attr]
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"'model.factory': cannot import {cfg.factory!r}: {exc}") from None
    model = factory()
    import torch

    if not isinstance(model, torch.nn.Module):
        raise RecipeError(f"'model.factory': {cfg.factory!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a weights-only state_dict into ``model``; refuse pickles and other architectures."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line.split("error:", 1)[1].split(". Please")[0].strip() for line in lines if "WeightsUnpickler error:" in line),
                   re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else "unsupported content")
        raise DataError(f"{path}: not a weights-only checkpoint, refused by torch.load(weights_only=True): {why}; "
                        "save the model's state_dict instead") from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails on a non-checkpoint in any way it likes (IndexError on text)
        raise DataError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                        "expected a state_dict saved with torch.save") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: expected a state_dict (mapping of tensors), got {type(state).__name__}")
    problem = _architecture_mismatch(model.state_dict(), state)
    if problem:
        raise DataError(f"{path}: checkpoint is for another architecture than {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=True)


def _architecture_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """What differs between a model's state_dict and a checkpoint's, in a line: missing and unexpected keys, shapes."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f", … ({len(keys)} in all)" if len(keys) > 3 else "")

    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    shapes = [f"{key} {tuple(given[key].shape)} vs {tuple(expected[key].shape)}" for key in expected
              if key in given and hasattr(given[key], "shape") and tuple(given[key].shape) != tuple(expected[key].shape)]
    parts = ([f"missing {some(missing)}"] if missing else []) + ([f"unexpected {some(unexpected)}"] if unexpected else []) + \
            ([f"shape {some(shapes)}"] if shapes else [])
    return "; ".join(parts)


def load_model(artifact: Artifact, cfg: ModelConfig | None = None) -> nn.Module:
    """The model stored in a model artifact, in eval mode.

    The architecture comes from the config recorded in the artifact (a distilled
    student may differ from the recipe's model); ``cfg`` serves artifacts without one.
    """
    import torch

    if "model_config" in artifact.meta:
        cfg = ModelConfig.model_validate(artifact.meta["model_config"])
    if cfg is None:
        raise ValueError(f"artifact {artifact.id} records no model config; pass one")
    model = instantiate(cfg, in_channels=artifact.meta["input_shape"][0], num_classes=artifact.meta["num_classes"], weights=False)
    pruning = artifact.meta.get("pruning") or {}
    if pruning.get("history_file"):  # structured: rebuild the pruned structure from the original model
        from edgeship.pruning import replay

        model.load_state_dict(torch.load(artifact.folder / pruning["base_file"], map_location="cpu", weights_only=True))
        history = json.loads((artifact.folder / pruning["history_file"]).read_text())
        replay(model.eval(), torch.zeros(1, *artifact.meta["input_shape"]), history)
    model.load_state_dict(torch.load(artifact.path, map_location="cpu", weights_only=True))
    return model.eval()



class TorchRunner(Runner):
    """``engine`` is a model artifact's ``artifact.json``; ``model_config`` serves an artifact that records none."""

    def __init__(self, engine: Path, *, threads: int, model_config: dict[str, Any] | None = None) -> None:
        super().__init__(engine, threads=threads)
        self._model_config = model_config
        self._model: Any = None
        self._output = "logits"

    def _activate(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        artifact = Artifact.model_validate_json(self.engine.read_text())
        cfg = ModelConfig.model_validate(self._model_config) if self._model_config else None
        self._model = load_model(artifact, cfg)
        self._meta = {"input": TensorMeta("input", np.dtype(np.float32), (None, *artifact.meta["input_shape"]))}

    def _deactivate(self) -> None:
        self._model = None

    def _infer(self, feed: Feed) -> Feed:
        import torch

        with torch.no_grad():
            return {self._output: self._model(torch.from_numpy(feed["input"])).numpy()}

    def _describe(self) -> dict[str, object]:
        import torch

        return {"runtime": f"PyTorch {torch.__version__}", "threads": torch.get_num_threads(), "precision": "fp32"}
