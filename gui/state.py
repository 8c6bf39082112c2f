"""Per-user GUI state: the session_state keys, their defaults, and the model the user has chosen.

Only names and plain values live here; nothing loads a model or calls the engine. Everything one browser
session owns (selection, jobs, results) sits in ``st.session_state`` under the keys below, so two
sessions never share mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import streamlit as st

DEFAULT_MODEL = "cifar_resnet20"
DEFAULT_DATASET = "shapes10"

# session_state keys (one place, so pages and tests agree on them)
MODEL_REF = "model_ref"  # ModelRef: what every page works on
SELECTED_NODE = "selected_node"  # Topology: the node whose details are shown (own key, not the chart's)
SELECTED_PLAN = "selected_plan"  # dict (PruningPlan.to_dict()) used to colour the topology by keep ratio
SEARCH_JOB = "search_job"  # gui.jobs.SearchJob of the Agent page
TRAIN_JOB = "train_job"  # gui.jobs.Job training a baseline (Model page)
SENS_JOB = "sensitivity_job"  # gui.jobs.Job running the sensitivity analysis
SENS_RESULT = "sensitivity_result"  # last sensitivity table (dict) of this session
FINETUNE_JOB = "finetune_job"  # gui.jobs.Job fine-tuning a candidate (Compare page)
REOPEN_RUN = "reopen_run_id"  # run id chosen on the Runs page, opened on Agent / Compare
EXPORTS = "exports"  # {(candidate id, format): path} of files prepared for download


@dataclass(frozen=True)
class ModelRef:
    """Which model the pages work on: architecture, dataset and the weights to load (hashable cache key).

    ``weights`` is ``"shipped"`` (the baseline in assets/, untrained when none is shipped for ``arch``),
    ``"random"`` (freshly initialised), or the path of a checkpoint file the user uploaded or trained.
    """

    arch: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    weights: str = "shipped"
    num_classes: int = 10
    input_size: int | None = None

    @property
    def key(self) -> str:
        """A short string naming this model, used as an explicit st.cache_data key and in file names."""
        return f"{self.arch}|{self.dataset}|{self.data_dir or ''}|{self.weights}|{self.num_classes}|{self.input_size}"

    def with_(self, **changes: Any) -> ModelRef:
        """A copy with some fields changed."""
        return replace(self, **changes)


_DEFAULTS: dict[str, Any] = {
    SELECTED_NODE: None,
    SELECTED_PLAN: None,
    SEARCH_JOB: None,
    TRAIN_JOB: None,
    SENS_JOB: None,
    SENS_RESULT: None,
    FINETUNE_JOB: None,
    REOPEN_RUN: None,
}


def init_state() -> None:
    """Put every key this app uses into session_state with its default (existing values are kept)."""
    if MODEL_REF not in st.session_state:
        st.session_state[MODEL_REF] = ModelRef()
    if EXPORTS not in st.session_state:
        st.session_state[EXPORTS] = {}
    for key, value in _DEFAULTS.items():
        st.session_state.setdefault(key, value)


def model_ref() -> ModelRef:
    """The model the user has chosen (the built-in default until they change it)."""
    init_state()
    return st.session_state[MODEL_REF]


def set_model_ref(ref: ModelRef) -> None:
    """Switch every page to another model; selections that belonged to the old one are cleared."""
    if st.session_state.get(MODEL_REF) != ref:
        st.session_state[MODEL_REF] = ref
        st.session_state[SELECTED_NODE] = None
        st.session_state[SELECTED_PLAN] = None
        st.session_state[SENS_RESULT] = None
