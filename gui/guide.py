"""The "Start here" panel of the landing page: the guided path through the pages, and the five words a new user
meets, one line each. Only Streamlit calls; no engine, no state beyond the expander."""

from __future__ import annotations

import streamlit as st

PATH = (
    (
        "gui/pages/model.py",
        "1. Model & data",
        ":material/memory:",
        "Pick a CNN and a dataset; the shipped baseline is ready to use.",
    ),
    (
        "gui/pages/topology.py",
        "2. Topology",
        ":material/hub:",
        "See the network as a graph; click a node to see the channels coupled with it.",
    ),
    (
        "gui/pages/sensitivity.py",
        "3. Sensitivity",
        ":material/tune:",
        "Prune one group at a time and see how much accuracy each can lose (2-3 min by default).",
    ),
    (
        "gui/pages/agent.py",
        "4. Agent",
        ":material/smart_toy:",
        "Let a method (GNN-RL, AMC, uniform, ...) choose a keep ratio per group under a budget.",
    ),
    (
        "gui/pages/compare.py",
        "5. Compare",
        ":material/compare_arrows:",
        "Put the candidates on accuracy vs MACs, fine-tune the best and export it.",
    ),
)

WORDS = (
    (
        "Coupled group",
        "channels that must be pruned together, because a residual add, a concatenation, a "
        "depthwise conv or a BatchNorm ties them; policies act on groups, not layers.",
    ),
    (
        "Keep ratio",
        "the fraction of a group's channels kept: 1.0 leaves it untouched, 0.25 keeps a quarter "
        "(pruning ratio = 1 - keep ratio).",
    ),
    (
        "Budget",
        "the fraction of the baseline's MACs (or params, memory, latency) the pruned model may keep: "
        '0.5 = half remain, the papers\' "50% FLOPs".',
    ),
    (
        "Reward",
        "what a search learns from; every episode is scored as val top-1 %, and each method's own "
        "reward (e.g. -(100 - val top-1) for GNN-RL) is defined on the Agent page.",
    ),
    (
        "Val vs test",
        "plans are scored and chosen on a val split carved from the training data; the test split "
        "only reports the final number, it never chooses.",
    ),
)


def draw_start_here() -> None:
    """The guided path with a link to each page, and the glossary."""
    with st.expander(
        "Start here: model -> topology -> sensitivity -> agent -> compare",
        expanded=True,
        icon=":material/flag:",
    ):
        cols = st.columns(len(PATH))
        for col, (page, label, icon, line) in zip(cols, PATH, strict=True):
            col.page_link(page, label=label, icon=icon)
            col.caption(line)
        st.markdown("\n".join(f"- **{word}**: {line}" for word, line in WORDS))
