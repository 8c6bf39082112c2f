"""The shared scoring protocol: val top-1 of a masked candidate after BatchNorm recalibration, and final reports.

Search scores use only the train split (BN statistics) and the val split (accuracy), never test; the test split
is read only by `report_candidate`, after a method has chosen its plan. No fine-tuning happens while scoring.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn

from engine.data import DataSplits

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class ScoringConfig:
    """Settings of the shared scoring protocol.

    Attributes:
        val_size: Number of val images scored (the first `val_size` of the val split); None = all.
        recalibrate_bn: Re-estimate BatchNorm running statistics on train batches before scoring.
        bn_batches: Number of train batches used for recalibration.
        bn_batch_size: Images per recalibration batch.
        batch_size: Images per inference batch.
        device: Torch device the scoring runs on.
        physical: Score the physically pruned model (apply_plan) instead of the masked one (mask_model); the
            outputs are equal (to float rounding) and a model at 50% MACs scores faster. Off by default.
    """

    val_size: int | None = 512
    recalibrate_bn: bool = True
    bn_batches: int = 4
    bn_batch_size: int = 128
    batch_size: int = 256
    device: str = "cpu"
    physical: bool = False

    def __post_init__(self) -> None:
        if self.val_size is not None and self.val_size < 1:
            raise ValueError(f"val_size must be >= 1 or None (all), got {self.val_size}")
        for name in ("bn_batches", "bn_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (also part of cache keys)."""
        return asdict(self)


def _batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


