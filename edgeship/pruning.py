"""Pruning algorithms on a plain ``nn.Module``: structured (Torch-Pruning, DepGraph) and unstructured.

Structured pruning removes whole channels of coupled layer groups (residual adds,
depthwise convolutions, BatchNorm and the next layer's inputs move together), so
the result is a physically smaller dense model. Unstructured pruning only zeroes
weights: dense engines run it no faster, which the prune stage measures and says.
``example`` is the input a model is traced with: one tensor, or a tuple of tensors for
a model of several inputs (Torch-Pruning passes a tuple positionally).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from edgeship.errors import RecipeError, StageError

Importance = Literal["l1", "bn_gamma", "taylor", "activation"]
ROOT_TYPES = (nn.Conv2d, nn.Linear)
MAX_RATIO = 0.95  # never take every channel of a group


def classifier_name(model: nn.Module) -> str:
    """The last Conv2d/Linear in module order: the layer whose outputs are the classes."""
    names = [name for name, module in model.named_modules() if isinstance(module, ROOT_TYPES)]
    if not names:
        raise StageError("prune", "the model has no Conv2d or Linear layer to prune")
    return names[-1]


def ignored_modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules never pruned: the recipe's ``ignore_layers`` (module names, or shell patterns such as
    ``encoder.layer.*.attention.*`` for the repeated blocks of a transformer) plus the classifier."""
    import fnmatch

    modules = dict(model.named_modules())
    chosen: list[str] = []
    unknown = []
    for name in names:
        matched = fnmatch.filter(modules, name) if any(c in name for c in "*?[") else [name] if name in modules else []
        chosen.extend(matched)
        if not matched:
            unknown.append(name)
    if unknown:
        raise RecipeError(f"'prune.ignore_layers': no module named {', '.join(map(repr, unknown))}; "
                          f"modules include {', '.join(list(n for n in modules if n)[:12])}, …")
    return [modules[name] for name in dict.fromkeys([*chosen, classifier_name(model)])]


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on ``example``."""
    import torch_pruning as tp

    _count_subclasses(model)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def _count_subclasses(model: nn.Module) -> None:
    """Torch-Pruning's MAC counter looks modules up by exact type, so a subclass of ``nn.Conv2d`` (EfficientNet's
    ``Conv2dStaticSamePadding``, timm's ``Conv2dSame``) counted zero MACs; count it as its nearest known base."""
    from torch_pruning.utils.op_counter import MODULES_MAPPING

    for kind in {type(module) for module in model.modules()}:
        if kind not in MODULES_MAPPING:
            base = next((b for b in kind.__mro__[1:] if b in MODULES_MAPPING), None)
            if base is not None:
                MODULES_MAPPING[kind] = MODULES_MAPPING[base]


def layer_groups(model: nn.Module, example: torch.Tensor, ignore: Sequence[str]) -> list[str]:
    """Names of the root modules of every prunable group of coupled channels."""
    names = {module: name for name, module in model.named_modules()}
    graph = _dependency_graph(model, example)
    groups = graph.get_all_groups(ignored_layers=ignored_modules(model, ignore), root_module_types=list(ROOT_TYPES))
    return [names[group[0].dep.target.module] for group in groups if group[0].dep.target.module in names]


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> Any:
    import torch_pruning as tp

    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as exc:  # noqa: BLE001 - DepGraph fails in many ways on unknown layers
        raise StageError("prune", f"Torch-Pruning cannot trace the model ({type(exc).__name__}: {exc}); "
                                  "list the offending module in prune.ignore_layers") from None


_SQUARES = "_edgeship_input_squares"  # per input channel: the sum of squares of what the layer read while recording


