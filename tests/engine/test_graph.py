"""Topology: exact graph and groups on a hand-built toy, every zoo model, hierarchy, motifs, export."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
from torch import nn

from engine.errors import ModelError
from engine.graph import build_topology, conv_motif, export_graph
from tests.engine.test_graph_toy import Toy, randomize_bn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared, oversubscribed 2-core machine two OpenMP threads run ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EXPECTED_NODES = [
    "x",
    "stem",
    "bn",
    "relu",
    "a",
    "bn_a",
    "add",
    "relu_1",
    "dw",
    "bn_dw",
    "relu_2",
    "b",
    "c",
    "cat",
    "head",
    "pool",
    "flatten",
    "fc",
    "output",
]


@pytest.fixture(scope="module")
def toy_topology():
    return build_topology(Toy(), torch.randn(1, 3, 8, 8), model_name="toy")


def test_toy_nodes_and_edges_are_exact(toy_topology):
    graph = toy_topology.graph
    assert list(graph.nodes) == EXPECTED_NODES
    assert graph.number_of_edges() == 20
    assert {("relu", "add"), ("bn_a", "add"), ("b", "cat"), ("c", "cat"), ("relu_1", "c")} <= set(graph.edges)
    assert nx.is_directed_acyclic_graph(graph)
    assert toy_topology.trace_method == "fx" and toy_topology.group_method == "depgraph"


def test_toy_node_attributes(toy_topology):
    nodes = toy_topology.graph.nodes
    assert nodes["dw"]["op"] == "conv" and nodes["dw"]["groups"] == 8 and nodes["dw"]["kernel"] == (3, 3)
    assert nodes["add"]["op"] == "add" and nodes["cat"]["op"] == "concat" and nodes["bn"]["op"] == "batchnorm"
    assert nodes["cat"]["out_shape"] == (1, 8, 8, 8)
    assert nodes["stem"]["macs"] == 9 * 64 * 3 * 8 and nodes["stem"]["params"] == 216
    assert nodes["stem"]["memory_bytes"] == 8 * 64 * 4
    assert nodes["head"]["in_channels"] == 8 and nodes["head"]["out_channels"] == 16
    assert nodes["stem"]["prunable"] and not nodes["fc"]["prunable"]
    assert nodes["dw"]["group_ids"] == [0] and set(nodes["head"]["group_ids"]) == {1, 2, 3}
    for key in (
        "name",
        "op",
        "module",
        "in_shape",
        "out_shape",
        "in_channels",
        "out_channels",
        "kernel",
        "stride",
        "groups",
        "params",
        "macs",
        "memory_bytes",
        "prunable",
        "group_ids",
        "stage",
        "block",
    ):
        assert all(key in data for _, data in toy_topology.graph.nodes(data=True)), key


def test_toy_groups_are_exact(toy_topology):
    groups = toy_topology.groups
    assert [g.name for g in groups] == ["stem", "b", "c", "head"]
    assert [g.channels for g in groups] == [8, 4, 4, 16]
    assert all(g.prunable for g in groups)
    assert set(groups[0].members) == {
        ("stem", "out"),
        ("bn", "out"),
        ("a", "in"),
        ("a", "out"),
        ("bn_a", "out"),
        ("dw", "out"),
        ("bn_dw", "out"),
        ("b", "in"),
        ("c", "in"),
    }
    assert groups[1].members == [("b", "out"), ("head", "in")]
    # concat: each branch maps onto its own slice of head's inputs
    head_in = {g.name: m.channels for g in groups for m in g.maps if m.module == "head" and m.dim == "in"}
    assert head_in == {"b": (0, 1, 2, 3), "c": (4, 5, 6, 7)}
    assert toy_topology.group_of("a").name == "stem" and toy_topology.group_of("fc") is None
    # one channel of the residual group: stem (27*64) + a (8*9*64 out + 8*9*64 in, minus the shared one) ...
    assert groups[3].macs_per_channel == 8 * 64 + 5
    assert toy_topology.macs == 67664 and toy_topology.params == 1213


def test_input_model_is_untouched():
    model = randomize_bn(Toy()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_topology(model, torch.randn(2, 3, 8, 8))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


def test_hierarchy_of_cifar_resnet56():
    from engine.zoo import build_model

    topology = build_topology(build_model("cifar_resnet56"), torch.randn(1, 3, 32, 32))
    assert [s.resolution for s in topology.stages] == [(32, 32), (16, 16), (8, 8), None]
    assert len(topology.blocks) == 27 and topology.blocks[0].name == "layer1.0"
    assert topology.blocks[9].name == "layer2.0" and topology.blocks[9].stage == 1
    assert "layer2.0.shortcut.0" in topology.blocks[9].layers
    tree = topology.hierarchy()
    assert nx.is_tree(tree) and set(tree.successors("network")) == {"stage0", "stage1", "stage2", "stage3"}
    assert (
        topology.group("layer2.0.conv1").stage == 1 and topology.group("layer2.0.conv1").block == "layer2.0"
    )
    assert len(topology.layers) == 58 and topology.layers[0] == "conv1" and topology.layers[-1] == "fc"


def test_motif_shape():
    motif = conv_motif(3)
    assert motif.number_of_nodes() == 8 and motif.number_of_edges() == 9
    assert list(motif.successors(0)) == [1, 2, 3] and list(motif.predecessors(7)) == [4, 5, 6]
    with pytest.raises(ValueError, match="in_channels >= 1"):
        conv_motif(0)


def test_topology_motif_uses_current_width(toy_topology):
    assert toy_topology.motif("a").number_of_nodes() == 2 * 8 + 2
    assert toy_topology.motif("a", in_channels=3).number_of_nodes() == 8
    assert toy_topology.motif("dw").number_of_nodes() == 4  # depthwise: one input channel per filter
    with pytest.raises(ValueError, match="not a conv/linear layer"):
        toy_topology.motif("bn")


@pytest.mark.parametrize(
    "name",
    ["cifar_resnet20", "cifar_vgg16", "cifar_mobilenet_v1", "cifar_mobilenet_v2", "cifar_shufflenet_v2"],
)
def test_zoo_models_build(name):
    from engine.zoo import build_model

    topology = build_topology(build_model(name), torch.randn(1, 3, 32, 32), model_name=name)
    assert topology.prunable_groups and topology.model_name == name
    assert nx.is_directed_acyclic_graph(topology.graph)
    names = [g.name for g in topology.groups]
    assert len(names) == len(set(names))
    if name == "cifar_shufflenet_v2":  # channel shuffle: block-internal chains only
        assert topology.group_method == "chains" and len(topology.groups) == 18
        assert topology.groups[0].members == [
            ("stem.0", "out"),
            ("stem.1", "out"),
            ("stage2.0.branch1.0", "out"),
            ("stage2.0.branch1.1", "out"),
            ("stage2.0.branch1.2", "in"),
            ("stage2.0.branch2.0", "in"),
        ]  # the stem fans out into both branches
        assert topology.group("stage2.0.branch2.0").members == [
            ("stage2.0.branch2.0", "out"),
            ("stage2.0.branch2.1", "out"),
            ("stage2.0.branch2.3", "out"),
            ("stage2.0.branch2.4", "out"),
            ("stage2.0.branch2.5", "in"),
        ]
    else:
        assert topology.group_method == "depgraph"


def test_untraceable_model_names_the_failing_op():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(ModelError, match="forward pass fails.*in module 'fc' \\(Linear\\)"):
        build_topology(Broken(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="example_inputs must be a tensor"):
        build_topology(Toy(), [1, 2])


def test_data_dependent_model_falls_back_to_hooks():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # fx cannot trace this
                x = x * 2
            return self.fc(self.conv(x).mean((2, 3)))

    topology = build_topology(Branchy(), torch.randn(1, 3, 8, 8))
    assert topology.trace_method == "hooks" and "torch.fx" in topology.notes[0]
    assert [g.name for g in topology.prunable_groups] == ["conv"]


def test_export_json_and_graphml(toy_topology, tmp_path):
    data = json.loads(export_graph(toy_topology, tmp_path / "g.json").read_text())
    assert len(data["nodes"]) == 19 and len(data["edges"]) == 20 and len(data["groups"]) == 4
    graph = nx.read_graphml(export_graph(toy_topology, tmp_path / "g.graphml"))
    assert graph.number_of_nodes() == 19 and graph.nodes["dw"]["op"] == "conv"
    with pytest.raises(ValueError, match="use a .json or .graphml"):
        export_graph(toy_topology, tmp_path / "g.txt")
