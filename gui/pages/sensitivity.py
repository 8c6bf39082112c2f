"""Sensitivity page: cost controls, the per-group analysis in the background with an ETA and a partial heatmap;
heatmap, curves, MACs share vs drop. A stopped or failed analysis keeps its finished groups and can be continued."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import streamlit as st

from engine.evaluate import ScoringConfig
from engine.sensitivity import QUICK_KEEP_RATIOS, QUICK_SCORING, SensitivityTable, analyze_sensitivity
from gui import cache, components, jobs
from gui.plots import sensitivity as sp
from gui.state import SENS_JOB, SENS_RESULT, model_ref

RATIO_CHOICES = [0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.1]
VAL_CHOICES = [128, 256, 512, 1024, 2048]
BN_BATCH_SIZE = QUICK_SCORING.bn_batch_size

st.title("Sensitivity")
ref = model_ref()
st.caption(
    "Prune one channel group at a time to each keep ratio (fraction of channels kept) and measure the val "
    "accuracy after BN recalibration. The test split is never read here."
)


def store_key(table: dict) -> str:
    """Run-store key: the engine's cache key, plus the group subset when only some groups were asked for."""
    key = table.get("cache_key") or f"gui-{'-'.join(str(k) for k in table['keep_ratios'])}"
    subset = table.get("requested_groups")
    return key if not subset else f"{key}-g{hashlib.sha256(','.join(subset).encode()).hexdigest()[:10]}"


def stored_table(digest: str) -> dict | None:
    """The newest sensitivity table (complete or partial) in the run store for exactly these weights, or None."""
    store = cache.run_store()
    for key in reversed(store.sensitivity_keys(model=ref.arch, dataset=ref.dataset)):
        record = store.load_sensitivity(key)
        if record is not None and record.settings.get("weights_sha256") == digest:
            return {**record.table, "stored_at": record.created_at}
    return None


def save_table(table: dict, digest: str) -> None:
    """Keep a table (partial ones too) in the run store so it survives restarts and other sessions see it."""
    cache.run_store().save_sensitivity(
        store_key(table),
        model=ref.arch,
        dataset=ref.dataset,
        table=table,
        settings={
            "weights_sha256": digest,
            "keep_ratios": table["keep_ratios"],
            "partial": bool(table.get("partial")),
        },
    )


def table_from_dict(d: dict) -> SensitivityTable:
    """The engine table of a page dict (which may carry page-only keys such as stored_at)."""
    names = {f.name for f in dataclasses.fields(SensitivityTable)}
    return SensitivityTable.from_dict({k: v for k, v in d.items() if k in names})


def duration(seconds: float) -> str:
    """95 -> '1 min 35 s'."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


SETTING_DEFAULTS = {
    "sens_ratios": list(QUICK_KEEP_RATIOS),
    "sens_val": QUICK_SCORING.val_size,
    "sens_bn": QUICK_SCORING.bn_batches,
    "sens_groups": [],
}


def restore_settings() -> None:
    """Give the cost controls their values from the last visit, or the defaults (Streamlit drops a widget's state
    when its page is left); the widgets then take their value from session state only."""
    saved = st.session_state.get("_sens_settings", {})
    for key, default in SETTING_DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = saved.get(key, default)


def cost_controls(prunable: list[str]) -> dict[str, Any]:
    """The analysis' settings: keep ratios, val images, BN batches, which groups."""
    restore_settings()
    if any(g not in prunable for g in st.session_state.get("sens_groups", [])):  # saved for another model
        st.session_state["sens_groups"] = [g for g in st.session_state["sens_groups"] if g in prunable]
    c1, c2, c3 = st.columns([2, 1, 1])
    ratios = c1.multiselect(
        "Keep ratios",
        RATIO_CHOICES,
        key="sens_ratios",
        help="Fraction of a group's channels kept. Each ratio costs one scored plan per group.",
    )
    val_size = c2.selectbox(
        "Val images",
        VAL_CHOICES,
        key="sens_val",
        help="Val images scored per plan: fewer is faster, coarser (1 image of 256 = 0.39 points).",
    )
    bn_batches = c3.number_input(
        "BN batches",
        min_value=0,
        max_value=16,
        key="sens_bn",
        help=f"Train batches of {BN_BATCH_SIZE} images used to re-estimate BatchNorm "
        "statistics after pruning (0 = no recalibration).",
    )
    picked = st.multiselect(
        f"Groups (empty = all {len(prunable)})",
        prunable,
        key="sens_groups",
        help="Analyse only these coupled channel groups.",
    )
    groups = [g for g in prunable if g in picked] or None
    st.session_state["_sens_settings"] = {k: st.session_state[k] for k in SETTING_DEFAULTS}
    scoring = ScoringConfig(
        val_size=int(val_size),
        recalibrate_bn=bn_batches > 0,
        bn_batches=max(1, int(bn_batches)),
        bn_batch_size=BN_BATCH_SIZE,
        physical=True,
    )
    plans = 1 + len(groups or prunable) * len([r for r in ratios if r < 1.0])
    images = val_size + (bn_batches * BN_BATCH_SIZE)
    st.caption(
        f"{plans} plans to score ({len(groups or prunable)} groups x {len(ratios)} ratios + the unpruned "
        f"baseline), {images} images each. The defaults take about 2-3 min for cifar_resnet20 on one CPU."
    )
    return {"keep_ratios": sorted(ratios, reverse=True), "scoring": scoring, "groups": groups}


