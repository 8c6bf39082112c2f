"""Unstructured weight masks carried by a plan: encode, decode, apply, and count their nnz-MACs.

A plan made by an unstructured method (`surp`) keeps every channel and carries its masks in
`plan.meta["sparse"]`:

    {"format": "packbits-base64", "masks": {weight name: base64 of numpy.packbits(mask.flatten())},
     "values": "original" | "surp", "surp_values": {weight name: base64 of the kept values (float32,
     in mask order)}  # only when values == "surp"
    }

`apply_plan` and `mask_model` apply it (zeroing the masked weights, and loading the kept values when given),
so the shared scorer, reports and exports see the sparse model. Dense MACs do not shrink: `nnz_macs` counts
the MACs a sparse kernel would do. This module chooses nothing; engine.surp_core does.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import PlanError

FORMAT = "packbits-base64"
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv and linear weights by parameter name (`layer1.0.conv1.weight`), in module order: the parameter set
    both SuRP and global magnitude prune."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, _LAYERS)}


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def encode_sparse(
    masks: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """The JSON form of unstructured masks (bool tensors) and, optionally, the kept weights' values."""
    out: dict[str, Any] = {"format": FORMAT, "values": "original" if values is None else "surp", "masks": {}}
    for name, mask in masks.items():
        out["masks"][name] = _b64(np.packbits(mask.detach().cpu().numpy().astype(bool).ravel()))
    if values is not None:
        out["surp_values"] = {
            name: _b64(values[name].detach().cpu().float().numpy()[masks[name].cpu().numpy().astype(bool)])
            for name in masks
        }
    return out


def decode_masks(sparse: Mapping[str, Any], shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Bool masks by weight name from `plan.meta["sparse"]`, shaped like `shapes`.

    Raises:
        PlanError: unknown format, or a mask for a weight the model does not have.
    """
    if sparse.get("format") != FORMAT:
        raise PlanError(
            f"sparse masks in format {sparse.get('format')!r} cannot be read; expected {FORMAT!r}"
        )
    out = {}
    for name, text in sparse["masks"].items():
        if name not in shapes:
            raise PlanError(
                f"the plan's sparse mask names weight {name!r}, which this model does not have; "
                "apply the plan to the model it was made for"
            )
        n = int(np.prod(shapes[name]))
        bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n]
        out[name] = torch.from_numpy(bits.astype(bool)).reshape(shapes[name])
    return out


def apply_sparse(model: nn.Module, sparse: Mapping[str, Any]) -> nn.Module:
    """Zero the masked weights of `model` in place (and load the kept values when the plan carries them).

    Their gradients are masked too (a tensor hook), so fine-tuning the returned model keeps it sparse; a deep copy
    of the model does not carry the hooks (apply the plan again).
    """
    weights = prunable_weights(model)
    masks = decode_masks(sparse, {k: w.shape for k, w in weights.items()})
    kept_values = sparse.get("surp_values") if sparse.get("values") == "surp" else None
    with torch.no_grad():
        for name, mask in masks.items():
            w = weights[name]
            mask = mask.to(w.device)
            if kept_values is not None:
                vals = np.frombuffer(base64.b64decode(kept_values[name]), dtype=np.float32)
                w[mask] = torch.from_numpy(vals.copy()).to(w.device, w.dtype)
            w[~mask] = 0.0
            if w.requires_grad:  # fine-tuning keeps the zeros: SGD (momentum, weight decay) never moves them
                w.register_hook(lambda grad, mask=mask: grad * mask)
    return model


def plan_sparse(plan: Any) -> dict[str, Any] | None:
    """The plan's unstructured masks (`plan.meta["sparse"]`), or None for a channel-only plan."""
    meta = getattr(plan, "meta", None) or {}
    return meta.get("sparse")


def weight_density(model: nn.Module) -> dict[str, float]:
    """Fraction of non-zero entries of each conv/linear weight."""
    return {k: float((w != 0).float().mean()) for k, w in prunable_weights(model).items()}


def nnz_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """MACs a sparse kernel would do: each conv/linear layer's dense MACs times its weight density.

    Dense PyTorch does all the dense MACs; these figures need sparse kernels to be real.
    """
    from engine.cost import count_costs

    costs = count_costs(model, example_inputs)
    density = weight_density(model)
    total = 0.0
    for name, layer in costs.per_layer.items():
        total += layer.macs * density.get(f"{name}.weight", 1.0)
    return int(round(total))
