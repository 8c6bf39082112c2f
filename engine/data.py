"""Datasets and splits: the built-in procedural `shapes10`, Fashion-MNIST, CIFAR-10/100 from a folder, ImageFolder.

Every dataset comes as train / val / test, with val carved out of train (stratified, seeded) for search
rewards and model selection; test is for reporting only. Images are held in memory as uint8 and normalised
on the way out. Augmentation for training lives in `augment_batch`; nothing here trains or evaluates.

Fashion-MNIST (engine.idx reads it from Debian's `dataset-fashion-mnist` or --data-dir) meets the zoo's 3-channel
32x32 CIFAR models by a 2-px zero border (28 -> 32) and the grey channel replicated to 3, at load time, so
every dataset is (N, 3, H, W) uint8; it is normalised with the padded training images' mean and std.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from engine import idx
from engine.errors import DataError
from engine.paths import cache_dir

DATASETS: tuple[str, ...] = ("shapes10", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
SPLITS: tuple[str, ...] = ("train", "val", "test")
SHAPES10_CLASSES: tuple[str, ...] = (
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "bars",
    "corner",
    "star",
    "half_disk",
    "ellipse",
)
SHAPES10_VERSION = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class DataSplits:
    """A dataset split three ways, held in memory as uint8 images (N, 3, H, W) and int64 labels."""

    name: str
    num_classes: int
    input_size: int
    class_names: tuple[str, ...]
    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    on_access: Callable[[str], None] | None = None
    _float_cache: dict[tuple[str, int | None], torch.Tensor] = field(default_factory=dict, repr=False)

    def _touch(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if self.on_access is not None:
            self.on_access(split)

    def size(self, split: str) -> int:
        """Number of examples in a split (does not count as an access)."""
        return int(self.labels[split].shape[0])

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float32."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def tensors(self, split: str, *, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and labels of a split (the first `limit` examples), cached in memory."""
        self._touch(split)
        key = (split, limit)
        if key not in self._float_cache:
            self._float_cache[key] = self.normalise(self.images[split][:limit])
        return self._float_cache[key], self.labels[split][:limit]

    def loader(
        self,
        split: str,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        limit: int | None = None,
        seed: int = 0,
    ) -> DataLoader:
        """A DataLoader over normalised tensors of a split; shuffling is seeded."""
        x, y = self.tensors(split, limit=limit)
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator)


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip of a normalised batch, seeded by `generator`."""
    batch, _, height, width = x.shape
    flips = torch.rand(batch, generator=generator) < 0.5
    x = torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


# --- shapes10: procedural shapes in clutter -----------------------------------------------------------------


def _shape_masks(label: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary masks (N, S, S) of each image's shape in its own normalised, rotated frame (u, v)."""
    radius = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    masks = np.zeros_like(u, dtype=bool)
    tests = {
        0: radius < 1.0,
        1: np.maximum(np.abs(u), np.abs(v)) < 0.8,
        2: (v > -0.55) & (v < 1.0 - 1.9 * np.abs(u) / 1.1 * 1.0) & (np.abs(u) < 1.0),
        3: ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0)),
        4: (radius < 1.0) & (radius > 0.58),
        5: (np.abs(u) < 1.0) & (np.abs(np.abs(v) - 0.5) < 0.2),
        6: ((np.abs(u + 0.45) < 0.3) & (np.abs(v) < 0.9)) | ((np.abs(v - 0.6) < 0.3) & (np.abs(u) < 0.75)),
        7: radius < 0.5 + 0.45 * np.cos(5 * theta),
        8: (radius < 1.0) & (v > 0.0),
        9: (u / 1.05) ** 2 + (v / 0.42) ** 2 < 1.0,
    }
    for cls, test in tests.items():
        chosen = label == cls
        masks[chosen] = test[chosen]
    return masks


