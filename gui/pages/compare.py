"""Compare page: the run store's candidates made on the current weights, Pareto scatter, latency/params, kept channels,
fine-tune, export. A download holds the weights that were measured (fine-tuned when fine-tuned)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from engine.cost import measure_latency_stats, plan_costs
from engine.evaluate import report_candidate
from engine.paths import topoprune_home
from engine.pruning import PruningPlan, apply_plan, export_pruned, load_pruned
from engine.services import export_formats
from gui import cache, components, jobs
from gui.plots import compare as cp
from gui.state import EXPORTS, FINETUNE_JOB, REOPEN_RUN, SELECTED_PLAN, model_ref

st.title("Compare")
ref = model_ref()

EXPORT_FORMATS = export_formats()  # format -> file suffix


def candidate_weights(rec: Any, run_configs: dict[int, dict[str, Any]]) -> str | None:
    """sha256 of the baseline weights a candidate was found on (its metrics, else its run's config), or None."""
    for source in (rec.metrics or {}, rec.artifacts or {}, run_configs.get(rec.run_id) or {}):
        if source.get("weights_sha256"):
            return str(source["weights_sha256"])
    return None


def weights_label(sha: str | None, current: str) -> str:
    """How the table names a candidate's weights."""
    if sha is None:
        return "not recorded"
    return "these weights" if sha == current else f"other ({sha[:10]})"


def candidate_rows(
    records: list[Any], *, baseline_macs: int | None, baseline_params: int | None, topology: Any
) -> list[dict[str, Any]]:
    """Plain dicts per candidate for the table and the charts (analytic MACs/params where not measured)."""
    rows = []
    for rec in records:
        m = dict(rec.metrics or {})
        keep = (rec.plan or {}).get("keep", {}) if isinstance(rec.plan, dict) else {}
        macs = m.get("macs_after")
        params = m.get("params_after")
        if (macs is None or params is None) and keep:
            try:
                costs = plan_costs(topology, keep)
                macs = macs if macs is not None else int(costs.macs)
                params = params if params is not None else int(costs.params)
            except (ValueError, KeyError):
                pass
        if macs is None and m.get("macs_ratio") is not None and baseline_macs:
            macs = int(m["macs_ratio"] * baseline_macs)
        rows.append(
            {
                "id": rec.id,
                "label": f"#{rec.id} {rec.method}",
                "method": rec.method,
                "run": rec.run_id,
                "macs": macs,
                "macs_ratio": m.get("macs_ratio", macs / baseline_macs if macs and baseline_macs else None),
                "params": params,
                "val_acc": m.get("val_acc"),
                "test_acc": m.get("test_acc"),
                "latency_ms": m.get("latency_ms_after"),
                "latency_before": m.get("latency_ms_before"),
                "latency_stats": m.get("latency_after"),
                "latency_before_stats": m.get("latency_before"),
                "latency_p25": (m.get("latency_after") or {}).get("p25_ms"),
                "latency_p75": (m.get("latency_after") or {}).get("p75_ms"),
                "latency": plots_text(m),
                "finetune_epochs": m.get("finetune_epochs", 0),
                "weights_path": m.get("weights_path"),
                "measured_on": m.get("measured_on_weights_sha256"),
                "keep": keep,
                "plan": rec.plan,
                "created": rec.created_at,
            }
        )
    return rows


def plots_text(metrics: dict[str, Any]) -> str:
    """The candidate's latency as the table shows it: median with spread and repeats."""
    return cp.latency_text(metrics.get("latency_after"), metrics.get("latency_ms_after"))


def _baseline_latency(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The unpruned model's latency measured next to the newest measured candidate, with its spread if known."""
    for r in sorted(rows, key=lambda r: r["id"], reverse=True):
        if r.get("latency_before") is not None:
            return {"median_ms": r["latency_before"], "stats": r.get("latency_before_stats"), "id": r["id"]}
    return None


def _save_measured_weights(pruned: Any, *, arch: str, cid: int) -> str:
    """Keep the measured (fine-tuned) pruned weights so a download is exactly what was measured."""
    out_dir = topoprune_home() / "finetuned"
    out_dir.mkdir(parents=True, exist_ok=True)
    return str(export_pruned(pruned, out_dir / f"{arch}-candidate{cid}.pt", format="state_dict"))


with components.engine_errors("compare"):
    store = cache.run_store()
    loaded = cache.load_model(ref)
    topology = cache.get_topology(ref)
    summary = cache.model_summary(ref)
    components.baseline_badge(loaded.trained, loaded.source)
    digest = cache.weights_digest(ref)
    only_this = st.toggle(
        f"Only candidates of `{ref.arch}` on `{ref.dataset}` made on these weights (sha256 {digest[:10]})",
        value=True,
        key="cmp_only",
        help="A plan found on other weights says little about these: its accuracy was "
        "measured on a different network.",
    )
    reopen = st.session_state.get(REOPEN_RUN)
    records = store.candidates(
        model=ref.arch if only_this else None,
        dataset=ref.dataset if only_this else None,
        run_id=int(reopen) if reopen is not None else None,
    )
    run_configs = {r.id: dict(r.config or {}) for r in store.list_runs()}
    weights_of = {rec.id: candidate_weights(rec, run_configs) for rec in records}
    if only_this:
        other = [rec for rec in records if weights_of[rec.id] not in (None, digest)]
        records = [rec for rec in records if weights_of[rec.id] in (None, digest)]
        if other:
            st.caption(
                f"{len(other)} candidate(s) of `{ref.arch}` found on other weights are hidden; switch the "
                "toggle off to see every candidate."
            )
    unknown = [rec.id for rec in records if weights_of[rec.id] is None]
    if unknown:
        st.warning(
            f"{len(unknown)} candidate(s) do not record which weights they were found on (column "
            "'weights': not recorded); their scores may belong to other weights.",
            icon=":material/help:",
        )
    if reopen is not None:
        st.info(f"Showing run {reopen} only.")
        if st.button("Show every run", key="cmp_all_runs"):
            st.session_state[REOPEN_RUN] = None
            st.rerun()
    rows = candidate_rows(
        records, baseline_macs=summary.get("macs"), baseline_params=summary.get("params"), topology=topology
    )
    for r in rows:
        r["weights"] = weights_label(weights_of.get(r["id"]), digest)
    if not rows:
        st.info("No candidates yet. Run a method on the Agent page; its best plan lands here.")
        st.stop()

    table = [
        {
            k: r[k]
            for k in (
                "id",
                "method",
                "run",
                "weights",
                "macs_ratio",
                "val_acc",
                "test_acc",
                "latency",
                "params",
                "finetune_epochs",
                "created",
            )
        }
        for r in rows
    ]
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "macs_ratio": st.column_config.ProgressColumn(
                "MACs kept", min_value=0.0, max_value=1.0, format="percent"
            ),
            "val_acc": st.column_config.NumberColumn("val top-1 %", format="%.2f"),
            "test_acc": st.column_config.NumberColumn("test top-1 %", format="%.2f"),
            "latency": st.column_config.TextColumn("latency (median, spread)"),
            "weights": st.column_config.TextColumn(
                "weights", help="the baseline weights the candidate was found on (sha256)"
            ),
        },
    )
    acc_key = st.radio(
        "Accuracy",
        ["val_acc", "test_acc"],
        horizontal=True,
        key="cmp_acc",
        format_func={"val_acc": "val (search score)", "test_acc": "test (measured/fine-tuned)"}.get,
    )
    base = {"macs": summary.get("macs"), "params": summary.get("params")}
    with components.engine_errors("baseline accuracy"):
        if acc_key == "test_acc":
            recorded = (loaded.meta.get("metrics") or {}).get("test_acc")
            base["test_acc"] = float(recorded) if recorded is not None else cache.test_accuracy(ref)
        else:
            base["val_acc"] = cache.baseline_val_acc(ref)
    st.plotly_chart(
        cp.pareto_figure(
            rows,
            baseline=base,
            acc_key=acc_key,
            acc_label="val top-1 %" if acc_key == "val_acc" else "test top-1 %",
        ),
        key="cmp_pareto",
    )
    left, right = st.columns(2)
    if any(r["latency_ms"] is not None for r in rows):
        base_lat = _baseline_latency(rows)
        base_stats = (base_lat or {}).get("stats")
        left.plotly_chart(
            cp.metric_bars_figure(
                rows,
                "latency_ms",
                title="CPU latency (batch 1, this machine; bars: IQR over repeats)",
                unit="ms",
                baseline=base_lat["median_ms"] if base_lat else None,
                spread_keys=("latency_p25", "latency_p75"),
                baseline_spread=(base_stats["p25_ms"], base_stats["p75_ms"]) if base_stats else None,
            ),
            key="cmp_latency",
        )
        if base_lat:
            left.caption(
                f"Baseline {cp.latency_text(base_stats, base_lat['median_ms'])}, measured next to "
                f"candidate #{base_lat['id']}. Press Measure again to re-measure."
            )
    else:
        left.markdown("**CPU latency (batch 1, this machine)**")
        left.caption("Not measured yet: press Measure (or Fine-tune) under One candidate below.")
    right.plotly_chart(
        cp.metric_bars_figure(rows, "params", title="Parameters", baseline=base.get("params")),
        key="cmp_params",
    )

    labels = {r["id"]: r["label"] for r in rows}
    chosen = st.multiselect(
        "Candidates side by side",
        list(labels),
        default=list(labels)[-3:],
        format_func=labels.get,
        key="cmp_chosen",
    )
    channels = {g.name: g.channels for g in topology.groups if g.prunable}
    st.plotly_chart(
        cp.kept_channels_figure([r for r in rows if r["id"] in chosen], baseline_channels=channels),
        key="cmp_kept",
    )

    st.subheader("One candidate")
    cid = st.selectbox(
        "Candidate", list(labels), index=len(labels) - 1, format_func=labels.get, key="cmp_one"
    )
    row = next(r for r in rows if r["id"] == cid)
    if row["plan"] and st.button("Colour the Topology page by this plan", key="cmp_use_plan"):
        st.session_state[SELECTED_PLAN] = row["plan"]
        st.toast("Plan selected: Topology > Colour by > keep ratio")

    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Measure / fine-tune** (test accuracy, latency; 0 epochs = measure only)")
        epochs = st.number_input("Fine-tune epochs", 0, 100, 0, key="cmp_ft_epochs")
        distill = st.checkbox("Distill from the unpruned baseline", key="cmp_ft_distill")
        ft_job = st.session_state.get(FINETUNE_JOB)
        ft_busy = bool(ft_job and ft_job.active)
        if st.button(
            "Measure" if epochs == 0 else "Fine-tune", key="cmp_ft_run", disabled=ft_busy or not row["plan"]
        ):
            report = report_candidate
            plan_cls = PruningPlan

            def on_done(out: dict[str, Any], cid: int = cid) -> None:
                metrics = {
                    k: out.get(k)
                    for k in (
                        "val_acc",
                        "test_acc",
                        "test_acc_before_finetune",
                        "macs_before",
                        "macs_after",
                        "params_before",
                        "params_after",
                        "latency_ms_before",
                        "latency_ms_after",
                        "latency_before",
                        "latency_after",
                        "finetune_epochs",
                        "distill",
                        "macs_ratio",
                        "weights_path",
                    )
                }
                metrics["measured_on_weights_sha256"] = digest
                cache.run_store().update_candidate(cid, metrics=metrics)

            stats_fn = measure_latency_stats
            data = cache.dataset_for(ref)
            st.session_state[FINETUNE_JOB] = jobs.start_finetune(
                model=loaded.model,
                topology=topology,
                plan=plan_cls.from_dict(row["plan"]),
                data=data,
                epochs=int(epochs),
                distill=distill,
                report=report,
                on_done=on_done,
                candidate_id=cid,
                save_weights=lambda pruned, cid=cid: _save_measured_weights(pruned, arch=ref.arch, cid=cid),
                measure_latency=lambda models: stats_fn(
                    models, data.input_size, repeats=5, min_run_time_s=1.0
                ),
            )
            st.rerun()

        def ft_panel() -> None:
            job = st.session_state.get(FINETUNE_JOB)
            snap = job.snapshot() if job else None
            components.job_status(snap, idle_text="Runs in the background.")
            if snap and snap.status == "done" and snap.result:
                r = snap.result
                if snap.info.get("candidate_id", cid) == cid:
                    st.success(
                        f"test top-1 {r.get('test_acc', float('nan')):.2f}%, latency "
                        f"{cp.latency_text(r.get('latency_after'), r.get('latency_ms_after'))} (baseline "
                        f"{cp.latency_text(r.get('latency_before'), r.get('latency_ms_before'))})"
                    )
                else:
                    st.caption(f"The last result above is for candidate #{snap.info['candidate_id']}.")
            if snap and not snap.active and st.session_state.get("_ft_seen") is not job:
                st.session_state["_ft_seen"] = job
                st.rerun()
            if snap and snap.status == "error" and not snap.user_error and job.exception is not None:
                job.reraise()

        components.poll_while(ft_busy, ft_panel)
    with c2:
        st.markdown("**Download**")
        if row["plan"]:
            st.download_button(
                "Plan JSON",
                json.dumps(row["plan"], indent=2),
                file_name=f"plan-{cid}.json",
                mime="application/json",
                key="cmp_dl_plan",
            )
        fmt = st.selectbox(
            "Pruned model format",
            list(EXPORT_FORMATS),
            key="cmp_fmt",
            format_func={
                "state_dict": "state_dict (.pt)",
                "pt2": "torch.export (.pt2)",
                "onnx": "ONNX (.onnx)",
            }.get,
        )
        exports: dict = st.session_state[EXPORTS]
        kept = row.get("weights_path")
        kept_ok = bool(kept) and Path(kept).exists() and row.get("measured_on") == digest
        if kept_ok:
            epochs_done = int(row.get("finetune_epochs") or 0)
            st.caption(
                f"The file holds the measured weights: fine-tuned {epochs_done} epoch(s)."
                if epochs_done
                else "The file holds the measured weights (pruned, BN recalibrated, not fine-tuned)."
            )
        else:
            if int(row.get("finetune_epochs") or 0) > 0:
                st.warning(
                    "This candidate's fine-tuned weights were not kept (or belong to other weights); the "
                    "file would hold the pruned baseline before fine-tuning. Fine-tune it again to "
                    "download the fine-tuned weights.",
                    icon=":material/warning:",
                )
            else:
                st.caption("The file holds the plan applied to these baseline weights (not fine-tuned).")
        source = kept if kept_ok else "baseline"
        if st.button("Prepare file", key="cmp_export", disabled=not row["plan"]):
            with st.spinner("Pruning and exporting..."):
                plan = PruningPlan.from_dict(row["plan"])
                if kept_ok:  # the weights that were measured (fine-tuned); the cached baseline is untouched
                    pruned = load_pruned(loaded.model, topology, plan, kept)
                else:
                    pruned = apply_plan(loaded.model, topology, plan)  # a new model
                out_dir = topoprune_home() / "exports"
                out_dir.mkdir(parents=True, exist_ok=True)
                suffix = "-finetuned" if kept_ok and int(row.get("finetune_epochs") or 0) else ""
                path = out_dir / f"{ref.arch}-candidate{cid}{suffix}{EXPORT_FORMATS[fmt]}"
                exports[(cid, fmt, source)] = str(
                    export_pruned(pruned, path, format=fmt, example_inputs=cache.example_inputs(ref))
                )
        ready = exports.get((cid, fmt, source))
        if ready and Path(ready).exists():
            st.download_button(
                f"Download {Path(ready).name}",
                Path(ready).read_bytes(),
                file_name=Path(ready).name,
                key="cmp_dl_model",
            )
