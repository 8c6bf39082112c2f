import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import SHAPES10_CLASSES, augment_batch, generate_shapes10, load_data
from engine.errors import DataError


def test_shapes10_is_deterministic():
    a_x, a_y = generate_shapes10(300, seed=3)
    b_x, b_y = generate_shapes10(300, seed=3)
    c_x, _ = generate_shapes10(300, seed=4)
    assert np.array_equal(a_x, b_x) and np.array_equal(a_y, b_y)
    assert not np.array_equal(a_x, c_x)
    assert a_x.dtype == np.uint8 and a_x.shape == (300, 3, 32, 32)


def test_shapes10_chunks_do_not_change_the_images():
    whole, labels = generate_shapes10(700, seed=5, chunk=512)
    again, _ = generate_shapes10(700, seed=5, chunk=512)
    assert np.array_equal(whole, again)
    assert np.bincount(labels).tolist() == [70] * 10


def test_some_shapes10_images_are_hidden_by_design():
    """A few images show the shape at near-zero contrast: the noise there is far above the clean images'."""
    images, _ = generate_shapes10(1000, seed=2, hidden_fraction=0.5)
    clean, _ = generate_shapes10(1000, seed=2, hidden_fraction=0.0)

    # High-frequency energy (pixel-to-pixel differences) is larger for the heavily-noised hidden images.
    def roughness(x):
        return np.abs(np.diff(x.astype(np.float32), axis=-1)).mean()

    assert roughness(images) > 1.3 * roughness(clean)


def test_splits_are_balanced_and_disjoint(shapes10):
    assert shapes10.num_classes == 10 and shapes10.class_names == SHAPES10_CLASSES
    for split in ("train", "val", "test"):
        counts = torch.bincount(shapes10.labels[split], minlength=10)
        assert counts.min() == counts.max(), split
    assert (shapes10.size("train"), shapes10.size("val"), shapes10.size("test")) == (9000, 1000, 2000)
    train = {bytes(x.numpy()) for x in shapes10.images["train"]}
    val = {bytes(x.numpy()) for x in shapes10.images["val"]}
    test = {bytes(x.numpy()) for x in shapes10.images["test"]}
    assert not train & val and not val & test and not train & test


def test_shapes10_is_cached_on_disk(fresh_home):
    load_data("shapes10", train_size=100, test_size=50)
    cached = list((fresh_home / "cache" / "shapes10").glob("*.npz"))
    assert len(cached) == 1
    again = load_data("shapes10", train_size=100, test_size=50)
    assert again.size("train") + again.size("val") == 100


def test_access_hook_records_every_split_touched(small_shapes10):
    seen = []
    small_shapes10.on_access = seen.append
    try:
        small_shapes10.tensors("val", limit=10)
        small_shapes10.loader("train", batch_size=8)
    finally:
        small_shapes10.on_access = None
    assert seen == ["val", "train"]


def test_augment_keeps_shape_and_is_seeded(small_shapes10):
    x, _ = small_shapes10.tensors("train", limit=16)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def _write_folder(root, size=(32, 32), mode="RGB", per_class=3):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                colour = (i * 40, 10, 200) if mode == "RGB" else i * 40
                Image.new(mode, size, colour).save(folder / f"{i}.png")


def test_image_folder_loads(tmp_path):
    _write_folder(tmp_path, per_class=5)
    data = load_data("imagefolder", data_dir=tmp_path)
    assert data.class_names == ("cat", "dog") and data.num_classes == 2
    assert data.size("train") + data.size("val") == 10 and data.size("test") == 10


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "is empty"),
        (lambda root: _write_folder(root, size=(20, 24)), "is 20x24, expected 32x32"),
        (lambda root: _write_folder(root, mode="L"), "image mode L, expected RGB"),
    ],
)
def test_bad_image_folders_get_clear_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        load_data("imagefolder", data_dir=root)


def test_cifar10_from_a_folder(tmp_path, monkeypatch):
    """Our CIFAR path through torchvision on a folder in the official batch format (made here)."""
    import pickle

    from engine.zoo import import_torchvision

    tv = import_torchvision()
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # Our files cannot match the official md5 sums; everything after the checksum is the real loading code.
    monkeypatch.setattr(tv.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    data = load_data("cifar10", data_dir=tmp_path)
    assert data.size("train") + data.size("val") == 100 and data.size("test") == 20
    assert data.images["test"].shape[1:] == (3, 32, 32)


def test_unknown_dataset_and_missing_data_dir():
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_data("mnist")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_data("cifar10")
