"""Channel-level coupling by label propagation: every conv/linear/BN channel is a slot, one forward pass carries
per-channel slot labels through every torch op, and slots that meet (add, mul, BN, shared consumers) are unioned.

It is the ground truth that groups.py checks Torch-Pruning's index maps against, and the source of groups where
those maps are wrong (chunk/split feeding concat, partial residuals, split sizes, grouped convs, shuffles). Any op
it does not understand freezes the channels it touches (never a guess). It does not compute costs nor edit weights.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

_ELEMENTWISE = {
    "add",
    "sub",
    "mul",
    "div",
    "true_divide",
    "rsub",
    "radd",
    "rmul",
    "rtruediv",
    "truediv",
    "where",
    "maximum",
    "minimum",
    "pow",
    "relu",
    "relu6",
    "silu",
    "sigmoid",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "gelu",
    "tanh",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "mish",
    "softplus",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "clone",
    "contiguous",
    "neg",
    "abs",
    "exp",
    "clamp",
    "clip",
    "float",
    "double",
    "half",
    "to",
    "type",
    "type_as",
    "detach",
    "sqrt",
    "rsqrt",
    "square",
    "reciprocal",
    "log",
    "sin",
    "cos",
    "erf",
    "logsigmoid",
    "hardshrink",
    "softsign",
    "stochastic_depth",
    "requires_grad_",
    "identity",
    "sign",
}
_SPATIAL = {
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "lp_pool2d",
    "interpolate",
    "upsample",
    "upsample_nearest",
    "upsample_bilinear",
    "boolean_dispatch",
    "max_pool2d_with_indices",
    "adaptive_max_pool2d_with_indices",
}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod"}
_SHAPE = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "t",
    "squeeze",
    "unsqueeze",
    "getitem",
    "split",
    "chunk",
    "unbind",
    "cat",
    "concat",
    "concatenate",
    "stack",
    "flip",
    "roll",
    "narrow",
    "expand",
    "expand_as",
    "pixel_shuffle",
    "pixel_unshuffle",
    "channel_shuffle",
    "movedim",
    "split_with_sizes",
    "unflatten",
    "select",
    "view_as",
    "reshape_as",
    "swapaxes",
    "swapdims",
    "tensor_split",
    "hsplit",
    "vsplit",
    "pad",
}
_BRANCH = {"__bool__"}


def is_conv(module: nn.Module) -> bool:
    """A (possibly subclassed) non-transposed conv."""
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def is_depthwise(module: nn.Module) -> bool:
    return (
        is_conv(module) and module.groups > 1 and module.groups == module.in_channels == module.out_channels
    )


def handled(module: nn.Module) -> bool:
    """Layers whose channels the pruner edits (subclasses defined outside torch.nn included)."""
    return is_conv(module) or isinstance(module, (nn.Linear, nn.modules.batchnorm._BatchNorm))


@dataclass
class ChannelClasses:
    """Union-find over slots (module, dim, channel); frozen classes carry why they cannot be pruned."""

    slots: dict[tuple[str, str], int] = field(default_factory=dict)  # (module, dim) -> first slot id
    sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    parent: list[int] = field(default_factory=list)
    owner: list[tuple[str, str, int] | None] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)  # root -> reason
    ties: list[list[int]] = field(default_factory=list)  # slot sets pruned together (grouped convs)
    branches: list[str] = field(default_factory=list)  # modules whose forward branched on tensor values
    tie_frozen: dict[int, str] = field(default_factory=dict)  # tie-class root -> reason (class_members)
    order: dict[str, int] = field(default_factory=dict)  # module -> first call order

    def new(self, n: int, owner: tuple[str, str] | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.owner.extend([(*owner, c) for c in range(n)] if owner else [None] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))

    def freeze(self, labels, reason: str) -> None:
        for label in np.unique(np.asarray(labels, dtype=np.int64)):
            root = self.find(int(label))
            self.frozen.setdefault(root, reason)

    def slot(self, module: str, dim: str, n: int) -> np.ndarray:
        key = (module, dim)
        if key not in self.slots:
            self.slots[key] = int(self.new(n, key)[0])
            self.sizes[key] = n
        return np.arange(self.slots[key], self.slots[key] + n, dtype=np.int64)


@dataclass
class _Labels:
    labels: np.ndarray  # slot id per channel
    dim: int  # the channel dim (non-negative)


class _LabelMode(TorchFunctionMode):
    """Carries channel labels through torch functions; leaf layers are handled by module hooks."""

    def __init__(self, tracer: ChannelTracer) -> None:
        super().__init__()
        self.t = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = self.t
        name = getattr(func, "__name__", "")
        if name in _BRANCH and t.depth == 0:
            out = func(*args, **kwargs)
            site = t.stack[-1] if t.stack else ""
            t.classes.branches.append(site)
            index = len(t.classes.branches) - 1
            return (not out) if index in t.flip else out
        out = func(*args, **kwargs)
        if t.depth == 0 and name not in ("__get__", "size", "dim", "numel", "__len__", "__bool__"):
            try:
                t.on_function(name.strip("_").rstrip("_"), args, kwargs, out)
            except Exception as exc:  # noqa: BLE001 - an op we cannot follow freezes what it touches
                t.freeze_all(args, kwargs, out, f"op {name} could not be followed ({type(exc).__name__})")
        return out


class ChannelTracer:
    """One forward of a model under _LabelMode with hooks on every module."""

    def __init__(self, model: nn.Module, flip: set[int] | None = None) -> None:
        self.model = model
        self.classes = ChannelClasses()
        self.labels: dict[int, _Labels] = {}
        self.keep: list = []
        self.depth = 0  # > 0 inside a handled or opaque module
        self.stack: list[str] = []
        self.flip = flip or set()

    def get(self, x) -> _Labels | None:
        return self.labels.get(id(x)) if isinstance(x, torch.Tensor) else None

    def put(self, x: torch.Tensor, labels: np.ndarray, dim: int) -> None:
        self.labels[id(x)] = _Labels(np.asarray(labels, dtype=np.int64), dim)
        self.keep.append(x)

    def fresh(self, x: torch.Tensor, reason: str) -> None:
        if x.dim() >= 2:
            labels = self.classes.new(int(x.shape[1]))
            self.classes.freeze(labels, reason)
            self.put(x, labels, 1)

    def freeze_all(self, args, kwargs, out, reason: str) -> None:
        for x in pytree.tree_leaves((args, kwargs)):
            found = self.get(x)
            if found is not None:
                self.classes.freeze(found.labels, reason)
        for x in pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor) and self.get(x) is None:
                self.fresh(x, reason)

    # -- modules -------------------------------------------------------------------------------------------
    def pre_hook(self, name: str, module: nn.Module, args) -> None:
        self.stack.append(name)
        self.classes.order.setdefault(name, len(self.classes.order))
        if self.depth == 0 and (handled(module) or _opaque(module)):
            self.depth = 1
            self._entered = name
        elif self.depth > 0:
            self.depth += 1

    def post_hook(self, name: str, module: nn.Module, args, out) -> None:
        self.stack.pop()
        if self.depth > 1:
            self.depth -= 1
            return
        if self.depth == 1:
            self.depth = 0
            try:
                self.on_module(name, module, args, out)
            except Exception as exc:  # noqa: BLE001
                self.freeze_all(
                    args, {}, out, f"{name} ({type(module).__name__}) could not be followed: {exc}"
                )

    def on_module(self, name: str, module: nn.Module, args, out) -> None:
        x = next((a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)), None)
        found = self.get(x)
        c = self.classes
        if not handled(module):
            self.freeze_all(
                args, {}, out, f"{name} is a {type(module).__name__}, whose channels the pruner does not edit"
            )
            return
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            slots = c.slot(name, "out", module.num_features)
            if found is None or found.dim != 1 or len(found.labels) != module.num_features:
                c.freeze(slots, f"{name} normalises channels the tracer could not follow")
                self.put(out, slots, 1)
                return
            for a, b in zip(slots, found.labels, strict=True):
                c.union(a, b)
            self.put(out, found.labels, 1)
            return
        if isinstance(module, nn.Linear):
            n_in, n_out, want = module.in_features, module.out_features, x.dim() - 1
        else:
            n_in, n_out, want = module.in_channels, module.out_channels, 1
        if is_depthwise(module):
            slots = c.slot(name, "out", n_out)
            if found is None or found.dim != 1 or len(found.labels) != n_in:
                c.freeze(slots, f"{name} gets channels the tracer could not follow")
            else:
                for a, b in zip(slots, found.labels, strict=True):
                    c.union(a, b)
            self.put(out, slots, 1)
            return
        ins, outs = c.slot(name, "in", n_in), c.slot(name, "out", n_out)
        if found is None or found.dim != want or len(found.labels) != n_in:
            c.freeze(ins, f"{name} gets inputs whose channels the tracer could not follow")
        else:
            for a, b in zip(ins, found.labels, strict=True):
                c.union(a, b)
        groups = getattr(module, "groups", 1)
        if groups > 1:  # prune the same channels in every conv group, so `groups` stays valid
            for slots, size in ((ins, n_in // groups), (outs, n_out // groups)):
                for j in range(size):
                    c.ties.append([int(s) for s in slots[j::size]])
        self.put(out, outs, out.dim() - 1 if isinstance(module, nn.Linear) else 1)

    # -- functions -----------------------------------------------------------------------------------------
    def on_function(self, name: str, args, kwargs, out) -> None:
        leaves = pytree.tree_leaves((args, kwargs))
        labelled = [x for x in leaves if self.get(x) is not None]
        if not labelled:
            return
        if not isinstance(out, torch.Tensor) and not (
            isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out)
        ):
            return  # .tolist(), shapes: nothing flows on in channels
        if name == "setitem":
            self._setitem(args)
        elif name in _ELEMENTWISE or name.startswith(("i", "r")) and name[1:] in _ELEMENTWISE:
            self._elementwise(name, leaves, out)
        elif name in _SPATIAL or (name == "pad" and self._pad_spatial(args, kwargs)):
            src = self.get(labelled[0])
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for o in outs:
                if o.dim() == labelled[0].dim() and o.shape[src.dim] == len(src.labels):
                    self.put(o, src.labels, src.dim)
        elif name in _REDUCE:
            self._reduce(name, args, kwargs, out)
        elif name in _SHAPE:
            self._shape(func_args=(args, kwargs), name=name, out=out)
        else:
            self.freeze_all(
                args, kwargs, out, f"op {name!r} mixes channels in a way the pruner does not follow"
            )

    def _setitem(self, args) -> None:
        target, index, value = args[0], args[1], args[2]
        found, source = self.get(target), self.get(value)
        if found is None or source is None:
            self.freeze_all(
                args, {}, None, "an assignment into a slice writes channels the tracer cannot follow"
            )
            return
        view = [1] * target.dim()
        view[found.dim] = len(found.labels)
        region = torch.from_numpy(found.labels).view(view).expand(target.shape)[index]
        vview = [1] * value.dim()
        vview[source.dim] = len(source.labels)
        written = torch.from_numpy(source.labels).view(vview).expand(value.shape).expand(region.shape)
        pairs = np.unique(torch.stack([region.reshape(-1), written.reshape(-1)], 1).numpy(), axis=0)
        for a, b in pairs:
            self.classes.union(a, b)

    def _pad_spatial(self, args, kwargs) -> bool:
        pad = kwargs.get("pad", args[1] if len(args) > 1 else None)
        x = args[0]
        return pad is not None and len(pad) // 2 <= x.dim() - 2

    def _elementwise(self, name: str, leaves, out) -> None:
        if not isinstance(out, torch.Tensor):
            return
        shape = out.shape
        dims, full = set(), []
        for x in leaves:
            if not isinstance(x, torch.Tensor) or x.dim() == 0:
                continue
            found = self.get(x)
            offset = len(shape) - x.dim()
            if found is None:
                continue
            dims.add(found.dim + offset)
            if x.shape[found.dim] == len(found.labels) and len(found.labels) == shape[found.dim + offset]:
                full.append(found.labels)
        if len(dims) != 1 or not full:
            self.freeze_all(
                leaves, {}, out, f"op {name!r} combines tensors whose channel dims do not line up"
            )
            return
        (dim,) = dims
        for x in leaves:  # an unlabelled tensor with a channel-sized dim there: an unwrapped parameter
            if isinstance(x, torch.Tensor) and self.get(x) is None and x.dim() > 0:
                at = dim - (len(shape) - x.dim())
                if 0 <= at < x.dim() and x.shape[at] > 1 and x.shape[at] == shape[dim]:
                    self.freeze_all(
                        leaves,
                        {},
                        out,
                        f"a tensor that is not a layer's output (a parameter or "
                        f"buffer used in forward) enters op {name!r} on these channels",
                    )
                    return
        for other in full[1:]:
            for a, b in zip(full[0], other, strict=True):
                self.classes.union(a, b)
        self.put(out, full[0], dim)

    def _reduce(self, name: str, args, kwargs, out) -> None:
        x = args[0]
        found = self.get(x)
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
        if not isinstance(out, torch.Tensor):
            out = out[0] if isinstance(out, (tuple, list)) else out
        if dim is None or not isinstance(out, torch.Tensor):
            self.classes.freeze(found.labels, f"op {name!r} reduces over the channels")
            return
        dims = {d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)}
        if found.dim in dims:
            self.classes.freeze(found.labels, f"op {name!r} reduces over the channels")
            return
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        new_dim = found.dim if keepdim else found.dim - sum(d < found.dim for d in dims)
        self.put(out, found.labels, new_dim)

    def _shape(self, func_args, name: str, out) -> None:
        args, kwargs = func_args
        if name in ("cat", "concat", "concatenate") or (
            name in ("split", "chunk", "split_with_sizes") and self._fast_split(name, args, kwargs, out)
        ):
            if name in ("split", "chunk", "split_with_sizes"):
                return
            if self._fast_cat(args, kwargs, out):
                return

        # general case: run the same op on per-element label tensors and read the channel dim back off
        def to_labels(x):
            if not isinstance(x, torch.Tensor):
                return x
            found = self.get(x)
            if found is None:
                if x.dtype in (torch.long, torch.int, torch.bool) and x.device.type != "meta":
                    return x
                labels = self.classes.new(int(x.shape[1]) if x.dim() >= 2 else 1)
                self.classes.freeze(labels, f"a tensor that is not a layer's output enters op {name!r}")
                found = _Labels(labels, 1 if x.dim() >= 2 else 0)
            view = [1] * x.dim()
            view[found.dim] = len(found.labels)
            return torch.from_numpy(found.labels).view(view).expand(x.shape)

        func = _lookup(name, args)
        label_out = func(*pytree.tree_map(to_labels, args), **pytree.tree_map(to_labels, kwargs))
        real = pytree.tree_leaves(out)
        fake = pytree.tree_leaves(label_out)
        for r, f in zip(real, fake, strict=True):
            if isinstance(r, torch.Tensor):
                self._read(r, f, name)

    def _read(self, real: torch.Tensor, fake: torch.Tensor, name: str) -> None:
        if fake.dim() < 2:
            self.classes.freeze(fake.reshape(-1).numpy(), f"op {name!r} leaves no channel dim")
            return
        for d in [1, fake.dim() - 1, *range(2, fake.dim() - 1)]:
            other = [k for k in range(1, fake.dim()) if k != d]
            if not other:
                lo = hi = fake
            else:
                lo, hi = fake.amin(dim=other, keepdim=True), fake.amax(dim=other, keepdim=True)
            if torch.equal(lo, hi):
                self.put(real, lo.select(0, 0).reshape(-1).numpy().copy(), d)
                return
        # flatten into features: each feature carries one channel (contiguous runs), keep it on the last dim
        if fake.dim() == 2:
            self.put(real, fake[0].numpy().copy(), 1)
            return
        self.classes.freeze(fake.reshape(-1).numpy(), f"op {name!r} moves channels off a single dim")
        self.fresh(real, f"op {name!r} moves channels off a single dim")

    def _fast_split(self, name, args, kwargs, out) -> bool:
        x = args[0]
        found = self.get(x)
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % x.dim()
        if found is None or dim != found.dim or not isinstance(out, (tuple, list)):
            return False
        start, parts = 0, []
        for o in out:
            n = o.shape[dim]
            parts.append(found.labels[start : start + n])
            self.put(o, parts[-1], dim)
            start += n
        sizes = {len(p) for p in parts}
        if (
            name != "split_with_sizes"
            and not isinstance(args[1] if len(args) > 1 else None, (list, tuple))
            and len(sizes) == 1
            and len(parts) > 1
        ):  # equal parts of one size: prune them alike
            for j in range(len(parts[0])):
                self.classes.ties.append([int(p[j]) for p in parts])
        return True

    def _fast_cat(self, args, kwargs, out) -> bool:
        tensors = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % out.dim()
        parts = [self.get(t) for t in tensors]
        if any(p is None or p.dim != dim for p in parts):
            return False
        self.put(out, np.concatenate([p.labels for p in parts]), dim)
        return True


def _opaque(module: nn.Module) -> bool:
    """A module with weights of its own that the pruner does not edit (LayerNorm, MHA, LSTM, ConvTranspose)."""
    return not handled(module) and any(True for _ in module.parameters(recurse=False))


def _lookup(name: str, args):
    if hasattr(torch, name):
        return getattr(torch, name)
    if hasattr(torch.nn.functional, name):
        return getattr(torch.nn.functional, name)
    if name == "getitem":
        return lambda x, index: x[index]
    return lambda x, *a, **k: getattr(x, name)(*a, **k)


def trace_channels(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], *, flip: set[int] | None = None
) -> tuple[ChannelClasses, object]:
    """Run `model` once under label propagation; returns the slot classes and the model output."""
    tracer = ChannelTracer(model, flip)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: tracer.pre_hook(name, m, a)))
        handles.append(
            module.register_forward_hook(lambda m, a, o, name=name: tracer.post_hook(name, m, a, o))
        )
    try:
        for x in inputs:
            tracer.fresh(x, "they are the model's input channels")
        with torch.enable_grad(), _LabelMode(tracer):
            out = model(*inputs)
        for x in pytree.tree_leaves(out):
            found = tracer.get(x)
            if found is not None:
                tracer.classes.freeze(found.labels, "its channels reach the model output")
    finally:
        for handle in handles:
            handle.remove()
    return tracer.classes, out


def class_members(classes: ChannelClasses) -> dict[int, dict[tuple[str, str], list[int]]]:
    """Tie-class root -> {(module, dim): channels}; grouped-conv ties merge classes into one group channel."""
    cached = getattr(classes, "_members", None)
    if cached is not None and cached[0] == len(classes.parent):
        return cached[1]
    tie_parent: dict[int, int] = {}

    def find(a: int) -> int:
        root = a
        while tie_parent.get(root, root) != root:
            root = tie_parent[root]
        while a != root:  # path compression: long tie chains made this quadratic on ResNet-50
            tie_parent[a], a = root, tie_parent[a]
        return root

    for tie in classes.ties:
        roots = [find(classes.find(s)) for s in tie]
        for r in roots[1:]:
            if r != roots[0]:
                tie_parent[max(r, roots[0])] = min(r, roots[0])
    members: dict[int, dict[tuple[str, str], list[int]]] = defaultdict(lambda: defaultdict(list))
    frozen: dict[int, str] = {}
    for slot, owner in enumerate(classes.owner):
        root = classes.find(slot)
        tie = find(root)
        if root in classes.frozen:
            frozen.setdefault(tie, classes.frozen[root])
        if owner is not None:
            members[tie][(owner[0], owner[1])].append(owner[2])
    classes.tie_frozen = frozen
    # slots of one (module, dim) are contiguous ids in channel order, so every list is already sorted
    result = {k: dict(d) for k, d in members.items()}
    classes._members = (len(classes.parent), result)
    classes._slot_roots = np.fromiter(
        (find(classes.find(i)) for i in range(len(classes.parent))), dtype=np.int64, count=len(classes.parent)
    )
    return result


def slot_roots(classes: ChannelClasses) -> np.ndarray:
    """Tie-class root of every slot id (the keys of class_members), as one array."""
    class_members(classes)
    return classes._slot_roots
