"""Save a pruned model (state_dict, torch.export .pt2, ONNX) and rebuild one from state_dict + plan JSON.

A pruned model is stored as its state_dict plus the PruningPlan: load_pruned re-applies the plan's keep
counts to a fresh model of the same architecture, then loads the weights. This module never loads .pt2
or pickled modules from users (torch.export.load can run code).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.errors import CheckpointError
from engine.graph import Topology
from engine.outputs import write_atomic, write_text_atomic
from engine.pruning.apply import apply_plan
from engine.pruning.plan import PruningPlan

FORMATS = ("state_dict", "pt2", "onnx")


def export_pruned(
    model: nn.Module,
    path: str | Path,
    *,
    format: str = "state_dict",
    example_inputs: torch.Tensor | tuple | None = None,
    plan: PruningPlan | None = None,
) -> Path:
    """Write `model` to `path` as a state_dict (.pt / .safetensors), a torch.export program (.pt2) or ONNX.

    Args:
        model: the (pruned) model; exported in eval mode, not modified.
        path: output file.
        format: "state_dict", "pt2" or "onnx".
        example_inputs: an input batch (tensor or tuple); required for "pt2" and "onnx".
        plan: if given, also written next to the file as ``<name>.plan.json``.

    Returns:
        The path written.

    Raises:
        ValueError: unknown format, or example_inputs missing for pt2/onnx.
        OutputError: the file cannot be written (no space, read-only, a folder); an older file stays intact.
    """
    import copy

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "state_dict":
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            write_atomic(path, lambda tmp: save_file(state, str(tmp)))
        else:
            write_atomic(path, lambda tmp: torch.save(state, tmp))
    else:
        if example_inputs is None:
            raise ValueError(f"export format {format!r} needs example_inputs (an input batch)")
        args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        frozen = copy.deepcopy(model).eval()
        if format == "pt2":
            program = torch.export.export(frozen, args)
            write_atomic(path, lambda tmp: torch.export.save(program, str(tmp)))
        else:
            write_atomic(path, lambda tmp: _export_onnx(frozen, args, tmp))
    if plan is not None:
        write_text_atomic(path.with_name(path.name + ".plan.json"), plan.to_json())
    return path


def _export_onnx(model: nn.Module, args: tuple, path: Path) -> None:
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, verbose=False)
        program.save(str(path))


def shape_plan(plan: PruningPlan, topology: Topology) -> PruningPlan:
    """The plan with indices set (its own, or the first k channels): enough to rebuild shapes fast."""
    indices = dict(plan.indices or {})
    for name, count in plan.keep.items():
        if count < topology.group(name).channels and name not in indices:
            indices[name] = list(range(count))
    return plan.with_indices(indices)


def load_pruned(
    model: nn.Module, topology: Topology, plan: PruningPlan, weights: str | Path | dict
) -> nn.Module:
    """Rebuild a pruned model: shrink a fresh `model` of the same architecture by `plan`, load `weights`.

    Args:
        model: a freshly built model of the architecture the plan was made for (not modified).
        topology: its topology.
        plan: the plan the weights were pruned with.
        weights: a state_dict, or a .pt (weights_only) / .safetensors file written by export_pruned.

    Raises:
        CheckpointError: the weights do not fit the pruned shapes, or the file is not a state_dict.
    """
    if isinstance(weights, dict):
        state = weights
    else:
        weights = Path(weights)
        try:
            if weights.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(weights))
            else:
                from engine.checkpoints import check_archive_sizes

                check_archive_sizes(weights)  # a compressed archive must not inflate before the shape check
                state = torch.load(weights, map_location="cpu", weights_only=True)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"cannot read pruned weights {weights}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{weights} does not hold a state_dict; write it with export_pruned")
    pruned = apply_plan(model, topology, shape_plan(plan, topology))
    try:
        pruned.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"pruned weights do not fit plan for {plan.model}: {str(exc).splitlines()[0]}; "
            "use the plan JSON saved with these weights"
        ) from exc
    return pruned
