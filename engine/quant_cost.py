"""Exact costs of a quantized plan: weight size in bits and BitOPs, analytic (cost table) and counted (model).

Size = sum over kept kernels of bits x kernel numel, plus every other parameter (biases, BN affine, other
layers) at 32 bits; BN is not folded. Per-kernel scales are reported apart (`scale_bits`, 32 per quantized
kernel) and not in the size: a deployed int8 conv folds them into the following BN's per-channel affine.
BitOPs = MACs x weight bits x activation bits (HAWQ-V3 / DJPQ convention), 32 x 32 for full-precision
layers. Rules shared with engine.quant: a group without bits is fp32, and so are layers no channel group
owns (the classifier: a plan cannot give them bits); 0-bit channels are removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

FP_BITS = 32


@dataclass(frozen=True)
class QuantCost:
    """Costs of one quantized model (batch 1).

    Attributes:
        weight_bits: conv/linear weights, each kernel at its width.
        other_bits: every other parameter (biases, BN affine, ...) at 32 bits.
        size_bits: weight_bits + other_bits (what a `size` budget bounds, / 8 for bytes).
        scale_bits: per-kernel quantization scales (32 each), reported apart (see the module docstring).
        macs: multiply-accumulates of conv and linear layers.
        bitops: sum over layers of MACs x weight bits x activation bits.
    """

    weight_bits: int
    other_bits: int
    size_bits: int
    scale_bits: int
    macs: int
    bitops: int

    @property
    def size_bytes(self) -> float:
        return self.size_bits / 8

    @property
    def size_kb(self) -> float:
        return self.size_bits / 8 / 1024

    def to_dict(self) -> dict:
        return {**asdict(self), "size_bytes": self.size_bytes, "size_kb": self.size_kb}


def _group_widths(
    topology, bits: Mapping[str, int | Sequence[int]], vector: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Per group: kept channels, the sum of their widths, and whether the group is quantized."""
    kept = np.asarray(vector, dtype=np.float64).copy()
    total = kept * FP_BITS
    quantized = np.zeros(len(kept), dtype=bool)
    index = {g.name: g.index for g in topology.groups}
    for name, width in bits.items():
        if name not in index:
            raise ValueError(f"bits name group {name!r}, which {topology.model_name} does not have")
        g = index[name]
        if np.ndim(width) == 0:  # one width for every kept channel of the group
            (w,) = _widths([width], name)
            if w == 0:
                raise ValueError(
                    f"bit-widths of group {name!r} must be positive for a whole group "
                    "(0 = pruned is per channel: give one width per kept channel)"
                )
            total[g] = kept[g] * w
        else:
            widths = _widths(list(width), name)
            kept[g] = sum(1 for w in widths if w > 0)
            if kept[g] == 0:
                raise ValueError(
                    f"group {name!r} has every channel at 0 bits; a group keeps at least one channel"
                )
            total[g] = float(sum(widths))
        quantized[g] = True
    return kept, total, quantized


def _widths(values: list, name: str) -> list[int]:
    from engine.pruning.group_plan import MAX_BITS

    out = [int(v) for v in values]
    if any(not 0 <= v <= MAX_BITS or v != float(w) for v, w in zip(out, values, strict=True)):
        raise ValueError(
            f"bit-widths of group {name!r} must be whole numbers in 0..{MAX_BITS} (0 = pruned), "
            f"got {values[:8]!r}"
        )
    return out


def table_quant_cost(
    topology, vector: np.ndarray, bits: Mapping[str, int | Sequence[int]] | None
) -> QuantCost:
    """Analytic QuantCost of per-group keep counts `vector` (topology order) with `bits` (group -> widths,
    one per kept channel, 0 = pruned; or one width for the whole group). Costs are defined for any width in
    0..32 (an fp16 kernel costs 16 bits); the quantizer itself takes 0 and 2..8. A layer with bits counts
    8-bit input activations in its BitOPs.

    Raises:
        ValueError / QuantError: unknown group or bad widths.
    """
    kept, width_sum, quantized = _group_widths(topology, dict(bits or {}), vector)
    return group_quant_cost(topology, kept, width_sum, quantized)


