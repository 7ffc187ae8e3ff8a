"""The base of every recipe section, and what the backends' sections share.

A core module: the recipe assembles the sections, but each backend module defines its own (beside the code that
reads it), so the base and the shared keys live below both.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeship.tensors import Precision

WeightRounding = Literal["nearest", "gptq"]


class Section(BaseModel):
    """A recipe section: unknown keys are an error, and a parsed section never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendSection(Section):
    """A backend's recipe section. ``BACKEND`` and ``SUPPORTED`` come from the backend's own description, so the
    precisions a recipe may ask for are the ones the backend declares (and the contract test checks it builds)."""

    BACKEND: ClassVar[str] = ""
    SUPPORTED: ClassVar[frozenset[Precision]] = frozenset()
    INT8_ONLY: ClassVar[frozenset[str]] = frozenset()  # keys that only shape INT8 engines: they must not rebuild the others
    ENGINE_ONLY: ClassVar[frozenset[str]] = frozenset()  # keys a preparing backend's engine reads, not its prepared ONNX

    enabled: bool = True
    precisions: tuple[Precision, ...] = ()

    @field_validator("precisions")
    @classmethod
    def _supported(cls, value: tuple[Precision, ...]) -> tuple[Precision, ...]:
        """Non-empty, supported by the backend, without duplicates."""
        unsupported = [p.value for p in value if p not in cls.SUPPORTED]
        if unsupported:
            names = " and ".join(p.value for p in sorted(cls.SUPPORTED))
            raise ValueError(f"{cls.BACKEND} builds {names}, not {', '.join(unsupported)}")
        if not value:
            raise ValueError("list at least one precision")
        return tuple(dict.fromkeys(value))


def keep_float_field(what: str = "in float") -> Any:
    """The ``keep_float`` key, one definition for every backend that has it."""
    return Field(default=0, ge=0, description=f"INT8: keep this many of the most INT8-sensitive Conv/Gemm layers (weight-only "
                                              f"sensitivity on calibration samples) {what}")


def weight_rounding_field() -> Any:
    """The ``weight_rounding`` key, one definition for every INT8 backend."""
    return Field(default="nearest", description="INT8 weights: nearest (what the quantizer does) or gptq (rounded to keep each "
                                                "layer's outputs on calibration samples closest to FP32; same grid, same size)")
