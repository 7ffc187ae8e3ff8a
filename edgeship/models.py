"""PyTorch models from a recipe or a model artifact, and the FP32 baseline behind the ``Runner`` interface.

``instantiate`` builds a zoo, pretrained or factory model; ``load_checkpoint`` loads a user's weights-only checkpoint;
``load_model`` rebuilds a stored model artifact, pruned structure included. ``TorchRunner`` runs such an artifact behind
the same interface as every engine, so the harness times the baseline like an engine; it is not a registered backend
(it builds nothing): its "engine" is a model artifact's record (``artifact.json``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import re
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeship import zoo
from edgeship.artifacts import Artifact
from edgeship.backends.base import Runner
from edgeship.errors import DataError, RecipeError, UserCodeError
from edgeship.recipe import ModelConfig
from edgeship.tensors import Feed, TensorMeta, standard_strides
from edgeship.zoo import pretrained

if TYPE_CHECKING:
    from torch import nn

def instantiate(cfg: ModelConfig, *, in_channels: int, num_classes: int, weights: bool = True) -> nn.Module:
    """A fresh model from the zoo, a pretrained network (with its weights unless ``weights=False``) or the user's
    factory (trusted code named in the recipe: ``package.module:function`` or ``path/to/file.py:function``)."""
    if cfg.pretrained is not None:
        return pretrained.build(cfg.pretrained, weights=weights)
    if cfg.zoo is not None:
        return zoo.build(cfg.zoo, in_channels=in_channels, num_classes=num_classes, width=cfg.width)
    assert cfg.factory is not None
    factory = _factory(cfg.factory)
    try:
        model = factory()
    except Exception as exc:
        raise UserCodeError(f"model.factory {cfg.factory!r}: building the model failed: {_exception_line(exc)}") from exc
    import torch

    if not isinstance(model, torch.nn.Module):
        raise RecipeError(f"'model.factory': {cfg.factory!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def is_file_factory(spec: str) -> bool:
    """Whether a factory names a file (``models/net.py:build``) rather than an importable module."""
    return spec.rpartition(":")[0].endswith(".py")


def factory_source_sha256(spec: str) -> str | None:
    """The sha256 of the file that defines a factory, so the store notices an edited model; the modules that file
    imports are not followed. None when the file cannot be found (loading the factory then says why)."""
    where = spec.rpartition(":")[0]
    if is_file_factory(spec):
        path: Path | None = Path(where)
    else:  # found on the path part by part, never importing a package's __init__ (it may need what is not installed)
        path, search = None, None
        for part in where.split("."):
            found = importlib.machinery.PathFinder.find_spec(part, search)
            if found is None:
                return None
            search = found.submodule_search_locations
            path = Path(found.origin) if found.origin else None
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def _factory(spec: str) -> Any:
    """The function a ``factory`` names; its code's folder is remembered so its failures can be told from edgeship's."""
    where, _, function = spec.rpartition(":")
    if is_file_factory(spec):
        module = _module_from_file(Path(where), spec)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise RecipeError(f"'model.factory': cannot import {spec!r}: {_import_failure(where, function, exc)}") from None
        except Exception as exc:
            raise UserCodeError(f"model.factory {spec!r}: importing {where} failed: {_exception_line(exc)}") from exc
    try:
        factory = getattr(module, function)
    except AttributeError:
        raise RecipeError(f"'model.factory': {spec!r}: {where} has no {function!r}") from None
    _FACTORY_CODE[spec] = _code_folder(module)
    return factory


def _module_from_file(path: Path, spec: str) -> ModuleType:
    """The module in ``path``, loaded once under a name of its own; its folder goes on ``sys.path`` so the file's own
    imports of its neighbours work, while the package around it (and its ``__init__``) is never imported."""
    name = "edgeship_factory_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise RecipeError(f"'model.factory': {spec!r}: file not found: {path}")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    loader = importlib.util.spec_from_file_location(name, path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module
    try:
        loader.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules[name]
        raise RecipeError(f"'model.factory': cannot load {path}: {_exception_line(exc)}") from None
    except Exception as exc:
        del sys.modules[name]
        raise UserCodeError(f"model.factory {spec!r}: loading {path} failed: {_exception_line(exc)}") from exc
    return module


def _import_failure(where: str, function: str, exc: ImportError) -> str:
    """Why a factory's module would not import, and what to do: a package whose ``__init__`` needs what is not
    installed can be skipped by naming the file."""
    top = where.split(".")[0]
    found = importlib.util.find_spec(top)  # a top-level name: nothing is imported to find it
    if found is None:
        return f"no module named {top!r} (is its package installed, or its folder on PYTHONPATH?)"
    missing = exc.name
    if missing and missing != where and not where.startswith(missing + "."):  # the module is there; something it imports is not
        folder = Path(found.origin).parent if found.origin and found.origin.endswith("__init__.py") else None
        file = folder.joinpath(*where.split(".")[1:]).with_suffix(".py") if folder is not None and "." in where else None
        hint = f"; install it, or name the file to skip the package's imports: factory: {file}:{function}" if file and file.is_file() \
            else "; install it"
        return f"{where} (or its package) imports {missing!r}, which is not installed{hint}"
    return _exception_line(exc)


def _code_folder(module: ModuleType) -> Path | None:
    """The folder of a factory's code: its top-level package's, or the file's own."""
    top = sys.modules.get(module.__name__.split(".")[0]) if not module.__name__.startswith("edgeship_factory_") else module
    file = getattr(top, "__file__", None) or getattr(module, "__file__", None)
    return Path(file).resolve().parent if file else None


