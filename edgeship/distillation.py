"""Knowledge distillation on plain ``nn.Module``s: the objectives, FitNets hints and the student wrapper.

- soft (Hinton): KL(teacher ‖ student) of the softmax at temperature T, scaled by T² so
  its gradients keep their size as T changes;
- soft_hard: ``alpha · soft + (1 - alpha) · CE(student, labels)`` with the hard part at T = 1;
- mse: mean squared error between the logits (or any outputs: a model without labels or class scores);
- cosine: one minus the mean cosine between student and teacher outputs, per sample (an embedding's direction);
- hints (FitNets): MSE between a student feature map, through a learned 1×1 regressor
  when the widths differ, and the teacher's feature map at the named layer. Given a mask input (a padded sequence's
  attention mask), hints on (N, T, C) features compare only the positions it marks: padding carries nothing to the
  outputs, and on short sentences it would otherwise be most of the hint.

The teacher runs once per batch under ``torch.no_grad()`` and never receives gradients. A model of several inputs takes
a tuple of tensors; a model of several outputs (a tuple, a list or a dict of tensors) is distilled on every output, the
losses summed (soft targets need the one class-score output).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgeship.errors import RecipeError

Objective = Literal["soft", "soft_hard", "mse", "cosine"]
Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def call(model: nn.Module, x: Inputs) -> object:
    """``model`` on one input tensor, or on several passed positionally."""
    return model(*x) if isinstance(x, tuple) else model(x)


def output_tensors(result: object) -> list[torch.Tensor]:
    """A model's outputs as a list: one tensor, a tuple or list of them, or a dict's values in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    values = list(result.values()) if isinstance(result, Mapping) else list(result)  # type: ignore[call-overload]
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise RecipeError(f"distill: the model returned {type(result).__name__}; expected a tensor, or a tuple, list or dict of tensors")
    return values


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
               objective: Objective, temperature: float, alpha: float) -> torch.Tensor:
    """The recipe's objective on one batch of logits (``labels`` only for soft_hard)."""
    if objective == "mse":
        return F.mse_loss(student_logits, teacher_logits)
    if objective == "cosine":
        return 1 - F.cosine_similarity(student_logits.flatten(1), teacher_logits.flatten(1), dim=1).mean()
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    if objective == "soft":
        return soft
    if labels is None:
        raise ValueError("objective soft_hard needs labels")
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


@dataclass(frozen=True)
class Hint:
    """One FitNets pair: the student's guided layer and the teacher's hint layer, by module name."""

    student: str
    teacher: str


