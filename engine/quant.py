"""Per-kernel fake quantization of a pruned model: symmetric per-output-channel weights at 2-8 bits, 8-bit
activations at every quantized layer's input, straight-through gradients for a short QAT fine-tune.

A plan's bits say each kept channel's width; 0 bits means the channel is pruned, so `effective_plan` turns
those slots into removed channels and the ordinary pruning path (apply_plan / mask_model) removes them. This
module quantizes; it does not choose bits (engine.methods.ajpq), count costs (engine.quant_cost) or export
(engine.export_quant). No library in the index does per-kernel widths including 0, hence this small one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from engine.errors import TopoPruneError
from engine.graph import Topology
from engine.pruning.plan import GroupPlan, PruningPlan

MIN_BITS, MAX_BITS = 2, 8  # quantized widths; 0 = pruned. 1-bit symmetric has no non-zero level.
ACT_BITS = 8
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


class QuantError(TopoPruneError, ValueError):
    """Bit-widths outside 0 or 2-8, a group quantized away entirely, or a plan that cannot be quantized."""


def check_bits(bits: Sequence[int] | torch.Tensor, *, what: str = "bits") -> list[int]:
    """The bit-widths as ints, each 0 (pruned) or in 2..8.

    Raises:
        QuantError: a width outside those.
    """
    values = [int(b) for b in (bits.tolist() if hasattr(bits, "tolist") else bits)]
    bad = [b for b in values if b != 0 and not MIN_BITS <= b <= MAX_BITS]
    if bad:
        raise QuantError(
            f"{what}: bit-width {bad[0]} is not supported; use 0 (pruned) or {MIN_BITS}..{MAX_BITS} "
            "(leave a group's bits unset to keep it at full precision)"
        )
    return values


def quant_levels(bits: torch.Tensor) -> torch.Tensor:
    """Largest integer level of a symmetric b-bit code: 2^(b-1) - 1 (0 for 0 bits)."""
    bits = bits.to(torch.float32)
    return torch.where(bits > 0, 2.0 ** (bits - 1) - 1, torch.zeros_like(bits))


def weight_scales(weight: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale max|W_k| / (2^(b_k-1) - 1), shape (out,); 1 where b_k = 0 or W_k = 0."""
    peak = weight.detach().abs().flatten(1).amax(dim=1)  # (out,)
    levels = quant_levels(bits.to(weight.device))
    scale = peak / levels.clamp(min=1.0)
    return torch.where((levels > 0) & (peak > 0), scale, torch.ones_like(scale))


def fake_quantize_weight(
    weight: torch.Tensor, bits: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization with a straight-through gradient.

    Args:
        weight: (out, ...) conv or linear weight.
        bits: (out,) width per output channel, 0 (the row becomes exactly 0) or 2..8.
        scale: (out,) scales; computed from `weight` (weight_scales) when None.

    Returns:
        round(W / s) clamped to +-(2^(b-1) - 1), times s; gradient 1 inside the clamp range, 0 for 0-bit rows.
    """
    if scale is None:
        scale = weight_scales(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    s = scale.view(shape).to(weight.dtype)
    levels = quant_levels(bits.to(weight.device)).view(shape).to(weight.dtype)
    q = torch.minimum(torch.maximum(torch.round(weight.detach() / s), -levels), levels) * s
    keep = (levels > 0).to(weight.dtype)
    return weight * keep + (q - weight * keep).detach()  # straight-through: d q / d W = 1 on kept rows


class WeightFakeQuant(nn.Module):
    """Parametrization of a conv/linear `weight`: per-kernel fake quantization at `bits` (buffer, (out,)).

    Scales follow the weights while training (QAT) and are frozen in eval; `export` switches to
    torch.fake_quantize_per_channel_affine (int8 range), which the ONNX exporters write as Q/DQ nodes.
    """

    def __init__(self, bits: Sequence[int] | torch.Tensor, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bits", torch.as_tensor(check_bits(bits), dtype=torch.int32))
        if self.bits.numel() != weight.shape[0]:
            raise QuantError(
                f"{self.bits.numel()} bit-widths for a weight with {weight.shape[0]} output channels"
            )
        self.register_buffer("scale", weight_scales(weight, self.bits))
        self.export = False

    def refresh(self, weight: torch.Tensor) -> None:
        """Re-derive the scales from the current weights."""
        self.scale.copy_(weight_scales(weight, self.bits))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.refresh(weight)
        if self.export:
            zero = torch.zeros_like(self.bits)
            return torch.fake_quantize_per_channel_affine(weight, self.scale, zero, 0, -128, 127)
        return fake_quantize_weight(weight, self.bits, self.scale)


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake quantization (8 bits): unsigned [0, max] after ReLU, signed +-max otherwise.

    Observes min/max while `observing` (calibration), then quantizes with the frozen scale; the gradient is
    straight-through inside the range (torch.fake_quantize_per_tensor_affine).
    """

    def __init__(self, bits: int = ACT_BITS) -> None:
        super().__init__()
        if bits != ACT_BITS:
            raise QuantError(f"activations are quantized at {ACT_BITS} bits, got {bits}")
        self.bits = bits
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))
        self.observing = True
        self.export = False

    @property
    def signed(self) -> bool:
        return bool(self.low < 0)

    def freeze(self) -> None:
        """Stop observing; scale = range / levels (a model never observed keeps scale 1)."""
        self.observing = False
        peak = float(torch.maximum(self.high, -self.low))
        levels = 127.0 if self.signed else 255.0
        self.scale.fill_(peak / levels if peak > 0 else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                self.low.copy_(torch.minimum(self.low, x.min()))
                self.high.copy_(torch.maximum(self.high, x.max()))
            return x
        lo, hi = (-128, 127) if self.signed else (0, 255)
        if self.export or (torch.is_grad_enabled() and x.requires_grad):  # Q/DQ for ONNX; STE for QAT
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, lo, hi)
        s = float(self.scale)
        return x.div(s).round_().clamp_(lo, hi).mul_(s)  # inference: the same values, 3-4x faster on CPU


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.act_quant(args[0]), *args[1:])


