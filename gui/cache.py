"""The GUI's only door to the engine for reads, and the only place with st.cache_*.

Shared read-only things (the baseline model, its dataset, its topology) are st.cache_resource and are never
mutated: every pruning call in the engine works on a copy. Tables and layouts are st.cache_data keyed by an
explicit ``ref.key``. Engine modules are imported lazily, so a page whose engine piece has not landed yet
shows a clear note (``EngineGap``) instead of failing. Long jobs are not here (see gui.jobs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from gui.state import ModelRef

ENGINE_PIECES = {
    "zoo": "engine.zoo",
    "data": "engine.data",
    "checkpoints": "engine.checkpoints",
    "train": "engine.train",
    "graph": "engine.graph",
    "cost": "engine.cost",
    "pruning": "engine.pruning",
    "evaluate": "engine.evaluate",
    "sensitivity": "engine.sensitivity",
    "methods": "engine.methods",
    "rl": "engine.rl",
    "store": "engine.store",
}


class EngineGap(Exception):
    """An engine module the page needs is not installed in this build yet."""

    def __init__(self, piece: str, detail: str = "") -> None:
        self.piece = piece
        super().__init__(
            f"The engine's `{ENGINE_PIECES.get(piece, piece)}` is not available in this build yet"
            + (f" ({detail})" if detail else "")
            + "; this part of the page is disabled until it lands."
        )


def engine(piece: str) -> Any:
    """Import an engine module by its short name, or raise EngineGap when it does not exist (yet)."""
    name = ENGINE_PIECES.get(piece, piece)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == name or name.startswith(exc.name + ".") or exc.name.startswith(name)):
            raise EngineGap(piece) from None
        raise
    except ImportError as exc:  # the module exists but a name it needs from a sibling does not yet
        raise EngineGap(piece, str(exc)) from None


def engine_attr(piece: str, attr: str) -> Any:
    """An attribute of an engine module, or EngineGap naming it."""
    module = engine(piece)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise EngineGap(piece, f"no `{attr}` yet") from None


def engine_available(piece: str) -> bool:
    """True when an engine module imports."""
    try:
        engine(piece)
        return True
    except EngineGap:
        return False


# --- models and data ----------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A baseline the pages work on (shared, read-only) and where its weights came from."""

    model: Any
    ref: ModelRef
    trained: bool
    source: str  # one line for the UI: "shipped baseline (test acc 91.2%)", "untrained (random init)", ...
    meta: dict[str, Any] = field(default_factory=dict)


@st.cache_data(show_spinner=False)
def model_names() -> list[str]:
    """Every model name the zoo builds (CIFAR models first)."""
    zoo = engine("zoo")
    names = list(zoo.list_models())
    cifar = [n for n in names if n in zoo.CIFAR_MODELS]
    return cifar + sorted(n for n in names if n not in cifar)


@st.cache_data(show_spinner=False, ttl=60)
def shipped_models(dataset: str = "shapes10") -> list[str]:
    """Architectures with a shipped baseline trained on `dataset` in assets/ (empty until the manifest lands)."""
    try:
        return list(engine_attr("checkpoints", "shipped_models")(dataset))
    except EngineGap:
        return []
    except Exception:  # a missing/half-written manifest means "nothing shipped", not a broken page
        return []


def input_size_for(ref: ModelRef) -> int:
    """The square input size the model is run at."""
    if ref.input_size:
        return int(ref.input_size)
    return int(engine("zoo").default_input_size(ref.arch))


@st.cache_resource(show_spinner="Loading the dataset...", max_entries=4)
def load_dataset(name: str, data_dir: str | None, input_size: int | None) -> Any:
    """DataSplits for a dataset (shared by every session; only read)."""
    load_data = engine_attr("data", "load_data")
    kwargs: dict[str, Any] = {}
    if data_dir:
        kwargs["data_dir"] = data_dir
    if name == "imagefolder" and input_size:
        kwargs["input_size"] = input_size
    return load_data(name, **kwargs)


def dataset_for(ref: ModelRef) -> Any:
    """The DataSplits the model of `ref` works on."""
    return load_dataset(ref.dataset, ref.data_dir, ref.input_size)


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def load_model(ref: ModelRef) -> LoadedModel:
    """The baseline of `ref`: shipped checkpoint, a checkpoint file, or an untrained network.

    Raises:
        TopoPruneError: unknown model, checkpoint that does not fit (CheckpointError), ...
    """
    zoo = engine("zoo")
    if ref.weights == "shipped":
        if ref.arch in shipped_models(ref.dataset) and ref.num_classes == 10:
            loaded = engine_attr("checkpoints", "load_shipped")(ref.arch, dataset=ref.dataset)
            meta = _meta_dict(loaded.meta)
            acc = (meta.get("metrics") or {}).get("test_acc")
            label = "shipped baseline" + (f" (test top-1 {acc:.1f}% on {meta.get('dataset', ref.dataset)})" if acc else "")
            loaded.model.eval()
            return LoadedModel(loaded.model, ref, True, label, meta)
        model = zoo.build_model(ref.arch, num_classes=ref.num_classes)
        model.eval()
        note = f"untrained (random init): no shipped baseline for this model on {ref.dataset} yet"
        return LoadedModel(model, ref, False, note, {})
    if ref.weights == "random":
        model = zoo.build_model(ref.arch, num_classes=ref.num_classes)
        model.eval()
        return LoadedModel(model, ref, False, "untrained (random init)", {})
    loaded = engine_attr("checkpoints", "load_checkpoint")(ref.weights, arch=ref.arch, num_classes=ref.num_classes)
    loaded.model.eval()
    return LoadedModel(loaded.model, ref, True, f"weights from {Path(ref.weights).name}", _meta_dict(loaded.meta))