_FACTORY_CODE: dict[str, Path | None] = {}  # factory spec → the folder its code lives in
_EDGESHIP = Path(__file__).resolve().parent


def user_code_failure(exc: BaseException, factories: Mapping[str, str], *, stage: str) -> UserCodeError | None:
    """``exc`` as one line naming the factory, what failed and the stage, when its traceback runs through a user's factory
    code (a frame in that code's folder, edgeship's own files excluded); ``None`` when it is not the user's.
    ``factories``: recipe key → spec."""
    frames = [(Path(frame.filename).resolve(), frame.name) for frame in traceback.extract_tb(exc.__traceback__)]
    for key, spec in factories.items():
        folder = _FACTORY_CODE.get(spec)
        if folder is None:
            continue
        theirs = [name for file, name in frames if file.is_relative_to(folder) and not file.is_relative_to(_EDGESHIP)]
        if theirs:
            what = "forward" if "forward" in theirs else theirs[-1]
            return UserCodeError(f"{key} {spec!r}: {what} failed in the {stage} stage: {_exception_line(exc)}")
    return None


def _exception_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a weights-only state_dict into ``model``; refuse pickles and other architectures. A state_dict nested under
    ``state_dict`` / ``model_state_dict`` / ``model`` (training-loop checkpoints) is unwrapped, and a prefix on every key
    (``module.`` from DataParallel, ``model.``) is dropped when the keys then match the model's."""
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
    for key in NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: expected a state_dict (mapping of tensors), got {type(state).__name__}")
    expected = model.state_dict()
    state = _without_prefix(state, expected)
    problem = _architecture_mismatch(expected, state)
    if problem:
        raise DataError(f"{path}: checkpoint is for another architecture than {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=True)


NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def _without_prefix(state: Mapping[str, Any], expected: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state`` with a prefix every key shares removed, when that makes its keys the model's."""
    if set(state) == set(expected) or not state:
        return state
    first = next(iter(state))
    if "." not in first:
        return state
    prefix = first.split(".", 1)[0] + "."
    if all(key.startswith(prefix) for key in state) and {key.removeprefix(prefix) for key in state} == set(expected):
        return {key.removeprefix(prefix): value for key, value in state.items()}
    return state


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
        example = example_inputs(artifact.meta["inputs"]) if artifact.meta.get("inputs") else torch.zeros(1, *artifact.meta["input_shape"])
        replay(model.eval(), example, history)
    model.load_state_dict(torch.load(artifact.path, map_location="cpu", weights_only=True))
    return model.eval()



def input_records(cfg: ModelConfig) -> list[dict[str, Any]]:
    """A model's declared inputs as the ONNX signature records them: name, numpy dtype, shape with ``None`` where a
    dimension is named (dynamic)."""
    return [{"name": decl.name, "dtype": decl.dtype, "shape": [d if isinstance(d, int) else None for d in decl.shape]}
            for decl in cfg.inputs]


def example_inputs(records: list[dict[str, Any]]) -> tuple[Any, ...]:
    """A traceable example of declared inputs (for Torch-Pruning's dependency graph): batch 1, every named dimension 2,
    ones (a valid token id and an open attention mask)."""
    import torch

    return tuple(torch.ones([1, *(2 if size is None else size for size in record["shape"][1:])], dtype=getattr(torch, record["dtype"]))
                 for record in records)


def call_model(model: nn.Module, feed: Feed, inputs: list[str], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """A PyTorch model with named inputs run on ``feed`` (arrays, passed positionally in ``inputs`` order, with standard
    strides), its outputs named: ``outputs`` in the order it returns them (a tensor, a tuple or list, or a dict of
    tensors), else ``output`` / ``output_<i>`` / the dict's keys."""
    import torch

    with torch.no_grad():
        result = model(*(torch.from_numpy(standard_strides(np.asarray(feed[name]))) for name in inputs))
    if isinstance(result, Mapping):
        values, default = list(result.values()), [str(key) for key in result]
    elif isinstance(result, list | tuple):
        values, default = list(result), [f"output_{i}" for i in range(len(result))]
    else:
        values, default = [result], ["output"]
    names = list(outputs) if outputs else default
    if len(names) != len(values):
        raise ValueError(f"the model returned {len(values)} outputs; model.outputs names {len(names)} ({', '.join(names)})")
    return {name: value.detach().numpy() for name, value in zip(names, values, strict=True)}


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
        artifact = Artifact.read(self.engine)
        cfg = ModelConfig.model_validate(self._model_config) if self._model_config else None
        self._model = load_model(artifact, cfg)
        self._named = artifact.meta.get("inputs")  # a model with declared inputs: run by name, every output named
        self._outputs = artifact.meta.get("outputs")
        if self._named:
            self._meta = {record["name"]: TensorMeta(record["name"], np.dtype(record["dtype"]), tuple(record["shape"]))
                          for record in self._named}
        else:
            self._meta = {"input": TensorMeta("input", np.dtype(np.float32), (None, *artifact.meta["input_shape"]))}

    def _deactivate(self) -> None:
        self._model = None

    def _infer(self, feed: Feed) -> Feed:
        import torch

        if self._named:
            return call_model(self._model, feed, [record["name"] for record in self._named], self._outputs)
        with torch.no_grad():
            return {self._output: self._model(torch.from_numpy(standard_strides(feed["input"]))).numpy()}

    def _describe(self) -> dict[str, object]:
        import torch

        return {"runtime": f"PyTorch {torch.__version__}", "threads": torch.get_num_threads(), "precision": "fp32"}
