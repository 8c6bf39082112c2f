"""Knowledge-distillation fine-tuning: a pruned student learns from its unpruned teacher (Hinton et al. 2015).

Loss = (1 - weight) * CE(y, student) + weight * T^2 * KL(teacher_T || student_T), the training loop being
engine.train's. This module validates the settings and that the teacher is the student's own architecture
(same layer names and kinds, same class count) before any step; it does not choose what to prune.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import TopoPruneError

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


class KDError(TopoPruneError, ValueError):
    """Distillation settings out of range, or a teacher that is not the student's unpruned architecture."""


@dataclass(frozen=True)
class KDConfig:
    """Distillation settings: softmax temperature T > 0 and the KD term's weight in [0, 1]."""

    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, int | float)
            and self.temperature > 0
            and math.isfinite(self.temperature)
        ):
            raise KDError(
                f"KD temperature must be a number > 0, got {self.temperature!r}; 4 is the usual choice"
            )
        if not (isinstance(self.weight, int | float) and 0.0 <= self.weight <= 1.0):
            raise KDError(
                f"KD weight must be in [0, 1] (the share of the distillation term), got {self.weight!r}"
            )


def _layers(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in model.named_modules() if isinstance(m, _LAYERS)]


def check_teacher(
    teacher: nn.Module, student: nn.Module, example_inputs: torch.Tensor, *, num_classes: int | None = None
) -> None:
    """Refuse a teacher that is not the student's (unpruned) architecture or predicts another number of classes.

    A pruned student keeps its teacher's layer names and kinds (only widths differ), so those must match.

    Raises:
        KDError: the layers differ, or the teacher's / student's class count differs (or differs from the data's).
    """
    t_layers, s_layers = _layers(teacher), _layers(student)
    if t_layers != s_layers:
        first = next(
            (f"{t} vs {s}" for t, s in zip(t_layers, s_layers, strict=False) if t != s),
            f"{len(t_layers)} vs {len(s_layers)} layers",
        )
        raise KDError(
            f"the KD teacher is not the student's architecture (first difference: {first}); distil from "
            "the unpruned baseline of the same model"
        )
    with torch.no_grad():
        was = teacher.training, student.training
        teacher.eval(), student.eval()
        t_out = teacher(example_inputs).shape[-1]
        s_out = student(example_inputs).shape[-1]
        teacher.train(was[0]), student.train(was[1])
    if t_out != s_out:
        raise KDError(
            f"the KD teacher predicts {t_out} classes but the student {s_out}; distil from a baseline "
            "trained on the same dataset"
        )
    if num_classes is not None and s_out != num_classes:
        raise KDError(
            f"the student predicts {s_out} classes but the dataset has {num_classes}; fine-tune a model "
            "trained on this dataset"
        )


def finetune_kd(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    kd: KDConfig | None = None,
    epochs: int = 1,
    lr: float = 0.01,
    seed: int = 0,
    batch_size: int = 128,
    max_batches_per_epoch: int | None = None,
    callback: Callable[[Any], None] | None = None,
) -> Any:
    """Fine-tune `student` in place, distilled from `teacher` (never modified), on the train split.

    Returns:
        engine.train.TrainResult.

    Raises:
        KDError: bad settings or a mismatched teacher (checked before any step).
    """
    from engine.train import TrainConfig, train_model

    kd = kd or KDConfig()
    example = torch.zeros(2, *data.tensors("train", limit=1)[0].shape[1:])
    check_teacher(teacher, student, example, num_classes=int(data.num_classes))
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        distill_alpha=float(kd.weight),
        distill_temperature=float(kd.temperature),
        max_batches_per_epoch=max_batches_per_epoch,
    )
    return train_model(student, data, config, teacher=teacher, callback=callback)
