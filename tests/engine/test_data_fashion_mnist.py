"""Fashion-MNIST: tiny idx files in the real format through --data-dir and the engine API, every kind of bad
file, the shipped-baseline lookup by dataset, and (when Debian's package is installed) the real files."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import checkpoints, idx
from engine.checkpoints import load_shipped, manifest_key, save_checkpoint, sha256_file, shipped_models
from engine.cli import main
from engine.cli.context import load_shipped_baseline
from engine.data import DATASETS, load_data
from engine.errors import CheckpointError, DataError
from engine.zoo import build_model

TRAIN, TEST = 60, 20


def idx_bytes(array: np.ndarray, *, dtype_code: int = 0x08, magic_zeros: bytes = b"\x00\x00") -> bytes:
    """An idx file: two zero bytes, dtype code, dimension count, big-endian int32 sizes, then the data."""
    header = magic_zeros + bytes([dtype_code, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # never 0, so the zero border is visible
    return images, labels


def write_set(folder: Path, *, gz: bool = True, overrides: dict[str, bytes] | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = tiny_arrays(TRAIN, 1)
    test_x, test_y = tiny_arrays(TEST, 2)
    blobs = {
        "train-images-idx3-ubyte": idx_bytes(train_x),
        "train-labels-idx1-ubyte": idx_bytes(train_y),
        "t10k-images-idx3-ubyte": idx_bytes(test_x),
        "t10k-labels-idx1-ubyte": idx_bytes(test_y),
        **(overrides or {}),
    }
    for stem, blob in blobs.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


@pytest.fixture
def tiny_dir(tmp_path):
    folder = tmp_path / "fmnist"
    arrays = write_set(folder)
    return folder, arrays


def test_tiny_files_load_padded_to_three_channels(tiny_dir):
    folder, arrays = tiny_dir
    data = load_data("fashion-mnist", data_dir=folder, seed=0)
    assert "fashion-mnist" in DATASETS
    assert data.num_classes == 10 and data.class_names == idx.CLASSES and data.input_size == 32
    assert data.size("train") + data.size("val") == TRAIN and data.size("test") == TEST
    assert data.size("val") == 10  # one per class: carved from train, stratified, as for every dataset
    test = data.images["test"]
    assert test.dtype == torch.uint8 and test.shape == (TEST, 3, 32, 32)
    assert torch.equal(test[:, 0], test[:, 1]) and torch.equal(test[:, 0], test[:, 2])  # grey replicated
    assert np.array_equal(test[:, 0, 2:30, 2:30].numpy(), arrays["test_x"])  # centred, pixels unchanged
    border = test.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.sum()) == 0  # a zero border of 2 px
    assert data.labels["test"].tolist() == arrays["test_y"].astype(int).tolist()
    assert data.mean == (idx.MEAN,) * 3 and data.std == (idx.STD,) * 3
    # train + val are exactly the train file's images, none lost or duplicated
    seen = torch.cat([data.images["train"], data.images["val"]])[:, 0, 2:30, 2:30].reshape(TRAIN, -1)
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, arrays["train_x"].reshape(TRAIN, -1)))


def test_uncompressed_files_load_the_same(tmp_path, tiny_dir):
    folder, _ = tiny_dir
    plain = tmp_path / "plain"
    write_set(plain, gz=False)
    a = load_data("fashion-mnist", data_dir=folder, seed=3)
    b = load_data("fashion-mnist", data_dir=plain, seed=3)
    for split in ("train", "val", "test"):
        assert torch.equal(a.images[split], b.images[split]) and torch.equal(a.labels[split], b.labels[split])


def test_val_carve_out_follows_the_seed(tiny_dir):
    folder, _ = tiny_dir
    a, b = (load_data("fashion-mnist", data_dir=folder, seed=s) for s in (0, 1))
    assert not torch.equal(a.images["val"], b.images["val"])
    assert torch.equal(a.images["test"], b.images["test"])


@pytest.mark.parametrize(
    ("stem", "blob", "pattern"),
    [
        (
            "train-images-idx3-ubyte",
            b"\x12\x34\x08\x03" + b"\x00" * 12,
            r"train-images.*bad magic number 1234",
        ),
        (
            "t10k-labels-idx1-ubyte",
            idx_bytes(np.zeros(20), dtype_code=0x0D),
            r"t10k-labels.*float.*unsigned bytes",
        ),
        (
            "train-labels-idx1-ubyte",
            idx_bytes(np.zeros((60, 28, 28))),
            r"train-labels.*3 dimensions, expected 1",
        ),
        (
            "t10k-images-idx3-ubyte",
            idx_bytes(np.ones((20, 28, 28)))[:-100],
            r"t10k-images.*truncated.*reinstall",
        ),
        ("t10k-images-idx3-ubyte", idx_bytes(np.ones((20, 28, 28))) + b"x", r"longer than its header says"),
        ("t10k-images-idx3-ubyte", b"\x00\x00\x08\x03\x00", r"truncated inside its header"),
        ("train-labels-idx1-ubyte", idx_bytes(np.zeros(59)), r"60 images but train-labels.* 59 labels"),
        ("train-images-idx3-ubyte", idx_bytes(np.ones((60, 32, 32))), r"32x32 images, expected 28x28"),
        ("t10k-labels-idx1-ubyte", idx_bytes(np.full(20, 10)), r"label 10, expected 0-9"),
    ],
)
def test_bad_idx_file_is_a_clear_error(tmp_path, stem, blob, pattern):
    write_set(tmp_path, overrides={stem: blob})
    with pytest.raises(DataError, match=pattern):
        load_data("fashion-mnist", data_dir=tmp_path)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    write_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is not a readable gzip file.*truncated"):
        load_data("fashion-mnist", data_dir=tmp_path)


def test_missing_file_is_named(tmp_path):
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte.gz; put the four Fashion-MNIST files"):
        load_data("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"does not exist; check the path given to --data-dir"):
        load_data("fashion-mnist", data_dir=tmp_path / "nowhere")


def test_other_input_size_is_refused(tiny_dir):
    folder, _ = tiny_dir
    with pytest.raises(DataError, match=r"served at 32x32 .* not 28; drop --input-size"):
        load_data("fashion-mnist", data_dir=folder, input_size=28)
    assert load_data("fashion-mnist", data_dir=folder, input_size=32).input_size == 32


def test_missing_debian_package_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist` or pass --data-dir"):
        load_data("fashion-mnist")
    assert not idx.available()


def test_decoded_files_are_memoised_and_refreshed_when_they_change(tiny_dir):
    folder, _ = tiny_dir
    first = load_data("fashion-mnist", data_dir=folder).images["test"]
    write_set(folder, overrides={"t10k-images-idx3-ubyte": idx_bytes(np.full((20, 28, 28), 7))})
    second = load_data("fashion-mnist", data_dir=folder).images["test"]
    assert not torch.equal(first, second) and int(second[:, :, 2:30, 2:30].unique()) == 7


def test_cli_trains_on_fashion_mnist_from_data_dir(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder, _ = tiny_dir
    out = tmp_path / "w.pt"
    code = main(
        [
            "train",
            "cifar_resnet20",
            "--width",
            "0.25",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(folder),
            "--epochs",
            "1",
            "--max-batches-per-epoch",
            "1",
            "--eval-limit",
            "8",
            "--out",
            str(out),
            "--json",
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(stdout)
    assert 0.0 <= result["test_acc"] <= 100.0 and out.is_file()
    assert checkpoints.load_checkpoint(out).meta["dataset"] == "fashion-mnist"


# --- shipped baselines by dataset ---------------------------------------------------------------------------


@pytest.fixture
def fake_assets(tmp_path, monkeypatch):
    """An assets folder with a shapes10 and a fashion-mnist baseline of cifar_resnet20 (tiny width)."""
    assets = tmp_path / "assets"
    models = {}
    for dataset, file in (
        ("shapes10", "cifar_resnet20.pt"),
        ("fashion-mnist", "fashion-mnist/cifar_resnet20.pt"),
    ):
        model = build_model("cifar_resnet20", num_classes=10, width=0.25)
        with torch.no_grad():
            next(model.parameters()).fill_(1.0 if dataset == "shapes10" else 2.0)  # tell the two apart
        save_checkpoint(
            assets / file, model, arch="cifar_resnet20", dataset=dataset, num_classes=10, width=0.25
        )
        models[manifest_key("cifar_resnet20", dataset)] = {
            "file": file,
            "sha256": sha256_file(assets / file),
            "arch": "cifar_resnet20",
            "dataset": dataset,
            "test_acc": 50.0,
            "command": "x",
            "train_seconds": 1.0,
        }
    (assets / "manifest.json").write_text(json.dumps({"models": models}))
    monkeypatch.setattr(checkpoints, "assets_dir", lambda: assets)
    return assets


def test_shipped_lookup_picks_the_dataset_baseline(fake_assets):
    assert manifest_key("cifar_resnet20") == "cifar_resnet20"
    assert manifest_key("cifar_resnet20", "fashion-mnist") == "cifar_resnet20@fashion-mnist"
    assert shipped_models() == ["cifar_resnet20"] and shipped_models("fashion-mnist") == ["cifar_resnet20"]
    default = load_shipped("cifar_resnet20")
    fashion = load_shipped_baseline("cifar_resnet20", "fashion-mnist")
    assert default.meta["dataset"] == "shapes10" and fashion.meta["dataset"] == "fashion-mnist"
    assert load_shipped_baseline("cifar_resnet20", None).meta["dataset"] == "shapes10"
    assert float(next(default.model.parameters()).detach().mean()) == 1.0
    assert float(next(fashion.model.parameters()).detach().mean()) == 2.0


def test_no_shipped_baseline_for_the_dataset_is_a_clear_error(fake_assets, capsys):
    with pytest.raises(
        CheckpointError,
        match=r"no shipped baseline for 'cifar_resnet56' on fashion-mnist "
        r"\(shipped for fashion-mnist: cifar_resnet20\)",
    ):
        load_shipped("cifar_resnet56", dataset="fashion-mnist")
    with pytest.raises(
        CheckpointError, match=r"on cifar10 .*none; cifar_resnet20 has one for fashion-mnist, shapes10"
    ):
        load_shipped("cifar_resnet20", dataset="cifar10")
    code = main(["info", "cifar_resnet56", "--dataset", "fashion-mnist", "--checkpoint", "shipped"])
    err = capsys.readouterr().err
    assert code == 1 and "no shipped baseline for 'cifar_resnet56' on fashion-mnist" in err
    assert len(err.strip().splitlines()) == 1


def test_tampered_fashion_baseline_fails_its_sha256(fake_assets):
    path = fake_assets / "fashion-mnist" / "cifar_resnet20.pt"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match=r"does not match its sha256"):
        load_shipped("cifar_resnet20", dataset="fashion-mnist")
    load_shipped("cifar_resnet20")  # the shapes10 one is untouched


# --- the real files (Debian's dataset-fashion-mnist) --------------------------------------------------------

requires_debian = pytest.mark.skipif(
    not idx.available(),
    reason="dataset-fashion-mnist is not installed "
    f"({idx.DEBIAN_DIR}); `apt-get install dataset-fashion-mnist`",
)


@requires_debian
def test_debian_files_load_with_the_right_shapes():
    started = time.perf_counter()
    data = load_data("fashion-mnist", seed=0)
    seconds = time.perf_counter() - started
    assert data.size("train") == 54_000 and data.size("val") == 6_000 and data.size("test") == 10_000
    assert data.images["train"].shape == (54_000, 3, 32, 32) and data.images["train"].dtype == torch.uint8
    assert torch.bincount(data.labels["test"]).tolist() == [1000] * 10
    assert torch.bincount(data.labels["val"]).tolist() == [600] * 10
    x = data.images["train"][::6, 0].float() / 255  # the fixed normalisation is the padded train images' own
    assert abs(float(x.mean()) - idx.MEAN) < 0.003 and abs(float(x.std()) - idx.STD) < 0.003
    assert seconds < 10, f"loading the real Fashion-MNIST took {seconds:.1f}s"


@requires_debian
@pytest.mark.parametrize("arch", ["cifar_resnet20", "cifar_resnet56", "cifar_mobilenet_v2", "cifar_vgg16"])
def test_shipped_fashion_baseline_matches_its_manifest(arch):
    from engine.train import evaluate

    entry = checkpoints.read_manifest()["models"].get(manifest_key(arch, "fashion-mnist"))
    if entry is None:
        pytest.skip(f"no Fashion-MNIST baseline of {arch} is shipped")
    assert entry["dataset"] == "fashion-mnist" and entry["file"].startswith("fashion-mnist/")
    assert {"sha256", "test_acc", "command", "train_seconds"} <= set(entry)
    loaded = load_shipped(arch, dataset="fashion-mnist")
    assert loaded.meta["dataset"] == "fashion-mnist"
    data = load_data("fashion-mnist", seed=0)
    result = evaluate(loaded.model, data, "test", limit=1000)  # a first-1000 slice keeps this fast
    assert abs(result.top1 - entry["test_acc"]) < 4.0
