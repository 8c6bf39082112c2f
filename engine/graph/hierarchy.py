"""The multi-stage hierarchy network -> stages -> blocks -> layers, read off module names and shapes.

A stage is a run of layers at one spatial resolution (a new stage starts where resolution drops); a block is
the outermost non-container module (residual / inverted-residual unit) holding a layer. This module names
and nests; it does not trace (trace.py) or group channels (groups.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from torch import nn

from engine.graph.trace import LayerCall

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class Block:
    """A residual / inverted-residual unit (or any non-container module) and its conv/linear layers."""

    name: str
    stage: int
    layers: list[str] = field(default_factory=list)


@dataclass
class Stage:
    """Layers at one resolution (`resolution` is the output H x W; None for the classifier head)."""

    index: int
    resolution: tuple[int, ...] | None
    blocks: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)


def block_of(layer: str, modules: dict[str, nn.Module]) -> str | None:
    """The outermost non-container ancestor module of `layer` (below the root), or None."""
    parts = layer.split(".")
    for depth in range(1, len(parts)):
        prefix = ".".join(parts[:depth])
        if not isinstance(modules.get(prefix), _CONTAINERS):
            return prefix
    return None


def build_hierarchy(
    layers: list[str], calls: dict[str, LayerCall], modules: dict[str, nn.Module]
) -> tuple[list[Stage], list[Block], dict[str, int]]:
    """Stages, blocks and each layer's stage index, for conv/linear `layers` in forward order."""
    blocks: dict[str, Block] = {}
    block_by_layer = {layer: block_of(layer, modules) for layer in layers}
    # a block lives in the stage of its output resolution: resolution of its last conv
    resolution: dict[str, tuple[int, ...] | None] = {}
    for layer in layers:
        shape = calls[layer].out_shape
        resolution[layer] = tuple(shape[2:]) if shape is not None and len(shape) > 2 else None
    unit_resolution: dict[str, tuple[int, ...] | None] = {}
    for layer in layers:
        unit = block_by_layer[layer] or layer
        if resolution[layer] is not None or unit not in unit_resolution:
            unit_resolution[unit] = resolution[layer]
    stages: list[Stage] = []
    stage_of: dict[str, int] = {}
    for layer in layers:
        unit = block_by_layer[layer] or layer
        res = unit_resolution[unit]
        if not stages or (
            res != stages[-1].resolution and not (res is None and stages[-1].resolution is None)
        ):
            # a later unit at a resolution seen before (rare) stays in the current stage
            if (
                not stages
                or res is None
                or stages[-1].resolution is None
                or _area(res) < _area(stages[-1].resolution)
            ):
                stages.append(Stage(len(stages), res))
        stage = stages[-1]
        stage.layers.append(layer)
        stage_of[layer] = stage.index
        block = block_by_layer[layer]
        if block is not None:
            if block not in blocks:
                blocks[block] = Block(block, stage.index)
                stage.blocks.append(block)
            blocks[block].layers.append(layer)
    return stages, list(blocks.values()), stage_of


def _area(resolution: tuple[int, ...]) -> int:
    area = 1
    for size in resolution:
        area *= size
    return area


def hierarchy_tree(stages: list[Stage], blocks: list[Block]) -> nx.DiGraph:
    """The hierarchy as a tree: "network" -> "stage<i>" -> block names -> layer names."""
    tree = nx.DiGraph()
    tree.add_node("network", level="network")
    by_name = {b.name: b for b in blocks}
    for stage in stages:
        stage_node = f"stage{stage.index}"
        tree.add_node(stage_node, level="stage", resolution=stage.resolution)
        tree.add_edge("network", stage_node)
        for layer in stage.layers:
            parent = stage_node
            for block in stage.blocks:
                if layer in by_name[block].layers:
                    if block not in tree:
                        tree.add_node(block, level="block")
                        tree.add_edge(stage_node, block)
                    parent = block
                    break
            tree.add_node(layer, level="layer")
            tree.add_edge(parent, layer)
    return tree
