"""The GUI's only door to the engine for reads, and the only place with st.cache_*.

Shared read-only things (the baseline model, its dataset, its topology) are st.cache_resource and are never
mutated: every pruning call in the engine works on a copy. Tables and layouts are st.cache_data keyed by an
explicit ``ref.key``. Loading and provenance come from engine.services, as for the CLI; an engine import
error surfaces as itself. Long jobs are not here (see gui.jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch

from engine import services
from engine.checkpoints import shipped_models as _shipped_models
from engine.cost import count_costs, measure_latency_stats
from engine.data import load_data
from engine.errors import TopoPruneError
from engine.evaluate import Scorer
from engine.graph import build_topology
from engine.methods import list_methods
from engine.sensitivity import weights_sha256
from engine.store import RunStore
from engine.train import evaluate
from engine.zoo import CIFAR_MODELS, default_input_size, list_models
from gui.state import ModelRef

# --- models and data ----------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A baseline the pages work on (shared, read-only) and where its weights came from."""

    model: Any
    ref: ModelRef
    provenance: services.ModelProvenance

    @property
    def trained(self) -> bool:
        return self.provenance.trained

    @property
    def source(self) -> str:
        """One line for the UI: "shipped baseline (test top-1 91.2% on shapes10)", "untrained (random init)"."""
        return self.provenance.label()

    @property
    def meta(self) -> dict[str, Any]:
        return self.provenance.meta


@st.cache_data(show_spinner=False)
def model_names() -> list[str]:
    """Every model name the zoo builds (CIFAR models first)."""
    names = list(list_models())
    cifar = [n for n in names if n in CIFAR_MODELS]
    return cifar + sorted(n for n in names if n not in cifar)


@st.cache_data(show_spinner=False)
def dataset_names() -> list[str]:
    """The datasets the picker offers (engine.data.DATASETS; fashion-mnist only where it is installed)."""
    return services.dataset_names(installed_only=True)


@st.cache_data(show_spinner=False, ttl=60)
def shipped_models(dataset: str = "shapes10") -> list[str]:
    """Architectures with a shipped baseline trained on `dataset` in assets/."""
    try:
        return list(_shipped_models(dataset))
    except TopoPruneError:  # an unreadable manifest means "nothing shipped", not a broken page
        return []


def input_size_for(ref: ModelRef) -> int:
    """The square input size the model is run at."""
    if ref.input_size:
        return int(ref.input_size)
    return int(default_input_size(ref.arch))


@st.cache_resource(show_spinner="Loading the dataset...", max_entries=4)
def load_dataset(name: str, data_dir: str | None, input_size: int | None) -> Any:
    """DataSplits for a dataset (shared by every session; only read)."""
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
    """The baseline of `ref` (engine.services.load_model): shipped checkpoint (random init, with a note, where
    none is shipped for the model on the dataset), a checkpoint file, or random init.

    Raises:
        TopoPruneError: unknown model, checkpoint that does not fit (CheckpointError), ...
    """
    request = services.ModelRequest(
        ref.arch,
        weights=ref.weights,
        dataset=ref.dataset,
        num_classes=ref.num_classes,
        input_size=ref.input_size,
        shipped_fallback=True,
    )
    loaded = services.load_model(request)
    return LoadedModel(loaded.model, ref, loaded.provenance)


def example_inputs(ref: ModelRef) -> Any:
    """A batch-1 zero input of the model's input size."""
    size = input_size_for(ref)
    return torch.zeros(1, 3, size, size)


@st.cache_resource(show_spinner="Tracing the topology...", max_entries=8)
def get_topology(ref: ModelRef) -> Any:
    """The baseline's Topology (shared, read-only)."""
    return build_topology(load_model(ref).model, example_inputs(ref))


@st.cache_data(show_spinner=False, max_entries=16)
def weights_digest(ref: ModelRef) -> str:
    """sha256 of the baseline's weights (keys stored sensitivity tables to the exact weights)."""
    return str(weights_sha256(load_model(ref).model))


@st.cache_data(show_spinner="Counting costs...", max_entries=16)
def model_summary(ref: ModelRef) -> dict[str, Any]:
    """Params, MACs, FLOPs, activation memory and graph sizes of the baseline."""
    out: dict[str, Any] = {}
    model = load_model(ref).model
    out["params"] = int(sum(p.numel() for p in model.parameters()))
    report = count_costs(model, example_inputs(ref))
    out.update(macs=int(report.macs), flops=int(report.flops), memory_bytes=int(report.memory_bytes))
    topo = get_topology(ref)
    out.update(layers=len(topo.layers), groups=len(topo.groups), nodes=topo.graph.number_of_nodes())
    return out


@st.cache_data(show_spinner="Measuring test accuracy...", max_entries=16)
def test_accuracy(ref: ModelRef) -> float:
    """Test top-1 (%) of the baseline (the reported number; never used to select anything)."""
    return float(evaluate(load_model(ref).model, dataset_for(ref), "test").top1)


@st.cache_data(show_spinner="Scoring the baseline on the val split...", max_entries=16)
def baseline_val_acc(ref: ModelRef) -> float:
    """Val top-1 (%) of the unpruned baseline under the search's scoring protocol (the Pareto reference)."""
    model = load_model(ref).model
    return float(Scorer(model, get_topology(ref), dataset_for(ref)).score_model(model))


@st.cache_data(show_spinner="Measuring CPU latency (5 interleaved repeats)...", max_entries=16)
def latency_stats(ref: ModelRef, measurement: int = 0) -> dict[str, Any]:
    """Batch-1 CPU latency of the baseline on this machine over 5 repeats (LatencyStats.to_dict(): median,
    quartiles, range, noisy); a new `measurement` number measures again (the Re-measure button)."""
    stats = measure_latency_stats({"baseline": load_model(ref).model}, input_size_for(ref), repeats=5)
    return stats["baseline"].to_dict()


def latency_ms(ref: ModelRef) -> float:
    """Median batch-1 CPU latency of the baseline (the last measurement of latency_stats)."""
    return float(latency_stats(ref)["median_ms"])


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
    out = []
    for spec in list_methods():
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
        out.append(
            {
                "name": spec.name,
                "description": spec.description,
                "kind": spec.kind,
                "options": options,
                "budget_metrics": list(spec.budget_metrics),
            }
        )
    return out


def run_store() -> Any:
    """The run store under $TOPOPRUNE_HOME (one per call: cheap, and safe across threads)."""
    return RunStore()


def clear_all() -> None:
    """Drop every cached model, table and layout (a 'reload' button)."""
    st.cache_data.clear()
    st.cache_resource.clear()
