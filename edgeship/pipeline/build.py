"""The ``build`` stage: one engine per enabled backend × precision.

A backend that is not available is recorded as ``skipped`` with its reason; a
failed build is recorded as ``failed`` with the tool's message. Either way the
other engines go on, and neither is ever reported as a success.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from edgeship.artifacts import Artifact
from edgeship.backends import REGISTRY, availability, get_backend
from edgeship.backends.base import CalibrationSet, Precision
from edgeship.errors import BackendUnavailable, BuildError
from edgeship.pipeline.base import Made, RunContext
from edgeship.recipe import BackendsConfig


def engine_name(backend: str, precision: Precision | str) -> str:
    return f"{backend}/{precision}"


class BuildStage:
    name: ClassVar[str] = "build"
    Config: ClassVar[type[BackendsConfig]] = BackendsConfig

    def __init__(self, calibration: CalibrationSet | None) -> None:
        self.calibration = calibration

    def run(self, inputs: Mapping[str, Artifact], cfg: BackendsConfig, ctx: RunContext) -> dict[str, Artifact]:
        onnx = inputs["onnx"]
        engines: dict[str, Artifact] = {}
        for backend_name, backend_cfg in requested(cfg):
            state = availability(backend_name)
            for precision in backend_cfg.precisions:  # type: ignore[attr-defined]
                name = engine_name(backend_name, precision)
                config = engine_config(backend_name, precision, backend_cfg)
                if not state.available:
                    ctx.record_problem(self.name, name, "skipped", f"{state.reason}; install: {state.install}", config)
                    continue
                try:
                    engines[name] = self._build_one(ctx, onnx, backend_name, precision, backend_cfg, config)
                except (BuildError, BackendUnavailable) as exc:
                    ctx.record_problem(self.name, name, "failed", str(exc), config)
                ctx.save_manifest()
        return engines

    def _build_one(self, ctx: RunContext, onnx: Artifact, backend_name: str, precision: Precision, backend_cfg: BaseModel,
                   config: dict[str, object]) -> Artifact:
        backend = get_backend(backend_name)
        calibration = self.calibration.renamed(onnx.meta["input_name"]) if precision is Precision.INT8 and self.calibration else None
        extra = {"calibration": calibration.fingerprint if calibration else None, "versions": backend.availability().versions}

        def make(folder: Path) -> Made:
            with ctx.console.status(f"building {engine_name(backend_name, precision)}"):
                main = backend.build(onnx, precision, calibration, backend_cfg, folder)
            meta = {"backend": backend_name, "precision": precision.value, "versions": extra["versions"],
                    "calibration_fingerprint": extra["calibration"], "calibration_samples": len(calibration.samples) if calibration else 0,
                    "input_name": onnx.meta["input_name"], "input_shape": onnx.meta["input_shape"]}
            return Made(main, f"engine/{backend_name}", meta)

        return ctx.produce(self.name, engine_name(backend_name, precision), config=config, parents=[onnx], extra_key=extra, make=make)


def engine_config(backend: str, precision: Precision, cfg: BaseModel) -> dict[str, object]:
    """What identifies one engine: its backend section minus the keys that cannot change it."""
    ignored = {"enabled", "precisions"} | (set() if precision is Precision.INT8 else set(getattr(cfg, "INT8_ONLY", ())))
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ignored}
    return {"backend": backend, "precision": precision.value, **settings}


def requested(cfg: BackendsConfig) -> list[tuple[str, BaseModel]]:
    """(backend name, its config) for every enabled backend section of the recipe, in registry order."""
    out = []
    for name in REGISTRY:
        section = getattr(cfg, name, None)
        if section is not None and getattr(section, "enabled", True):
            out.append((name, section))
    return out
