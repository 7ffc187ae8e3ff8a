"""The ``export`` stage: PyTorch → ONNX with a dynamic batch axis, checked, simplified, parity-tested."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeship.artifacts import Artifact
from edgeship.backends.tooling import loggers_at
from edgeship.data import model_inputs, preprocess
from edgeship.errors import DataError, StageError
from edgeship.models import call_model, load_model
from edgeship.photos import judge_probes
from edgeship.pipeline.base import Made, RunContext
from edgeship.pipeline.child import CHILD_MODEL_BYTES, in_child
from edgeship.pipeline.model import ONNX_MODEL, check_feed
from edgeship.recipe import ExportConfig, ModelConfig

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
PARITY_SAMPLES = 8  # evaluation samples an ONNX entry is run on before it is adopted


class ExportStage:
    name: ClassVar[str] = "export"

    def run(self, inputs: Mapping[str, Artifact], cfg: ExportConfig, ctx: RunContext) -> dict[str, Artifact]:
        model_artifact = inputs["model"]
        config = cfg.model_dump(mode="json") if model_artifact.kind != ONNX_MODEL else {"adopted": True}  # taken as it is
        artifact = ctx.produce(self.name, "onnx", config=config, parents=[model_artifact],
                               extra_key={"eval": ctx.dataset.fingerprint},
                               make=lambda folder: self._make(folder, model_artifact, cfg, ctx))
        return {"onnx": artifact}

    def _make(self, folder: Path, model_artifact: Artifact, cfg: ExportConfig, ctx: RunContext) -> Made:
        if model_artifact.kind == ONNX_MODEL:
            return self._adopt(folder, model_artifact, ctx)
        if model_artifact.meta.get("inputs"):
            return self._export_named(folder, model_artifact, cfg, ctx)
        import onnx
        import torch

        model = load_model(model_artifact, ctx.recipe.model)
        shape = tuple(model_artifact.meta["input_shape"])
        raw = folder / "raw.onnx"
        with ctx.console.status("exporting to ONNX"):
            if model_artifact.size >= CHILD_MODEL_BYTES:
                in_child(_export_stored, model_artifact, ctx.recipe.model, shape, raw, cfg.opset)
            else:
                _export(model, shape, raw, cfg.opset)
        try:
            onnx.checker.check_model(str(raw), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise StageError(self.name, f"onnx.checker rejected the export: {exc}") from None
        nodes_before = len(onnx.load(str(raw)).graph.node)
        target = folder / "model.onnx"
        if cfg.simplify:
            _simplify(raw, target)
            onnx.checker.check_model(str(target), full_check=True)
            raw.unlink()
        else:
            raw.rename(target)
        exported = onnx.load(str(target))
        batch = preprocess(ctx.dataset.eval.images[: cfg.parity_batch], ctx.recipe.data.preprocessing)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        got = _run_onnx(target, batch)
        error = float(np.abs(got - expected).max())
        if not error <= cfg.parity_atol:
            raise StageError(self.name, f"ONNX output differs from PyTorch by {error:.3g} (max abs) on {len(batch)} "
                                        f"evaluation images; the limit is export.parity_atol={cfg.parity_atol:g}")
        sanity = _sanity_check(target, model_artifact, ctx)
        meta: dict[str, Any] = {
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "input_shape": list(shape),
            "num_classes": model_artifact.meta["num_classes"],
            "opset": cfg.opset,
            "nodes_exported": nodes_before,
            "nodes": len(exported.graph.node),
            "ops": sorted({n.op_type for n in exported.graph.node}),
            "metrics": {"parity_max_abs_error": error, "parity_batch": len(batch), **({"sanity": sanity} if sanity else {})},
        }
        return Made(target, "onnx", meta)

    def _export_named(self, folder: Path, model_artifact: Artifact, cfg: ExportConfig, ctx: RunContext) -> Made:
        """A model with declared inputs: exported with its named dimensions dynamic (the exporter works out which sizes
        they share) and its sized ones fixed, its outputs given their names, checked, simplified, and every output
        compared with PyTorch's."""
        import onnx

        model = load_model(model_artifact, ctx.recipe.model)
        records, outputs = model_artifact.meta["inputs"], model_artifact.meta["outputs"]
        names = [record["name"] for record in records]
        feed = model_inputs(ctx.dataset.eval, ctx.recipe.data.preprocessing, names[0], count=cfg.parity_batch)
        raw = folder / "raw.onnx"
        example = {name: array[:2] for name, array in feed.items()}
        with ctx.console.status("exporting to ONNX"):
            if model_artifact.size >= CHILD_MODEL_BYTES:
                in_child(_export_stored_named, model_artifact, ctx.recipe.model, example, records, raw, cfg.opset)
            else:
                _export_named(model, example, records, raw, cfg.opset)
        exported = onnx.load(str(raw))
        rename_outputs(exported, outputs)
        onnx.save(exported, str(raw))
        try:
            onnx.checker.check_model(str(raw), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise StageError(self.name, f"onnx.checker rejected the export: {exc}") from None
        target = folder / "model.onnx"
        if cfg.simplify:
            _simplify(raw, target)
            raw.unlink()
        else:
            raw.rename(target)
        expected = call_model(model, feed, names, outputs)
        got = _run_onnx_all(target, feed)
        error = max(float(np.abs(got[name] - expected[name]).max()) for name in outputs)
        if not error <= cfg.parity_atol:
            raise StageError(self.name, f"ONNX outputs differ from PyTorch by {error:.3g} (max abs) on {len(feed[names[0]])} evaluation "
                                        f"samples; the limit is export.parity_atol={cfg.parity_atol:g}")
        final = onnx.load(str(target), load_external_data=False)
        meta: dict[str, Any] = {
            "input_name": names[0], "input_shape": list(feed[names[0]].shape[1:]), "inputs": records, "outputs": outputs,
            "output_name": outputs[0], "num_classes": None, "opset": cfg.opset, "nodes": len(final.graph.node),
            "ops": sorted({n.op_type for n in final.graph.node}),
            "metrics": {"parity_max_abs_error": error, "parity_batch": len(feed[names[0]])}}
        return Made(target, "onnx", meta)

    def _adopt(self, folder: Path, model_artifact: Artifact, ctx: RunContext) -> Made:
        """An ONNX entry as the exported model: the file as given, checked against the data it will be fed (names, dtypes,
        fixed dimensions) and run once on ONNX Runtime."""
        import onnx

        inputs, outputs = model_artifact.meta["inputs"], model_artifact.meta["outputs"]
        data = ctx.recipe.data.path or ctx.recipe.data.root
        if ctx.dataset.eval.arrays is None and len(inputs) != 1:
            raise DataError(f"model.onnx has {len(inputs)} inputs ({', '.join(i['name'] for i in inputs)}); image data feeds one: give "
                            "its inputs as named arrays (data.dataset: arrays)")
        feed = model_inputs(ctx.dataset.eval, ctx.recipe.data.preprocessing, inputs[0]["name"], count=PARITY_SAMPLES)
        check_feed(feed, inputs, data)
        static = {i["shape"][0] for i in inputs if i["shape"] and i["shape"][0] is not None}
        batch = min(static) if static else None
        target = folder / "model.onnx"
        shutil.copyfile(model_artifact.path, target)
        try:
            got = _run_onnx_all(target, {name: array[:batch] for name, array in feed.items()})
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own kinds
            raise StageError(self.name, f"ONNX Runtime cannot run model.onnx on the data: {' '.join(str(exc).split())[:300]}") from None
        model = onnx.load(str(target), load_external_data=False)
        meta: dict[str, Any] = {
            "input_name": inputs[0]["name"], "input_shape": list(feed[inputs[0]["name"]].shape[1:]), "inputs": inputs, "outputs": outputs,
            "output_name": outputs[0], "static_batch": batch, "num_classes": model_artifact.meta.get("num_classes"),
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None), "nodes": len(model.graph.node),
            "ops": sorted({n.op_type for n in model.graph.node}),
            "metrics": {"output_shapes": {name: list(array.shape[1:]) for name, array in got.items()}}}
        return Made(target, "onnx", meta)


