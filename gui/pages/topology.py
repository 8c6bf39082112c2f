"""Topology page: the model's op graph, left to right, collapsible by stage/block, coloured by a metric."""

from __future__ import annotations

import streamlit as st

from gui import cache, components
from gui.plots import graph_view as gv
from gui.plots import topology as tp
from gui.state import SELECTED_NODE, SELECTED_PLAN, SENS_RESULT, model_ref

st.title("Topology")
ref = model_ref()
st.caption(
    f"`{ref.arch}`: one node per operation call; residual branches run as parallel lanes. "
    "Click a node for its details; collapsed nodes can be expanded."
)

with components.engine_errors("topology"):
    topology = cache.get_topology(ref)
    c1, c2, c3, c4 = st.columns([1.2, 1.2, 1.5, 1.5])
    level = c1.radio(
        "Detail",
        gv.LEVELS,
        index=1,
        key="topo_level",
        horizontal=True,
        help="stages / blocks collapse the graph; layers shows every op.",
    )
    metric = c2.selectbox("Colour by", tp.METRICS, index=tp.METRICS.index("MACs"), key="topo_metric")
    query = c3.text_input("Find a layer", key="topo_search", placeholder="e.g. layer2.0.conv1")
    group_names = [g.name for g in topology.groups]
    highlight_group = c4.selectbox("Highlight coupled group", ["(none)", *group_names], key="topo_group")

    expanded: tuple[str, ...] = ()
    if level != "layers":
        base = cache.topology_layout(ref, level)["view"]
        collapsible = [n for n, a in base.nodes(data=True) if a.get("kind") != "op"]
        expanded = tuple(
            st.multiselect(
                "Expand",
                collapsible,
                key=f"topo_expand_{level}",
                help="Open collapsed stages/blocks to see their ops.",
            )
        )
    layout = cache.topology_layout(ref, level, expanded)
    view, pos = layout["view"], layout["pos"]
    mod_groups = gv.module_groups(topology.groups)

    group_values = None
    if metric == "sensitivity":
        table = st.session_state.get(SENS_RESULT)
        if table:
            from gui.plots.sensitivity import mean_drop

            group_values = {g["name"]: mean_drop(g) for g in table["groups"]}
        else:
            st.info("No sensitivity table yet: run it on the Sensitivity page to colour by it.")
    elif metric == "keep ratio":
        plan = st.session_state.get(SELECTED_PLAN)
        if plan:
            channels = {g.name: g.channels for g in topology.groups}
            group_values = {
                k: int(v) / channels[k] for k, v in plan.get("keep", {}).items() if channels.get(k)
            }
            group_values = {g: group_values.get(g, 1.0) for g in channels}
            st.caption(
                f"Keep ratios of the plan selected on the Agent/Compare page ({plan.get('method', '?')})."
            )
        else:
            st.info(
                "No plan selected: pick a candidate on the Compare page (or run the Agent) to colour by it."
            )
    values = tp.node_values(view, metric, module_to_group=mod_groups, group_values=group_values)

    selected = st.session_state.get(SELECTED_NODE)
    if selected not in view:
        selected = None
    if highlight_group == "(none)" and selected is not None:
        groups_here = [mod_groups[m] for m in view.nodes[selected].get("modules", ()) if m in mod_groups]
        highlight_group = groups_here[0] if groups_here else "(none)"
    highlight = gv.group_nodes(view, None if highlight_group == "(none)" else highlight_group, mod_groups)
    matches = gv.search_nodes(view, query) if query else []
    if query:
        st.caption(
            f"{len(matches)} node(s) match `{query}`" + (": " + ", ".join(matches[:8]) if matches else "")
        )
        if len(matches) == 1 and selected != matches[0]:
            selected = matches[0]
            st.session_state[SELECTED_NODE] = selected

    fig = tp.topology_figure(
        view, pos, values=values, metric=metric, highlight=highlight, matches=matches, selected=selected
    )
    event = st.plotly_chart(
        fig,
        key="topology_chart",
        on_select="rerun",
        selection_mode="points",
        config={"scrollZoom": True, "displaylogo": False},
    )
    clicked = tp.node_from_event(event)
    if clicked != st.session_state.get(
        "_topo_last_click"
    ):  # a new click (the chart keeps its last selection)
        st.session_state["_topo_last_click"] = clicked
        if clicked is not None:
            st.session_state[SELECTED_NODE] = clicked
            st.rerun()
    st.caption(
        f"{view.number_of_nodes()} nodes, {view.number_of_edges()} edges shown "
        f"({topology.graph.number_of_nodes()} ops, {len(topology.groups)} channel groups). "
        "Drag to pan, scroll to zoom."
    )

    st.subheader("Details")
    if selected is None:
        st.caption("Click a node (or search for a unique name) to see its shapes, channels, costs and group.")
    else:
        attrs = view.nodes[selected]
        st.markdown(
            f"**{attrs.get('label', selected)}** ({attrs.get('kind')}: {attrs.get('op')}), "
            f"MACs {components.human(attrs.get('macs'))}, params {components.human(attrs.get('params'))}, "
            f"activation memory {components.human(attrs.get('memory_bytes'), 'B')}"
        )
        st.dataframe(gv.node_details(topology.graph, view, selected), hide_index=True, width="stretch")
        if st.button("Clear selection", key="topo_clear"):
            st.session_state[SELECTED_NODE] = None
            st.rerun()
        names = [mod_groups[m] for m in attrs.get("modules", ()) if m in mod_groups]
        for name in dict.fromkeys(names):
            group = topology.group(name)
            st.markdown(
                f"Coupled group **{name}**: {group.channels} channels, "
                f"{'prunable' if group.prunable else 'not prunable: ' + str(group.reason)}; members: "
                + ", ".join(f"`{m}` ({d})" for m, d in group.members)
            )
            table = st.session_state.get(SENS_RESULT)
            entry = next((g for g in (table or {}).get("groups", []) if g["name"] == name), None)
            if entry:
                st.plotly_chart(
                    tp.sensitivity_curve_figure(
                        table["keep_ratios"],
                        entry["val_acc"],
                        base_acc=table.get("base_acc"),
                        title=f"sensitivity of {name}",
                    ),
                    key=f"topo_sens_{name}",
                )