def generate_shapes10(
    n: int, *, seed: int, size: int = 32, hidden_fraction: float = 0.08, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Generate `n` class-balanced shapes10 images, deterministically from `seed`.

    Each image: a random-colour background with a smooth gradient, clutter blobs and strokes, one shape of
    the labelled class at a random position, scale (radius 5-12 px) and rotation (+-25 degrees) in a random
    colour, and Gaussian pixel noise. A `hidden_fraction` of images draws the shape at near-zero contrast
    under heavy noise, which keeps even a perfect classifier below 100%.

    Returns:
        images (n, 3, size, size) uint8 and labels (n,) int64.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPES10_CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    chunk_seeds = np.random.SeedSequence(seed).spawn(max(1, math.ceil(n / chunk)))
    for index, chunk_seed in enumerate(chunk_seeds):
        part = slice(index * chunk, min(n, (index + 1) * chunk))
        images[part] = _render_shapes(labels[part], np.random.default_rng(chunk_seed), size, hidden_fraction)
    return images, labels.astype(np.int64)


def _render_shapes(
    labels: np.ndarray, rng: np.random.Generator, size: int, hidden_fraction: float
) -> np.ndarray:
    n = labels.shape[0]

    def uniform(low: float, high, shape) -> np.ndarray:
        return rng.uniform(low, high, shape).astype(np.float32)

    grid = np.arange(size, dtype=np.float32) + 0.5
    gy, gx = np.meshgrid(grid, grid, indexing="ij")  # (size, size)

    background = rng.uniform(0, 255, (n, 3, 1, 1)).astype(np.float32)
    gradient = rng.normal(0, 40, (n, 3, 1, 1)).astype(np.float32) * (gx / size - 0.5)[None, None]
    images = (background + gradient).astype(np.float32)

    # Clutter: small blobs and thin strokes that resemble no class as a whole.
    for _ in range(3):
        present = rng.uniform(size=(n, 1, 1)) < 0.6
        cx, cy = uniform(0, size, (2, n, 1, 1))
        rx, ry = uniform(0.8, 2.5, (2, n, 1, 1))
        blob = (((gx - cx) / rx) ** 2 + ((gy - cy) / ry) ** 2 < 1.0) & present
        colour = uniform(0, 255, (n, 3, 1, 1))
        np.copyto(images, colour, where=blob[:, None])
    for _ in range(2):
        present = rng.uniform(size=(n, 1, 1)) < 0.5
        angle = uniform(0, math.pi, (n, 1, 1))
        cx, cy = uniform(0, size, (2, n, 1, 1))
        distance = np.abs((gx - cx) * np.sin(angle) - (gy - cy) * np.cos(angle))
        stroke = (distance < 0.6) & present
        colour = uniform(0, 255, (n, 3, 1, 1))
        np.copyto(images, colour, where=stroke[:, None])

    # The labelled shape.
    radius = uniform(5.0, 12.0, (n, 1, 1))
    cx = uniform(radius[:, 0, 0] + 1, size - radius[:, 0, 0] - 1, n)[:, None, None]
    cy = uniform(radius[:, 0, 0] + 1, size - radius[:, 0, 0] - 1, n)[:, None, None]
    angle = uniform(-math.radians(25), math.radians(25), (n, 1, 1))
    dx, dy = (gx - cx) / radius, (gy - cy) / radius
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -(-dx * np.sin(angle) + dy * np.cos(angle))  # image y points down; v points up
    mask = _shape_masks(labels, u, v)

    hidden = rng.uniform(size=n) < hidden_fraction
    # Luminance contrast (shared sign across channels) plus a random hue shift; near zero for hidden shapes.
    away_from_bound = np.where(background.mean(axis=1, keepdims=True) > 127.5, -1.0, 1.0)  # (n, 1, 1, 1)
    contrast = rng.uniform(70, 150, (n, 1, 1, 1)) * away_from_bound
    contrast = contrast + rng.uniform(-50, 50, (n, 3, 1, 1))
    contrast[hidden] = rng.uniform(-6, 6, (int(hidden.sum()), 3, 1, 1))
    shape_colour = np.clip(background + contrast, 0, 255).astype(np.float32)
    np.copyto(images, shape_colour, where=mask[:, None])

    noise_sigma = uniform(4, 20, (n, 1, 1, 1))
    noise_sigma[hidden] = 40.0
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    noise *= noise_sigma
    images += noise
    np.clip(images, 0, 255, out=images)
    return images.astype(np.uint8)


def _load_shapes10(*, seed: int, train_size: int, test_size: int) -> tuple[np.ndarray, ...]:
    path = cache_dir() / "shapes10" / f"v{SHAPES10_VERSION}-seed{seed}-train{train_size}-test{test_size}.npz"
    if path.exists():
        try:
            with np.load(path) as cached:
                return cached["train_x"], cached["train_y"], cached["test_x"], cached["test_y"]
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a half-written cache: regenerate it
    train_x, train_y = generate_shapes10(train_size, seed=seed * 2 + 1)
    test_x, test_y = generate_shapes10(test_size, seed=seed * 2 + 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    partial.replace(path)
    return train_x, train_y, test_x, test_y


# --- folders ------------------------------------------------------------------------------------------------


def _load_cifar(name: str, data_dir: Path) -> tuple[np.ndarray, ...]:
    from engine.zoo import import_torchvision

    torchvision = import_torchvision()
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    arrays = []
    for train in (True, False):
        try:
            dataset = cls(str(data_dir), train=train, download=False)
        except RuntimeError:
            try:
                dataset = cls(str(data_dir), train=train, download=True)
            except Exception as exc:
                folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
                raise DataError(
                    f"{name} is not in {data_dir} (or is corrupt) and could not be downloaded "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); put the extracted '{folder}' "
                    "folder there, or run once while online"
                ) from exc
        arrays += [
            np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)),
            np.asarray(dataset.targets, np.int64),
        ]
    return tuple(arrays)