# -- plans -------------------------------------------------------------------------------------------------
def effective_plan(model: nn.Module, topology: Topology, plan: PruningPlan) -> PruningPlan:
    """The plan with its 0-bit channels removed: kept indices explicit, bits only for the surviving channels.

    Raises:
        QuantError: a width outside 0/2..8, or every channel of a group at 0 bits.
        ValueError: the plan does not fit the topology.
    """
    from engine.pruning.apply import resolve_plan

    resolved = resolve_plan(model, topology, plan)
    bits = plan.bits or {}
    indices = dict(resolved.indices or {})
    groups = dict(resolved.groups)
    for name, widths in bits.items():
        widths = check_bits(widths, what=f"group {name!r}")
        group = topology.group(name)
        kept = indices.get(name, list(range(group.channels)))
        survive = [(i, b) for i, b in zip(kept, widths, strict=True) if b > 0]
        if not survive:
            raise QuantError(
                f"group {name!r} has every channel at 0 bits; a group keeps at least one channel "
                "(give one channel 2..8 bits)"
            )
        groups[name] = GroupPlan(
            len(survive), group.channels, [i for i, _ in survive], [b for _, b in survive]
        )
    out = resolved.with_indices({})
    out.groups = groups
    return out


def module_bits(
    topology: Topology, plan: PruningPlan, modules: Mapping[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """Per conv/linear module of the *unpruned* model: the width of each output channel (0 = removed).

    Layers whose output group has no bits stay at full precision (absent), and so do layers no group owns
    (the classifier; HAQ too keeps the last layer at higher precision). `plan` must be an effective plan.
    """
    bits = plan.bits or {}
    if not bits:
        return {}
    out: dict[str, torch.Tensor] = {}
    for group in topology.groups:
        if group.name not in bits:
            continue
        entry = plan.groups[group.name]
        kept = entry.indices if entry.indices is not None else range(group.channels)
        for m in group.maps:
            module = modules.get(m.module)
            if m.dim != "out" or not isinstance(module, _WEIGHTED):
                continue
            row = out.setdefault(m.module, torch.zeros(module.weight.shape[0], dtype=torch.int32))
            for j, b in zip(kept, entry.bits, strict=True):
                row[list(m.channels[j * m.mult : (j + 1) * m.mult])] = int(b)
    return out


def _physical_bits(
    topology: Topology, plan: PruningPlan, full: dict[str, torch.Tensor], modules: Mapping[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """`full` (per unpruned output channel) restricted to the channels apply_plan keeps."""
    from engine.pruning.apply import removed_channels

    removed = removed_channels(topology, plan)
    out = {}
    for name, widths in full.items():
        module = modules[name]
        drop = set(removed.get((name, "out"), []))
        if (
            isinstance(module, nn.modules.conv._ConvNd)
            and module.groups > 1
            and module.groups == module.in_channels
        ):
            drop |= set(
                removed.get((name, "in"), [])
            )  # depthwise: a channel lives only if both sides keep it
        out[name] = widths[[c for c in range(widths.numel()) if c not in drop]]
    return out


def attach_quantizers(model: nn.Module, bits: Mapping[str, torch.Tensor]) -> nn.Module:
    """Fake-quantize the named modules of `model` in place: weights at `bits[name]` (one per output channel,
    a parametrization), inputs at 8 bits (a pre-hook; observing until `freeze_activations`)."""
    modules = dict(model.named_modules())
    for name, widths in bits.items():
        module = modules[name]
        if widths.numel() != module.weight.shape[0]:
            raise QuantError(f"{widths.numel()} bit-widths for {name} with {module.weight.shape[0]} outputs")
        parametrize.register_parametrization(module, "weight", WeightFakeQuant(widths, module.weight))
        module.act_quant = ActFakeQuant()
        module.register_forward_pre_hook(_quantize_input)
    return model


def quantizers(model: nn.Module) -> dict[str, tuple[WeightFakeQuant, ActFakeQuant]]:
    """Module name -> (weight quantizer, activation quantizer) for every fake-quantized layer of `model`."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight") and hasattr(module, "act_quant"):
            wq = next(p for p in module.parametrizations.weight if isinstance(p, WeightFakeQuant))
            out[name] = (wq, module.act_quant)
    return out


def calibrate_activations(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 128) -> nn.Module:
    """Observe every activation quantizer's range on `inputs` (BatchNorm re-estimated on them meanwhile, so
    ranges match the pruned, quantized weights), then freeze the scales."""
    from engine.evaluate import recalibrate_bn

    pairs = quantizers(model).values()
    for _, aq in pairs:
        aq.observing = True
        aq.low.zero_()
        aq.high.zero_()
    recalibrate_bn(model, inputs, batch_size=batch_size)
    for _, aq in pairs:
        aq.freeze()
    return model


def quantize_model(
    model: nn.Module,
    topology: Topology,
    plan: PruningPlan,
    *,
    calibration: torch.Tensor | None = None,
    physical: bool = True,
    calibration_size: int = 128,
) -> nn.Module:
    """A fake-quantized copy of `model` pruned by `plan` (0-bit channels removed); `model` is not touched.

    Args:
        model: the unpruned baseline.
        topology: its topology.
        plan: a plan with bits (a plan without bits gives the pruned fp32 model).
        calibration: train images for the activation ranges (None: activations stay observing, i.e. float,
            until calibrate_activations is called).
        physical: remove channels (apply_plan); False zeroes them at full size (mask_model, same outputs).
        calibration_size: images of `calibration` used.

    Raises:
        QuantError: bad widths (see effective_plan).
    """
    from engine.pruning import apply_plan, mask_model

    eff = effective_plan(model, topology, plan)
    built = (apply_plan if physical else mask_model)(model, topology, eff)
    full = module_bits(topology, eff, dict(model.named_modules()))
    bits = _physical_bits(topology, eff, full, dict(built.named_modules())) if physical else full
    attach_quantizers(built, bits)
    built.topoprune_quant = {"act_bits": ACT_BITS, "plan": eff.to_dict()}
    if calibration is not None:
        calibrate_activations(built, calibration[:calibration_size])
    return built.eval()


def uniform_bits(plan: PruningPlan, topology: Topology, bits: int) -> PruningPlan:
    """A copy of `plan` with every group's kept channels at `bits` (the two-step baseline's second step).

    Raises:
        QuantError: `bits` outside 2..8.
    """
    check_bits([bits])
    if bits == 0:
        raise QuantError("uniform bits must be 2..8; 0 bits would prune every channel")
    out = plan.with_indices({})
    keep = plan.keep
    out.bits = {g.name: [bits] * int(keep.get(g.name, g.channels)) for g in topology.groups}
    return out


def plan_bits_summary(plan: PruningPlan) -> dict[str, Any]:
    """Per group: kept channels and the histogram of widths (for reports and the GUI)."""
    out = {}
    for name, widths in (plan.bits or {}).items():
        hist: dict[int, int] = {}
        for b in widths:
            hist[int(b)] = hist.get(int(b), 0) + 1
        out[name] = {
            "kept": sum(v for k, v in hist.items() if k > 0),
            "histogram": dict(sorted(hist.items())),
        }
    return out
