"""Capture a model's operation graph with shapes: torch.fx call sites (module-level), or a hook fallback.

Runs on a weightless meta-device copy, so tracing a ResNet-50 at 224x224 does no arithmetic and the input
model is never touched. It records what was called and with which shapes; it does not find channel groups
(groups.py) nor stages and blocks (hierarchy.py). torch.fx patches nn.Module process-wide while it traces;
symbolic_trace_isolated confines those patches to the tracing thread so other threads' forwards run untouched.
"""

from __future__ import annotations

import copy
import operator
import threading
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import nn

from engine.errors import ModelError

_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.GELU,
    nn.Tanh,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.Mish,
    nn.Softmax,
)
_POOLS = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
)
_FUNCTION_OPS = {
    "add": "add",
    "iadd": "add",
    "sub": "add",
    "mul": "mul",
    "imul": "mul",
    "cat": "concat",
    "concat": "concat",
    "stack": "concat",
    "chunk": "split",
    "split": "split",
    "unbind": "split",
    "getitem": "getitem",
    "flatten": "flatten",
    "view": "reshape",
    "reshape": "reshape",
    "transpose": "transpose",
    "permute": "transpose",
    "contiguous": "identity",
    "relu": "activation",
    "relu_": "activation",
    "relu6": "activation",
    "hardtanh": "activation",
    "silu": "activation",
    "sigmoid": "activation",
    "hardswish": "activation",
    "hardsigmoid": "activation",
    "gelu": "activation",
    "tanh": "activation",
    "adaptive_avg_pool2d": "pool",
    "avg_pool2d": "pool",
    "max_pool2d": "pool",
    "mean": "pool",
    "dropout": "dropout",
    "stochastic_depth": "dropout",
    "softmax": "activation",
}


@dataclass
class LayerCall:
    """Shapes seen at one leaf module over the traced forward (batch 1): what the cost model needs."""

    name: str
    module_type: str
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    calls: int = 1
    coef: int = 0  # MACs per (in channel per group x out channel), summed over calls: k_h*k_w*H*W or rows
    spatial: int = 0  # output elements per output channel, summed over calls
    order: int = 0


@dataclass
class TraceResult:
    """The op graph (one node per call site) and per-module call records, in forward order."""

    graph: nx.DiGraph
    calls: dict[str, LayerCall]
    method: str  # "fx" or "hooks"
    output_layers: list[str] = field(default_factory=list)  # conv/linear whose outputs reach the model output
    fx_error: str | None = None


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers live on the meta device (no weights copied)."""
    memo: dict[int, object] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(
            torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
        )
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo)


_CHEAP_ON_META = (
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.GELU,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
)


def _same_shape(self, x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def speed_up_meta(meta_model: nn.Module) -> nn.Module:
    """Swap BN and activation forwards of a meta model for a shape-preserving clone (in place).

    Meta tensors run these through Python decompositions (batch_norm ~12 ms a call); only shapes and the
    autograd graph's topology matter here, and a clone keeps both.
    """
    import types

    for module in meta_model.modules():
        if isinstance(module, _CHEAP_ON_META):
            module.forward = types.MethodType(_same_shape, module)
    return meta_model


def as_input_tuple(example_inputs: torch.Tensor | tuple | list) -> tuple[torch.Tensor, ...]:
    """Normalise example inputs to a tuple of tensors."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ValueError(
            f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
        )
    return inputs


def meta_inputs(example_inputs: torch.Tensor | tuple | list) -> tuple[torch.Tensor, ...]:
    """Batch-1 meta tensors shaped like the example inputs (costs are per sample)."""
    return tuple(
        torch.empty((1, *t.shape[1:]), dtype=t.dtype, device="meta") for t in as_input_tuple(example_inputs)
    )


def module_op(module: nn.Module) -> str:
    """The op type of a leaf module, as shown on graph nodes."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, _ACTIVATIONS):
        return "activation"
    if isinstance(module, _POOLS):
        return "pool"
    if isinstance(module, nn.Flatten):
        return "flatten"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "dropout"
    if isinstance(module, nn.Identity):
        return "identity"
    return type(module).__name__.lower()


def _shape_of(value) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _first_tensor(values) -> torch.Tensor | None:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (tuple, list)):
            found = _first_tensor(value)
            if found is not None:
                return found
    return None


def is_pruned_layer(module: nn.Module) -> bool:
    """Conv, linear and batchnorm layers, subclasses included: the layers whose channels the pruner edits."""
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm))


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules in call order of definition; a pruned layer counts as a leaf even with children of its own
    (timm's BatchNormAct2d holds its activation), and what it holds is then not a leaf."""
    leaves, inside = [], []
    for name, module in model.named_modules():
        if name == "" or any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if is_pruned_layer(module):
            inside.append(name)
            leaves.append((name, module))
        elif not any(True for _ in module.children()):
            leaves.append((name, module))
    return leaves


