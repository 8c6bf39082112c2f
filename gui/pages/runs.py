"""Runs page: the history in the run store (it survives app restarts); reopen a run on Agent or Compare."""

from __future__ import annotations

import streamlit as st

from gui import cache, components
from gui.state import REOPEN_RUN

st.title("Runs")
st.caption("Every search and pruning run recorded in the run store under $TOPOPRUNE_HOME, newest first.")

with components.engine_errors("run store"):
    store = cache.run_store()
    runs = store.list_runs()
    if not runs:
        st.info("No runs yet. Launch one on the Agent page (or with `topoprune search`).")
        st.stop()
    st.dataframe(
        [
            {
                "id": r.id,
                "method": r.method,
                "model": r.model,
                "dataset": r.dataset,
                "budget": r.budget,
                "status": r.status,
                "episodes": r.n_episodes,
                "best val top-1 %": r.best_score,
                "created": r.created_at,
                "updated": r.updated_at,
            }
            for r in runs
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "budget": st.column_config.NumberColumn(format="%.2f"),
            "best val top-1 %": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    chosen = st.selectbox(
        "Run",
        ids,
        key="runs_chosen",
        format_func=lambda i: f"#{i} {by_id[i].method} on {by_id[i].model} ({by_id[i].status})",
    )
    run = by_id[chosen]
    best = f"{run.best_score:.2f}%" if run.best_score is not None else "n/a"
    st.markdown(
        f"**Run #{run.id}: {run.method} on {run.model}** ({run.dataset}, budget {run.budget}): {run.status}, "
        f"{run.n_episodes} episode(s), best val top-1 {best}"
        + (" (resumable with `topoprune resume`)" if run.resumable else "")
    )
    st.json({"config": run.config, "extra": run.extra}, expanded=False)
    c1, c2 = st.columns(2)
    if c1.button("Open on the Agent page", key="runs_open_agent", type="primary"):
        st.session_state[REOPEN_RUN] = run.id
        st.switch_page("gui/pages/agent.py")
    if c2.button("Open on the Compare page", key="runs_open_compare"):
        st.session_state[REOPEN_RUN] = run.id
        st.switch_page("gui/pages/compare.py")
