"""engine.quant / quant_cost / export_quant: per-kernel fake quantization (error bounds, STE, 0 bits = pruned),
exact size and BitOPs (analytic == counted on the built model), scoring hook, QDQ ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import TopoPruneError
from engine.pruning import apply_plan
from engine.pruning.budget import Budget, plan_for_budget
from engine.quant import (
    ActFakeQuant,
    QuantError,
    check_bits,
    effective_plan,
    fake_quantize_weight,
    quantize_model,
    quantizers,
    uniform_bits,
    weight_scales,
)
from engine.quant_cost import count_quant_cost, plan_quant_cost


def _mixed_plan(topology, *, zeros=2):
    """A 50%-MACs plan with mixed widths (2..8) and `zeros` 0-bit slots in two groups."""
    plan = plan_for_budget(topology, Budget("macs", 0.5))
    bits = {}
    rng = np.random.default_rng(0)
    for g in topology.groups:
        widths = rng.choice([2, 3, 4, 6, 8], size=plan.keep.get(g.name, g.channels)).tolist()
        if g.index in (3, 9):
            widths[:zeros] = [0] * zeros
        bits[g.name] = widths
    out = plan.with_indices({})
    out.bits = bits
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_quant_error_is_at_most_half_a_step_and_uses_2b_minus_1_levels(bits):
    w = torch.randn(6, 4, 3, 3)
    widths = torch.full((6,), bits)
    q = fake_quantize_weight(w, widths)
    scale = weight_scales(w, widths).view(-1, 1, 1, 1)
    assert torch.all((q - w).abs() <= scale / 2 + 1e-6)
    for k in range(6):
        assert len(torch.unique(torch.round(q[k] / scale[k]))) <= 2**bits - 1
    assert torch.allclose(q.abs().flatten(1).amax(1), w.abs().flatten(1).amax(1))  # the peak is exact


def test_zero_bit_rows_are_exactly_zero_and_the_gradient_is_straight_through():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    q = fake_quantize_weight(w, torch.tensor([0, 2, 4, 8]))
    assert torch.equal(q[0], torch.zeros_like(q[0]))
    q.sum().backward()
    assert torch.equal(w.grad[0], torch.zeros_like(w.grad[0]))
    assert torch.equal(w.grad[1:], torch.ones_like(w.grad[1:]))


def test_activations_quantize_unsigned_after_relu_within_half_a_step():
    aq = ActFakeQuant()
    x = torch.relu(torch.randn(8, 4, 5, 5))
    aq(x)
    aq.freeze()
    assert not aq.signed and float(aq.scale) == pytest.approx(float(x.max()) / 255)
    y = aq(x)
    assert torch.all((y - x).abs() <= float(aq.scale) / 2 + 1e-6)
    assert len(torch.unique(y)) <= 256
    signed = ActFakeQuant()
    signed(torch.randn(100))
    signed.freeze()
    assert signed.signed


@pytest.mark.parametrize("bad", [1, 9, 16, -1])
def test_widths_outside_0_and_2_to_8_are_clear_errors(bad):
    with pytest.raises(QuantError, match=f"bit-width {bad} is not supported; use 0 \\(pruned\\) or 2..8"):
        check_bits([4, bad])
    assert issubclass(QuantError, TopoPruneError)


def test_zero_bits_remove_channels_through_the_pruning_path(resnet20):
    model, topology = resnet20
    plan = _mixed_plan(topology)
    eff = effective_plan(model, topology, plan)
    g = topology.groups[3].name
    assert eff.keep[g] == plan.keep[g] - 2 and 0 not in eff.bits[g]
    x = torch.randn(8, 3, 32, 32)
    q = quantize_model(model, topology, plan, calibration=x)
    again = quantize_model(model, topology, eff, calibration=x)
    masked = quantize_model(model, topology, plan, calibration=x, physical=False)
    with torch.no_grad():
        out = q(x)
        assert torch.equal(out, again(x))
        assert torch.allclose(out, masked(x), atol=5e-2 * float(out.abs().max()))
    pruned = dict(apply_plan(model, topology, eff).named_modules())
    assert dict(q.named_modules())[g].weight.shape[0] == pruned[g].weight.shape[0]
    every = plan.with_indices({})
    every.bits = {**plan.bits, g: [0] * plan.keep[g]}
    with pytest.raises(QuantError, match="every channel at 0 bits"):
        effective_plan(model, topology, every)
    with pytest.raises(QuantError, match="bit-width 12"):
        quantize_model(model, topology, _with(plan, g, 12), calibration=x)


def _with(plan, group, width):
    out = plan.with_indices({})
    out.bits = {**plan.bits, group: [width] * plan.keep[group]}
    return out


def test_size_and_bitops_of_a_plan_equal_the_counted_figures_of_the_built_model(resnet20):
    model, topology = resnet20
    plan = _mixed_plan(topology)
    x = torch.randn(4, 3, 32, 32)
    built = quantize_model(model, topology, plan, calibration=x)
    analytic, counted = plan_quant_cost(topology, plan), count_quant_cost(built, x)
    assert analytic == counted
    assert analytic.macs == plan_quant_cost(topology, effective_plan(model, topology, plan)).macs
    # the size budget sizes a plan at its own widths, exactly; 0-bit channels cost nothing
    assert Budget("size").value(topology, plan) == analytic.size_bits / 8
    assert Budget("size").value(topology, effective_plan(model, topology, plan)) == analytic.size_bits / 8
    fp32_plan = plan_for_budget(topology, Budget("macs", 0.5))
    fp32 = plan_quant_cost(topology, fp32_plan)
    assert fp32 == count_quant_cost(apply_plan(model, topology, fp32_plan), x)
    assert fp32.size_bits == 32 * sum(p.numel() for p in apply_plan(model, topology, fp32_plan).parameters())
    assert fp32.bitops == fp32.macs * 32 * 32 and analytic.bitops < fp32.bitops / 16
    uniform = plan_quant_cost(topology, uniform_bits(plan, topology, 8))
    params = dict(apply_plan(model, topology, plan).named_parameters())
    conv = sum(p.numel() for n, p in params.items() if n.endswith("weight") and p.dim() == 4)
    assert (
        uniform.weight_bits == 8 * conv + 32 * params["fc.weight"].numel()
    )  # the classifier has no group: fp32


def test_scorer_scores_a_plan_with_bits_fake_quantized(resnet20, small_shapes10):
    from engine.evaluate import Scorer, ScoringConfig

    model, topology = resnet20
    plan = plan_for_budget(topology, Budget("macs", 0.5))
    scorer = Scorer(
        model, topology, small_shapes10, ScoringConfig(val_size=64, bn_batches=1, bn_batch_size=64)
    )
    two = uniform_bits(plan, topology, 2)
    built = quantize_model(model, topology, two, calibration=scorer.calibration_inputs)
    assert scorer.score(two) == scorer.score_model(built)
    assert quantizers(built)


def test_int8_onnx_runs_in_onnxruntime_with_the_same_top1_and_sub8_is_refused_or_labelled(resnet20, tmp_path):
    import onnx

    from engine.export_quant import export_quantized_onnx, onnx_logits

    model, topology = resnet20
    plan = plan_for_budget(topology, Budget("macs", 0.5))
    x = torch.randn(16, 3, 32, 32)
    q8 = quantize_model(model, topology, uniform_bits(plan, topology, 8), calibration=x)
    result = export_quantized_onnx(q8, tmp_path / "q8.onnx", x)
    graph = onnx.load(result.path).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)  # weights stored as int8
    with torch.no_grad():
        ref = q8(x).numpy()
    got = onnx_logits(result.path, x)
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (
        result.container == "int8" and result.packed_weight_bytes == count_quant_cost(q8, x).weight_bits / 8
    )
    q4 = quantize_model(model, topology, uniform_bits(plan, topology, 4), calibration=x)
    with pytest.raises(QuantError, match="ONNX has no 4-bit integer type"):
        export_quantized_onnx(q4, tmp_path / "q4.onnx", x)
    labelled = export_quantized_onnx(q4, tmp_path / "q4.onnx", x, allow_int8_container=True)
    assert labelled.container.startswith("int8 container") and labelled.max_bits == 4
    meta = {p.key: p.value for p in onnx.load(labelled.path).metadata_props}
    assert "sub-8-bit" in meta["topoprune.quant"]
