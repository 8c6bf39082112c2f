"""TopoPrune's Streamlit entry point: page config, per-session state, and the page router. Nothing else."""

import os

import streamlit as st
import torch

from gui.state import init_state

# One process-wide thread count, set here once (never by jobs): the agents' small ops run ~10x slower with two
# threads on a 2-core machine, and concurrent jobs would oversubscribe the cores. TOPOPRUNE_THREADS raises it.
torch.set_num_threads(int(os.environ.get("TOPOPRUNE_THREADS", "1")))

st.set_page_config(page_title="TopoPrune", page_icon=":material/content_cut:", layout="wide")
init_state()
st.navigation(
    {
        "Explore": [
            st.Page("gui/pages/model.py", title="Model & data", icon=":material/memory:", default=True),
            st.Page("gui/pages/topology.py", title="Topology", icon=":material/hub:"),
            st.Page("gui/pages/sensitivity.py", title="Sensitivity", icon=":material/tune:"),
        ],
        "Prune": [
            st.Page("gui/pages/agent.py", title="Agent", icon=":material/smart_toy:"),
            st.Page("gui/pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
            st.Page("gui/pages/runs.py", title="Runs", icon=":material/history:"),
        ],
    }
).run()