def _read_image_folder(root: Path, input_size: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    from PIL import Image

    images, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = (
            sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        for file in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "error", Image.DecompressionBombWarning
                    )  # refused, not warned about
                    with Image.open(
                        file
                    ) as image:  # the header only: mode and size are known before decoding
                        mode, size = image.mode, image.size
                        array = None
                        if mode == "RGB" and size == (input_size, input_size):
                            image.load()
                            array = np.asarray(image)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise DataError(
                    f"{file} was refused: it declares more pixels than PIL's limit of "
                    f"{Image.MAX_IMAGE_PIXELS:,} ({exc}); remove it or resize it to "
                    f"{input_size}x{input_size}"
                ) from None
            except OSError as exc:
                raise DataError(f"{file} is not a readable image ({exc}); remove or replace it") from exc
            if mode != "RGB":
                raise DataError(
                    f"{file} has image mode {mode}, expected RGB; convert the folder's images to RGB "
                    "(e.g. PIL `Image.convert('RGB')`)"
                )
            if size != (input_size, input_size):
                raise DataError(
                    f"{file} is {size[0]}x{size[1]}, expected {input_size}x{input_size}; resize the images or "
                    f"pass --input-size {size[0]} if they are square"
                )
            images.append(array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders")
    return np.stack(images), np.asarray(labels, np.int64)


def _load_image_folder(data_dir: Path, input_size: int) -> tuple[np.ndarray, ...]:
    train_root = data_dir / "train"
    test_root = next((data_dir / n for n in ("test", "val") if (data_dir / n).is_dir()), None)
    if not train_root.is_dir() or test_root is None:
        raise DataError(
            f"{data_dir} must hold train/ and test/ (or val/) folders, each with one sub-folder per class"
        )
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{train_root} has no class sub-folders; put each class's images in train/<class>/")
    train_x, train_y = _read_image_folder(train_root, input_size, classes)
    test_x, test_y = _read_image_folder(test_root, input_size, classes)
    return train_x, train_y, test_x, test_y, classes


def _stratified_val(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a class-balanced, seeded val subset of `labels`."""
    rng = np.random.default_rng(seed + 7919)
    val = np.zeros(labels.shape[0], dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = max(1, int(round(fraction * members.size))) if members.size > 1 else 0
        val[rng.permutation(members)[:take]] = True
    return val


def load_data(
    name: str = "shapes10",
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    input_size: int | None = None,
    train_size: int = 10_000,
    test_size: int = 2_000,
) -> DataSplits:
    """Load a dataset with train / val (carved from train) / test splits.

    Args:
        name: ``shapes10`` (built in), ``fashion-mnist``, ``cifar10``, ``cifar100`` or ``imagefolder``.
        data_dir: folder of CIFAR batches, of an ImageFolder tree (train/<class>/, test/<class>/), or of the
            four Fashion-MNIST idx files (default for fashion-mnist: the Debian package's folder).
        seed: seeds the val carve-out (and shapes10's generation).
        val_fraction: fraction of train held out as val, per class.
        input_size: expected square image size for imagefolder (default 32).
        train_size, test_size: shapes10 only.

    Raises:
        DataError: unknown dataset, missing or empty folder, images of the wrong size or mode, a missing
            Fashion-MNIST package or a corrupt idx file.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if name == "shapes10":
        train_x, train_y, test_x, test_y = _load_shapes10(
            seed=seed, train_size=train_size, test_size=test_size
        )
        classes, mean, std = list(SHAPES10_CLASSES), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    elif name == "fashion-mnist":
        if input_size not in (None, idx.PADDED_SIZE):
            raise DataError(
                f"fashion-mnist is served at {idx.PADDED_SIZE}x{idx.PADDED_SIZE} (28x28 zero-padded), "
                f"not {input_size}; drop --input-size or pass {idx.PADDED_SIZE}"
            )
        train_x, train_y, test_x, test_y = idx.load_fashion_mnist(data_dir)
        classes, mean, std = list(idx.CLASSES), (idx.MEAN,) * 3, (idx.STD,) * 3
    else:
        if data_dir is None:
            raise DataError(f"dataset {name} needs --data-dir pointing at its folder")
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist; check the path given to --data-dir")
        if not any(root.iterdir()):
            raise DataError(f"data folder {root} is empty; put the dataset there first")
        if name in ("cifar10", "cifar100"):
            train_x, train_y, test_x, test_y = _load_cifar(name, root)
            classes = [str(i) for i in range(10 if name == "cifar10" else 100)]
            mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
        else:
            train_x, train_y, test_x, test_y, classes = _load_image_folder(root, input_size or 32)
            mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    val_mask = _stratified_val(train_y, val_fraction, seed)
    images = {"train": train_x[~val_mask], "val": train_x[val_mask], "test": test_x}
    labels = {"train": train_y[~val_mask], "val": train_y[val_mask], "test": test_y}
    return DataSplits(
        name=name,
        num_classes=len(classes),
        input_size=int(train_x.shape[-1]),
        class_names=tuple(classes),
        images={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in images.items()},
        labels={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in labels.items()},
        mean=mean,
        std=std,
    )


def fingerprint(data: DataSplits) -> str:
    """A short hash of a dataset's identity and contents, for cache keys."""
    digest = hashlib.sha256(data.name.encode())
    for split in SPLITS:
        digest.update(data.images[split][:64].numpy().tobytes())
        digest.update(str(data.size(split)).encode())
    return digest.hexdigest()[:16]
