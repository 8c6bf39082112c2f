"""Agent page: launch any registered method in the background, pause/resume/step it, watch the policy."""

from __future__ import annotations

import functools
from typing import Any

import streamlit as st

from engine.evaluate import ScoringConfig
from engine.latency_table import ensure_latency_table
from gui import cache, components, jobs, search_jobs
from gui.plots import agent as ap
from gui.plots import graph_view as gv
from gui.plots import topology as tp
from gui.state import REOPEN_RUN, SEARCH_JOB, SELECTED_PLAN, model_ref

st.title("Agent")
ref = model_ref()

# the method's own reward (episode extra `method_reward`); every episode's score is val top-1 % for all methods
OWN_REWARDS = {
    "gnnrl": "-(100 - val top-1 %), minus the val error in points, for a plan landed on the budget",
    "gnnrl-nognn": "-(100 - val top-1 %), minus the val error in points, for a plan landed on the budget",
    "amc": "-(100 - val top-1 %) / 100, minus the val error as a fraction (AMC's resource-constrained reward)",
    "ajpq": "-(100 - val top-1 %) / 100, minus the val error as a fraction (as AMC)",
}


def reward_formula(method: str | None) -> str:
    """The page's definition of what the curves show, for `method`."""
    text = (
        "**Score** of every episode, for every method: val top-1 % of the episode's plan on the held-out val "
        "split, after BN recalibration (the test split never chooses anything)."
    )
    own = OWN_REWARDS.get(method or "")
    if own:
        text += f" **{method}'s own reward**, what its agent learns from: {own}; drawn on its own axis below."
    return text


def filled_keep_ratios(events: list[dict[str, Any]], groups: list[str]) -> list[dict[str, float]]:
    """Each episode's keep ratios with the groups its plan left untouched at 1.0 (a stored plan omits them)."""
    return [
        {**{g: 1.0 for g in groups}, **(e.get("keep_ratios") or {})}
        if e.get("plan")
        else dict(e.get("keep_ratios") or {})
        for e in events
    ]


