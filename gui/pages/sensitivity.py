"""Sensitivity page: run the per-group analysis in the background; heatmap, curves, MACs share vs drop."""

from __future__ import annotations

import streamlit as st

from engine.sensitivity import analyze_sensitivity
from gui import cache, components, jobs
from gui.plots import sensitivity as sp
from gui.state import SENS_JOB, SENS_RESULT, model_ref

st.title("Sensitivity")
ref = model_ref()
st.caption("Prune one channel group at a time to each keep ratio (fraction of channels kept) and measure the val "
           "accuracy after BN recalibration. The test split is never read here.")

def stored_table(digest: str) -> dict | None:
    """The newest sensitivity table in the run store computed for exactly these weights, or None."""
    store = cache.run_store()
    for key in reversed(store.sensitivity_keys(model=ref.arch, dataset=ref.dataset)):
        record = store.load_sensitivity(key)
        if record is not None and record.settings.get("weights_sha256") == digest:
            return {**record.table, "stored_at": record.created_at}
    return None


def save_table(table: dict, digest: str) -> None:
    """Keep a finished table in the run store so it survives restarts and other sessions see it."""
    key = table.get("cache_key") or f"gui-{digest[:16]}-{'-'.join(str(k) for k in table['keep_ratios'])}"
    cache.run_store().save_sensitivity(key, model=ref.arch, dataset=ref.dataset, table=table,
                                       settings={"weights_sha256": digest, "keep_ratios": table["keep_ratios"]})


with components.engine_errors("sensitivity"):
    loaded = cache.load_model(ref)
    components.baseline_badge(loaded.trained, loaded.source)
    ratios = st.multiselect("Keep ratios", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
                            default=[0.9, 0.7, 0.5, 0.3, 0.1], key="sens_ratios")
    job = st.session_state.get(SENS_JOB)
    busy = bool(job and job.active)
    c1, c2 = st.columns([1, 4])
    if c1.button("Run analysis", type="primary", key="sens_run", disabled=busy or not ratios):
        st.session_state[SENS_JOB] = jobs.start_sensitivity(
            model=loaded.model, topology=cache.get_topology(ref), data=cache.dataset_for(ref),
            keep_ratios=sorted(ratios, reverse=True), analyze=analyze_sensitivity)
        st.session_state["_sens_ref"] = ref
        st.rerun()
    if busy and c2.button("Stop", key="sens_stop"):
        job.stop()

    digest = cache.weights_digest(ref)
    if st.session_state.get(SENS_RESULT) is None and not busy:
        stored = stored_table(digest)
        if stored is not None:
            st.session_state[SENS_RESULT] = stored

    def panel() -> None:
        job = st.session_state.get(SENS_JOB)
        snap = job.snapshot() if job else None
        components.job_status(snap, idle_text="Not run yet for these weights (finished tables are kept in the run "
                                              "store and reloaded here).")
        if snap and snap.status == "done" and snap.result and st.session_state.get("_sens_ref") == ref:
            if st.session_state.get(SENS_RESULT) is not snap.result:
                st.session_state[SENS_RESULT] = snap.result
                save_table(snap.result, digest)
        if snap and not snap.active and st.session_state.get("_sens_seen") is not job:
            st.session_state["_sens_seen"] = job
            st.rerun()
        elif snap and snap.status == "error" and not snap.user_error and job.exception is not None:
            raise job.exception

    components.poll_while(busy, panel)

table = st.session_state.get(SENS_RESULT)
if table:
    st.caption(f"Unpruned val top-1: {table['base_acc']:.2f}%; {len(table['groups'])} prunable groups; "
               f"{table.get('n_scored', 0)} plans scored in {table.get('seconds', 0.0):.1f} s"
               + (" (from cache)" if table.get("from_cache") else "")
               + (f"; loaded from the run store (computed {table['stored_at'][:16]})" if table.get("stored_at") else ""))
    st.plotly_chart(sp.sensitivity_heatmap_figure(table), key="sens_heatmap")
    left, right = st.columns(2)
    names = [g["name"] for g in table["groups"]]
    picked = left.multiselect("Groups in the curve plot", names, default=names[: min(6, len(names))],
                              key="sens_curve_groups")
    left.plotly_chart(sp.sensitivity_curves_figure(table, groups=picked), key="sens_curves")
    right.plotly_chart(sp.share_vs_sensitivity_figure(table), key="sens_scatter")
