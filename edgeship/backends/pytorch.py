"""The FP32 PyTorch baseline behind the same ``Runner`` interface as every engine, so it is timed by the same harness.

Not a registered backend (it builds nothing): its "engine" is a model artifact's record (``artifact.json``), from which
``load_model`` rebuilds the module, pruned structure included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeship.backends.base import Feed, Runner, TensorMeta

NAME = "pytorch"


class TorchRunner(Runner):
    """``engine`` is a model artifact's ``artifact.json``; ``model_config`` serves an artifact that records none."""

    def __init__(self, engine: Path, *, threads: int, model_config: dict[str, Any] | None = None) -> None:
        super().__init__(engine, threads=threads)
        self._model_config = model_config
        self._model: Any = None
        self._output = "logits"

    def _activate(self) -> None:
        import torch

        from edgeship.artifacts import Artifact
        from edgeship.pipeline.model import load_model
        from edgeship.recipe import ModelConfig

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
