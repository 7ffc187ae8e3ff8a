"""The distillation objectives and hints on tiny models: zero when equal, T² scaling, gradients to the student only."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeship.distillation import Distiller, Hint, distiller, logit_loss, soft_target_loss
from edgeship.errors import RecipeError


def tiny_net(width: int = 8, classes: int = 5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 5, (16,), generator=generator)


@pytest.mark.parametrize("objective", ["soft", "mse"])
def test_loss_is_zero_when_the_student_equals_the_teacher(objective: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    teacher = tiny_net()
    with distiller(copy.deepcopy(teacher), teacher, batch[0], objective=objective) as module:  # type: ignore[arg-type]
        module.eval()
        loss, _ = module(batch[0], None)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_soft_hard_is_minimal_at_the_teacher_and_weights_the_hard_part(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    logits = tiny_net()(x).detach()
    same = logit_loss(logits, logits, y, objective="soft_hard", temperature=4.0, alpha=0.9)
    assert same.item() == pytest.approx(0.1 * F.cross_entropy(logits, y).item(), rel=1e-5), "soft part vanishes, hard part weighs 1 - alpha"
    other = logit_loss(logits + torch.randn_like(logits), logits, y, objective="soft_hard", temperature=4.0, alpha=1.0)
    assert other.item() > 0
    assert logit_loss(logits, logits, y, objective="soft_hard", temperature=4.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
def test_soft_loss_is_t_squared_times_the_kl_at_temperature_t(temperature: float) -> None:
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(32, 10, generator=generator), torch.randn(32, 10, generator=generator)
    p = F.softmax(teacher / temperature, dim=1)
    kl = (p * (p.log() - F.log_softmax(student / temperature, dim=1))).sum(dim=1).mean()
    assert soft_target_loss(student, teacher, temperature).item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)


def test_t_squared_keeps_gradient_size_independent_of_temperature() -> None:
    """Hinton's reason for T²: soft-target gradients shrink as 1/T²; the factor undoes it (at high T)."""
    generator = torch.Generator().manual_seed(3)
    teacher = torch.randn(64, 10, generator=generator)
    noise = 0.5 * torch.randn(64, 10, generator=generator)
    scaled, unscaled = [], []
    for temperature in (8.0, 16.0):
        for out, factor in ((scaled, 1.0), (unscaled, temperature**-2)):
            student = (teacher + noise).requires_grad_(True)
            (factor * soft_target_loss(student, teacher, temperature)).backward()
            out.append(student.grad.norm().item())  # type: ignore[union-attr]
    assert scaled[0] / scaled[1] == pytest.approx(1.0, rel=0.05)
    assert unscaled[0] / unscaled[1] == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("objective", ["soft", "soft_hard", "mse"])
def test_gradients_reach_the_student_and_regressors_only(objective: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    teacher, student = tiny_net(width=8), tiny_net(width=4)
    module = Distiller(student, teacher, x, objective=objective, hints=[Hint("3", "3")])  # type: ignore[arg-type]
    module.train()
    loss, _ = module(x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher never gets gradients"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters() if p.dim() > 1)
    assert isinstance(module.regressors[0], nn.Conv2d) and module.regressors[0].weight.grad is not None
    assert not teacher.training, "the teacher stays in eval mode (its BatchNorm statistics never move)"
    assert set(module.state_dict()) == {f"student.{k}" for k in student.state_dict()} | {"regressors.0.weight"}
    module.close()


def test_hint_regressor_is_identity_for_equal_widths_and_zero_for_equal_models(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    teacher = tiny_net()
    with distiller(copy.deepcopy(teacher), teacher, batch[0], objective="mse", hints=[Hint("2", "2")]) as module:
        assert isinstance(module.regressors[0], nn.Identity)
        module.eval()
        module(batch[0], None)
        assert module.hint_loss().item() == pytest.approx(0.0, abs=1e-7)


def test_hints_on_unknown_modules_or_different_spatial_sizes_are_recipe_errors(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    teacher, student = tiny_net(), tiny_net(width=4)
    with pytest.raises(RecipeError, match="student has no module named 'layer9'"):
        Distiller(student, teacher, batch[0], objective="soft", hints=[Hint("layer9", "3")])
    with pytest.raises(RecipeError, match="same spatial size"):
        Distiller(student, teacher, batch[0], objective="soft", hints=[Hint("3", "5")])


def test_different_output_shapes_name_both(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(RecipeError) as caught:
        Distiller(tiny_net(classes=7), tiny_net(classes=5), batch[0], objective="soft")
    message = str(caught.value)
    assert "(16, 5)" in message and "(16, 7)" in message and "\n" not in message


def test_hooks_are_removed_on_exit(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    teacher, student = tiny_net(), tiny_net(width=4)
    with distiller(student, teacher, batch[0], objective="soft", hints=[Hint("3", "3")]):
        assert student[3]._forward_hooks
    assert not student[3]._forward_hooks and not teacher[3]._forward_hooks


class PaddedEncoder(nn.Module):
    """Mean-pools the positions its mask marks; ``padding`` is added to the hidden states of the others only, so it
    changes the hint layer's output but never the model's."""

    def __init__(self, padding: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj, self.hidden, self.padding = nn.Linear(4, 4), nn.Identity(), padding

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        hidden = self.hidden(self.proj(x) + self.padding * (1 - keep))
        return (hidden * keep).sum(1) / keep.sum(1)


def test_a_hint_mask_leaves_padded_positions_out_of_the_hints() -> None:
    generator = torch.Generator().manual_seed(2)
    mask = (torch.arange(6) < torch.randint(1, 6, (8, 1), generator=generator)).long()
    example = (torch.randn(8, 6, 4, generator=generator), mask)
    teacher, student = PaddedEncoder(padding=0.0), PaddedEncoder(padding=5.0)
    losses = {}
    for hint_mask in (None, 1):
        with distiller(student, teacher, example, objective="mse", hints=[Hint("hidden", "hidden")], hint_mask=hint_mask) as module:
            loss, _ = module(example, None)
            losses[hint_mask] = (loss.item(), module.hint_loss().item())
    assert losses[None][1] > 1.0, "unmasked, the padding is most of the hint"
    assert losses[1] == pytest.approx((0.0, 0.0), abs=1e-10), "masked, the same outputs and real positions cost nothing"


def test_a_hint_mask_needs_position_features_of_the_mask_shape(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(RecipeError, match=r"'distill.padding_mask': hint '3' gives features of shape \(16, 8, 8, 8\); a masked hint"):
        Distiller(tiny_net(), tiny_net(), batch[0], objective="mse", hints=[Hint("3", "3")], hint_mask=0)
