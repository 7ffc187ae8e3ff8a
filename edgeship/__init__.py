"""edgeship: from a trained PyTorch model to qualified edge engines.

Public API: ``load_recipe``, ``run``, ``Recipe``, ``RunResult``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgeship.pipeline.run import RunResult, run  # noqa: E402
from edgeship.recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["Recipe", "RunResult", "__version__", "load_recipe", "run"]