def _record_hooks(model: nn.Module, calls: dict[str, LayerCall]) -> list:
    """Forward hooks on every leaf module that fill `calls` (shapes, call counts, cost coefficients)."""
    handles = []
    for name, module in _leaf_modules(model):

        def hook(mod, args, out, name=name):
            inp, res = _first_tensor(args), _first_tensor((out,))
            coef = spatial = 0
            if isinstance(mod, nn.modules.conv._ConvNd) and res is not None:
                spatial = int(torch.Size(res.shape[2:]).numel())
                coef = int(torch.Size(mod.kernel_size).numel()) * spatial
            elif isinstance(mod, nn.Linear) and res is not None:
                coef = spatial = int(res.numel() // res.shape[-1])
            elif res is not None and res.dim() >= 2:
                spatial = int(res.numel() // res.shape[1])
            record = calls.get(name)
            if record is None:
                calls[name] = LayerCall(
                    name, type(mod).__name__, _shape_of(inp), _shape_of(res), 1, coef, spatial, len(calls)
                )
            else:
                record.calls += 1
                record.coef += coef
                record.spatial += spatial

        handles.append(module.register_forward_hook(hook))
    return handles


def trace_model(meta_model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> TraceResult:
    """Trace a meta-device model (see meta_copy): fx graph with shapes if symbolic tracing works, else hooks.

    Raises:
        ModelError: the forward pass fails on the example inputs (the message names the failing op).
    """
    calls: dict[str, LayerCall] = {}
    handles = _record_hooks(meta_model, calls)
    try:
        try:
            return _trace_fx(meta_model, inputs, calls)
        except ModelError:
            raise
        except Exception as exc:  # fx cannot trace data-dependent Python; fall back to hooks
            calls.clear()
            fx_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            result = _trace_hooks(meta_model, inputs, calls)
            result.fx_error = fx_error
            return result
    finally:
        for handle in handles:
            handle.remove()


_FX_TRACE_LOCK = threading.Lock()  # fx keeps one global patcher: two traces at once would undo each other


class _ThreadBoundTracer(torch.fx.Tracer):
    """A torch.fx Tracer whose process-wide patches of nn.Module act only on the thread that traces.

    While tracing, fx replaces ``nn.Module.__call__`` and ``__getattr__`` for every module in the process and
    routes them to the tracer's ``call_module`` / ``getattr``; a forward pass in another thread then fails
    ("module is not installed as a submodule") or corrupts the trace's module stack. Calls from other threads
    fall through here to what the unpatched methods do: run the module, return the attribute.
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # conv / linear / BN subclasses from outside torch.nn (timm's ScaledStdConv2d, Linear, BatchNormAct2d)
        # are layers the pruner edits: keep them as one call site instead of inlining their forward
        return is_pruned_layer(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward, args: tuple, kwargs: dict):
        if threading.get_ident() != self._thread:
            return forward(
                *args, **kwargs
            )  # fx's `forward` is the original nn.Module.__call__ (hooks included)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val, parameter_proxy_cache: dict):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def symbolic_trace_isolated(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace(model)`` that is safe while other threads run forward passes or trace.

    Other threads' module calls and attribute reads behave as if nothing were being traced, and traces are
    serialised (fx's patcher is process-global). Functions fx wraps (``torch.fx.wrap``, math) already fall
    through when their arguments hold no fx Proxy, so they need no guard.
    """
    with _FX_TRACE_LOCK:
        tracer = _ThreadBoundTracer()
        graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def _trace_fx(model: nn.Module, inputs: tuple[torch.Tensor, ...], calls: dict[str, LayerCall]) -> TraceResult:
    from torch.fx.passes.shape_prop import ShapeProp

    gm = symbolic_trace_isolated(model)
    ShapeProp(gm).propagate(*inputs)
    modules = dict(model.named_modules())
    graph = nx.DiGraph()
    kept: dict[str, list[str]] = {}  # fx node name -> tensor-producing ancestors it stands for

    def tensor_inputs(node: torch.fx.Node) -> list[str]:
        found: list[str] = []
        for arg in node.all_input_nodes:
            for source in kept.get(arg.name, []):
                if source not in found:
                    found.append(source)
        return found

    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        is_tensor = meta is not None and (
            hasattr(meta, "shape")
            or (isinstance(meta, (tuple, list)) and any(hasattr(m, "shape") for m in meta))
        )
        if node.op == "output":
            is_tensor = True
        if node.op == "get_attr" or not is_tensor:
            kept[node.name] = tensor_inputs(node) if node.op != "get_attr" else []
            continue
        attrs = _fx_node_attrs(node, modules)
        graph.add_node(node.name, **attrs)
        for source in tensor_inputs(node):
            graph.add_edge(source, node.name)
        kept[node.name] = [node.name]
    for index, name in enumerate(graph.nodes):  # fx order: execution order, already topological
        graph.nodes[name]["order"] = index
    output_layers = _layers_feeding_output(graph)
    return TraceResult(graph, calls, "fx", output_layers)


def _target_name(target) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return name.rsplit(".", 1)[-1]


def _fx_node_attrs(node: torch.fx.Node, modules: dict[str, nn.Module]) -> dict:
    meta = node.meta.get("tensor_meta")
    out_shape = tuple(meta.shape) if hasattr(meta, "shape") else None
    in_shape = None
    for arg in node.all_input_nodes:
        arg_meta = arg.meta.get("tensor_meta")
        if hasattr(arg_meta, "shape"):
            in_shape = tuple(arg_meta.shape)
            break
    module_name = None
    if node.op == "call_module":
        module_name = str(node.target)
        op = module_op(modules[module_name])
    elif node.op == "placeholder":
        op = "input"
    elif node.op == "output":
        op = "output"
    else:
        target = _target_name(node.target)
        op = _FUNCTION_OPS.get(target, target)
        if node.op == "call_function" and node.target in (operator.add, operator.iadd):
            op = "add"
    scope = module_name
    stack = node.meta.get("nn_module_stack") or {}
    if stack and scope is None:
        key, value = list(stack.items())[-1]
        scope = value[0] if isinstance(value, tuple) and isinstance(value[0], str) else str(key)
    target = type(modules[module_name]).__name__ if module_name is not None else _target_name(node.target)
    return {
        "name": node.name,
        "op": op,
        "target": target,
        "module": module_name,
        "scope": scope,
        "in_shape": in_shape,
        "out_shape": out_shape,
    }


def _layers_feeding_output(graph: nx.DiGraph) -> list[str]:
    """Conv/linear modules whose outputs reach the model output without passing another conv/linear."""
    outputs = [n for n, d in graph.nodes(data=True) if d["op"] == "output"]
    found: list[str] = []
    stack = list(outputs)
    seen = set(stack)
    while stack:
        for pred in graph.predecessors(stack.pop()):
            if pred in seen:
                continue
            seen.add(pred)
            data = graph.nodes[pred]
            if data["op"] in ("conv", "linear"):
                if data["module"] not in found:
                    found.append(data["module"])
            else:
                stack.append(pred)
    return found


def _trace_hooks(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], calls: dict[str, LayerCall]
) -> TraceResult:
    """Fallback graph: one node per leaf-module call, linked by tensor identity (functional ops are invisible)."""
    graph = nx.DiGraph()
    producer: dict[int, str] = {}
    for index, tensor in enumerate(inputs):
        name = f"input_{index}" if index else "x"
        graph.add_node(
            name,
            name=name,
            op="input",
            target="input",
            module=None,
            scope=None,
            in_shape=None,
            out_shape=tuple(tensor.shape),
        )
        producer[id(tensor)] = name
    last = [next(iter(graph.nodes))]
    keepalive: list = []
    counts: dict[str, int] = {}

    def hook(mod, args, out, name):
        index = counts.get(name, 0)
        counts[name] = index + 1
        node = name.replace(".", "_") + (f"_{index}" if index else "")
        inp, res = _first_tensor(args), _first_tensor((out,))
        graph.add_node(
            node,
            name=node,
            op=module_op(mod),
            target=type(mod).__name__,
            module=name,
            scope=name,
            in_shape=_shape_of(inp),
            out_shape=_shape_of(res),
        )
        sources = [producer[id(a)] for a in args if isinstance(a, torch.Tensor) and id(a) in producer]
        for source in sources or last[:1]:
            graph.add_edge(source, node)
        if res is not None:
            producer[id(res)] = node
            keepalive.append(res)
        last[0] = node

    handles = []
    entered: list[str] = []
    for name, module in _leaf_modules(model):
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: entered.append(name)))
            handles.append(module.register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name)))
    try:
        with torch.no_grad():
            out = model(*inputs)
    except Exception as exc:
        where = "before the first module"
        if entered:
            failed = entered[-1]
            done = counts.get(failed, 0) >= entered.count(failed)
            where = (
                f"in a functional op after module {failed!r}"
                if done
                else f"in module {failed!r} ({type(dict(model.named_modules())[failed]).__name__})"
            )
        raise ModelError(
            f"the model's forward pass fails on example inputs of shape {[tuple(t.shape) for t in inputs]} "
            f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check the input "
            "size and that forward() runs on a plain tensor"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    graph.add_node(
        "output",
        name="output",
        op="output",
        target="output",
        module=None,
        scope=None,
        in_shape=_shape_of(_first_tensor((out,))),
        out_shape=_shape_of(_first_tensor((out,))),
    )
    graph.add_edge(last[0], "output")
    for index, name in enumerate(graph.nodes):
        graph.nodes[name]["order"] = index
    modules = dict(model.named_modules())
    layers = [
        c.name for c in calls.values() if isinstance(modules[c.name], (nn.modules.conv._ConvNd, nn.Linear))
    ]
    return TraceResult(graph, calls, "hooks", layers[-1:])
