"""The ``build`` stage: one engine per enabled backend × precision.

A backend that is not installed here, or lacks its hardware, is recorded as ``skipped`` with its reason (by design);
one that is installed but cannot load, a missing preparation tool and a failed build are ``failed`` with the cause,
which the release gates count. Either way the other engines go on, and none is ever reported as a success.

A preparing backend (TensorRT) first makes its backend-bound ONNX (stage
``prepare``, on the CPU), then compiles the engine from it where its device is
present. The prepared ONNX is an output either way, so the validate stage can
score it on ONNX Runtime as a labelled prediction.

A backend whose converter keeps memory it never frees (TFLite: TensorFlow and onnx2tf) builds in a child process of its
own (``BackendInfo.build_in_child``), so the run does not carry it into the stages after; so does every calibrated build
of a model of ``CHILD_MODEL_BYTES`` or more (the quantizers' imports and caches: NNCF, ONNX Runtime's calibrators, GPTQ).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from edgeship.artifacts import Artifact
from edgeship.backends import REGISTRY, availability, get_backend
from edgeship.backends.base import PREPARE_INFO, CalibrationSet, Precision, PreparingBackend
from edgeship.backends.float_search import SEARCH_FILE, SEARCH_METHOD
from edgeship.backends.rounding import WEIGHT_ROUNDING_FILE
from edgeship.backends.sensitivity import FLOAT_LAYERS_FILE
from edgeship.config import BackendSection
from edgeship.errors import BackendUnavailable, BuildError, StageError
from edgeship.pipeline.base import Made, RunContext
from edgeship.pipeline.child import CHILD_MODEL_BYTES, in_child
from edgeship.progress import step_notes
from edgeship.recipe import BackendsConfig
from edgeship.tensors import SearchSet

# side files an INT8 build may leave beside its engine, and the metric each becomes
SIDE_METRICS = {FLOAT_LAYERS_FILE: "float_layers", WEIGHT_ROUNDING_FILE: "weight_rounding", SEARCH_FILE: "float_search"}
PREPARE = "prepare"  # the stage name of prepared ONNX artifacts, made inside the build stage
# keys added later: at these defaults they stay out of an engine's identity, so no engine stored before them rebuilds
DEFAULT_UNKEYED: dict[str, object] = {"accuracy_target": None, "mode": "static", "model_type": None, "smooth_quant_alpha": None,
                                      "fixed_shape": None, "calibration_method": "mean_minmax"}  # OpenVINO's, added later


def engine_name(backend: str, precision: Precision | str) -> str:
    return f"{backend}/{precision}"


class BuildStage:
    name: ClassVar[str] = "build"

    def __init__(self, calibration: CalibrationSet | None, search: SearchSet | None = None) -> None:
        self.calibration = calibration
        self.search = search  # validation samples for keep_float: auto

    def run(self, inputs: Mapping[str, Artifact], cfg: BackendsConfig, ctx: RunContext) -> dict[str, Artifact]:
        """Every engine that built, by name, and for a preparing backend (TensorRT) each prepared ONNX under
        ``prediction_name(engine)``, whether its engine built or not."""
        onnx = inputs["onnx"]
        outputs: dict[str, Artifact] = {}
        for backend_name, backend_cfg in requested(cfg):
            state = availability(backend_name)
            backend = get_backend(backend_name)
            for precision in backend_cfg.precisions:  # type: ignore[attr-defined]
                name = engine_name(backend_name, precision)
                config = engine_config(backend_name, precision, backend_cfg)
                source = onnx
                if isinstance(backend, PreparingBackend):
                    try:
                        source = outputs[prediction_name(name)] = self._prepare_one(ctx, onnx, backend, precision, backend_cfg)
                    except (BuildError, BackendUnavailable) as exc:  # a missing preparation tool too: it runs on any CPU
                        ctx.record_problem(PREPARE, name, "failed", str(exc), prepare_config(backend_name, precision, backend_cfg))
                        ctx.record_problem(self.name, name, "failed", f"no {backend_name}-bound ONNX: {exc}", config)
                        ctx.save_manifest()
                        continue
                    ctx.save_manifest()
                if not state.available:  # not installed or no such hardware: skipped; installed but broken: failed
                    ctx.record_problem(self.name, name, "failed" if state.broken else "skipped",
                                       f"{state.reason}; {'fix' if state.broken else 'install'}: {state.install}", config)
                    continue
                try:
                    outputs[name] = self._build_one(ctx, source, backend_name, precision, backend_cfg, config)
                except (BuildError, BackendUnavailable) as exc:
                    ctx.record_problem(self.name, name, "failed", str(exc), config)
                changed = source.verify()
                if changed is not None:  # a converter wrote to its input: every later engine would be built from other bytes
                    raise StageError(self.name, f"building {name} changed its input {source.path}: {changed}; "
                                                "a backend must not write to the stored ONNX")
                ctx.save_manifest()
        return outputs

    def _calibration_for(self, backend_name: str, precision: Precision, onnx: Artifact, cfg: BaseModel) -> CalibrationSet | None:
        """The calibration set for one build, carrying the validation samples when its float layers are searched for
        (``keep_float: auto``): its fingerprint, and so the engine's key, then covers them."""
        if precision not in REGISTRY[backend_name].calibrated or self.calibration is None:
            return None
        calibration = self.calibration.renamed(onnx.meta["input_name"])
        if precision is Precision.INT8 and getattr(cfg, "keep_float", 0) == "auto":
            if self.search is None:
                raise BuildError(backend_name, precision, "keep_float: auto searches on the validation split, and this data has none")
            method = f"{SEARCH_METHOD}{REGISTRY[backend_name].search_revision}"
            calibration = calibration.with_search(self.search, method)  # a new method searches again
        return calibration

    def _prepare_one(self, ctx: RunContext, onnx: Artifact, backend: PreparingBackend, precision: Precision,
                     backend_cfg: BaseModel) -> Artifact:
        """The backend-bound ONNX (e.g. TensorRT's AutoCast FP16 or Q/DQ INT8), made on the CPU and kept as an artifact."""
        name = engine_name(backend.name, precision)
        calibration = self._calibration_for(backend.name, precision, onnx, backend_cfg)
        versions = backend.preparation_versions()
        extra = {"calibration": calibration.fingerprint if calibration else None, "versions": versions}

        def make(folder: Path) -> Made:
            title = f"preparing the {name} ONNX"
            with ctx.console.status(title) as status, step_notes(lambda text: status.update(f"{title}: {text}")):
                main = backend.prepare(onnx.path, precision, calibration, backend_cfg, folder)
            info = json.loads((folder / PREPARE_INFO).read_text())
            meta = {"backend": backend.name, "precision": precision.value, "versions": versions, "prepared_by": info,
                    "input_name": onnx.meta["input_name"], "input_shape": onnx.meta["input_shape"],
                    "predicts": name, "runs_on": "onnxruntime", "metrics": {**info, **side_metrics(folder)}}
            return Made(main, f"prepared-onnx/{backend.name}", meta)

        return ctx.produce(PREPARE, name, config=prepare_config(backend.name, precision, backend_cfg), parents=[onnx],
                           extra_key=extra, make=make)

    def _build_one(self, ctx: RunContext, source: Artifact, backend_name: str, precision: Precision, backend_cfg: BaseModel,
                   config: dict[str, object]) -> Artifact:
        """One engine from the exported ONNX, or for a preparing backend from its prepared ONNX (``source``)."""
        backend = get_backend(backend_name)
        preparing = isinstance(backend, PreparingBackend)
        calibration = None if preparing else self._calibration_for(backend_name, precision, source, backend_cfg)
        extra = {"calibration": calibration.fingerprint if calibration else None, "versions": backend.availability().versions}

        def make(folder: Path) -> Made:
            title = f"building {engine_name(backend_name, precision)}"
            with ctx.console.status(title) as status, step_notes(lambda text: status.update(f"{title}: {text}")):
                if preparing:
                    main = backend.compile(source.path, precision, backend_cfg, folder)  # type: ignore[attr-defined]
                elif backend.info.build_in_child or (calibration is not None and source.size >= CHILD_MODEL_BYTES):
                    main = build_in_child(backend_name, source, precision, calibration, backend_cfg, folder,
                                          lambda text: status.update(f"{title}: {text}"))
                else:
                    main = backend.build(source, precision, calibration, backend_cfg, folder)
            meta = {"backend": backend_name, "precision": precision.value, "versions": extra["versions"],
                    "calibration_fingerprint": extra["calibration"], "calibration_samples": calibration.count if calibration else 0,
                    "input_name": source.meta["input_name"], "input_shape": source.meta["input_shape"]}
            if preparing:
                meta["prepared_by"] = source.meta["prepared_by"]
            if side := side_metrics(folder):
                meta["metrics"] = side
            return Made(main, f"engine/{backend_name}", meta)

        return ctx.produce(self.name, engine_name(backend_name, precision), config=config, parents=[source], extra_key=extra, make=make)