def _meta_dict(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if isinstance(meta, dict):
        return dict(meta)
    if hasattr(meta, "to_dict"):
        return dict(meta.to_dict())
    if hasattr(meta, "__dataclass_fields__"):
        return {k: getattr(meta, k) for k in meta.__dataclass_fields__}
    return {}


def example_inputs(ref: ModelRef) -> Any:
    """A batch-1 zero input of the model's input size."""
    import torch

    size = input_size_for(ref)
    return torch.zeros(1, 3, size, size)


@st.cache_resource(show_spinner="Tracing the topology...", max_entries=8)
def get_topology(ref: ModelRef) -> Any:
    """The baseline's Topology (shared, read-only)."""
    build_topology = engine_attr("graph", "build_topology")
    return build_topology(load_model(ref).model, example_inputs(ref))


@st.cache_data(show_spinner=False, max_entries=16)
def weights_digest(ref: ModelRef) -> str:
    """sha256 of the baseline's weights (keys stored sensitivity tables to the exact weights)."""
    return str(engine_attr("sensitivity", "weights_sha256")(load_model(ref).model))


@st.cache_data(show_spinner="Counting costs...", max_entries=16)
def model_summary(ref: ModelRef) -> dict[str, Any]:
    """Params, MACs, FLOPs, activation memory and graph sizes of the baseline."""
    out: dict[str, Any] = {}
    model = load_model(ref).model
    out["params"] = int(sum(p.numel() for p in model.parameters()))
    try:
        report = engine_attr("cost", "count_costs")(model, example_inputs(ref))
        out.update(macs=int(report.macs), flops=int(report.flops), memory_bytes=int(report.memory_bytes))
    except EngineGap:
        out.update(macs=None, flops=None, memory_bytes=None)
    try:
        topo = get_topology(ref)
        out.update(layers=len(topo.layers), groups=len(topo.groups), nodes=topo.graph.number_of_nodes())
    except EngineGap:
        pass
    return out


@st.cache_data(show_spinner="Measuring test accuracy...", max_entries=16)
def test_accuracy(ref: ModelRef) -> float:
    """Test top-1 (%) of the baseline (the reported number; never used to select anything)."""
    evaluate = engine_attr("train", "evaluate")
    return float(evaluate(load_model(ref).model, dataset_for(ref), "test").top1)


@st.cache_data(show_spinner="Scoring the baseline on the val split...", max_entries=16)
def baseline_val_acc(ref: ModelRef) -> float:
    """Val top-1 (%) of the unpruned baseline under the search's scoring protocol (the Pareto reference)."""
    scorer_cls = engine_attr("evaluate", "Scorer")
    model = load_model(ref).model
    return float(scorer_cls(model, get_topology(ref), dataset_for(ref)).score_model(model))


@st.cache_data(show_spinner="Measuring CPU latency...", max_entries=16)
def latency_ms(ref: ModelRef) -> float:
    """Median batch-1 CPU latency of the baseline on this machine."""
    measure = engine_attr("cost", "measure_latency")
    return float(measure(load_model(ref).model, input_size_for(ref), min_run_time_s=0.3).median_ms)


@st.cache_data(show_spinner="Laying out the graph...", max_entries=32)
def topology_layout(ref: ModelRef, level: str, expanded: tuple[str, ...] = ()) -> dict[str, Any]:
    """The collapsed view of the topology at `level` and its dot layout (node -> x, y), cached per model."""
    from gui.plots import graph_view as gv

    view = gv.collapse_graph(get_topology(ref).graph, level=level, expanded=expanded)
    return {"view": view, "pos": gv.layout_positions(view)}


# --- methods, store ---------------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False)
def method_specs() -> list[dict[str, Any]]:
    """Every registered pruning method as plain dicts (name, description, kind, option defaults)."""
    methods = engine("methods")
    try:  # engine.rl.method registers gnnrl / gnnrl-nognn on import
        engine("engine.rl.method")
    except EngineGap:
        pass
    out = []
    for spec in methods.list_methods():
        options = {}
        for name, opt in spec.options.items():
            options[name] = {
                "default": getattr(opt, "default", None),
                "help": getattr(opt, "help", "") or getattr(opt, "description", ""),
                "min": getattr(opt, "min", None),
                "max": getattr(opt, "max", None),
                "choices": list(opt.choices) if getattr(opt, "choices", None) else None,
                "type": getattr(getattr(opt, "type", None), "__name__", str(getattr(opt, "type", ""))),
            }
        out.append({"name": spec.name, "description": spec.description, "kind": spec.kind, "options": options})
    return out


def run_store() -> Any:
    """The run store under $TOPOPRUNE_HOME (one per call: cheap, and safe across threads)."""
    return engine_attr("store", "RunStore")()


def clear_all() -> None:
    """Drop every cached model, table and layout (a 'reload' button)."""
    st.cache_data.clear()
    st.cache_resource.clear()
