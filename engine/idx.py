"""Fashion-MNIST from its idx files: find the four `*-ubyte(.gz)` files, read and validate them, and turn the
1-channel 28x28 images into the zoo's 3-channel 32x32 input (zero border of 2 px, grey replicated to RGB).

Only reading and shaping; splitting into train / val / test and normalisation are engine.data's job.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from engine.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
FILES: dict[str, tuple[str, str]] = {  # split -> (images, labels) file stems
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
IMAGE_SIZE = 28
PADDED_SIZE = 32
# Mean and std of the 60,000 real training images after zero-padding to 32x32 (the same for all 3 channels);
# fixed here so every subset, folder and shipped baseline sees the same normalisation.
MEAN = 0.2190
STD = 0.3318
_UBYTE = 0x08  # idx dtype code of unsigned bytes, the only one Fashion-MNIST uses
_DTYPE_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}
_FIX = "re-download it or reinstall the package (`apt-get install --reinstall dataset-fashion-mnist`)"
_memo: dict[tuple, tuple[np.ndarray, ...]] = {}


def find_files(data_dir: str | Path | None = None) -> dict[str, tuple[Path, Path]]:
    """The (images, labels) file of each split, in `data_dir` or else the Debian package's folder.

    Each file may be gzipped (`name.gz`, as shipped) or not (`name`).

    Raises:
        DataError: the folder or one of the four files is missing.
    """
    if data_dir is None:
        root = DEBIAN_DIR
        if not root.is_dir():
            raise DataError(
                f"Fashion-MNIST is not installed ({root} is missing); run `apt-get install {DEBIAN_PACKAGE}` "
                "or pass --data-dir with the four *-ubyte.gz files"
            )
    else:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist; check the path given to --data-dir")
    found: dict[str, tuple[Path, Path]] = {}
    missing: list[str] = []
    for split, stems in FILES.items():
        paths = []
        for stem in stems:
            path = next((root / n for n in (f"{stem}.gz", stem) if (root / n).is_file()), None)
            if path is None:
                missing.append(f"{stem}.gz")
            paths.append(path)
        found[split] = (paths[0], paths[1])
    if missing:
        hint = (
            f"reinstall it (`apt-get install --reinstall {DEBIAN_PACKAGE}`)"
            if data_dir is None
            else "put the four Fashion-MNIST files there (gzipped or not)"
        )
        raise DataError(f"{root} lacks {', '.join(missing)}; {hint}")
    return found


def available(data_dir: str | Path | None = None) -> bool:
    """Whether the four Fashion-MNIST files are present (in `data_dir`, or the Debian folder)."""
    try:
        find_files(data_dir)
    except DataError:
        return False
    return True


def read_idx(path: str | Path, *, ndim: int) -> np.ndarray:
    """Read an unsigned-byte idx file (gzipped or not) with `ndim` dimensions, checking its header.

    Raises:
        DataError: unreadable or truncated gzip, wrong magic number, dtype or dimension count, or a body
            whose length does not match the header's dimensions.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path} is not a readable gzip file ({exc}); it is truncated or corrupt: {_FIX}"
        ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number {raw[:4].hex() or 'empty'}); {_FIX}")
    dtype_code, dims = raw[2], raw[3]
    if dtype_code != _UBYTE:
        name = _DTYPE_NAMES.get(dtype_code, f"unknown code 0x{dtype_code:02x}")
        raise DataError(f"{path} holds {name} values, expected unsigned bytes (0x08); {_FIX}")
    if dims != ndim:
        raise DataError(
            f"{path} has {dims} dimensions, expected {ndim}; check that the file names are not swapped"
        )
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} bytes); {_FIX}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {state}: {len(raw)} bytes for shape {shape}, expected {expected}; {_FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}; it is not Fashion-MNIST: {_FIX}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path.name} has {images.shape[0]} images but {labels_path.name} has {labels.shape[0]} labels; "
            f"the two files come from different sets: {_FIX}"
        )
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(
            f"{labels_path} holds label {int(labels.max())}, expected 0-{len(CLASSES) - 1}; {_FIX}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_path} holds no images; {_FIX}")
    return images, labels.astype(np.int64)


def to_rgb32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 3, 32, 32) uint8: a 2-px zero border, the grey channel replicated three times."""
    border = (PADDED_SIZE - IMAGE_SIZE) // 2
    padded = np.zeros((images.shape[0], 3, PADDED_SIZE, PADDED_SIZE), dtype=np.uint8)
    padded[:, :, border : border + IMAGE_SIZE, border : border + IMAGE_SIZE] = images[:, None]
    return padded


def load_fashion_mnist(
    data_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images (N, 3, 32, 32) uint8 and labels (N,) int64 of Fashion-MNIST.

    Decoded arrays are memoised in-process, keyed by the files' paths, sizes and modification times, so a
    long-lived process (the GUI, a benchmark) decodes them once.

    Raises:
        DataError: missing package or files, or a corrupt, truncated or mismatched idx file.
    """
    files = find_files(data_dir)
    key = tuple(
        (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for pair in files.values() for p in pair
    )
    if key not in _memo:
        train_x, train_y = _read_split(*files["train"])
        test_x, test_y = _read_split(*files["test"])
        _memo.clear()  # hold one copy at most (the full set is ~55 MB decoded)
        _memo[key] = (train_x, train_y, test_x, test_y)
    train_x, train_y, test_x, test_y = _memo[key]
    return to_rgb32(train_x), train_y, to_rgb32(test_x), test_y