def _sanity_check(onnx_path: Path, model_artifact: Artifact, ctx: RunContext) -> list[dict[str, Any]] | None:
    """The exported FP32 model on whole photos whose ImageNet class is known (``edgeship.photos.PROBES``): a wrong
    class means the preprocessing (scale, channel order, size) does not match the model's training, so every later
    number would be meaningless. Runs for an ImageNet model on data that brings probe photos; None otherwise."""
    probes = ctx.dataset.probes
    if not probes or model_artifact.meta.get("class_set") != "imagenet":
        return None
    names = list(probes)
    logits = _run_onnx(onnx_path, preprocess(np.stack([probes[n] for n in names]), ctx.recipe.data.preprocessing))
    results = judge_probes(dict(zip(names, logits, strict=True)), tuple(model_artifact.meta["classes"]))
    wrong = [r for r in results if not r["ok"]]
    if wrong:
        raise StageError("export", "sanity check failed, the preprocessing does not match the model (check "
                                   "data.preprocessing scale/mean/std/color): " + "; ".join(
                                       f"{r['photo']} predicted {r['predicted']!r}, expected {' or '.join(map(repr, r['expected']))}"
                                       for r in wrong))
    ctx.console.print("sanity check: " + ", ".join(f"{r['photo']} → {r['predicted']}" for r in results))
    return results