def _layer_owner(table) -> np.ndarray:
    """Per cost-table layer: the group owning its output channels (-1: none), cached on the table."""
    owner = getattr(table, "_quant_owner", None)
    if owner is None:
        owner = np.full(len(table.specs), -1)
        for g in range(table.r_out.shape[1]):
            rows = np.nonzero(table.r_out[:, g] > 0)[0]
            owner[rows] = np.where(owner[rows] < 0, g, owner[rows])
        table._quant_owner = owner
    return owner


def group_quant_cost(topology, kept: np.ndarray, width_sum: np.ndarray, quantized: np.ndarray) -> QuantCost:
    """QuantCost from per-group kept channels, the sum of their widths and whether each group is quantized
    (all in topology order; the fast core of table_quant_cost for search loops)."""
    from engine.quant import ACT_BITS

    table = topology.table
    c_out, c_in = table._channels(np.asarray(kept, dtype=np.float64))
    per_in = np.where(table.depthwise, 1.0, c_in / table.groups)
    per_kernel = np.where(table.is_conv, per_in * table.kernel, np.where(table.is_linear, c_in, 0.0))
    macs_per_out = table.coef * per_in * table.weighted
    owner = _layer_owner(table)
    owned = owner >= 0
    safe = np.where(owned, owner, 0)
    quant = owned & np.asarray(quantized, dtype=bool)[safe] & table.weighted
    sum_w = np.where(quant, np.asarray(width_sum, dtype=np.float64)[safe], c_out * FP_BITS) * table.weighted
    act = np.where(quant, ACT_BITS, FP_BITS)
    other = FP_BITS * (
        np.sum(table.bias * c_out * table.weighted + table.affine * 2 * c_out * table.is_bn + table.fixed)
        + table.extra_params
    )
    weight = int(round(float(np.dot(sum_w, per_kernel))))
    bitops = int(round(float(np.sum(sum_w * macs_per_out * act))))
    scale = int(round(float(np.sum(FP_BITS * c_out * quant))))
    other = int(round(float(other)))
    return QuantCost(weight, other, weight + other, scale, int(table.macs(kept)), bitops)


def plan_quant_cost(topology, plan) -> QuantCost:
    """Analytic QuantCost of a plan, its bits included (0-bit channels count as removed)."""
    return table_quant_cost(topology, topology.keep_vector(plan.keep), plan.bits)


def size_bytes_evaluator(topology, bits: Mapping[str, int | Sequence[int]]):
    """keep vector -> size in bytes with `bits` (engine.pruning.budget's `size` metric with bit-widths)."""
    return lambda vector: table_quant_cost(topology, vector, bits).size_bits / 8.0


def _act_bits() -> int:
    from engine.quant import ACT_BITS

    return ACT_BITS


def count_quant_cost(model: nn.Module, example_inputs: torch.Tensor) -> QuantCost:
    """Count a built (physically pruned, fake-quantized or plain) model's QuantCost: widths from its quantizers,
    parameter tensors for sizes, FlopCounterMode for MACs (one forward at batch 1; `model` is not changed)."""
    from torch.nn.utils import parametrize
    from torch.utils.flop_counter import FlopCounterMode

    from engine.quant import quantizers

    quant = quantizers(model)
    weight = scale = weight_numel = 0
    layer_bits: dict[str, tuple[torch.Tensor, int]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        w = (
            module.parametrizations.weight.original
            if parametrize.is_parametrized(module, "weight")
            else module.weight
        )
        if name in quant:
            widths, act = quant[name][0].bits.to(torch.int64), quant[name][1].bits
            scale += FP_BITS * widths.numel()
        else:
            widths, act = torch.full((w.shape[0],), FP_BITS, dtype=torch.int64), FP_BITS
        weight += int(widths.sum()) * w[0].numel()
        weight_numel += w.numel()
        layer_bits[name] = (widths, act)
    other = (sum(p.numel() for p in model.parameters()) - weight_numel) * FP_BITS
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(example_inputs[:1])
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    bitops = 0
    for name, (widths, act) in layer_bits.items():
        macs = int(sum(counts.get(f"{root}.{name}", {}).values()) // 2)
        bitops += macs // widths.numel() * int(widths.sum()) * act
    macs = int(counter.get_total_flops() // 2)
    return QuantCost(weight, other, weight + other, scale, macs, bitops)