@contextmanager
def recording_activations(model: nn.Module) -> Iterator[None]:
    """While open, every Linear and Conv2d adds up the squares of each of its input channels; activation importance
    reads them. What was recorded before is dropped: a pruned layer's channels are no longer the ones counted."""
    def record(module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        x = args[0].detach().to(torch.float64)
        squares = x.pow(2).sum((0, 2, 3)) if isinstance(module, nn.Conv2d) else x.pow(2).reshape(-1, x.shape[-1]).sum(0)
        setattr(module, _SQUARES, getattr(module, _SQUARES, 0) + squares)

    layers = [m for m in model.modules() if isinstance(m, ROOT_TYPES)]
    for layer in layers:
        layer.__dict__.pop(_SQUARES, None)
    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _activation_importance() -> Any:
    import torch_pruning as tp
    from torch_pruning.pruner import function

    class ActivationImportance(tp.importance.GroupMagnitudeImportance):
        """Wanda's weight × activation score made structural: channel j carries ‖X_j‖ × ‖W[:, j]‖ into each layer that
        reads it, summed over the group's readers. Weight magnitude alone misses that a pretrained network's channels
        differ in activation scale by orders of magnitude (a transformer's feed-forward channels above all), and it needs
        no labels: recording the inputs of a few batches (``recording_activations``) is enough."""

        @torch.no_grad()
        def __call__(self, group: Any) -> torch.Tensor | None:
            scores, indices = [], []
            for i, (dep, idxs) in enumerate(group):
                layer, squares = dep.layer, getattr(dep.layer, _SQUARES, None)
                reads = dep.pruning_fn in (function.prune_linear_in_channels, function.prune_conv_in_channels)
                if not reads or squares is None or getattr(layer, "groups", 1) != 1 or getattr(layer, "transposed", False):
                    continue
                columns = layer.weight.detach().transpose(0, 1).flatten(1)[idxs]
                scores.append(squares[idxs].sqrt().to(columns.dtype) * columns.norm(dim=1))
                indices.append(group[i].root_idxs)
            if not scores:  # nothing read these channels while recording (a group's only readers are depthwise): magnitude
                return super().__call__(group)
            return self._normalize(self._reduce(scores, indices), self.normalizer)

    return ActivationImportance(p=2)


def _importance(kind: Importance) -> Any:
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "bn_gamma":
        return tp.importance.BNScaleImportance()
    if kind == "activation":
        return _activation_importance()
    return tp.importance.GroupTaylorImportance()


def make_pruner(model: nn.Module, example: torch.Tensor, *, importance: Importance, ratios: Mapping[str, float] | None = None,
                global_ratio: float | None = None, ignore: Sequence[str] = (), steps: int = 1, round_to: int | None = None) -> Any:
    """A Torch-Pruning MetaPruner: per-group ``ratios`` by root module name, or one ``global_ratio``."""
    import torch_pruning as tp

    modules = dict(model.named_modules())
    missing = [name for name in (ratios or {}) if name not in modules]
    if missing:
        raise RecipeError(f"'prune.ratios': no module named {', '.join(map(repr, missing))}")
    kwargs: dict[str, Any] = {}
    if ratios is not None:
        kwargs["pruning_ratio_dict"] = {modules[name]: min(r, MAX_RATIO) for name, r in ratios.items() if r > 0}
        kwargs["pruning_ratio"] = 0.0
    else:
        kwargs["pruning_ratio"] = min(global_ratio or 0.0, MAX_RATIO)
        kwargs["global_pruning"] = True
    try:
        return tp.pruner.MetaPruner(model, example, importance=_importance(importance), iterative_steps=steps,
                                    ignored_layers=ignored_modules(model, ignore), max_pruning_ratio=MAX_RATIO,
                                    root_module_types=list(ROOT_TYPES), round_to=round_to, **kwargs)
    except (RecipeError, StageError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise StageError("prune", f"Torch-Pruning cannot handle the model ({type(exc).__name__}: {exc}); "
                                  "list the offending module in prune.ignore_layers") from None


def check_runs(model: nn.Module, example: torch.Tensor) -> None:
    """A pruned model must still run; a forward that hard-codes channel counts does not."""
    try:
        with torch.no_grad():
            model.eval()(*example) if isinstance(example, tuple) else model.eval()(example)
    except Exception as exc:  # noqa: BLE001
        reason = " ".join(str(exc).split())[:200]
        raise StageError("prune", f"the pruned model no longer runs ({type(exc).__name__}: {reason}); a module whose forward "
                                  "hard-codes a channel count cannot be pruned: name it in prune.ignore_layers") from None


def prune_once(model: nn.Module, example: torch.Tensor, **kwargs: Any) -> nn.Module:
    """A pruned deep copy (one step): for MAC searches and the sensitivity scan. L1 importance unless given."""
    pruned = copy.deepcopy(model)
    kwargs.setdefault("importance", "l1")
    if kwargs["importance"] == "taylor":  # scans use magnitude: Taylor scores need a training pass each time
        kwargs["importance"] = "l1"
    make_pruner(pruned, example, **kwargs).step()
    check_runs(pruned, example)
    return pruned


def kept_macs(model: nn.Module, example: torch.Tensor, base_macs: int, **kwargs: Any) -> float:
    return count(prune_once(model, example, **kwargs), example)[0] / base_macs


def sensitivity_scan(model: nn.Module, example: torch.Tensor, groups: Sequence[str], ratios: Sequence[float],
                     evaluate: Callable[[nn.Module], float], *, ignore: Sequence[str], importance: Importance,
                     on_step: Callable[[], None] = lambda: None) -> dict[str, dict[str, float]]:
    """Accuracy after pruning each group alone at each ratio: ``{group: {ratio: accuracy}}``."""
    curves: dict[str, dict[str, float]] = {}
    for group in groups:
        curves[group] = {}
        for ratio in ratios:
            pruned = prune_once(model, example, ratios={group: ratio}, ignore=ignore, importance=importance)
            curves[group][f"{ratio:g}"] = evaluate(pruned)
            on_step()
    return curves


def ratios_for_drop(curves: Mapping[str, Mapping[str, float]], base_accuracy: float, drop_points: float) -> dict[str, float]:
    """Each group's largest scanned ratio whose accuracy stays within ``drop_points`` of the base (0 if none)."""
    chosen = {}
    for group, curve in curves.items():
        allowed = [float(r) for r, acc in curve.items() if 100 * (base_accuracy - acc) <= drop_points]
        chosen[group] = max(allowed, default=0.0)
    return chosen


def search(keep_at: Callable[[float], float], target: float, *, iterations: int = 14) -> tuple[float, float]:
    """Smallest t in [0, 1] with ``keep_at(t) <= target`` (keep_at falls as t grows); (t, keep) at the end."""
    low, high = 0.0, 1.0
    keep_high = keep_at(high)
    if keep_high > target:
        return high, keep_high
    for _ in range(iterations):
        mid = (low + high) / 2
        keep = keep_at(mid)
        if keep <= target:
            high, keep_high = mid, keep
        else:
            low = mid
    return high, keep_high


def replay(model: nn.Module, example: torch.Tensor, history: Sequence[Any]) -> nn.Module:
    """Rebuild a pruned structure on ``model`` (in place) from Torch-Pruning's ``pruning_history()``."""
    graph = _dependency_graph(model, example)
    graph.load_pruning_history([tuple(step) for step in history])
    return model


def prunable_weights(model: nn.Module, ignore: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Every Conv2d/Linear except the ignored modules and the classifier."""
    skip = {id(m) for m in ignored_modules(model, ignore)}
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ROOT_TYPES) and id(m) not in skip]


def apply_magnitude_masks(model: nn.Module, sparsity: float, ignore: Sequence[str]) -> None:
    """Global L1 magnitude pruning to ``sparsity`` (classifier kept): masks stay attached, so fine-tuning keeps zeros at zero."""
    from torch.nn.utils import prune

    targets = prunable_weights(model, ignore)
    if not targets:
        raise StageError("prune", "no Conv2d/Linear weights left to prune after prune.ignore_layers")
    prune.global_unstructured([(m, "weight") for _, m in targets], pruning_method=prune.L1Unstructured, amount=sparsity)


def make_masks_permanent(model: nn.Module) -> None:
    from torch.nn.utils import prune

    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights in every Conv2d/Linear."""
    return {name: round(float((m.weight == 0).float().mean()), 6) for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)}
