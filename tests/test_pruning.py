"""Pruning algorithms on ResNet-style (residual adds) and MobileNetV2-style (depthwise, inverted residual) nets."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeship.errors import RecipeError
from edgeship.pipeline.export import _export
from edgeship.pruning import (
    apply_magnitude_masks,
    count,
    kept_macs,
    layer_groups,
    layer_sparsity,
    make_masks_permanent,
    make_pruner,
    prune_once,
    ratios_for_drop,
    recording_activations,
    replay,
    search,
)
from edgeship.zoo import build

EXAMPLE = torch.zeros(1, 1, 28, 28)


def fresh(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(arch, in_channels=1, num_classes=10, width=16).eval()


@pytest.mark.parametrize("arch", ["resnet_small", "mobilenet_small"])
def test_macs_target_is_met_and_the_pruned_model_exports(arch: str, tmp_path) -> None:
    model = fresh(arch)
    base_macs, base_params = count(model, EXAMPLE)
    groups = layer_groups(model, EXAMPLE, ())
    t, expected = search(lambda t: kept_macs(model, EXAMPLE, base_macs, ratios={g: 0.95 * t for g in groups}), 0.5)
    assert 0.4 <= expected <= 0.5
    pruner = make_pruner(model, EXAMPLE, importance="l1", ratios={g: 0.95 * t for g in groups}, steps=2)
    pruner.step()
    pruner.step()
    macs, params = count(model, EXAMPLE)
    assert macs / base_macs == pytest.approx(expected, abs=0.01) and params < base_params
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10), "the classifier keeps every class"
    path = tmp_path / "pruned.onnx"
    _export(model, (1, 28, 28), path, opset=18)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-4


@pytest.mark.parametrize("arch", ["resnet_small", "mobilenet_small"])
def test_history_replays_to_identical_outputs(arch: str) -> None:
    original = fresh(arch)
    pruned = copy.deepcopy(original)
    groups = layer_groups(pruned, EXAMPLE, ())
    pruner = make_pruner(pruned, EXAMPLE, importance="l1", ratios={g: 0.4 for g in groups})
    pruner.step()
    history = json.loads(json.dumps(pruner.pruning_history()))
    rebuilt = replay(copy.deepcopy(original), EXAMPLE, history)
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(rebuilt(x), pruned(x))


def test_depthwise_groups_stay_consistent() -> None:
    model = fresh("mobilenet_small")
    pruner = make_pruner(model, EXAMPLE, importance="l1", global_ratio=0.5)
    pruner.step()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels


def test_ignored_layers_and_unknown_names() -> None:
    model = fresh("resnet_small")
    assert "stem.0" not in layer_groups(model, EXAMPLE, ("stem.0",))
    with pytest.raises(RecipeError, match="'prune.ignore_layers': no module named 'stem.9'"):
        layer_groups(model, EXAMPLE, ("stem.9",))
    with pytest.raises(RecipeError, match="'prune.ratios': no module named 'nope'"):
        make_pruner(model, EXAMPLE, importance="l1", ratios={"nope": 0.5})


def test_ignored_layers_take_shell_patterns_that_must_match_something() -> None:
    model = fresh("resnet_small")
    groups = layer_groups(model, EXAMPLE, ())
    kept = layer_groups(model, EXAMPLE, ("stem.*",))
    assert kept and not any(name.startswith("stem.") for name in kept) and len(kept) < len(groups)
    with pytest.raises(RecipeError, match="'prune.ignore_layers': no module named 'encoder.\\*'"):
        layer_groups(model, EXAMPLE, ("encoder.*",))


@pytest.mark.parametrize("importance", ["bn_gamma", "taylor", "activation"])
def test_other_importance_criteria_prune(importance: str) -> None:
    model = fresh("resnet_small")
    base = count(model, EXAMPLE)[0]
    if importance == "taylor":
        torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.arange(8)).backward()
    if importance == "activation":
        with recording_activations(model), torch.no_grad():
            model(torch.randn(8, 1, 28, 28))
    make_pruner(model, EXAMPLE, importance=importance, ratios={"layer1.conv1": 0.5}).step()
    assert model.layer1.conv1.out_channels == 8 and count(model, EXAMPLE)[0] < base


@pytest.mark.parametrize("arch", ["resnet_small", "mobilenet_small"])
def test_activation_importance_prunes_every_group_of_a_conv_net(arch: str) -> None:
    """Residual adds and depthwise layers: every group is scored (by magnitude where only depthwise layers read it)."""
    model = fresh(arch)
    with recording_activations(model), torch.no_grad():
        model(torch.randn(8, 1, 28, 28))
    base = count(model, EXAMPLE)[0]
    groups = layer_groups(model, EXAMPLE, ())
    pruned = prune_once(model, EXAMPLE, ratios=dict.fromkeys(groups, 0.5), importance="activation")
    assert count(pruned, EXAMPLE)[0] < 0.6 * base
    assert pruned(EXAMPLE).shape == (1, 10)


def _quiet_and_loud() -> tuple[torch.nn.Module, torch.Tensor]:
    """A 4 → 8 → 2 MLP whose hidden channels 0–3 have large weights but read inputs that are always zero, and 4–7 small
    weights on inputs that are large: what magnitude keeps carries nothing."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[:4, :2] = 5.0 * torch.rand(4, 2) + 1.0
        model[0].weight[4:, 2:] = 0.2 * torch.rand(4, 2) + 0.1
        model[0].bias.zero_()
        model[2].weight.copy_(torch.rand(2, 8) + 0.5)
    data = torch.zeros(64, 4)
    data[:, 2:] = 10.0 * torch.rand(64, 2) + 5.0
    return model, data