def _export_stored(model_artifact: Artifact, model_cfg: ModelConfig, shape: tuple[int, ...], path: Path, opset: int) -> None:
    """The export's child process (``in_child``): the stored model loaded and exported; the exporter's imports, which no
    trim gives back, leave with the child."""
    _export(load_model(model_artifact, model_cfg), shape, path, opset)


def _export_stored_named(model_artifact: Artifact, model_cfg: ModelConfig, example: Mapping[str, np.ndarray],
                         records: list[dict[str, Any]], path: Path, opset: int) -> None:
    """As ``_export_stored``, for a model with named inputs."""
    _export_named(load_model(model_artifact, model_cfg), example, records, path, opset)


def _export(model: Any, shape: tuple[int, ...], path: Path, opset: int) -> None:
    """torch.onnx.export (dynamo) with a dynamic batch axis, its chatter kept off the terminal."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    _torch_export(model, (torch.zeros(2, *shape),), path, opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                  dynamic=({0: batch},))


def _export_named(model: Any, example: Mapping[str, np.ndarray], records: list[dict[str, Any]], path: Path, opset: int) -> None:
    """torch.onnx.export (dynamo) of a model with named inputs: a dimension declared by name is left for the exporter to
    make dynamic or keep (``Dim.AUTO``: it finds which sizes inputs share and which the model fixes), one declared by
    size stays that size; its chatter kept off the terminal."""
    import torch

    names = [record["name"] for record in records]
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in names)
    dynamic = tuple({axis: torch.export.Dim.AUTO for axis, size in enumerate(record["shape"]) if size is None} for record in records)
    _torch_export(model, tensors, path, opset, input_names=names, output_names=None, dynamic=dynamic)


def _torch_export(model: Any, args: tuple[Any, ...], path: Path, opset: int, *, input_names: list[str], output_names: list[str] | None,
                  dynamic: tuple[dict[int, Any], ...]) -> None:
    """torch.onnx.export (dynamo, weights inside the file), its chatter kept off the terminal, its failure one line."""
    import torch

    quiet = io.StringIO()
    with (warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet),
          loggers_at(logging.ERROR, *EXPORTER_LOGGERS)):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, args, str(path), input_names=input_names, output_names=output_names, opset_version=opset,
                              dynamo=True, dynamic_shapes=dynamic, external_data=False, verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            last = str(exc).strip().splitlines()
            raise StageError("export", f"torch.onnx.export failed: {type(exc).__name__}: {last[0] if last else ''}") from exc


def rename_outputs(model: Any, names: list[str]) -> None:
    """Give an exported graph's outputs ``names``, in order. An inner tensor that already bears one of the names (the
    exporter names tensors after modules: an ``embedding`` module's output is ``embedding``) is renamed first, so the
    graph stays in single-assignment form."""
    graph = model.graph
    if len(graph.output) != len(names):
        raise StageError("export", f"the exported graph has {len(graph.output)} outputs; model.outputs names {len(names)}")

    def replace(old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]
            node.output[:] = [new if name == old else name for name in node.output]
        for value in (*graph.output, *graph.value_info):
            if value.name == old:
                value.name = new

    current = [value.name for value in graph.output]
    for old, new in zip(current, names, strict=True):
        if old == new:
            continue
        if any(new in node.output or new in node.input for node in graph.node):
            replace(new, f"{new}__inner")
        replace(old, new)


def _simplify(source: Path, target: Path) -> None:
    import onnx
    import onnxslim

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        slim = onnxslim.slim(onnx.load(str(source)))
    if slim is None:
        raise StageError("export", "onnxslim returned no model")
    onnx.save(slim, str(target))


def _session(path: Path) -> Any:
    """An ONNX Runtime session on the CPU provider, its log kept to errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run_onnx_all(path: Path, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of an ONNX model on ``feed``, by name, on ONNX Runtime's CPU provider."""
    session = _session(path)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feed)), strict=True))


def _run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    session = _session(path)
    return session.run(None, {session.get_inputs()[0].name: batch})[0]
