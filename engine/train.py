"""Train, fine-tune (optionally distilling from a teacher) and evaluate classifiers.

Seeded and deterministic on CPU, cosine learning rate, SGD with momentum. Progress goes to a callback;
nothing here prints, saves files or picks a split for model selection (the caller does, on val).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.data import DataSplits, augment_batch
from engine.rng import private_rng


@dataclass(frozen=True)
class EvalResult:
    """Accuracy (in %) and mean cross-entropy loss over `n` examples."""

    top1: float
    top5: float
    loss: float
    n: int


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; stored in checkpoint metadata so a run can be reproduced."""

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    augment: bool = True
    label_smoothing: float = 0.0
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    max_batches_per_epoch: int | None = None
    warmup_epochs: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainProgress:
    """One progress report: sent after every optimisation step and with `val` after every epoch."""

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    loss: float
    lr: float
    val: EvalResult | None = None

    @property
    def fraction(self) -> float:
        return ((self.epoch - 1) * self.steps_per_epoch + self.step) / max(
            1, self.epochs * self.steps_per_epoch
        )


@dataclass
class TrainResult:
    """What a training run did: per-epoch losses and val accuracy, wall time, images per second."""

    config: TrainConfig
    epoch_losses: list[float] = field(default_factory=list)
    val_history: list[EvalResult] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0


def _topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (batch, k)
    return int((top == targets[:, None]).any(dim=1).sum())


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: DataSplits,
    split: str = "test",
    *,
    batch_size: int = 256,
    limit: int | None = None,
) -> EvalResult:
    """Top-1, top-5 (in %) and mean loss of `model` on a split. The model's train/eval mode is restored."""
    x, y = data.tensors(split, limit=limit)
    return evaluate_tensors(model, x, y, batch_size=batch_size)


@torch.inference_mode()
def evaluate_tensors(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256
) -> EvalResult:
    """Evaluate on in-memory tensors (the fast path used by search scoring)."""
    was_training = model.training
    model.eval()
    top1 = top5 = 0
    loss = 0.0
    try:
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size])
            targets = y[start : start + batch_size]
            loss += float(F.cross_entropy(logits, targets, reduction="sum"))
            top1 += _topk_correct(logits, targets, 1)
            top5 += _topk_correct(logits, targets, 5)
    finally:
        model.train(was_training)
    n = max(1, x.shape[0])
    return EvalResult(top1=100.0 * top1 / n, top5=100.0 * top5 / n, loss=loss / n, n=int(x.shape[0]))


def _lr_at(config: TrainConfig, progress: float) -> float:
    """Cosine schedule over the whole run, with an optional linear warm-up; `progress` in [0, 1]."""
    warmup = config.warmup_epochs / max(1, config.epochs)
    if warmup > 0 and progress < warmup:
        return config.lr * (progress / warmup)
    span = (progress - warmup) / max(1e-9, 1 - warmup)
    return 0.5 * config.lr * (1 + torch.cos(torch.tensor(span * torch.pi)).item())


def train_model(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    callback: Callable[[TrainProgress], None] | None = None,
    validate: bool = True,
) -> TrainResult:
    """Train `model` in place on the train split; report val accuracy after each epoch.

    Args:
        model: trained in place.
        data: its train split is used for optimisation and its val split for the per-epoch report.
        config: the recipe.
        teacher: when given with ``config.distill_alpha > 0``, the loss mixes in KL divergence to its
            temperature-softened outputs (knowledge distillation). The teacher is never modified.
        callback: receives a TrainProgress after every step (and one with ``val`` after each epoch).
        validate: evaluate on val after each epoch.
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    generator = torch.Generator().manual_seed(config.seed)  # batch order and augmentation
    rng = private_rng(config.seed)  # what forward passes draw (dropout), leaving the global RNG alone
    x_train, y_train = data.tensors("train")
    n = x_train.shape[0]
    steps = (n + config.batch_size - 1) // config.batch_size
    if config.max_batches_per_epoch is not None:
        steps = min(steps, config.max_batches_per_epoch)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )
    if teacher is not None:
        teacher_was_training = teacher.training
        teacher.eval()
    result = TrainResult(config=config)
    started = time.perf_counter()
    seen = 0
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for step in range(1, steps + 1):
                lr = _lr_at(config, ((epoch - 1) * steps + step - 1) / (config.epochs * steps))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                index = order[(step - 1) * config.batch_size : step * config.batch_size]
                inputs, targets = x_train[index], y_train[index]
                if config.augment:
                    inputs = augment_batch(inputs, generator)
                with rng:
                    logits = model(inputs)
                loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
                if teacher is not None and config.distill_alpha > 0:
                    with torch.no_grad():
                        soft = F.log_softmax(teacher(inputs) / config.distill_temperature, dim=1)
                    kd = (
                        F.kl_div(
                            F.log_softmax(logits / config.distill_temperature, dim=1),
                            soft,
                            log_target=True,
                            reduction="batchmean",
                        )
                        * config.distill_temperature**2
                    )
                    loss = (1 - config.distill_alpha) * loss + config.distill_alpha * kd
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                seen += int(targets.shape[0])
                if callback is not None:
                    callback(TrainProgress(epoch, config.epochs, step, steps, float(loss.detach()), lr))
            result.epoch_losses.append(total / steps)
            if validate and data.size("val") > 0:
                val = evaluate(model, data, "val")
                result.val_history.append(val)
                if callback is not None:
                    callback(TrainProgress(epoch, config.epochs, steps, steps, total / steps, lr, val=val))
    finally:
        if teacher is not None:
            teacher.train(teacher_was_training)
    result.seconds = time.perf_counter() - started
    result.images_per_s = seen / max(1e-9, result.seconds)
    model.eval()
    return result


def finetune(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    teacher: nn.Module | None = None,
    distill_alpha: float = 0.5,
    seed: int = 0,
    batch_size: int = 128,
    max_batches_per_epoch: int | None = None,
    callback: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Short fine-tune of a (pruned) model in place, optionally distilled from `teacher` (the unpruned model)."""
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        distill_alpha=distill_alpha if teacher is not None else 0.0,
        max_batches_per_epoch=max_batches_per_epoch,
    )
    return train_model(model, data, config, teacher=teacher, callback=callback)
