"""build_topology: a model -> Topology (op graph, coupled channel groups, stages/blocks, cost table).

Everything runs on a weightless meta copy, so the input model is never modified and building is cheap at
any resolution. This module assembles; tracing, grouping, hierarchy and cost formulas live beside it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from torch import nn

from engine.errors import ModelError
from engine.graph.branches import check_branches
from engine.graph.channels import trace_channels
from engine.graph.groups import ChannelGroup, chain_groups, depgraph_groups, merge_groups
from engine.graph.hierarchy import Block, Stage, block_of, build_hierarchy, hierarchy_tree
from engine.graph.motif import conv_motif
from engine.graph.tables import CostTable, layer_specs, unmodelled_macs
from engine.graph.trace import as_input_tuple, meta_copy, meta_inputs, speed_up_meta, trace_model
from engine.graph.trial import refuse_breaking_groups


@dataclass
class Topology:
    """What the engine knows about a model's structure and costs (batch 1, at `input_shape`)."""

    model_name: str
    input_shape: tuple[int, ...]
    graph: nx.DiGraph
    groups: list[ChannelGroup]
    layers: list[str]
    stages: list[Stage]
    blocks: list[Block]
    macs: int
    params: int
    memory_bytes: int
    trace_method: str = "fx"
    group_method: str = "depgraph"
    notes: list[str] = field(default_factory=list)
    build_s: float = 0.0
    table: CostTable | None = field(default=None, repr=False)
    layer_info: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        """Groups a plan may shrink, in topology order."""
        return [g for g in self.groups if g.prunable]

    def group(self, name: str) -> ChannelGroup:
        """The group called `name` (its first conv's module name).

        Raises:
            ValueError: no group has that name.
        """
        for group in self.groups:
            if group.name == name:
                return group
        raise ValueError(
            f"no channel group named {name!r} in {self.model_name}; "
            f"known groups: {', '.join(g.name for g in self.groups[:8])}..."
        )

    def group_of(self, layer_name: str) -> ChannelGroup | None:
        """The group that holds `layer_name`'s output channels (None if they are not prunable together)."""
        for group in self.groups:
            if (layer_name, "out") in group.members:
                return group
        return None

    def motif(self, layer_name: str, *, in_channels: int | None = None) -> nx.DiGraph:
        """GNN-RL's motif of conv `layer_name` (input -> channels -> kernels -> sum) at its current width.

        Raises:
            ValueError: `layer_name` is not a conv or linear layer of this model.
        """
        if layer_name not in self.layer_info:
            raise ValueError(
                f"{layer_name!r} is not a conv/linear layer of {self.model_name}; "
                f"layers are e.g. {', '.join(self.layers[:5])}"
            )
        info = self.layer_info[layer_name]
        channels = (
            in_channels if in_channels is not None else (1 if info["depthwise"] else info["in_channels"])
        )
        return conv_motif(channels, layer=layer_name, kernel=info["kernel"], depthwise=info["depthwise"])

    def hierarchy(self) -> nx.DiGraph:
        """The tree network -> stages -> blocks -> layers."""
        return hierarchy_tree(self.stages, self.blocks)

    def keep_vector(self, keep) -> np.ndarray:
        """Per-group keep counts (topology order) from a {group name: channels kept} mapping or a plan.

        Raises:
            ValueError: unknown group name, or a count outside [1, channels] / on a non-prunable group.
        """
        keep = getattr(keep, "keep", keep)
        vector = np.array([g.channels for g in self.groups], dtype=np.float64)
        index = self._index()
        for name, count in keep.items():
            g = index.get(name)
            if g is None:
                raise ValueError(
                    f"plan names group {name!r}, which {self.model_name} does not have; "
                    "make the plan from this model's topology"
                )
            group = self.groups[g]
            count = int(count)
            if count != group.channels and not group.prunable:
                raise ValueError(
                    f"group {name!r} is not prunable ({group.reason}); keep all {group.channels}"
                )
            if not 1 <= count <= group.channels:
                raise ValueError(f"keep count {count} for group {name!r} is outside [1, {group.channels}]")
            vector[g] = count
        return vector

    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_name_index")
        if cached is None:
            cached = {g.name: g.index for g in self.groups}
            self.__dict__["_name_index"] = cached
        return cached