def recalibrate_bn(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from `inputs`, in place; no weight changes.

    Statistics are reset and accumulated as an exact cumulative average (momentum=None) over forward passes
    in train mode (BatchNorm only; dropout and other layers stay in eval mode) under no_grad.

    Args:
        model: Model to recalibrate (modified in place and returned in eval mode).
        inputs: Normalised images, shape (N, 3, H, W), already on the model's device.
        batch_size: Images per forward pass.

    Returns:
        The same model, in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    model.eval()
    if not bns or inputs.shape[0] == 0:
        return model
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for xb in _batches(inputs, batch_size):
                if xb.shape[0] < 2:  # BN cannot take train-mode statistics of a single image
                    continue
                model(xb)
    finally:
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return model


def accuracy_top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of `model` on tensors `x` (N, 3, H, W) and labels `y` (N,), in inference mode."""
    if x.shape[0] == 0:
        raise ValueError("cannot score on an empty split; give the dataset a non-empty val split")
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size])  # (batch, classes)
            correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return 100.0 * correct / x.shape[0]


class Scorer:
    """Scores plans for search: val top-1 (%) of the masked baseline after BN recalibration.

    The baseline model is never modified (each score works on a masked copy). Val and calibration tensors are
    fetched once and cached; the test split is never read.

    Attributes:
        n_scored: Number of plans/models scored so far.
    """

    def __init__(
        self,
        model: nn.Module,
        topology: Any,
        data: DataSplits,
        config: ScoringConfig | None = None,
    ) -> None:
        self.model = model
        self.topology = topology
        self.data = data
        self.config = config or ScoringConfig()
        self.n_scored = 0
        self._device = torch.device(self.config.device)
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        self._calib: torch.Tensor | None = None

    @property
    def val_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached val images (N, 3, H, W) and labels (N,)."""
        if self._val is None:
            x, y = self.data.tensors("val", limit=self.config.val_size)
            self._val = (x.to(self._device), y.to(self._device))
        return self._val

    @property
    def calibration_inputs(self) -> torch.Tensor:
        """The cached train images used for BN recalibration, (bn_batches * bn_batch_size, 3, H, W)."""
        if self._calib is None:
            n = self.config.bn_batches * self.config.bn_batch_size
            x, _ = self.data.tensors("train", limit=n)
            self._calib = x.to(self._device)
        return self._calib

    def prepare(self, model: nn.Module) -> nn.Module:
        """Recalibrate BN of `model` in place (if configured) and put it in eval mode on the scoring device."""
        model.to(self._device)
        if self.config.recalibrate_bn:
            recalibrate_bn(model, self.calibration_inputs, batch_size=self.config.bn_batch_size)
        return model.eval()

    def score_model(self, model: nn.Module, *, copy_model: bool = True) -> float:
        """Val top-1 (%) of an already pruned (or masked) model after BN recalibration.

        Args:
            model: The model to score.
            copy_model: Work on a deep copy so `model`'s BN statistics stay untouched.
        """
        work = copy.deepcopy(model) if copy_model else model
        self.prepare(work)
        x, y = self.val_tensors
        acc = accuracy_top1(work, x, y, batch_size=self.config.batch_size)
        self.n_scored += 1
        return acc

    def score(self, plan: Any) -> float:
        """Val top-1 (%) of the baseline masked by `plan` (H1's mask_model) after BN recalibration.

        With `config.physical` the physically pruned model (apply_plan) is scored instead (same outputs).
        A plan with bits is scored fake-quantized (engine.quant.quantize_model, activation ranges calibrated
        on the BN-recalibration images).
        """
        from engine.pruning import apply_plan, mask_model

        if getattr(
            plan, "bits", None
        ):  # a quantized candidate: 0-bit channels removed, the rest fake-quantized
            from engine.quant import quantize_model

            model = quantize_model(
                self.model,
                self.topology,
                plan,
                physical=self.config.physical,
                calibration=self.calibration_inputs,
            )
            return self.score_model(model, copy_model=False)
        build = apply_plan if self.config.physical else mask_model
        return self.score_model(build(self.model, self.topology, plan), copy_model=False)


@dataclass
class CandidateReport:
    """Final measurements of one plan (the only place the test split is read).

    Attributes:
        plan: The plan as a dict.
        val_acc: Val top-1 (%) of the pruned model after BN recalibration (the search score).
        test_acc: Test top-1 (%) after `finetune_epochs` of fine-tuning (equals test_acc_before_finetune if 0).
        test_acc_before_finetune: Test top-1 (%) after BN recalibration, before fine-tuning (None when skipped).
        baseline_test_acc: Test top-1 (%) of the unpruned model.
        macs_before / macs_after: Conv+linear MACs of the baseline and the pruned model.
        params_before / params_after: Parameter counts.
        latency_ms_before / latency_ms_after: Median batch-1 CPU latency (None when not measured).
        finetune_epochs: Epochs of fine-tuning done.
        distill: Whether fine-tuning distilled from the unpruned model.
        seconds: Wall time of the report.
    """

    plan: dict[str, Any]
    val_acc: float
    test_acc: float
    test_acc_before_finetune: float | None
    baseline_test_acc: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None
    finetune_epochs: int = 0
    distill: bool = False
    seconds: float = 0.0
    pruned_model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def macs_ratio(self) -> float:
        """MACs after / MACs before."""
        return self.macs_after / self.macs_before if self.macs_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without the model, which is never copied), with `macs_ratio`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pruned_model"}
        out["plan"] = copy.deepcopy(
            self.plan
        )  # the caller may edit its dict; the report's plan stays as measured
        out["macs_ratio"] = self.macs_ratio
        return out

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (`report["test_acc"]`) for callers written against a plain dict."""
        if key == "pruned_model" or (key not in _REPORT_KEYS and key != "macs_ratio"):
            raise KeyError(key)
        return copy.deepcopy(self.plan) if key == "plan" else getattr(self, key)


_REPORT_KEYS = frozenset(f.name for f in fields(CandidateReport))


def report_candidate(
    model: nn.Module,
    topology: Any,
    plan: Any,
    data: DataSplits,
    *,
    finetune_epochs: int = 0,
    distill: bool = False,
    finetune_lr: float = 0.01,
    finetune_max_batches: int | None = None,
    baseline_test_acc: float | None = None,
    test_before_finetune: bool = True,
    scoring: ScoringConfig | None = None,
    latency: bool = True,
    latency_min_run_time_s: float = 0.5,
    seed: int = 0,
    callback: Callable[[Any], None] | None = None,
    kd: Any | None = None,
) -> CandidateReport:
    """Physically prune `model` by `plan` and measure it: val and test accuracy, MACs, params, latency.

    The baseline `model` is not modified. Val accuracy follows the scoring protocol; test accuracy is measured
    after BN recalibration and, if `finetune_epochs` > 0, after fine-tuning (distilled from the baseline when
    `distill`).

    Args:
        model: The unpruned baseline.
        topology: Its topology.
        plan: The PruningPlan to apply.
        data: Dataset splits.
        finetune_epochs: Fine-tuning epochs on the train split (0 = none).
        distill: Fine-tune with the unpruned model as teacher.
        finetune_lr: Fine-tuning learning rate.
        finetune_max_batches: Cap on batches per fine-tuning epoch (None = whole epochs).
        baseline_test_acc: Test top-1 of the unpruned model if already known (skips measuring it again).
        test_before_finetune: Also measure test accuracy before fine-tuning (always done without fine-tuning).
        scoring: Scoring settings for val accuracy and BN recalibration.
        latency: Measure batch-1 latency before and after.
        latency_min_run_time_s: Minimum timing duration per model.
        seed: Fine-tuning seed.
        callback: Receives engine.train.TrainProgress during fine-tuning.
        kd: engine.kd.KDConfig: fine-tune by distilling from the unpruned model with its temperature and weight
            (implies `distill`; the teacher is checked against the pruned model first).

    Returns:
        A CandidateReport (also readable as `report["key"]`).
    """
    import time

    from engine.cost import count_costs, measure_latency
    from engine.pruning import apply_plan
    from engine.train import evaluate, finetune

    start = time.perf_counter()
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    scorer = Scorer(model, topology, data, scoring)
    pruned = apply_plan(model, topology, plan)
    example = torch.zeros(1, 3, data.input_size, data.input_size)
    before = count_costs(model, example)
    after = count_costs(pruned, example)

    val_acc = scorer.score_model(pruned, copy_model=True)
    scorer.prepare(pruned)
    baseline_test = baseline_test_acc if baseline_test_acc is not None else evaluate(model, data, "test").top1
    test_before = None
    if test_before_finetune or finetune_epochs == 0:
        test_before = evaluate(pruned, data, "test").top1
    test_acc = test_before
    distill = distill or kd is not None
    if finetune_epochs > 0 and kd is not None:
        from engine.kd import finetune_kd

        finetune_kd(
            pruned,
            copy.deepcopy(model).eval(),
            data,
            kd=kd,
            epochs=finetune_epochs,
            lr=finetune_lr,
            seed=seed,
            max_batches_per_epoch=finetune_max_batches,
            callback=callback,
        )
        pruned.eval()
        test_acc = evaluate(pruned, data, "test").top1
    elif finetune_epochs > 0:
        teacher = copy.deepcopy(model).eval() if distill else None
        finetune(
            pruned,
            data,
            epochs=finetune_epochs,
            lr=finetune_lr,
            teacher=teacher,
            callback=callback,
            seed=seed,
            max_batches_per_epoch=finetune_max_batches,
        )
        pruned.eval()
        test_acc = evaluate(pruned, data, "test").top1

    lat_before = lat_after = None
    if latency:
        pruned_cpu = copy.deepcopy(pruned).cpu().eval()
        lat_before = measure_latency(
            copy.deepcopy(model).cpu().eval(), data.input_size, min_run_time_s=latency_min_run_time_s
        ).median_ms
        lat_after = measure_latency(
            pruned_cpu, data.input_size, min_run_time_s=latency_min_run_time_s
        ).median_ms

    plan_dict = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
    return CandidateReport(
        plan=plan_dict,
        val_acc=val_acc,
        test_acc=test_acc,
        test_acc_before_finetune=test_before,
        baseline_test_acc=baseline_test,
        macs_before=int(before.macs),
        macs_after=int(after.macs),
        params_before=int(before.params),
        params_after=int(after.params),
        latency_ms_before=lat_before,
        latency_ms_after=lat_after,
        finetune_epochs=finetune_epochs,
        distill=distill,
        seconds=time.perf_counter() - start,
        pruned_model=pruned,
    )