def start(settings: dict[str, Any], resume: dict | None = None) -> None:
    loaded = cache.load_model(ref)
    st.session_state[SENS_JOB] = jobs.start_sensitivity(
        model=loaded.model,
        topology=cache.get_topology(ref),
        data=cache.dataset_for(ref),
        keep_ratios=settings["keep_ratios"],
        scoring=settings["scoring"],
        groups=settings["groups"],
        resume=table_from_dict(resume) if resume else None,
        analyze=analyze_sensitivity,
    )
    st.session_state["_sens_ref"] = ref
    st.session_state["_sens_groups"] = settings["groups"]
    st.rerun()


with components.engine_errors("sensitivity"):
    loaded = cache.load_model(ref)
    components.baseline_badge(loaded.trained, loaded.source)
    prunable = [g.name for g in cache.get_topology(ref).groups if g.prunable]
    settings = cost_controls(prunable)
    job = st.session_state.get(SENS_JOB)
    busy = bool(job and job.active)
    other_model = busy and st.session_state.get("_sens_ref") != ref
    digest = cache.weights_digest(ref)
    if st.session_state.get(SENS_RESULT) is None and not busy:
        stored = stored_table(digest)
        if stored is not None:
            st.session_state[SENS_RESULT] = stored
    table_now = st.session_state.get(SENS_RESULT)
    resumable = bool(table_now and table_now.get("partial") and not busy)
    c1, c2, c3 = st.columns([1, 1, 3])
    if c1.button(
        "Run analysis", type="primary", key="sens_run", disabled=busy or not settings["keep_ratios"]
    ):
        start(settings)
    if resumable and c2.button(
        "Continue",
        key="sens_continue",
        help="Score the groups this partial table lacks, with its own ratios and settings.",
    ):
        start(
            {
                "keep_ratios": table_now["keep_ratios"],
                "scoring": ScoringConfig(**table_now["scoring"]),
                "groups": table_now.get("requested_groups"),
            },
            resume=table_now,
        )
    if busy and c2.button(
        "Stop", key="sens_stop", help="Stops after the plan in flight; finished groups are kept."
    ):
        job.stop()
    if other_model:
        st.info(
            f"An analysis of {st.session_state['_sens_ref'].arch} is still running in this session; it "
            "finishes in the background (or press Stop)."
        )

    def keep(table: dict | None) -> None:
        """Make `table` this session's result (and the run store's) unless it is already."""
        if table and st.session_state.get(SENS_RESULT) is not table:
            table["requested_groups"] = st.session_state.get("_sens_groups")
            st.session_state[SENS_RESULT] = table
            save_table(table, digest)

    def panel() -> None:
        job = st.session_state.get(SENS_JOB)
        if job is None or st.session_state.get("_sens_ref") != ref:
            components.job_status(
                None,
                idle_text="Not run yet for these weights (finished and partial tables are "
                "kept in the run store and reloaded here).",
            )
            return
        snap = job.snapshot()
        components.job_status(snap, idle_text="")
        partial = snap.info.get("partial")
        if snap.active:
            eta = snap.info.get("eta_s")
            st.caption(
                (f"About {duration(eta)} left" if eta is not None else "Estimating the time left")
                + f" ({snap.done}/{snap.total} plans, {snap.elapsed_s:.0f} s so far)."
            )
            if partial and partial.get("groups"):
                st.plotly_chart(sp.sensitivity_heatmap_figure(partial), key="sens_partial_heatmap")
        elif snap.status == "done" and snap.result:
            keep(snap.result)
        elif partial and partial.get("groups"):  # stopped or failed: keep what it finished
            keep(partial)
        if not snap.active and st.session_state.get("_sens_seen") is not job:
            st.session_state["_sens_seen"] = job
            st.rerun()
        elif snap.status == "error" and not snap.user_error and job.exception is not None:
            job.reraise()

    components.poll_while(busy, panel)

table = st.session_state.get(SENS_RESULT)
if table and not (busy and not other_model):
    if table.get("partial"):
        st.warning(
            f"Partial table: {len(table['groups'])} group(s) finished before the analysis stopped. Continue "
            "scores the rest.",
            icon=":material/hourglass_bottom:",
        )
    st.caption(
        f"Unpruned val top-1: {table['base_acc']:.2f}%; {len(table['groups'])} groups; "
        f"{table.get('n_scored', 0)} plans scored in {table.get('seconds', 0.0):.1f} s"
        + (" (from cache)" if table.get("from_cache") else "")
        + (
            f"; loaded from the run store (computed {table['stored_at'][:16]})"
            if table.get("stored_at")
            else ""
        )
    )
    st.plotly_chart(sp.sensitivity_heatmap_figure(table), key="sens_heatmap")
    left, right = st.columns(2)
    names = [g["name"] for g in table["groups"]]
    picked = left.multiselect(
        "Groups in the curve plot", names, default=names[: min(6, len(names))], key="sens_curve_groups"
    )
    left.plotly_chart(sp.sensitivity_curves_figure(table, groups=picked), key="sens_curves")
    right.plotly_chart(sp.share_vs_sensitivity_figure(table), key="sens_scatter")
