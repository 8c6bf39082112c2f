"""Safe checkpoint I/O: a state_dict plus metadata, loaded only through tensor-only paths.

A user's model is an architecture chosen by name plus weights as `.safetensors` or a state_dict read with
``torch.load(..., weights_only=True)``. Nothing here unpickles arbitrary objects, calls torch.export.load or
loads TorchScript. Shipped baselines are listed in assets/manifest.json with their sha256.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.errors import CheckpointError
from engine.outputs import write_atomic
from engine.paths import assets_dir
from engine.zoo import build_model

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_DATASET = "shapes10"  # the dataset whose baselines are keyed by bare architecture name


@dataclass
class LoadedCheckpoint:
    """A model with weights loaded, and the metadata saved beside them (arch, dataset, metrics, recipe)."""

    model: nn.Module
    meta: dict


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    dataset: str,
    num_classes: int,
    width: float = 1.0,
    metrics: dict | None = None,
    recipe: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Save `model`'s state_dict with metadata, atomically (a crash never leaves a half-written file).

    The file loads with ``torch.load(path, weights_only=True)``: metadata holds only str/int/float/list/dict.

    Raises:
        OutputError: the file cannot be written (no space, read-only, a folder); an older file stays intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "dataset": dataset,
        "num_classes": int(num_classes),
        "width": float(width),
        "metrics": metrics or {},
        "recipe": recipe or {},
        **(extra or {}),
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return write_atomic(path, lambda tmp: torch.save({"state_dict": state, "meta": meta}, tmp))


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors (and metadata, if any) from a .safetensors file or a weights-only torch file.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` nesting and strips a ``module.`` prefix.

    Raises:
        CheckpointError: missing file, not a checkpoint, truncated, or holding objects that would run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _strip_prefix(load_file(str(path))), {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a valid .safetensors file ({exc}); re-export the weights"
            ) from exc
    check_archive_sizes(path)  # before torch.load: a compressed archive must not inflate in memory
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # garbage, not a forbidden object
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (not a torch.save file); "
                "provide a state_dict saved with torch.save or a .safetensors file"
            ) from exc
        raise CheckpointError(
            f"{path} was refused: it holds Python objects that could run code when loaded "
            f"({str(exc).splitlines()[0][:160]}); save only the weights, e.g. torch.save(model.state_dict(), path), "
            "or convert it to .safetensors"
        ) from exc
    except (
        Exception
    ) as exc:  # torch.load raises many types on garbage (RuntimeError, EOFError, IndexError, ...)
        message = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        kind = "truncated or corrupt" if path.stat().st_size > 0 else "empty"
        if "TorchScript" in message:
            raise CheckpointError(
                f"{path} was refused: it is a TorchScript archive, which runs code when loaded and cannot be "
                "pruned; save the weights with torch.save(model.state_dict(), path) or as .safetensors"
            ) from exc
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (it looks {kind}: {message}); "
            "provide a state_dict saved with torch.save or a .safetensors file"
        ) from exc
    meta: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("meta"), dict):
        meta = obj["meta"]
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not hold a state_dict (a mapping of parameter names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    return _strip_prefix(obj), meta


ARCHIVE_SLACK_BYTES = (
    1 << 20
)  # zip headers and the pickle; tensors saved by torch.save are stored, never deflated


def check_archive_sizes(path: str | Path) -> None:
    """Refuse a torch.save zip archive whose entries declare more bytes than the file holds.

    torch.save stores tensors uncompressed, so an honest archive's content is never larger than the file; a
    deflated one (a 2 MB file that inflates to 2 GiB) is refused from the zip directory alone, before reading.

    Raises:
        CheckpointError: naming the declared and the actual size.
    """
    import zipfile

    path = Path(path)
    if not zipfile.is_zipfile(path):
        return  # a legacy (non-zip) torch file or garbage: torch.load's own checks follow
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    declared = sum(e.file_size for e in entries)
    size = path.stat().st_size
    compressed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED and e.file_size > 0]
    if declared > size + ARCHIVE_SLACK_BYTES or any("/data/" in name for name in compressed):
        raise CheckpointError(
            f"{path} was refused: its archive declares {declared:,} bytes of content in a {size:,}-byte file "
            "(compressed tensors, which torch.save never writes); save the weights with "
            "torch.save(model.state_dict(), path) or as .safetensors"
        )


def _torch_load(path: Path) -> object:
    # mmap: tensors stay on disk until load_weights has checked their shapes and copies them.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    allow_nonfinite: bool = False,
) -> None:
    """Load `state` into `model` strictly; on any mismatch raise before touching a single weight.

    Args:
        allow_nonfinite: load weights holding NaN or Inf (with a NonFiniteWeightsWarning) instead of refusing.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches; an integer or bool tensor
            where the model holds floats (naming the dtype); NaN or Inf values unless ``allow_nonfinite``.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:2])})")
        raise CheckpointError(
            f"{source} does not fit this architecture: {'; '.join(parts)}; choose the architecture, width and "
            "number of classes it was trained with"
        )
    _check_values(expected, state, source=source, allow_nonfinite=allow_nonfinite)
    model.load_state_dict(state, strict=True)


class NonFiniteWeightsWarning(UserWarning):
    """Weights holding NaN or Inf were loaded because the caller allowed it."""


