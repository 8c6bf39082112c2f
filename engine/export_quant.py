"""Export a fake-quantized model (engine.quant) as ONNX with QuantizeLinear / DequantizeLinear nodes.

Weights are stored as int8 initializers with per-channel scales (DequantizeLinear, axis 0), activations get
per-tensor Q/DQ pairs at their calibrated 8-bit scales, so onnxruntime computes what the fake-quantized
model computes. ONNX has no sub-8-bit integer type: a plan with narrower widths is refused, or with
`allow_int8_container=True` written with those values in int8 containers and labelled so (the model then
reports the packed size its widths would need, not the file size). This module exports; it never quantizes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.quant import QuantError, quantizers

OPSET = 17


@dataclass(frozen=True)
class QuantExport:
    """What export_quantized_onnx wrote.

    Attributes:
        path: the ONNX file.
        file_bytes: its size on disk.
        packed_weight_bytes: conv/linear weights packed at their bit-widths (what the plan's widths need).
        min_bits / max_bits: narrowest and widest weight width among the quantized layers.
        container: "int8" (every width 8), or "int8 container (sub-8-bit values)" for the labelled fallback.
    """

    path: str
    file_bytes: int
    packed_weight_bytes: float
    min_bits: int
    max_bits: int
    container: str

    def to_dict(self) -> dict:
        return asdict(self)


def export_quantized_onnx(
    qmodel: nn.Module, path: str | Path, example_inputs: torch.Tensor, *, allow_int8_container: bool = False
) -> QuantExport:
    """Write a fake-quantized, physically pruned model (engine.quant.quantize_model) as a QDQ ONNX file.

    Args:
        qmodel: the quantized model (not modified; exported in eval mode).
        path: output .onnx file.
        example_inputs: one input batch (N, C, H, W).
        allow_int8_container: write sub-8-bit widths in int8 containers (labelled) instead of refusing.

    Raises:
        QuantError: the model has no quantized layer, or has sub-8-bit widths and allow_int8_container is False.
    """
    from engine.quant_cost import count_quant_cost

    pairs = quantizers(qmodel)
    if not pairs:
        raise QuantError(
            "this model has no fake-quantized layer; build it with engine.quant.quantize_model "
            "from a plan with bits"
        )
    widths = torch.cat([wq.bits[wq.bits > 0] for wq, _ in pairs.values()])
    low, high = int(widths.min()), int(widths.max())
    if low < 8 and not allow_int8_container:
        raise QuantError(
            f"ONNX has no {low}-bit integer type, so this plan (widths {low}..{high}) cannot be "
            "exported exactly; quantize at 8 bits, or export with allow_int8_container=True "
            "(values kept, stored in int8, labelled)"
        )
    frozen = copy.deepcopy(qmodel).eval()
    for name, (wq, aq) in quantizers(frozen).items():
        module = dict(frozen.named_modules())[name]
        wq.refresh(module.parametrizations.weight.original)
        wq.export = aq.export = True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = (example_inputs[:1],)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            frozen,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    container = "int8" if low >= 8 else "int8 container (sub-8-bit values)"
    packed = count_quant_cost(qmodel, example_inputs[:1]).weight_bits / 8.0
    _store_int8_weights(
        path, {"container": container, "packed_weight_bytes": packed, "min_bits": low, "max_bits": high}
    )
    return QuantExport(str(path), path.stat().st_size, packed, low, high, container)


def _store_int8_weights(path: Path, label: dict) -> None:
    """Fold each QuantizeLinear of a constant weight into an int8 initializer feeding its DequantizeLinear."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def value(name: str):
        while name not in consts and name in alias:
            name = alias[name]
        return consts.get(name)

    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    drop = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        weight, scale, zero = (value(n) for n in node.input[:3])
        if weight is None or scale is None or zero is None:
            continue  # an activation: stays a runtime Q/DQ pair
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[axis] = -1
        q = np.clip(
            np.rint(weight / scale.reshape(shape)) + zero.reshape(shape).astype(np.float64), -128, 127
        )
        name = node.output[0] + "_int8"
        graph.initializer.append(numpy_helper.from_array(q.astype(np.int8), name))
        for user in consumers.get(node.output[0], []):
            for i, inp in enumerate(user.input):
                if inp == node.output[0]:
                    user.input[i] = name
        drop.append(node)
    for node in drop:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    entry = model.metadata_props.add()
    entry.key, entry.value = "topoprune.quant", json.dumps(label)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_fp32_onnx(model: nn.Module, path: str | Path, example_inputs: torch.Tensor) -> Path:
    """The float model as ONNX (the latency reference for the int8 file), same exporter and opset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).eval(),
            (example_inputs[:1],),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def onnx_session(path: str | Path, *, threads: int = 1):
    """An onnxruntime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(path: str | Path, x: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
    """Run an exported file on images `x` (N, C, H, W); returns the logits (N, classes)."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [
            session.run(None, {name: x[i : i + batch_size].numpy()})[0]
            for i in range(0, x.shape[0], batch_size)
        ]
    )