def test_activation_importance_keeps_the_channels_that_carry_the_signal() -> None:
    model, data = _quiet_and_loud()
    example = data[:1]
    with recording_activations(model), torch.no_grad():
        model(data)
    squares = model[2]._edgeship_input_squares
    assert squares.shape == (8,) and torch.all(squares[:4] == 0) and torch.all(squares[4:] > 0)

    def kept_rows(importance: str) -> set[int]:
        pruned = prune_once(model, example, ratios={"0": 0.5}, importance=importance)
        return {int(torch.nonzero(torch.all(model[0].weight == row, dim=1))[0]) for row in pruned[0].weight}

    assert kept_rows("l1") == {0, 1, 2, 3}, "magnitude keeps the large weights"
    assert kept_rows("activation") == {4, 5, 6, 7}
    pruned = {kind: prune_once(model, example, ratios={"0": 0.5}, importance=kind) for kind in ("l1", "activation")}
    with torch.no_grad():
        error = {kind: (net(data) - model(data)).abs().max().item() for kind, net in pruned.items()}
    assert error["activation"] < 1e-4 < error["l1"], error


def test_activation_importance_records_anew_and_falls_back_to_magnitude_without_a_recording() -> None:
    model, data = _quiet_and_loud()
    with recording_activations(model), torch.no_grad():
        model(data)
    with recording_activations(model), torch.no_grad():  # a second recording replaces the first, it does not add to it
        model(data[:32])
    first = torch.zeros(8, dtype=torch.float64)
    first[4:] = (torch.relu(model[0](data[:32])).to(torch.float64) ** 2).sum(0)[4:]
    assert torch.allclose(model[2]._edgeship_input_squares, first)
    conv = torch.nn.Conv2d(3, 4, 1)
    with recording_activations(conv):
        conv(torch.ones(2, 3, 5, 5))
    assert torch.allclose(conv._edgeship_input_squares, torch.full((3,), 50.0, dtype=torch.float64))
    bare, _ = _quiet_and_loud()  # nothing recorded: ranked by weight magnitude, not refused
    pruned = prune_once(bare, data[:1], ratios={"0": 0.5}, importance="activation")
    assert {int(torch.nonzero(torch.all(bare[0].weight == row, dim=1))[0]) for row in pruned[0].weight} == {0, 1, 2, 3}


def test_ratios_for_drop_respects_the_threshold() -> None:
    curves = {"a": {"0.1": 0.90, "0.5": 0.89, "0.9": 0.50}, "b": {"0.1": 0.70, "0.5": 0.60}}
    assert ratios_for_drop(curves, 0.90, 2.0) == {"a": 0.5, "b": 0.0}
    assert ratios_for_drop(curves, 0.90, 50.0) == {"a": 0.9, "b": 0.5}


def test_unstructured_masks_survive_and_become_permanent() -> None:
    model = fresh("resnet_small")
    apply_magnitude_masks(model, 0.6, ignore=("fc",))
    make_masks_permanent(model)
    sparsity = layer_sparsity(model)
    assert sparsity["fc"] == 0.0
    weights = [(m.weight.numel(), sparsity[n]) for n, m in model.named_modules() if n in sparsity and n != "fc"]
    overall = sum(n * s for n, s in weights) / sum(n for n, _ in weights)
    assert overall == pytest.approx(0.6, abs=0.01)
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())


class HardCoded(torch.nn.Module):
    """A forward that hard-codes its channel count: pruning it must fail loudly, naming the fix."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.conv(x)).reshape(-1, 8 * 28 * 28))


def test_a_model_broken_by_pruning_is_a_clear_error() -> None:
    from edgeship.errors import StageError
    from edgeship.pruning import prune_once

    model = HardCoded().eval()
    with pytest.raises(StageError, match="no longer runs.*prune.ignore_layers"):
        prune_once(model, EXAMPLE, ratios={"head": 0.5})


def test_round_to_keeps_channel_counts_hardware_friendly() -> None:
    model = fresh("resnet_small")
    make_pruner(model, EXAMPLE, importance="l1", global_ratio=0.3, round_to=8).step()
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 8 == 0 for c in convs) and sum(convs) < sum(16 * k for k in (1, 1, 1, 2, 2, 2, 4, 4, 4))


class PaddedConv(torch.nn.Conv2d):
    """A conv subclass with its own forward, like EfficientNet's Conv2dStaticSamePadding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride)


def test_count_includes_conv_subclasses() -> None:
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    subclassed = torch.nn.Sequential(PaddedConv(3, 8, 3, stride=2), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    example = torch.randn(1, 3, 17, 17)  # 17 + 1 padded → the same 8×8 output either way
    plain(example), subclassed(example)
    conv_macs = 8 * 8 * 8 * 3 * 3 * 3
    assert count(subclassed, example)[0] == count(plain, example)[0] >= conv_macs