def build_in_child(backend_name: str, source: Artifact, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel,
                   folder: Path, show: Callable[[str], None]) -> Path:
    """``backend.build`` in a fresh child process (``in_child``): what a converter allocates is freed when it ends."""
    return in_child(_build_here, backend_name, source, precision, calibration, cfg, folder, show=show)


def _build_here(backend_name: str, source: Artifact, precision: Precision, calibration: CalibrationSet | None, cfg: BaseModel,
                folder: Path) -> Path:
    return get_backend(backend_name).build(source, precision, calibration, cfg, folder)


def side_metrics(folder: Path) -> dict[str, object]:
    """The side files of an INT8 build in ``folder`` (layers kept in float, weight rounding), by metric name."""
    return {metric: json.loads((folder / file).read_text()) for file, metric in SIDE_METRICS.items() if (folder / file).is_file()}


def prediction_name(engine: str) -> str:
    """The name under which a prepared ONNX is scored on ONNX Runtime in place of (or beside) its engine."""
    return f"{engine} predicted on onnxruntime"


def prepare_config(backend: str, precision: Precision, cfg: BaseModel) -> dict[str, object]:
    """What identifies a prepared ONNX: the engine's identity without the keys only the engine build reads."""
    engine_only = set(getattr(cfg, "ENGINE_ONLY", ()))
    return {k: v for k, v in engine_config(backend, precision, cfg).items() if k not in engine_only}


def engine_config(backend: str, precision: Precision, cfg: BaseModel) -> dict[str, object]:
    """What identifies one engine: its backend section minus the keys that cannot change it."""
    ignored = {"enabled", "precisions"} | (set() if precision is Precision.INT8 else set(getattr(cfg, "INT8_ONLY", ())))
    settings = {k: v for k, v in cfg.model_dump(mode="json").items()
                if k not in ignored and not (k in DEFAULT_UNKEYED and v == DEFAULT_UNKEYED[k])}
    narrowed = cfg.narrowed_weights() if isinstance(cfg, BackendSection) else None
    if precision is Precision.INT8 and settings.get("weight_rounding") == "gptq" and narrowed:
        settings["gptq_grid"] = narrowed  # GPTQ rounds these on the 7-bit grid since 2026-12-07; before, on 8 bits
    return {"backend": backend, "precision": precision.value, **settings}


def requested(cfg: BackendsConfig) -> list[tuple[str, BaseModel]]:
    """(backend name, its config) for every enabled backend section of the recipe, in registry order."""
    out = []
    for name in REGISTRY:
        section = getattr(cfg, name, None)
        if section is not None and getattr(section, "enabled", True):
            out.append((name, section))
    return out