def draw_episodes(
    events: list[dict[str, Any]],
    topology: Any,
    *,
    prefix: str,
    last_step: dict[str, Any] | None = None,
    method: str | None = None,
) -> None:
    """Score and reward curves, best plan, last action (bars + state graph), embeddings PCA, keep-ratio heatmap."""
    step_is_newer = bool(last_step) and (
        not events or last_step["episode"] >= len(events) or not last_step.get("done")
    )
    if step_is_newer:
        st.markdown(
            f"**Last step**: episode {last_step['episode'] + 1}, step {last_step['step']}: reward "
            f"{last_step['reward']:.3f}, MACs at {last_step['macs_ratio']:.1%} of the baseline"
            + (" (episode done)" if last_step.get("done") else "")
        )
    if not events and not step_is_newer:
        st.caption("No episode finished yet.")
        return
    if not events:
        draw_action(
            last_step["keep_ratios"],
            topology,
            prefix=prefix,
            title=f"Action at episode {last_step['episode'] + 1}, step {last_step['step']} (keep ratios)",
        )
        return
    groups = [g.name for g in topology.groups if g.prunable]
    vals = [e.get("val_acc") for e in events]
    rewards = [e.get("method_reward", e.get("reward")) for e in events]
    best_i = ap.best_index(vals)
    best = events[best_i] if best_i is not None else events[-1]
    last = events[-1]
    if len(events) > 1:
        st.markdown(reward_formula(method))
        smoothing = st.slider(
            "Curve smoothing",
            0.0,
            0.95,
            0.0,
            0.05,
            key=f"{prefix}_smoothing",
            help="TensorBoard-style exponential moving average (0 = raw points).",
        )
        st.plotly_chart(
            ap.episode_curves_figure(
                vals, method_rewards=rewards, smoothing=smoothing, reward_title=f"{method or 'method'} reward"
            ),
            key=f"{prefix}_reward",
        )
    else:
        st.caption(
            "One plan so far (a one-shot method scores one plan): no learning curve to draw. Its score is "
            "val top-1 % on the val split after BN recalibration."
        )
    components.metric_cards(
        [
            ("Episodes", str(len(events)), None),
            (
                "Best val top-1",
                f"{best.get('val_acc', float('nan')):.2f} %",
                "after BN recalibration, val split",
            ),
            (
                "Best episode",
                str(int(best.get("episode", best_i or 0)) + 1) if best_i is not None else "n/a",
                "starred on the curve, outlined on the heatmap",
            ),
            (
                "Best MACs kept",
                f"{best.get('macs_ratio', float('nan')):.1%}",
                "fraction of the baseline's MACs",
            ),
        ]
    )
    st.download_button(
        "Download the episodes (CSV)",
        ap.episodes_csv(
            [
                {**e, "keep_ratios": k}
                for e, k in zip(events, filled_keep_ratios(events, groups), strict=True)
            ],
            groups=groups,
        ),
        file_name=f"episodes-{method or 'run'}-{prefix}.csv",
        mime="text/csv",
        key=f"{prefix}_csv",
    )
    if best.get("plan") and st.button("Colour the Topology page by the best plan", key=f"{prefix}_use_best"):
        st.session_state[SELECTED_PLAN] = best["plan"]
        st.toast("Best plan selected: Topology > Colour by > keep ratio")
    if step_is_newer and not last_step.get("done"):
        draw_action(
            last_step["keep_ratios"],
            topology,
            prefix=prefix,
            title=f"Action at episode {last_step['episode'] + 1}, step {last_step['step']} (keep ratios)",
        )
    else:
        draw_action(
            last.get("keep_ratios", {}),
            topology,
            prefix=prefix,
            title=f"Action of episode {len(events)} (keep ratio per group)",
        )
    left, right = st.columns(2)
    with left:
        emb = last.get("embeddings")
        if emb:
            names = last.get("embedding_groups") or list(last.get("keep_ratios", {}))[: len(emb)]
            stage_of = {g.name: g.stage for g in topology.groups}
            st.plotly_chart(
                ap.embedding_pca_figure(
                    emb,
                    names=names,
                    stages=[stage_of.get(n, 0) for n in names],
                    title=f"Group embeddings (PCA), episode {len(events)}",
                ),
                key=f"{prefix}_pca",
            )
            st.caption(
                "Each point is one coupled group as the GNN encodes it; groups close together look alike "
                "to the agent. PCA axes are relative, without units."
            )
        else:
            st.caption("This method reports no per-group embeddings (only the GNN agents do).")
    with right:
        st.plotly_chart(
            ap.keep_ratio_heatmap_figure(
                filled_keep_ratios(events, groups),
                groups=groups,
                best_episode=best_i + 1 if best_i is not None else None,
            ),
            key=f"{prefix}_heatmap",
        )


def draw_action(keep_ratios: dict[str, float], topology: Any, *, prefix: str, title: str) -> None:
    """The action as bars and the state graph coloured by it."""
    left, right = st.columns(2)
    with left:
        st.plotly_chart(ap.action_bars_figure(keep_ratios, title=title), key=f"{prefix}_actions")
    with right:
        layout = cache.topology_layout(ref, "layers")
        values = tp.node_values(
            layout["view"],
            "keep ratio",
            module_to_group=gv.module_groups(topology.groups),
            group_values=keep_ratios,
        )
        st.markdown("**State graph coloured by the last action** (keep ratio per layer)")
        st.plotly_chart(
            tp.topology_figure(
                layout["view"], layout["pos"], values=values, metric="keep ratio", height_px=300
            ),
            key=f"{prefix}_state_graph",
        )