def _check_values(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, source: str, allow_nonfinite: bool
) -> None:
    """Refuse tensors whose dtype cannot hold the model's floats, and (unless allowed) NaN or Inf values."""
    import warnings

    for key, want in expected.items():
        got = state[key]
        if want.is_floating_point() and not (got.is_floating_point() or got.is_complex()):
            raise CheckpointError(
                f"{source}: tensor {key} is {str(got.dtype).removeprefix('torch.')}, but the model holds "
                f"{str(want.dtype).removeprefix('torch.')} there; save the float weights, not a quantized or "
                "integer copy"
            )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not bad:
        return
    listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    if not allow_nonfinite:
        raise CheckpointError(
            f"{source} holds NaN or Inf values in {len(bad)} tensors ({listed}); it is probably from a diverged "
            "training run: use an earlier checkpoint, or pass --allow-nonfinite to load it anyway"
        )
    warnings.warn(
        f"{source} holds NaN or Inf values in {len(bad)} tensors ({listed}); its accuracy is meaningless",
        NonFiniteWeightsWarning,
        stacklevel=3,
    )


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    width: float | None = None,
    allow_nonfinite: bool = False,
) -> LoadedCheckpoint:
    """Build the architecture and load weights from `path`.

    Architecture, class count and width come from the arguments, else from the checkpoint's metadata.

    Raises:
        CheckpointError: unreadable file, unsafe pickle, an archive that would inflate, unknown architecture,
            weights that do not fit, integer tensors where floats belong, NaN/Inf unless ``allow_nonfinite``.
    """
    state, meta = read_state_dict(path)
    arch = arch or meta.get("arch")
    if not arch:
        raise CheckpointError(f"{path} does not say which architecture it is for; pass the model name")
    if meta.get("arch") and meta["arch"] != arch:
        raise CheckpointError(
            f"{path} was saved for {meta['arch']!r}, not {arch!r}; choose {meta['arch']!r} or another checkpoint"
        )
    num_classes = num_classes or meta.get("num_classes") or _infer_num_classes(state) or 10
    width = width or meta.get("width") or 1.0
    model = build_model(arch, num_classes=int(num_classes), width=float(width))
    load_weights(model, state, source=str(path), allow_nonfinite=allow_nonfinite)
    model.eval()
    meta = {**meta, "arch": arch, "num_classes": int(num_classes), "width": float(width), "path": str(path)}
    return LoadedCheckpoint(model=model, meta=meta)


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The class count from the last 2-D weight (the classifier) of a state_dict."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


# --- shipped baselines --------------------------------------------------------------------------------------


def read_manifest() -> dict:
    """The shipped-baseline manifest: {"models": {key: {file, sha256, test_acc, command, seconds, dataset, ...}}}.

    A key is the architecture for a shapes10 baseline (``cifar_resnet20``) and ``arch@dataset`` for any other
    dataset (``cifar_resnet20@fashion-mnist``); ``file`` is relative to assets/.
    """
    path = assets_dir() / MANIFEST_NAME
    if not path.exists():
        return {"models": {}}
    return json.loads(path.read_text())


def manifest_key(arch: str, dataset: str = DEFAULT_DATASET) -> str:
    """The manifest key of the baseline of `arch` trained on `dataset`."""
    return arch if dataset == DEFAULT_DATASET else f"{arch}@{dataset}"


def shipped_models(dataset: str = DEFAULT_DATASET) -> list[str]:
    """Architectures with a shipped baseline trained on `dataset`."""
    models = read_manifest()["models"]
    return sorted(e.get("arch", k) for k, e in models.items() if _entry_dataset(k, e) == dataset)


def shipped_datasets(arch: str) -> list[str]:
    """Datasets that `arch` has a shipped baseline for."""
    models = read_manifest()["models"]
    return sorted({_entry_dataset(k, e) for k, e in models.items() if e.get("arch", k.split("@")[0]) == arch})


def _entry_dataset(key: str, entry: dict) -> str:
    return entry.get("dataset") or (key.split("@", 1)[1] if "@" in key else DEFAULT_DATASET)


def shipped_entry(arch: str, dataset: str = DEFAULT_DATASET) -> dict:
    """The manifest entry of the baseline of `arch` on `dataset`.

    Raises:
        CheckpointError: no baseline is shipped for that (architecture, dataset), naming the ones that are.
    """
    entry = read_manifest()["models"].get(manifest_key(arch, dataset))
    if entry is None:
        available = ", ".join(shipped_models(dataset)) or "none"
        others = [d for d in shipped_datasets(arch) if d != dataset]
        elsewhere = f"; {arch} has one for {', '.join(others)}" if others else ""
        raise CheckpointError(
            f"no shipped baseline for {arch!r} on {dataset} (shipped for {dataset}: {available}{elsewhere}); "
            f"train one with `topoprune train {arch} --dataset {dataset} --epochs N --out FILE` and pass "
            "--checkpoint FILE"
        )
    return entry


def shipped_path(arch: str, dataset: str = DEFAULT_DATASET) -> Path:
    """Where the baseline of `arch` on `dataset` lives (see `shipped_entry` for the error)."""
    return assets_dir() / shipped_entry(arch, dataset)["file"]


def load_shipped(arch: str, *, dataset: str = DEFAULT_DATASET, verify: bool = True) -> LoadedCheckpoint:
    """Load the shipped baseline of `arch` trained on `dataset`, checking its sha256 against the manifest first."""
    entry = shipped_entry(arch, dataset)
    path = assets_dir() / entry["file"]
    if not path.is_file():
        raise CheckpointError(
            f"shipped checkpoint {path} is missing; restore it with `git checkout -- assets/`"
        )
    if verify and sha256_file(path) != entry["sha256"]:
        raise CheckpointError(
            f"shipped checkpoint {path} does not match its sha256 in the manifest; "
            "restore it with `git checkout -- assets/`"
        )
    loaded = load_checkpoint(path, arch=arch)
    loaded.meta.update({"shipped": True, "manifest": entry})
    return loaded
