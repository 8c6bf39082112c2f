"""Coupled channel groups: channels that must be pruned together, with each member's channel index map.

Uses Torch-Pruning's DependencyGraph on a meta copy of the model (residual adds, concat/split, flatten,
depthwise convs and BN are all handled there). Where DepGraph fails (channel shuffle in ShuffleNet raises
ZeroDivisionError) it falls back to block-internal chains conv -> BN/act -> [dwconv -> BN/act] -> conv.in,
read off the traced op graph. It does not compute costs (cost.py) nor edit weights (engine.pruning).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from torch import nn

from engine.graph.trace import LayerCall

_SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
_CHANNELWISE_OPS = ("batchnorm", "activation", "dropout", "identity", "pool")


@dataclass
class MemberMap:
    """Which of a member module's channels (along `dim`) carry each group channel.

    `channels[j * mult:(j + 1) * mult]` are the member's channels for group channel j (mult > 1 after a
    flatten into a linear layer).
    """

    module: str
    dim: str  # "out" (conv/linear outputs, BN channels) or "in" (conv/linear inputs)
    channels: tuple[int, ...]
    mult: int = 1


@dataclass
class ChannelGroup:
    """Channels pruned together: keep k of `channels` and every member keeps the matching k (x mult)."""

    index: int
    name: str
    channels: int
    members: list[tuple[str, str]]
    prunable: bool
    stage: int = 0
    block: str | None = None
    macs_per_channel: int = 0
    params_per_channel: int = 0
    memory_bytes_per_channel: int = 0
    reason: str | None = None  # why the group is not prunable
    maps: list[MemberMap] = field(default_factory=list, repr=False)

    def layers(self) -> list[str]:
        """Conv/linear/BN modules of the group, in member order, without duplicates."""
        return list(dict.fromkeys(name for name, _ in self.members))


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _unsupported_reason(module: nn.Module, name: str, *, grouped_ok: bool = False) -> str | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return f"{name} is a transposed conv, which the pruner does not edit"
        if module.groups > 1 and not _is_depthwise(module) and not grouped_ok:
            return f"{name} is a grouped conv (groups={module.groups}) that is not depthwise"
        return None
    if isinstance(module, _SUPPORTED):
        return None
    return f"{name} is a {type(module).__name__}, which the pruner does not edit"


def _finish_maps(
    pairs: dict[tuple[str, str], list[tuple[list[int], list[int]]]],
    channels: int,
    modules: dict[str, nn.Module],
) -> tuple[list[MemberMap], str | None]:
    """Turn (member channels, group channels) index lists into MemberMaps; say why if not one-to-mult."""
    maps, reason = [], None
    identity = list(range(channels))
    for (name, dim), chunks in pairs.items():
        if len(chunks) == 1 and chunks[0][0] == identity and chunks[0][1] == identity:  # the common case
            maps.append(MemberMap(name, dim, tuple(identity), 1))
            reason = reason or _unsupported_reason(modules[name], name)
            continue
        idx = np.concatenate([np.asarray(c[0], dtype=np.int64) for c in chunks])
        root = np.concatenate([np.asarray(c[1], dtype=np.int64) for c in chunks])
        key = np.unique(root * (int(idx.max(initial=0)) + 1) + idx)  # unique (root, idx) pairs, root-major
        root, idx = np.divmod(key, int(idx.max(initial=0)) + 1)
        counts = np.bincount(root, minlength=channels)
        mults = set(counts.tolist())
        if root.size == 0 or counts.size != channels or len(mults) != 1 or 0 in mults:
            reason = reason or f"{name} ({dim}) sees only part of the group's channels (split or slice)"
            mult = max(int(counts.max(initial=1)), 1)
        else:
            mult = mults.pop()
        maps.append(MemberMap(name, dim, tuple(int(i) for i in idx), mult))
        reason = reason or _unsupported_reason(modules[name], name)
    return maps, reason


@dataclass
class RawGroup:
    """A group before costs and hierarchy are attached."""

    name: str
    channels: int
    maps: list[MemberMap]
    reason: str | None


def _cache_index_mapping() -> None:
    """Let DependencyGraphs we flag skip TP's full index-mapping refresh on every get_pruning_group call.

    Nothing changes between our calls (we never prune through TP), and the refresh is O(graph) per call:
    13 s of DenseNet-121's build. Other DependencyGraphs are unaffected.
    """
    from torch_pruning.dependency import index_mapping

    if getattr(index_mapping.update_index_mapping, "_topoprune", False):
        return
    original = index_mapping.update_index_mapping

    def update(graph) -> None:
        if not getattr(graph, "_topoprune_mapped", False):
            original(graph)

    update._topoprune = True
    index_mapping.update_index_mapping = update


def depgraph_groups(
    meta_model: nn.Module, inputs: tuple[torch.Tensor, ...], calls: dict[str, LayerCall], ignored: list[str]
) -> list[RawGroup]:
    """Groups from Torch-Pruning's DependencyGraph, rooted at each conv/linear's outputs in forward order."""
    import torch_pruning as tp

    modules = dict(meta_model.named_modules())
    names = {module: name for name, module in modules.items()}
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            meta_model, example_inputs=inputs[0] if len(inputs) == 1 else inputs, verbose=False
        )
    _cache_index_mapping()
    graph._topoprune_mapped = True
    roots = [
        c.name
        for c in sorted(calls.values(), key=lambda c: c.order)
        if isinstance(modules.get(c.name), (nn.modules.conv._ConvNd, nn.Linear)) and c.name not in ignored
    ]
    covered: dict[str, int] = {}
    groups: list[RawGroup] = []
    for root in roots:
        module = modules[root]
        if root in covered or module not in graph.module2node:
            continue
        n = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
        pairs: dict[tuple[str, str], list[tuple[list[int], list[int]]]] = defaultdict(list)
        reason = None
        for item in group.items:
            target = item.dep.target.module
            if isinstance(target, nn.Parameter):
                reason = "an unwrapped nn.Parameter shares these channels"
                continue
            name = names.get(target)
            if name is None:  # element-wise / concat / reshape ops: no weights of their own
                continue
            dim = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            pairs[(name, dim)].append((list(item.idxs), list(item.root_idxs)))
        order = {name: c.order for name, c in calls.items()}
        pairs = dict(sorted(pairs.items(), key=lambda kv: (order.get(kv[0][0], 1 << 30), kv[0][1] != "out")))
        maps, map_reason = _finish_maps(pairs, n, modules)
        reason = reason or map_reason
        for m in maps:
            if m.dim == "out" and m.module in ignored:
                reason = reason or f"it feeds the model output through {m.module}"
        # the group's stable name: its first conv/linear (forward order) whose outputs it holds
        outs = [m.module for m in maps if m.dim == "out" and isinstance(modules[m.module], _SUPPORTED[:3])]
        outs.sort(key=lambda name: calls[name].order if name in calls else 1 << 30)
        name = outs[0] if outs else root
        for out in outs:
            if out in covered:
                reason = reason or f"{out} outputs are split over several groups"
            covered[out] = len(groups)
        groups.append(RawGroup(name, n, maps, reason))
    return groups


def _closure(
    graph: nx.DiGraph, start: str, n: int, modules: dict[str, nn.Module], call_sites: dict[str, int]
) -> list[tuple[str, str]] | None:
    """Members reached from conv `start`'s outputs through channel-wise ops and depthwise convs, ending at the
    inputs of plain convs/linears; None if the channels meet anything that mixes or reorders them."""
    members: list[tuple[str, str]] = []
    stack = list(graph.successors(start))
    if not stack:
        return None
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            return None  # two paths meet again: only an add/cat could do that
        seen.add(node)
        data = graph.nodes[node]
        name, op = data.get("module"), data["op"]
        if op in ("batchnorm", "conv", "linear") and call_sites[name] != 1:
            return None
        if op == "batchnorm":
            members.append((name, "out"))
        elif op in _CHANNELWISE_OPS:
            pass
        elif (
            op == "flatten"
            and data["in_shape"]
            and len(data["in_shape"]) > 2
            and torch.Size(data["in_shape"][2:]).numel() == 1
        ):
            pass
        elif op == "conv" and _is_depthwise(modules[name]) and modules[name].in_channels == n:
            members.append((name, "out"))
        elif op in ("conv", "linear"):
            module = modules[name]
            in_channels = module.in_channels if op == "conv" else module.in_features
            if in_channels != n or getattr(module, "groups", 1) != 1:
                return None
            members.append((name, "in"))
            continue  # the channels end here
        else:
            return None
        successors = list(graph.successors(node))
        if not successors:
            return None
        stack.extend(successors)
    return members


def chain_groups(graph: nx.DiGraph, meta_model: nn.Module, ignored: list[str]) -> list[RawGroup]:
    """Groups whose channels flow only through BN, activations, pooling and depthwise convs into the inputs of
    plain convs/linears (block-internal chains such as conv -> BN -> dwconv -> BN -> conv.in, and fan-outs of
    them); channels that reach an add, concat, reshape or shuffle are left out."""
    modules = dict(meta_model.named_modules())
    call_sites: dict[str, int] = defaultdict(int)
    for _, data in graph.nodes(data=True):
        if data.get("module"):
            call_sites[data["module"]] += 1
    order = {d["module"]: d.get("order", 0) for _, d in graph.nodes(data=True) if d.get("module")}
    groups: list[RawGroup] = []
    for node in sorted(graph.nodes, key=lambda n: graph.nodes[n].get("order", 0)):
        data = graph.nodes[node]
        name = data.get("module")
        if data["op"] != "conv" or name in ignored or call_sites[name] != 1:
            continue
        start = modules[name]
        if start.groups != 1 or start.transposed:
            continue
        members = _closure(graph, node, start.out_channels, modules, call_sites)
        if members:
            members.sort(key=lambda member: (order.get(member[0], 0), member[1] != "out"))
            n = start.out_channels
            maps = [MemberMap(m, d, tuple(range(n)), 1) for m, d in [(name, "out"), *members]]
            groups.append(RawGroup(name, n, maps, None))
    return groups


def _norm_dim(module: nn.Module, dim: str) -> str:
    return "out" if dim == "in" and _is_depthwise(module) else dim


def label_groups(
    classes, modules: dict[str, nn.Module], *, exclude: set[int] | None = None
) -> list[RawGroup]:
    """Groups read off channel label propagation (channels.py): tie-classes with the same members form one
    group, ordered by their first producer's channel; classes that only reach the model output are left out.
    `exclude`: tie-class roots already covered by another group (skipped: most of a ResNet's classes)."""
    from engine.graph.channels import class_members

    members = class_members(classes)
    if exclude:
        members = {k: v for k, v in members.items() if k not in exclude}
    order = classes.order
    by_signature: dict[tuple, list[int]] = defaultdict(list)
    for root, slots in members.items():
        producers = [k for k in slots if k[1] == "out" and isinstance(modules[k[0]], _SUPPORTED[:3])]
        if not producers:
            continue
        signature = tuple(sorted((key, len(chs)) for key, chs in slots.items()))
        by_signature[signature].append(root)
    groups, used = [], set()

    def first(root: int) -> tuple[int, int, str]:
        slots = members[root]
        key = min(
            (k for k in slots if k[1] == "out" and isinstance(modules[k[0]], _SUPPORTED[:3])),
            key=lambda k: order.get(k[0], 1 << 30),
        )
        return order.get(key[0], 1 << 30), slots[key][0], key[0]

    sortable = []
    for signature, roots in by_signature.items():
        roots.sort(key=first)
        sortable.append((first(roots[0]), signature, roots))
    sortable.sort(key=lambda item: item[0])
    for (_, channel, producer), signature, roots in sortable:
        reasons = [classes.tie_frozen[r] for r in roots if r in classes.tie_frozen]
        if reasons and all(r == "its channels reach the model output" for r in reasons):
            continue
        keys = sorted((key for key, _ in signature), key=lambda k: (order.get(k[0], 1 << 30), k[1] != "out"))
        maps = []
        for key in keys:
            channels = [c for r in roots for c in members[r][key]]
            maps.append(MemberMap(key[0], key[1], tuple(channels), len(channels) // len(roots)))
        reason = reasons[0] if reasons else None
        for m in maps:
            reason = reason or _unsupported_reason(modules[m.module], m.module, grouped_ok=True)
        name = producer if producer not in used else f"{producer}@{channel}"
        used.add(name)
        groups.append(RawGroup(name, len(roots), maps, reason))
    return groups


def _map_problem(
    group: RawGroup, modules: dict[str, nn.Module], sizes: dict[tuple[str, str], int]
) -> str | None:
    """Why a Torch-Pruning index map cannot be applied as it stands (out of range, duplicates, partial)."""
    for m in group.maps:
        size = sizes.get((m.module, _norm_dim(modules[m.module], m.dim)))
        if size is None:
            continue
        if m.channels and (min(m.channels) < 0 or max(m.channels) >= size):
            return f"Torch-Pruning maps {m.module} ({m.dim}) to channel {max(m.channels)} of {size}"
        if len(set(m.channels)) != len(m.channels):
            return f"Torch-Pruning maps several group channels onto one channel of {m.module} ({m.dim})"
        if len(m.channels) != group.channels * m.mult:
            return f"Torch-Pruning's map covers only part of {m.module} ({m.dim})"
    return None


def _group_roots(
    group: RawGroup, modules: dict[str, nn.Module], classes, roots: np.ndarray
) -> np.ndarray | None:
    """(group channels, slots per channel) array of the tie-class roots a group's maps name; None if a map
    names a (module, dim) the tracer never saw or has a malformed length."""
    cols = []
    for m in group.maps:
        base = classes.slots.get((m.module, _norm_dim(modules[m.module], m.dim)))
        if base is None or len(m.channels) != group.channels * m.mult:
            return None
        ids = base + np.asarray(m.channels, dtype=np.int64).reshape(group.channels, m.mult)
        cols.append(roots[ids])
    return np.concatenate(cols, axis=1) if cols else None


def merge_groups(
    dep: list[RawGroup], classes, modules: dict[str, nn.Module]
) -> tuple[list[RawGroup], list[str]]:
    """Torch-Pruning's groups where their maps match the label classes exactly, label groups everywhere else.

    A Torch-Pruning group matches when every group channel names the slots of exactly one tie-class, all of
    them (vectorised over slot ids: per-channel Python sets made ResNet-50's build ten times slower).
    Returns the groups (ordered by first producer) and notes on every Torch-Pruning group that was replaced.
    """
    from engine.graph.channels import class_members, slot_roots

    class_members(classes)
    roots = slot_roots(classes)
    owned = np.fromiter((o is not None for o in classes.owner), dtype=bool, count=len(classes.owner))
    class_size = np.bincount(roots[owned], minlength=len(roots))
    frozen_roots = set(classes.tie_frozen)
    kept, notes = [], []
    covered: set[int] = set()
    for group in dep:
        problem = _map_problem(group, modules, classes.sizes)
        r = _group_roots(group, modules, classes, roots) if problem is None else None
        if problem is None:
            first = None if r is None else r[:, 0]
            if (
                r is None
                or not (r == first[:, None]).all()
                or len(np.unique(first)) != len(first)
                or not (class_size[first] == r.shape[1]).all()
            ):
                problem = (
                    "Torch-Pruning's index map does not match how the channels flow (reshape or reordering)"
                )
            elif group.reason is None and frozen_roots.intersection(first.tolist()):
                problem = "the channels meet an op the pruner does not follow"
        if problem is None and group.reason is None:
            kept.append(group)
            covered.update(r[:, 0].tolist())
        elif group.reason is None:
            notes.append(f"group {group.name}: {problem}; rebuilt from channel tracing")
    extra = []
    for group in label_groups(classes, modules):
        r = _group_roots(group, modules, classes, roots)
        if r is None or not covered.intersection(np.unique(r).tolist()):
            extra.append(group)
    order = classes.order
    names = {g.name for g in kept}
    for group in extra:
        if group.name in names:
            group.name = f"{group.name}@{group.maps[0].channels[0]}"
        names.add(group.name)

    def key(group: RawGroup) -> tuple[int, int]:
        outs = [m for m in group.maps if m.dim == "out" and isinstance(modules[m.module], _SUPPORTED[:3])]
        first = min(outs, key=lambda m: order.get(m.module, 1 << 30)) if outs else group.maps[0]
        return order.get(first.module, 1 << 30), min(first.channels, default=0)

    return sorted(kept + extra, key=key), notes
