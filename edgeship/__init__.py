"""edgeship: from a trained PyTorch model to qualified edge engines.

Public API: ``load_recipe``, ``run``, ``Recipe``, ``RunResult``.
"""

from __future__ import annotations

from edgeship.pipeline.run import RunResult, run
from edgeship.recipe import Recipe, load_recipe
from edgeship.version import __version__

__all__ = ["Recipe", "RunResult", "__version__", "load_recipe", "run"]
