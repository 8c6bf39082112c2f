"""engine.services: what the CLI and the GUI share (model provenance, baseline training, datasets, formats)."""

import pytest
import torch

from engine import services
from engine.checkpoints import sha256_file
from engine.data import DATASETS, DataSplits
from engine.errors import CheckpointError
from engine.train import TrainConfig


def _tiny_data(n: int = 32) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    images = {
        s: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        for s in ("train", "val", "test")
    }
    labels = {s: torch.randint(0, 10, (n,), generator=g) for s in ("train", "val", "test")}
    return DataSplits("shapes10", 10, 32, tuple("abcdefghij"), images, labels, (0.5,) * 3, (0.25,) * 3)


def test_random_init_provenance_and_seeded_weights():
    a = services.load_model(services.ModelRequest("cifar_resnet20", dataset="shapes10"))
    b = services.load_model(services.ModelRequest("cifar_resnet20", dataset="shapes10"))
    p = a.provenance
    assert (p.source, p.weights, p.sha256, p.num_classes, p.input_size, p.trained) == (
        "random",
        "random",
        None,
        10,
        32,
        False,
    )
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )
    assert a.weights == "random" and a.num_classes == 10  # the flat fields the CLI reads


def test_shipped_without_baseline_errors_or_falls_back():
    with pytest.raises(CheckpointError):
        services.load_model(services.ModelRequest("cifar_resnet32", weights="shipped", dataset="cifar100"))
    loaded = services.load_model(
        services.ModelRequest("cifar_resnet32", weights="shipped", dataset="cifar100", shipped_fallback=True)
    )
    assert loaded.provenance.source == "random" and "no shipped baseline" in loaded.provenance.label()


def test_trained_baseline_is_saved_and_reloads_with_its_provenance(tmp_path):
    data = _tiny_data()
    config = TrainConfig(epochs=1, batch_size=16, max_batches_per_epoch=1, augment=False)
    request = services.TrainRequest(
        "cifar_resnet20", tmp_path / "b.pt", config, "shapes10", width=0.25, command="topoprune train ..."
    )
    saved = services.train_baseline(request, data)
    assert saved.path.is_file() and saved.sha256 == sha256_file(saved.path) and len(saved.epoch_losses) == 1
    loaded = services.load_model(services.ModelRequest("cifar_resnet20", weights=str(saved.path)))
    p = loaded.provenance
    assert (p.source, p.sha256, p.dataset, p.width, p.num_classes) == (
        "trained",
        saved.sha256,
        "shapes10",
        0.25,
        10,
    )
    assert (
        p.test_acc == pytest.approx(saved.test_acc) and p.meta["recipe"]["command"] == "topoprune train ..."
    )
    with pytest.raises(Exception, match="does not exist"):
        services.train_baseline(
            services.TrainRequest("cifar_resnet20", tmp_path / "no" / "b.pt", config, "shapes10"), data
        )


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; check the path"):
        services.load_model(services.ModelRequest("cifar_resnet20", weights=str(tmp_path / "nope.pt")))


def test_dataset_names_and_export_formats():
    assert services.dataset_names() == list(DATASETS)
    assert set(services.dataset_names(installed_only=True)) <= set(DATASETS)
    assert services.export_formats() == {"state_dict": ".pt", "pt2": ".pt2", "onnx": ".onnx"}
