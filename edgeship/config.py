"""The base of every recipe section, and what the backends' sections share.

A core module: the recipe assembles the sections, but each backend module defines its own (beside the code that
reads it), so the base and the shared keys live below both.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

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

    def narrowed_weights(self) -> str | None:
        """Which INT8 weights this section's quantizer puts on a grid narrower than 8 bits (GPTQ rounds those on it, so
        it is in the engine's key), or None."""
        return None

    @model_validator(mode="after")
    def _float_search(self) -> BackendSection:
        """``keep_float: auto`` needs a target, a target needs ``auto``, and both need an INT8 engine to steer."""
        setting, target = getattr(self, "keep_float", 0), getattr(self, "accuracy_target", None)
        if setting == "auto" and target is None:
            raise ValueError("keep_float: auto searches for the fewest float layers that meet an accuracy_target: give one, "
                             "e.g. accuracy_target: {min_agreement: 0.97}")
        if target is not None and setting != "auto":
            raise ValueError("accuracy_target steers keep_float: auto; with a number of float layers it would do nothing")
        if target is not None and self.enabled and Precision.INT8 not in self.precisions:
            raise ValueError("accuracy_target: this backend builds no INT8 engine to search float layers for")
        return self

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


KeepFloat = Annotated[int, Field(ge=0)] | Literal["auto"]


class AccuracyTarget(Section):
    """What ``keep_float: auto`` must reach on the validation split (never the evaluation split): one of the three. A
    classifier may use any; a generic model (no class scores) only ``min_cosine``."""

    min_agreement: float | None = Field(default=None, gt=0, le=1, description="top-1 agreement with the FP32 ONNX, e.g. 0.97")
    max_drop_points: float | None = Field(default=None, ge=0, description="top-1 drop against the FP32 ONNX in points (labelled data)")
    min_cosine: float | None = Field(default=None, gt=0, le=1, description="mean cosine of every output with the FP32 ONNX's (the "
                                                                           "lowest over outputs), e.g. 0.99")
    beyond_noise: bool = Field(default=False, description="min_agreement only: a candidate meets it when the lower end of its "
                               "agreement's 95% interval on the validation samples does (whole photos resampled where the "
                               "samples are crops of photos), so the margin is the validation data's own noise; it costs "
                               "more float layers")
    max_slowdown: float | None = Field(default=None, ge=1, description="a latency budget beside the figure: a candidate is "
                                       "chosen only if its p50 is at most this multiple of the fully quantized candidate's "
                                       "(the median of their round-by-round ratios, each candidate timed in interleaved "
                                       "rounds with it after the search), e.g. 1.3")

    @model_validator(mode="after")
    def _one(self) -> AccuracyTarget:
        if sum(value is not None for value in (self.min_agreement, self.max_drop_points, self.min_cosine)) != 1:
            raise ValueError("give exactly one of min_agreement, max_drop_points and min_cosine")
        if self.beyond_noise and self.min_agreement is None:
            raise ValueError("beyond_noise judges an agreement's interval: it goes with min_agreement")
        return self

    @model_serializer(mode="wrap")
    def _unset_noise(self, handler: Any) -> dict[str, Any]:
        """Without ``beyond_noise`` or ``max_slowdown`` the target dumps as before, so the engines it identifies keep their
        keys."""
        dumped = handler(self)
        if not self.beyond_noise:
            dumped.pop("beyond_noise", None)
        if self.max_slowdown is None:
            dumped.pop("max_slowdown", None)
        return dumped

    @property
    def measure(self) -> str:
        """The candidate figure the target judges: ``agreement`` (``agreement_low``, its interval's lower end, with
        ``beyond_noise``), ``top1_drop_points`` or ``cosine``."""
        if self.min_agreement is not None:
            return "agreement_low" if self.beyond_noise else "agreement"
        return "top1_drop_points" if self.max_drop_points is not None else "cosine"

    def describe(self) -> str:
        budget = "" if self.max_slowdown is None else f", within {self.max_slowdown:g}× the fully quantized engine's p50"
        if self.min_agreement is not None:
            noise = " at the lower end of its 95% interval" if self.beyond_noise else ""
            return f"top-1 agreement ≥ {100 * self.min_agreement:g}%{noise}{budget}"
        if self.min_cosine is not None:
            return f"output cosine ≥ {self.min_cosine:g}{budget}"
        return f"top-1 drop ≤ {self.max_drop_points:g} pt{budget}"


def keep_float_field(what: str = "in float") -> Any:
    """The ``keep_float`` key, one definition for every backend that has it."""
    return Field(default=0, description=f"INT8: keep this many of the most INT8-sensitive Conv/Gemm layers (weight-only sensitivity "
                                        f"on calibration samples) {what}, or auto: the fewest Conv/Gemm/MatMul layers, ranked on the "
                                        f"quantized model and searched on validation samples, that meet accuracy_target")


def accuracy_target_field() -> Any:
    """The ``accuracy_target`` key that ``keep_float: auto`` searches against."""
    return Field(default=None, description="with keep_float: auto, what the INT8 engine must reach on the validation split")


def weight_rounding_field() -> Any:
    """The ``weight_rounding`` key, one definition for every INT8 backend."""
    return Field(default="nearest", description="INT8 weights: nearest (what the quantizer does) or gptq (rounded to keep each "
                                                "layer's outputs on calibration samples closest to FP32; same grid, same size)")
