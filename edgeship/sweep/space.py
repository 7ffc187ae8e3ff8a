"""A sweep's search space: recipe keys and their ranges or choices, and the engine whose figures Optuna weighs.

```yaml
parameters:
  prune.keep_macs: [0.15, 0.5]                  # two numbers: a range (floats; two integers: an integer range)
  prune.importance: [l1, taylor]                # anything else: the choices
  distill.temperature: {low: 1.0, high: 8.0, log: true}
  validate.batch_size: {choices: [1, 8]}        # numbers as choices
objective:
  engine: onnxruntime/int8                      # accuracy up, p50 down, size down: of this engine
```

Every value is checked the way a trial will use it: the base recipe with the value set must be a valid recipe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeship.errors import RecipeError
from edgeship.recipe import Recipe, recipe_from_document

Value = bool | int | float | str | None
RESERVED = {"validate.split": "trials are scored on the validation split and the chosen ones confirmed on the evaluation split",
            "store": "every trial shares the recipe's store", "reports": "trial runs go into the sweep's folder",
            "name": "trials are named after the recipe",
            "validate.together_rounds": "trials time each engine once; the sweep times its fronts together at the end, with the "
                                        "recipe's rounds"}


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    def corners(self) -> list[Value]:
        return [self.cast(self.low), self.cast(self.high)]

    def cast(self, value: float) -> Value:
        return int(round(value)) if self.integer else float(value)

    def contains(self, value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high


class Choices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: list[Value] = Field(min_length=1)

    def corners(self) -> list[Value]:
        return list(self.choices)

    def contains(self, value: object) -> bool:
        return value in self.choices


class Objective(BaseModel):
    """The engine Optuna weighs: its accuracy (top-1; agreement on unlabelled data; output cosine for a generic model),
    its p50 and its size. The report's Pareto fronts show every engine of every trial, per backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    engine: str | None = None  # backend/precision; None: the recipe's first engine with INT8, else its first


class SweepSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    parameters: dict[str, Range | Choices] = Field(min_length=1)
    objective: Objective = Objective()
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), dict):
            return raw
        return {**raw, "parameters": {key: _parameter(key, value) for key, value in raw["parameters"].items()}}

    def target(self, recipe: Recipe) -> str:
        """The objective's engine, checked against what ``recipe`` builds."""
        names = recipe.engine_names()
        if self.objective.engine is not None:
            if self.objective.engine not in names:
                raise RecipeError(f"objective.engine: {self.objective.engine!r} is not an engine the recipe builds "
                                  f"({', '.join(names) or 'none'})")
            return self.objective.engine
        if not names:
            raise RecipeError("the recipe builds no engine to sweep over")
        return next((n for n in names if n.endswith("/int8")), names[0])


def _parameter(key: str, value: Any) -> Any:
    """The shorthand: ``[a, b]`` of two numbers is a range, any other list the choices."""
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(value) == 2 and len(numbers) == 2:
            integer = all(isinstance(v, int) for v in value)
            return {"low": value[0], "high": value[1], "integer": integer, **({"step": 1} if integer else {})}
        return {"choices": value}
    if isinstance(value, dict) and "low" in value and "integer" not in value:
        return {**value, "integer": isinstance(value.get("low"), int) and isinstance(value.get("high"), int)
                and not isinstance(value.get("low"), bool)}
    return value


def load_space(path: Path, base: Mapping[str, Any], recipe_path: Path) -> SweepSpace:
    """Read ``path`` and check every value against the base recipe document; one line naming the key otherwise."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: space file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the space: {exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a space is a mapping with 'parameters' (recipe keys and their ranges or choices)")
    try:
        space = SweepSpace.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"] if p not in ("Range", "Choices") and "[" not in str(p))
        raise RecipeError(f"{path}: '{key}': {first['msg'].removeprefix('Value error, ')}") from None
    for key, dimension in space.parameters.items():
        if key in RESERVED:
            raise RecipeError(f"{path}: '{key}': not a sweep parameter: {RESERVED[key]}")
        for value in dimension.corners():
            try:
                recipe_from_document(with_values(base, {key: value}), recipe_path)
            except RecipeError as exc:
                reason = str(exc).removeprefix(f"{recipe_path}: ")
                raise RecipeError(f"{path}: '{key}': {value!r} does not make a valid recipe: {reason}") from None
            except KeyError as exc:
                raise RecipeError(f"{path}: '{key}': {exc.args[0]}") from None
    try:
        space.target(recipe_from_document(base, recipe_path))
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None
    return space


def with_values(base: Mapping[str, Any], values: Mapping[str, Value]) -> dict[str, Any]:
    """A copy of the recipe document with each dotted key set; a key through a value that is not a section is a
    ``KeyError`` saying so."""
    document = copy.deepcopy(dict(base))
    for key, value in values.items():
        parts = key.split(".")
        block = document
        for depth, part in enumerate(parts[:-1]):
            inner = block.setdefault(part, {})
            if inner is None:
                inner = block[part] = {}
            if not isinstance(inner, dict):
                raise KeyError(f"'{'.'.join(parts[:depth + 1])}' is not a section")
            block = inner
        block[parts[-1]] = value
    return document


def value_of(document: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key of a validated recipe's document (``Recipe.model_dump(by_alias=True)``)."""
    block: Any = document
    for part in key.split("."):
        if not isinstance(block, Mapping) or part not in block:
            return None
        block = block[part]
    return block


def optuna_distributions(space: SweepSpace) -> dict[str, Any]:
    """Optuna's distributions for the space, in its order."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, dim in space.parameters.items():
        if isinstance(dim, Choices):
            out[key] = CategoricalDistribution(dim.choices)
        elif dim.integer:
            out[key] = IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=1 if dim.log else int(dim.step or 1))
        else:
            out[key] = FloatDistribution(dim.low, dim.high, log=dim.log, step=None if dim.log else dim.step)
    return out


def recipe_point(space: SweepSpace, recipe: Recipe) -> dict[str, Value] | None:
    """The base recipe's own values for the space's keys, when the space holds them: the sweep's first trial, so every
    point of the sweep is compared with the recipe it started from on the same machine and data."""
    document = recipe.model_dump(mode="json", by_alias=True)
    point = {key: value_of(document, key) for key in space.parameters}
    if all(space.parameters[k].contains(v) and not (isinstance(v, float) and math.isnan(v)) for k, v in point.items()):
        return point
    return None
