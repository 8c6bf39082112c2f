"""Pure topology-view functions on a hand-built 7-op residual graph."""

from __future__ import annotations

from types import SimpleNamespace

import networkx as nx
import plotly.graph_objects as go
import pytest

from gui.plots import graph_view as gv
from gui.plots import topology as tp


def tiny_graph() -> nx.DiGraph:
    """x -> conv1 -> [block b1: conv_a -> conv_b] + add -> fc, with a skip edge conv1 -> add."""
    g = nx.DiGraph()
    rows = [
        ("x", "input", None, 0, None, 0, 0),
        ("conv1", "conv", "conv1", 0, None, 100, 10),
        ("conv_a", "conv", "b1.conv_a", 1, "b1", 200, 20),
        ("conv_b", "conv", "b1.conv_b", 1, "b1", 300, 30),
        ("add", "add", None, 1, None, 0, 0),
        ("fc", "linear", "fc", 2, None, 50, 5),
        ("output", "output", None, 2, None, 0, 0),
    ]
    for name, op, module, stage, block, macs, params in rows:
        g.add_node(
            name,
            name=name,
            op=op,
            module=module,
            stage=stage,
            block=block,
            macs=macs,
            params=params,
            memory_bytes=macs // 10,
            scope="b1" if name == "add" else module,
        )
    g.add_edges_from(
        [
            ("x", "conv1"),
            ("conv1", "conv_a"),
            ("conv_a", "conv_b"),
            ("conv_b", "add"),
            ("conv1", "add"),
            ("add", "fc"),
            ("fc", "output"),
        ]
    )
    return g


GROUPS = [
    SimpleNamespace(name="conv1", members=[("conv1", "out"), ("b1.conv_b", "out"), ("b1.conv_a", "in")]),
    SimpleNamespace(name="b1.conv_a", members=[("b1.conv_a", "out"), ("b1.conv_b", "in")]),
]


def test_layers_level_keeps_every_op():
    view = gv.collapse_graph(tiny_graph(), level="layers")
    assert set(view.nodes) == {"x", "conv1", "conv_a", "conv_b", "add", "fc", "output"}
    assert view.number_of_edges() == 7
    assert view.nodes["conv_a"]["macs"] == 200


def test_blocks_level_collapses_block_and_its_add():
    view = gv.collapse_graph(tiny_graph(), level="blocks")
    # the add traced at the block's own scope joins the block
    assert set(view.nodes) == {"x", "conv1", "b1", "fc", "output"}
    assert view.nodes["b1"]["kind"] == "block"
    assert view.nodes["b1"]["macs"] == 500
    assert sorted(view.nodes["b1"]["members"]) == ["add", "conv_a", "conv_b"]
    assert set(view.edges) == {("x", "conv1"), ("conv1", "b1"), ("b1", "fc"), ("fc", "output")}


def test_stages_level_and_expand():
    view = gv.collapse_graph(tiny_graph(), level="stages")
    assert set(view.nodes) == {"stage 0", "stage 1", "stage 2"}
    assert view.nodes["stage 0"]["macs"] == 100
    opened = gv.collapse_graph(tiny_graph(), level="stages", expanded=["stage 1"])
    assert "b1" in opened and "stage 1" not in opened
    opened_block = gv.collapse_graph(tiny_graph(), level="blocks", expanded=["b1"])
    assert {"conv_a", "conv_b", "add"} <= set(opened_block.nodes)


def test_bad_level_names_choices():
    with pytest.raises(ValueError, match="level must be one of"):
        gv.collapse_graph(tiny_graph(), level="modules")


def test_dot_layout_runs_left_to_right():
    view = gv.collapse_graph(tiny_graph(), level="layers")
    pos = gv.layout_positions(view)
    assert set(pos) == set(view.nodes)
    assert pos["x"][0] < pos["conv1"][0] < pos["conv_a"][0] < pos["conv_b"][0] < pos["add"][0] < pos["fc"][0]


def test_layered_fallback_for_huge_graphs(monkeypatch):
    monkeypatch.setattr(gv, "DOT_EDGE_LIMIT", 2)
    view = gv.collapse_graph(tiny_graph(), level="layers")
    pos = gv.layout_positions(view)
    assert pos["x"][0] < pos["conv1"][0] < pos["add"][0] < pos["output"][0]


def test_module_groups_and_metric_values():
    mg = gv.module_groups(GROUPS)
    assert mg == {"conv1": "conv1", "b1.conv_b": "conv1", "b1.conv_a": "b1.conv_a"}
    view = gv.collapse_graph(tiny_graph(), level="layers")
    keep = tp.node_values(
        view, "keep ratio", module_to_group=mg, group_values={"conv1": 0.5, "b1.conv_a": 0.25}
    )
    assert keep["conv1"] == 0.5 and keep["conv_a"] == 0.25 and keep["x"] is None
    blocks = gv.collapse_graph(tiny_graph(), level="blocks")
    keep_b = tp.node_values(
        blocks, "keep ratio", module_to_group=mg, group_values={"conv1": 0.5, "b1.conv_a": 0.25}
    )
    assert keep_b["b1"] == 0.25  # min over a collapsed block
    sens = tp.node_values(
        blocks, "sensitivity", module_to_group=mg, group_values={"conv1": 3.0, "b1.conv_a": 1.0}
    )
    assert sens["b1"] == 3.0  # max over a collapsed block
    assert tp.node_values(view, "MACs")["conv_b"] == 300.0
    assert tp.node_values(view, "coupled group", module_to_group=mg)["conv_b"] == "conv1"
    with pytest.raises(ValueError, match="metric must be one of"):
        tp.node_values(view, "colour")


