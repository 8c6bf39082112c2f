"""Small Streamlit widgets shared by the pages; each draws itself and returns plain values.

No engine calls and no caching here (gui.cache does both); no figure building (gui.plots).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import streamlit as st

from engine.errors import TopoPruneError
from gui.jobs import JobSnapshot


@contextmanager
def engine_errors(what: str = "") -> Iterator[None]:
    """Show the engine's documented errors with st.error.

    Unexpected exceptions pass through (they are bugs and should surface).
    """
    try:
        yield
    except TopoPruneError as exc:
        st.error(f"{what + ': ' if what else ''}{exc}", icon=":material/error:")


def human(value: float | int | None, unit: str = "") -> str:
    """12345678 -> '12.35 M' (with unit); None -> 'n/a'."""
    if value is None:
        return "n/a"
    value = float(value)
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {suffix}{unit}"
    return f"{value:.0f} {unit}".strip()


def metric_cards(cards: Sequence[tuple[str, str, str | None]]) -> None:
    """A row of st.metric cards: (label, value, help)."""
    cols = st.columns(len(cards))
    for col, (label, value, help_text) in zip(cols, cards, strict=True):
        col.metric(label, value, help=help_text)


BUDGET_METRICS = {  # engine.pruning.budget.METRICS, with what each keeps
    "macs": "MACs (multiply-accumulates)",
    "params": "parameters",
    "memory": "activation memory",
    "latency": "latency (measured here)",
    "size": "weight size",
}


def budget_metric_picker(*, key: str, default: str = "macs", metrics: Sequence[str] | None = None) -> str:
    """Select box: which metric the budget is a fraction of; returns its engine name ("macs", "latency", ...).

    `metrics` limits the choice (a method's `budget_metrics`); a default it excludes falls back to the first.
    """
    names = [m for m in (metrics or BUDGET_METRICS) if m in BUDGET_METRICS] or ["macs"]
    index = names.index(default) if default in names else 0
    return st.selectbox(
        "Budget metric",
        names,
        index=index,
        key=key,
        format_func=BUDGET_METRICS.get,
        help="What the budget is a fraction of. A latency budget measures a per-group latency "
        "table on this machine first (once per model, then cached) and checks the landed "
        "plan by timing it.",
    )


def budget_slider(*, key: str, default: float = 0.5, metric: str = "macs") -> float:
    """Budget as the fraction of the baseline's `metric` kept (0.5 = half remain)."""
    what = BUDGET_METRICS.get(metric, metric)
    percent = st.slider(
        f"Budget (% of the baseline's {what} kept)",
        10,
        100,
        int(round(default * 100)),
        5,
        key=key,
        help="0.5 keeps half: for MACs, the paper's '50% FLOPs'.",
    )
    return percent / 100.0


def method_picker(
    specs: Sequence[dict[str, Any]], *, key: str, default: str = "gnnrl"
) -> dict[str, Any] | None:
    """Select box over registered methods; returns the chosen spec dict."""
    if not specs:
        st.warning("No pruning method is registered yet.")
        return None
    names = [s["name"] for s in specs]
    index = names.index(default) if default in names else 0
    name = st.selectbox(
        "Method",
        names,
        index=index,
        key=key,
        format_func=lambda n: f"{n} ({next(s['kind'] for s in specs if s['name'] == n)})",
    )
    spec = next(s for s in specs if s["name"] == name)
    st.caption(spec["description"])
    return spec


def option_inputs(spec: dict[str, Any], *, key_prefix: str, skip: Sequence[str] = ()) -> dict[str, Any]:
    """One input per numeric/bool method option (defaults pre-filled); returns the options changed from default."""
    out: dict[str, Any] = {}
    for name, opt in spec["options"].items():
        if name in skip:
            continue
        default = opt["default"]
        key = f"{key_prefix}_{spec['name']}_{name}"
        if opt.get("choices"):
            choices = list(opt["choices"])
            value = st.selectbox(
                name,
                choices,
                index=choices.index(default) if default in choices else 0,
                key=key,
                help=opt.get("help") or None,
            )
        elif isinstance(default, bool):
            value = st.checkbox(name, value=default, key=key, help=opt.get("help") or None)
        elif isinstance(default, int):
            value = st.number_input(
                name,
                value=default,
                step=1,
                key=key,
                help=opt.get("help") or None,
                min_value=int(opt["min"]) if opt.get("min") is not None else None,
                max_value=int(opt["max"]) if opt.get("max") is not None else None,
            )
        elif isinstance(default, float):
            value = st.number_input(name, value=default, key=key, help=opt.get("help") or None, format="%g")
        else:
            continue
        if value != default:
            out[name] = value
    return out


def job_status(snapshot: JobSnapshot | None, *, idle_text: str) -> None:
    """Progress bar, message and outcome of a background job."""
    if snapshot is None:
        st.caption(idle_text)
        return
    label = f"{snapshot.label}: {snapshot.message} ({snapshot.elapsed_s:.0f} s)"
    fraction = snapshot.info.get("fraction", snapshot.fraction)
    st.progress(float(fraction if snapshot.status != "done" else 1.0), text=label)
    if snapshot.status == "error":
        if snapshot.user_error:
            st.error(snapshot.error or "the job failed", icon=":material/error:")
        else:
            st.error(f"Unexpected failure (a bug): {snapshot.error}")
    elif snapshot.status == "paused":
        st.info("Paused. Press Resume to continue or Step for one more unit.", icon=":material/pause:")
    elif snapshot.status == "stopped":
        st.warning("Stopped by the user; results so far are kept.")


def poll_while(active: bool, body: Callable[[], None], *, every_s: float = 0.7) -> None:
    """Draw `body` inside a fragment that reruns itself every `every_s` seconds only while `active`."""

    @st.fragment(run_every=every_s if active else None)
    def _fragment() -> None:
        body()

    _fragment()


def baseline_badge(trained: bool, source: str) -> None:
    """One line saying where the baseline's weights come from; a warning when it is untrained."""
    if trained:
        st.caption(f"Baseline: {source}")
    else:
        st.warning(
            f"The baseline is **untrained** ({source}). Accuracies are near chance until a trained "
            "baseline is shipped, uploaded or trained on the Model & data page.",
            icon=":material/warning:",
        )