class FeatureTap:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], *, role: str) -> None:
        modules = dict(model.named_modules())
        unknown = [name for name in names if name not in modules]
        if unknown:
            known = ", ".join(name for name in modules if name)
            raise RecipeError(f"'distill.hints': the {role} has no module named {', '.join(map(repr, unknown))}; "
                              f"its modules are {known}")
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._keep(name)) for name in dict.fromkeys(names)]

    def _keep(self, name: str):  # noqa: ANN202 - a hook closure
        def hook(_: nn.Module, __: object, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = {}


def _regressor(student: torch.Tensor, teacher: torch.Tensor, hint: Hint) -> nn.Module:
    """Identity when the widths match; else a 1×1 convolution (feature maps) or a linear layer (vectors)."""
    if student.shape[2:] != teacher.shape[2:] or student.dim() != teacher.dim():
        raise RecipeError(f"'distill.hints': student {hint.student!r} gives features of shape {tuple(student.shape[1:])}, "
                          f"teacher {hint.teacher!r} gives {tuple(teacher.shape[1:])}; a hint needs the same spatial size")
    cs, ct = student.shape[1], teacher.shape[1]
    if cs == ct:
        return nn.Identity()
    if student.dim() == 4:
        return nn.Conv2d(cs, ct, kernel_size=1, bias=False)
    if student.dim() == 2:
        return nn.Linear(cs, ct, bias=False)
    raise RecipeError(f"'distill.hints': {hint.student!r} gives {student.dim()}-d features; hints take (N, C) or (N, C, H, W)")


def _mask_of(x: Inputs, index: int) -> torch.Tensor:
    return (x if isinstance(x, tuple) else (x,))[index] != 0


class Distiller(nn.Module):
    """The trainable side of distillation: the student plus one regressor per hint.

    The teacher is held outside the module tree (its weights are not in
    ``state_dict`` and not in ``parameters``), frozen and in eval mode.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, example: Inputs, *, objective: Objective,
                 temperature: float = 4.0, alpha: float = 0.9, hints: Sequence[Hint] = (), hint_weight: float = 1.0,
                 hint_mask: int | None = None) -> None:
        super().__init__()
        self.hint_mask = hint_mask
        self._mask: torch.Tensor | None = None
        self.student = student
        self._teacher = (teacher.eval().requires_grad_(False),)
        self.objective, self.temperature, self.alpha = objective, temperature, alpha
        self.hints, self.hint_weight = tuple(hints), hint_weight
        self._student_tap = FeatureTap(student, [h.student for h in self.hints], role="student")
        self._teacher_tap = FeatureTap(teacher, [h.teacher for h in self.hints], role="teacher")
        with torch.no_grad():
            was_training = student.training
            t_out, s_out = output_tensors(call(teacher, example)), output_tensors(call(student.eval(), example))
            student.train(was_training)
        if [t.shape for t in t_out] != [s.shape for s in s_out]:
            raise RecipeError(f"distill: the teacher outputs shape {', '.join(str(tuple(t.shape)) for t in t_out)} and the student "
                              f"{', '.join(str(tuple(s.shape)) for s in s_out)} for the same batch; the student must have the "
                              "teacher's output space")
        if len(t_out) > 1 and objective in ("soft", "soft_hard"):
            raise RecipeError(f"distill.objective {objective}: soft targets need one class-score output, and the model has "
                              f"{len(t_out)}; use mse or cosine")
        self.regressors = nn.ModuleList(_regressor(self._student_tap.outputs[h.student], self._teacher_tap.outputs[h.teacher], h)
                                        for h in self.hints)
        if hint_mask is not None:
            mask = _mask_of(example, hint_mask)
            for hint in self.hints:
                features = self._teacher_tap.outputs[hint.teacher]
                if features.dim() != 3 or features.shape[:2] != mask.shape:
                    raise RecipeError(f"'distill.padding_mask': hint {hint.teacher!r} gives features of shape "
                                      f"{tuple(features.shape)}; a masked hint needs (batch, positions, channels) matching "
                                      f"the mask's {tuple(mask.shape)}")

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # BatchNorm statistics of the teacher never move
        return self

    def forward(self, x: Inputs, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the student's first output) for one batch; the teacher runs once, without gradients."""
        with torch.no_grad():
            teacher_outputs = output_tensors(call(self.teacher, x))
        if self.hint_mask is not None:
            self._mask = _mask_of(x, self.hint_mask)
        student_outputs = output_tensors(call(self.student, x))
        loss = torch.stack([logit_loss(s, t, labels, objective=self.objective, temperature=self.temperature, alpha=self.alpha)
                            for s, t in zip(student_outputs, teacher_outputs, strict=True)]).sum()
        if self.hints:
            loss = loss + self.hint_weight * self.hint_loss()
        return loss, student_outputs[0]

    def hint_loss(self) -> torch.Tensor:
        """Mean over hints of the MSE between regressed student features and teacher features (last forward pass)."""
        terms = [self._feature_loss(regressor(self._student_tap.outputs[h.student]), self._teacher_tap.outputs[h.teacher])
                 for h, regressor in zip(self.hints, self.regressors, strict=True)]
        return torch.stack(terms).mean()

    def _feature_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self._mask is None:
            return F.mse_loss(student, teacher)
        weights = self._mask.to(student.dtype).unsqueeze(-1)
        return ((student - teacher) ** 2 * weights).sum() / (weights.sum() * student.shape[-1]).clamp_min(1)

    def close(self) -> None:
        self._student_tap.close()
        self._teacher_tap.close()


@contextlib.contextmanager
def distiller(student: nn.Module, teacher: nn.Module, example: Inputs, **kwargs: object) -> Iterator[Distiller]:
    """A ``Distiller`` whose feature hooks are removed on exit (the student is exported afterwards)."""
    module = Distiller(student, teacher, example, **kwargs)  # type: ignore[arg-type]
    try:
        yield module
    finally:
        module.close()

