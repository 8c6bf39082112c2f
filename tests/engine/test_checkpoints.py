import json
import os
import pickle

import pytest
import torch

from engine import checkpoints
from engine.checkpoints import (
    load_checkpoint,
    load_shipped,
    read_manifest,
    read_state_dict,
    save_checkpoint,
    sha256_file,
)
from engine.errors import CheckpointError
from engine.train import evaluate
from engine.zoo import build_model


@pytest.fixture
def saved(tmp_path):
    model = build_model("cifar_resnet20", width=0.25)
    path = save_checkpoint(
        tmp_path / "r20.pt",
        model,
        arch="cifar_resnet20",
        dataset="shapes10",
        num_classes=10,
        width=0.25,
        metrics={"test_acc": 12.5},
        recipe={"epochs": 1},
    )
    return model, path


def test_round_trip_restores_weights_and_metadata(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert loaded.meta["arch"] == "cifar_resnet20" and loaded.meta["metrics"]["test_acc"] == 12.5
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    # The file is a plain weights-only checkpoint.
    assert "state_dict" in torch.load(path, weights_only=True)


def test_module_prefix_and_nesting_are_unwrapped(tmp_path):
    model = build_model("cifar_resnet20", width=0.25)
    path = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_checkpoint(path, arch="cifar_resnet20", width=0.25)
    assert torch.equal(loaded.model.conv1.weight, model.conv1.weight)


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file

    model = build_model("cifar_resnet20", width=0.25)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_checkpoint(path, arch="cifar_resnet20", width=0.25)
    assert torch.equal(loaded.model.fc.weight, model.fc.weight)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_truncated_checkpoint(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(cut)


def test_checkpoint_of_another_architecture_lists_the_mismatch(tmp_path):
    other = build_model("cifar_resnet32", width=0.25)
    path = tmp_path / "r32.pt"
    torch.save(other.state_dict(), path)
    target = build_model("cifar_resnet20", width=0.25)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="unexpected keys .*layer1.3"):
        checkpoints.load_weights(target, read_state_dict(path)[0], source=str(path))
    for key, value in target.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key])
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(path, arch="cifar_resnet20", width=0.5)
    with pytest.raises(CheckpointError, match="saved for 'cifar_resnet20', not 'cifar_vgg16'"):
        save_checkpoint(tmp_path / "m.pt", target, arch="cifar_resnet20", dataset="shapes10", num_classes=10)
        load_checkpoint(tmp_path / "m.pt", arch="cifar_vgg16")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        read_state_dict(path)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        read_state_dict(raw)
    assert not marker.exists()


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict("/nonexistent/weights.pt")


def test_manifest_lists_required_baselines():
    models = read_manifest()["models"]
    if not models:
        pytest.skip("assets/manifest.json lists no shipped baselines yet")
    for entry in models.values():
        assert {"file", "sha256", "test_acc", "command", "train_seconds"} <= set(entry)
    assets = checkpoints.assets_dir()
    total = sum(os.path.getsize(p) for p in assets.rglob("*") if p.is_file())
    assert total <= 40 * 1024 * 1024


@pytest.mark.parametrize("arch", ["cifar_resnet20", "cifar_resnet56", "cifar_mobilenet_v2", "cifar_vgg16"])
def test_shipped_checkpoint_matches_sha256_and_accuracy(arch, shapes10):
    entry = read_manifest()["models"].get(arch)
    if entry is None:
        pytest.skip(f"{arch} is not shipped yet")
    path = checkpoints.assets_dir() / entry["file"]
    assert sha256_file(path) == entry["sha256"]
    loaded = load_shipped(arch)
    result = evaluate(loaded.model, shapes10, "test")
    assert abs(result.top1 - entry["test_acc"]) <= 0.5
    assert json.dumps(loaded.meta["recipe"])  # the recipe travels with the weights