def test_search_and_group_highlight():
    view = gv.collapse_graph(tiny_graph(), level="blocks")
    assert gv.search_nodes(view, "CONV_B") == ["b1"]
    assert gv.search_nodes(view, "  ") == []
    assert gv.group_nodes(view, "conv1", gv.module_groups(GROUPS)) == {"conv1", "b1"}
    assert gv.group_nodes(view, None, {}) == set()


def test_node_from_event():
    assert tp.node_from_event(None) is None
    assert tp.node_from_event({"selection": {"points": []}}) is None
    event = {"selection": {"points": [{"x": 1, "customdata": ["conv_a"]}]}}
    assert tp.node_from_event(event) == "conv_a"
    assert tp.node_from_event(SimpleNamespace(selection={"points": [{"customdata": "fc"}]})) == "fc"


def test_figure_traces_and_click_payload():
    view = gv.collapse_graph(tiny_graph(), level="layers")
    pos = gv.layout_positions(view)
    values = tp.node_values(view, "MACs")
    fig = tp.topology_figure(
        view, pos, values=values, metric="MACs", highlight={"conv1"}, matches=["fc"], selected="conv_a"
    )
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert names == ["edges", "nodes", "no value", "coupled group", "search", "selected"]
    nodes = fig.data[1]
    assert [c[0] for c in nodes.customdata] == list(view.nodes)
    assert nodes.marker.showscale  # numeric colour bar
    assert len(fig.data[0].x) == 3 * view.number_of_edges()
    assert len(fig.data[3].x) == 1 and len(fig.data[5].x) == 1
    assert len(fig.data[2].x) == 0  # every node has MACs
    assert fig.layout.clickmode == "event+select"
    cat = tp.topology_figure(view, pos, values=tp.node_values(view, "op type"), metric="op type")
    assert isinstance(cat.data[1].marker.color, tuple) and cat.data[1].marker.color[0].startswith("#")


def test_figure_switches_to_webgl_for_big_graphs(monkeypatch):
    monkeypatch.setattr(tp, "WEBGL_NODE_LIMIT", 3)
    view = gv.collapse_graph(tiny_graph(), level="layers")
    fig = tp.topology_figure(view, gv.layout_positions(view))
    assert isinstance(fig.data[1], go.Scattergl)


def test_node_details_rows():
    g = tiny_graph()
    view = gv.collapse_graph(g, level="blocks")
    rows = gv.node_details(g, view, "b1")
    assert [r["node"] for r in rows] == ["conv_a", "conv_b", "add"]
    assert rows[0]["module"] == "b1.conv_a" and rows[0]["macs"] == 200
    assert gv.node_details(g, view, "nope") == []


def test_short_labels_and_adaptive_height():
    blocks = gv.collapse_graph(tiny_graph(), level="blocks")
    assert tp.short_label(blocks.nodes["b1"], "b1") == "b1"
    assert tp.short_label({"kind": "block", "label": "layer1.0"}, "x") == "layer1.0"
    assert (
        tp.short_label({"kind": "block", "label": "features.denseblock1.denselayer2"}, "x") == "denselayer2"
    )
    layers = gv.collapse_graph(tiny_graph(), level="layers")
    assert tp.short_label(layers.nodes["conv_a"], "conv_a") == "conv_a"  # module b1.conv_a -> its tail
    assert tp.short_label(layers.nodes["add"], "add") == "add"
    fig = tp.topology_figure(layers, gv.layout_positions(layers))
    assert 280 <= fig.layout.height <= 720
    assert fig.data[1].unselected.marker.opacity == 1.0


def test_nodes_without_a_value_are_grey_not_dark():
    view = gv.collapse_graph(tiny_graph(), level="layers")
    values = tp.node_values(
        view, "keep ratio", module_to_group=gv.module_groups(GROUPS), group_values={"conv1": 0.5}
    )
    fig = tp.topology_figure(view, gv.layout_positions(view), values=values, metric="keep ratio")
    nodes, grey = fig.data[1], fig.data[2]
    missing = {n for n, v in values.items() if v is None}
    assert len(grey.x) == len(missing) > 0 and grey.marker.color == "#d9d9d9"
    assert [o for o, c in zip(nodes.marker.opacity, nodes.customdata, strict=True) if c[0] in missing] == [
        0.0
    ] * len(missing)
    assert fig.data[1].marker.cmin == 0.0 and fig.data[1].marker.cmax == 1.0


def test_dense_graphs_are_laid_out_on_their_transitive_reduction():
    dense = nx.DiGraph()
    nodes = ["a", "b", "c", "d", "e"]
    dense.add_edges_from(
        (u, v) for i, u in enumerate(nodes) for v in nodes[i + 1 :]
    )  # DenseNet-like: 10 edges
    skeleton = gv.layout_skeleton(dense)
    assert set(skeleton.edges) == {("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")}
    pos = gv.layout_positions(dense)
    assert [n for n, _ in sorted(pos.items(), key=lambda kv: kv[1][0])] == nodes
    sparse = gv.collapse_graph(tiny_graph(), level="layers")
    assert gv.layout_skeleton(sparse) is sparse  # residual skips keep their own lane
    fig = tp.topology_figure(dense, pos)
    assert len(fig.data[0].x) == 3 * 10  # every edge is still drawn