def _infer_name(model: nn.Module) -> str:
    return getattr(model, "topoprune_name", None) or type(model).__name__


def build_topology(
    model: nn.Module, example_inputs: torch.Tensor | tuple, *, model_name: str | None = None
) -> Topology:
    """See _build_topology. The cyclic garbage collector is paused while the per-channel bookkeeping allocates
    hundreds of thousands of small objects (ResNet-50: 4.1 s -> 2.3-3.3 s); nothing here creates cycles that
    must be freed before it returns."""
    import gc

    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return _build_topology(model, example_inputs, model_name=model_name)
    finally:
        if paused:
            gc.enable()


def _build_topology(
    model: nn.Module, example_inputs: torch.Tensor | tuple, *, model_name: str | None = None
) -> Topology:
    """Trace `model` into a Topology: op graph, coupled channel groups, hierarchy and cost table.

    Args:
        model: any nn.Module; it is not modified (tracing runs on a weightless meta copy).
        example_inputs: a tensor (or tuple) shaped like one input batch, e.g. ``torch.randn(1, 3, 32, 32)``;
            costs are per sample (batch 1) at this resolution.
        model_name: name recorded on the topology (default: the class name).

    Returns:
        The Topology.

    Raises:
        ModelError: the model cannot be run on the inputs or its channels cannot be grouped.
        ValueError: `example_inputs` is not a tensor or tuple of tensors.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"build_topology needs an nn.Module, got {type(model).__name__}")
    start = time.perf_counter()
    inputs = as_input_tuple(example_inputs)
    meta_model = speed_up_meta(meta_copy(model).eval())
    meta_in = meta_inputs(inputs)
    try:
        traced = trace_model(meta_model, meta_in)
    except ModelError:  # data-dependent Python (.item(), if x.sum() > 0) cannot run on meta: use real weights
        meta_model = copy.deepcopy(model).eval()
        meta_in = tuple(t[:1].detach() for t in inputs)
        traced = trace_model(meta_model, meta_in)
    modules = dict(meta_model.named_modules())
    notes = (
        [f"torch.fx could not trace the model ({traced.fx_error}); graph built from module hooks"]
        if traced.fx_error
        else []
    )
    ignored = traced.output_layers
    group_method = "depgraph"
    classes, _ = trace_channels(meta_model, meta_in)
    if classes.branches:
        notes.extend(check_branches(meta_model, meta_in, classes))
    try:
        raw = depgraph_groups(meta_model, meta_in, traced.calls, ignored)
    except Exception as exc:  # channel shuffle etc.: fall back to block-internal chains
        group_method = "chains"
        notes.append(
            f"Torch-Pruning DependencyGraph failed ({type(exc).__name__}: {str(exc)[:120]}); "
            "only block-internal conv chains are prunable"
        )
        raw = chain_groups(traced.graph, meta_model, ignored)
    else:
        raw, group_notes = merge_groups(raw, classes, modules)
        notes.extend(group_notes)
    on_meta = all(p.device.type == "meta" for p in meta_model.parameters())
    if on_meta and refuse_breaking_groups(meta_model, meta_in, raw):
        notes.append("some groups are not prunable because trial pruning broke forward() (see their reasons)")
    calls = traced.calls
    layers = [
        c.name
        for c in sorted(calls.values(), key=lambda c: c.order)
        if isinstance(modules[c.name], (nn.modules.conv._ConvNd, nn.Linear))
    ]
    if not layers:
        raise ModelError(f"{_infer_name(model)} has no nn.Conv2d or nn.Linear layers the pruner could use")
    stages, blocks, stage_of = build_hierarchy(layers, calls, modules)
    specs = layer_specs(modules, calls)
    known = {s.name for s in specs}
    leaf_params = sum(
        p.numel() for n, m in modules.items() if n in known for p in m.parameters(recurse=False)
    )
    extra = sum(p.numel() for p in meta_model.parameters()) - leaf_params
    element_bytes = next((p.element_size() for p in model.parameters()), 4)
    table = CostTable(
        specs,
        [r.maps for r in raw],
        [r.channels for r in raw],
        extra_params=extra,
        extra_macs=unmodelled_macs(meta_model, meta_in, specs),
        element_bytes=element_bytes,
    )
    macs_pc, params_pc, memory_pc = table.per_channel()
    groups = []
    for index, r in enumerate(raw):
        anchor = r.name
        groups.append(
            ChannelGroup(
                index=index,
                name=r.name,
                channels=r.channels,
                members=[(m.module, m.dim) for m in r.maps],
                prunable=r.reason is None and r.channels > 1,
                stage=stage_of.get(anchor, 0),
                block=block_of(anchor, modules),
                macs_per_channel=int(macs_pc[index]),
                params_per_channel=int(params_pc[index]),
                memory_bytes_per_channel=int(memory_pc[index]),
                reason=r.reason if r.reason else (None if r.channels > 1 else "a single channel"),
                maps=r.maps,
            )
        )
    layer_info = _layer_info(layers, modules, calls)
    _annotate(traced.graph, groups, layer_info, modules, stage_of, element_bytes)
    full = table.full
    return Topology(
        model_name=model_name or _infer_name(model),
        input_shape=tuple(inputs[0].shape),
        graph=traced.graph,
        groups=groups,
        layers=layers,
        stages=stages,
        blocks=blocks,
        macs=full.macs,
        params=full.params,
        memory_bytes=full.memory_bytes,
        trace_method=traced.method,
        group_method=group_method,
        notes=notes,
        build_s=time.perf_counter() - start,
        table=table,
        layer_info=layer_info,
    )


def _layer_info(layers, modules, calls) -> dict[str, dict]:
    info = {}
    for name in layers:
        m = modules[name]
        if isinstance(m, nn.modules.conv._ConvNd):
            info[name] = {
                "kind": "conv",
                "in_channels": m.in_channels,
                "out_channels": m.out_channels,
                "kernel": tuple(m.kernel_size),
                "stride": tuple(m.stride),
                "groups": m.groups,
                "depthwise": m.groups > 1 and m.groups == m.in_channels == m.out_channels,
            }
        else:
            info[name] = {
                "kind": "linear",
                "in_channels": m.in_features,
                "out_channels": m.out_features,
                "kernel": (),
                "stride": (),
                "groups": 1,
                "depthwise": False,
            }
        info[name]["out_shape"] = calls[name].out_shape
    return info


def _annotate(
    graph: nx.DiGraph,
    groups: list[ChannelGroup],
    layer_info: dict,
    modules: dict,
    stage_of: dict[str, int],
    element_bytes: int,
) -> None:
    """Attach channels, kernel, params, MACs, memory, group ids, stage and block to every graph node."""
    group_ids: dict[str, list[int]] = {}
    prunable_out: set[str] = set()
    for g in groups:
        for name, dim in g.members:
            group_ids.setdefault(name, [])
            if g.index not in group_ids[name]:
                group_ids[name].append(g.index)
            if dim == "out" and g.prunable and name in layer_info:
                prunable_out.add(name)
    seen_params: set[str] = set()
    stage = 0
    for node in sorted(graph.nodes, key=lambda n: graph.nodes[n].get("order", 0)):
        data = graph.nodes[node]
        name = data.get("module")
        out_shape, in_shape = data.get("out_shape"), data.get("in_shape")
        module = modules.get(name) if name else None
        params = 0
        if module is not None and name not in seen_params:
            seen_params.add(name)
            params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = 0
        info = layer_info.get(name) if name else None
        if info and out_shape is not None:
            spatial = int(np.prod(out_shape[2:])) if info["kind"] == "conv" else int(np.prod(out_shape[:-1]))
            per_in = 1 if info["depthwise"] else info["in_channels"] // info["groups"]
            macs = int(np.prod(info["kernel"] or (1,))) * spatial * per_in * info["out_channels"]
        if name in stage_of:
            stage = stage_of[name]
        data.update(
            in_channels=info["in_channels"]
            if info
            else (in_shape[1] if in_shape and len(in_shape) > 1 else None),
            out_channels=info["out_channels"]
            if info
            else (out_shape[1] if out_shape and len(out_shape) > 1 else None),
            kernel=info["kernel"] if info else None,
            stride=info["stride"] if info else None,
            groups=info["groups"] if info else None,
            params=params,
            macs=macs,
            memory_bytes=int(np.prod(out_shape)) * element_bytes if out_shape else 0,
            prunable=name in prunable_out,
            group_ids=list(group_ids.get(name, [])) if name else [],
            stage=stage,
            block=block_of(data.get("scope") or name, modules) if (data.get("scope") or name) else None,
        )
