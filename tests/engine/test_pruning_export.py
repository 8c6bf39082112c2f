"""Export of pruned models: state_dict + plan JSON round trip, torch.export (.pt2) and ONNX give the same outputs."""

from __future__ import annotations

import pytest
import torch

from engine.errors import CheckpointError
from engine.graph import build_topology
from engine.pruning import PruningPlan, apply_plan, export_pruned, load_pruned, plan_for_budget
from tests.engine.test_graph_toy import Toy, randomize_bn


@pytest.fixture(scope="module")
def pruned_toy():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = randomize_bn(Toy()).eval()
    x = torch.randn(2, 3, 8, 8)
    topology = build_topology(model, x)
    plan = plan_for_budget(topology, 0.5)
    pruned = apply_plan(model, topology, plan).eval()
    yield model, x, topology, plan, pruned
    torch.set_num_threads(threads)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_and_plan_rebuild_the_pruned_model(pruned_toy, tmp_path, suffix):
    model, x, topology, plan, pruned = pruned_toy
    path = export_pruned(pruned, tmp_path / f"pruned{suffix}", format="state_dict", plan=plan)
    loaded_plan = PruningPlan.from_json(path.with_name(path.name + ".plan.json").read_text())
    fresh = Toy()
    rebuilt = load_pruned(fresh, build_topology(fresh, x), loaded_plan, path).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned(x), atol=0, rtol=0)


def test_load_pruned_rejects_mismatched_weights(pruned_toy, tmp_path):
    model, x, topology, plan, pruned = pruned_toy
    path = export_pruned(model, tmp_path / "full.pt")
    with pytest.raises(CheckpointError, match="do not fit plan"):
        load_pruned(Toy(), topology, plan, path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read pruned weights"):
        load_pruned(Toy(), topology, plan, tmp_path / "junk.pt")


def test_pt2_export_gives_same_outputs(pruned_toy, tmp_path):
    _, x, _, _, pruned = pruned_toy
    path = export_pruned(pruned, tmp_path / "pruned.pt2", format="pt2", example_inputs=x)
    program = torch.export.load(str(path))  # our own file: loading a .pt2 from users is never done
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), pruned(x))


def test_onnx_export_gives_same_outputs(pruned_toy, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, x, _, _, pruned = pruned_toy
    path = export_pruned(pruned, tmp_path / "pruned.onnx", format="onnx", example_inputs=x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), pruned(x), atol=1e-5, rtol=1e-4)


def test_export_errors(pruned_toy, tmp_path):
    _, _, _, _, pruned = pruned_toy
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_pruned(pruned, tmp_path / "x", format="tflite")
    with pytest.raises(ValueError, match="needs example_inputs"):
        export_pruned(pruned, tmp_path / "x.pt2", format="pt2")