with components.engine_errors("agent"):
    specs = cache.method_specs()
    loaded = cache.load_model(ref)
    topology = cache.get_topology(ref)
    components.baseline_badge(loaded.trained, loaded.source)
    job = st.session_state.get(SEARCH_JOB)
    busy = bool(job and job.active)
    with st.expander("Search settings", expanded=not busy):
        c1, c2 = st.columns(2)
        with c1:
            spec = components.method_picker(specs, key="agent_method")
            budget_metric = components.budget_metric_picker(
                key="agent_budget_metric", metrics=(spec or {}).get("budget_metrics")
            )
            budget = components.budget_slider(key="agent_budget", metric=budget_metric)
        with c2:
            episodes = None
            if spec and "episodes" in spec["options"]:
                episodes = st.number_input(
                    "Episodes",
                    1,
                    2000,
                    int(min(20, spec["options"]["episodes"]["default"] or 20)),
                    key="agent_episodes",
                )
            seed = st.number_input("Seed", 0, 10_000, 0, key="agent_seed")
            has_steps = bool(spec) and spec["name"] in search_jobs.STEPPABLE_METHODS
            step_unit = "episode"
            if has_steps:
                step_unit = st.radio(
                    "Step runs",
                    ["episode", "step"],
                    horizontal=True,
                    key="agent_step_unit",
                    format_func={"episode": "one episode", "step": "one env step"}.get,
                )
            with st.popover("Method options"):
                options = (
                    components.option_inputs(spec, key_prefix="agent_opt", skip=("episodes", "resume"))
                    if spec
                    else {}
                )
        with st.popover("Scoring protocol"):
            val_size = st.number_input(
                "Val images per score",
                32,
                10_000,
                512,
                step=32,
                key="agent_val_size",
                help="Every candidate is scored as val top-1 after BN recalibration; "
                "fewer images score faster and noisier.",
            )
            bn_batches = st.number_input("BN recalibration batches", 1, 50, 4, key="agent_bn_batches")
    if episodes is not None:
        options["episodes"] = int(episodes)
    scoring = ScoringConfig(val_size=int(val_size), bn_batches=int(bn_batches))

    def launch(steps: int | None) -> None:
        if budget_metric == "latency":  # measured once per model and machine, then cached
            with st.spinner("Measuring the latency table on this machine (once per model, then cached)..."):
                ensure_latency_table(loaded.model, topology)
        common = dict(
            method=spec["name"],
            model=loaded.model,
            topology=topology,
            data=cache.dataset_for(ref),
            budget=budget,
            budget_metric=budget_metric,
            options=options,
            model_name=ref.arch,
            dataset=ref.dataset,
            seed=int(seed),
            steps=steps,
            scoring=scoring,
            store_factory=cache.run_store,
        )
        if spec["kind"] == "search":
            st.session_state[SEARCH_JOB] = search_jobs.start_search(
                step_unit=step_unit, provenance=search_jobs.provenance_of(ref), **common
            )
        else:
            st.session_state[SEARCH_JOB] = search_jobs.start_method(**common)
        st.session_state[REOPEN_RUN] = None
        st.session_state["_agent_method"] = spec["name"]  # what the live curves are labelled with

    # each button's action is bound when it is drawn (on_click), so a click does what its label said even if
    # the job changed state since; job_controls is the single table of which buttons each state offers
    snap_now = job.snapshot() if job else None
    ctl = jobs.job_controls(snap_now.status if snap_now else None)
    b1, b2, b3, b4 = st.columns(4)
    if b1.button("Launch", type="primary", key="agent_launch", disabled=not ctl.can_launch or spec is None):
        launch(None)
        st.rerun()
    b2.button(
        ctl.toggle_label,
        key="agent_pause",
        disabled=ctl.toggle is None,
        on_click=(job.resume if ctl.toggle == "resume" else job.pause) if ctl.toggle else None,
    )
    stepping_job = ctl.toggle is not None  # Step on an active job: one more unit; else a new job in step mode
    if b3.button(
        "Step",
        key="agent_step",
        disabled=not ctl.can_step or (spec is None and not stepping_job),
        on_click=functools.partial(job.step, 1) if stepping_job else None,
        help="Run one episode (or one env step) and pause; starts a new search in step mode when none is running.",
    ):
        if not stepping_job:
            launch(1)
            st.rerun()
    b4.button(
        "Stop", key="agent_stop", disabled=not ctl.can_stop, on_click=job.stop if ctl.can_stop else None
    )

    def live_panel() -> None:
        job = st.session_state.get(SEARCH_JOB)
        snap = job.snapshot() if job else None
        components.job_status(
            snap, idle_text="Press Launch to run a search, or Step to run one episode at a time."
        )
        if snap is None:
            return
        # one full rerun on every status change (pause, a Step's pause, end), so the buttons follow the job;
        # checked before re-raising a bug so that a failed job also frees Launch
        marker = (id(job), snap.version)
        if snap.status != "running" and st.session_state.get("_agent_seen") != marker:
            st.session_state["_agent_seen"] = marker
            st.rerun()
        if snap.status == "error" and not snap.user_error and job.exception is not None:
            job.reraise()
        if snap.status == "done" and snap.result:
            r = snap.result
            st.success(
                f"Search finished: best val top-1 {r['val_acc']:.2f}% at {r['macs_ratio']:.1%} of the MACs"
                + (f", from {r['source']}" if r.get("source") else "")
                + (
                    f" (run {snap.info['run_id']}; candidate on the Compare page)"
                    if "run_id" in snap.info
                    else ""
                )
            )
        draw_episodes(
            snap.events,
            topology,
            prefix="live",
            last_step=snap.info.get("last_step"),
            method=st.session_state.get("_agent_method"),
        )

    reopen = st.session_state.get(REOPEN_RUN)
    if reopen is not None:
        if busy:
            st.info(
                "This session's search is still active in the background; close this run to return to it."
            )
        store = cache.run_store()
        run = store.get_run(int(reopen))
        st.subheader(f"Run {run.id}: {run.method} on {run.model}, budget {run.budget}, {run.status}")
        events = []
        for ep in store.episodes(run.id):
            keep_ratios = (
                search_jobs.plan_keep_ratios(ep.plan, topology) if ep.plan and run.model == ref.arch else {}
            )
            events.append(
                {
                    "episode": ep.index,
                    "reward": ep.reward,
                    "val_acc": ep.val_acc,
                    "macs_ratio": ep.macs_ratio,
                    "keep_ratios": keep_ratios,
                    "plan": ep.plan,
                    **{
                        k: v
                        for k, v in (ep.extra or {}).items()
                        if k in ("embeddings", "embedding_groups", "method_reward")
                    },
                }
            )
        if run.model != ref.arch:
            st.warning(
                f"This run pruned `{run.model}`, but the chosen model is `{ref.arch}`; choose it on the "
                "Model & data page to see its plans on the graph."
            )
        draw_episodes(events, topology, prefix="reopened", method=run.method)
        if run.resumable and search_jobs.is_search(run.method) and run.model == ref.arch and not busy:
            if st.button(
                "Resume this run",
                type="primary",
                key="agent_resume_run",
                help="Continue the search from its saved state (after its last finished episode).",
            ):
                scoring_cfg = (run.config or {}).get("scoring")
                st.session_state[SEARCH_JOB] = search_jobs.start_search(
                    method=run.method,
                    model=loaded.model,
                    topology=topology,
                    data=cache.dataset_for(ref),
                    budget=float(run.budget),
                    options={},
                    model_name=run.model,
                    dataset=run.dataset,
                    scoring=ScoringConfig(**scoring_cfg) if scoring_cfg else None,
                    store_factory=cache.run_store,
                    resume_run_id=run.id,
                    past_events=events,
                    budget_metric=(run.config or {}).get("budget_metric", "macs"),
                )
                st.session_state[REOPEN_RUN] = None
                st.session_state["_agent_method"] = run.method
                st.rerun()
        if st.button("Close this run", key="agent_close_run"):
            st.session_state[REOPEN_RUN] = None
            st.rerun()
    else:
        components.poll_while(bool(job and job.active and job.status in ("running", "pausing")), live_panel)
