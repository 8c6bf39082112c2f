"""What the CLI and the GUI both do, done once: load a model with its provenance, train and save a baseline,
list the datasets, name the export formats and their file suffixes.

Typed inputs and outputs (dataclasses), no printing, no argparse and no streamlit: the CLI turns these into
JSON and progress bars, the GUI into widgets and caches. Search runs and their events belong to engine.search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from engine.errors import CheckpointError, TopoPruneError

__all__ = [
    "EXPORT_SUFFIX",
    "LoadedModel",
    "ModelProvenance",
    "ModelRequest",
    "SavedBaseline",
    "TrainRequest",
    "WeightsSource",
    "baseline_path",
    "dataset_names",
    "export_formats",
    "load_model",
    "load_shipped_baseline",
    "save_baseline",
    "train_baseline",
]

WeightsSource = Literal["shipped", "file", "random", "trained"]

# Export formats (engine.pruning.export.FORMATS) and the file suffix each is written with.
EXPORT_SUFFIX: dict[str, str] = {"state_dict": ".pt", "pt2": ".pt2", "onnx": ".onnx"}


def export_formats() -> dict[str, str]:
    """Every export format the engine writes, mapped to its file suffix (``{"state_dict": ".pt", ...}``)."""
    from engine.pruning.export import FORMATS

    return {name: EXPORT_SUFFIX[name] for name in FORMATS}


def dataset_names(*, installed_only: bool = False) -> list[str]:
    """The datasets `load_data` reads (engine.data.DATASETS), shapes10 first.

    Args:
        installed_only: leave out fashion-mnist where Debian's dataset-fashion-mnist is not installed (a
            folder given with --data-dir still works; this is for pickers that offer what works now).
    """
    from engine.data import DATASETS

    names = list(DATASETS)
    if installed_only and "fashion-mnist" in names:
        from engine.idx import available

        if not available():
            names.remove("fashion-mnist")
    return names


# --------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class ModelRequest:
    """Which model to load and with which weights.

    Attributes:
        name: a zoo model name.
        weights: ``"random"`` (seeded init), ``"shipped"`` (the baseline in assets/ trained on `dataset`) or the
            path of a checkpoint file.
        dataset: the dataset the model is used with (picks the shipped baseline; recorded in the provenance).
        num_classes: classifier size; default: the checkpoint's, else 10 for the CIFAR zoo and 1000 for
            torchvision models.
        width: channel width multiplier.
        input_size: the square input size; default: the model's (32 for the CIFAR zoo, 224 for torchvision).
        shipped_fallback: with ``weights="shipped"`` and nothing shipped for (name, dataset), build a random-init
            model (the GUI's default model) instead of raising CheckpointError (the CLI's contract).
        seed: seeds the random initialisation.
        allow_nonfinite: load a checkpoint holding NaN or Inf (with a NonFiniteWeightsWarning) instead of
            refusing it.
    """

    name: str
    weights: str = "random"
    dataset: str | None = None
    num_classes: int | None = None
    width: float = 1.0
    input_size: int | None = None
    shipped_fallback: bool = False
    seed: int = 0
    allow_nonfinite: bool = False


@dataclass(frozen=True)
class ModelProvenance:
    """Where a loaded model's weights came from.

    Attributes:
        name: the zoo model name.
        source: ``shipped`` (assets/ baseline), ``file`` (a checkpoint given by the user), ``trained`` (a
            checkpoint TopoPrune's trainer wrote, with its recipe) or ``random`` (seeded init).
        weights: ``"random"``, ``"shipped"`` or the checkpoint path (the CLI's ``weights`` field).
        sha256: of the weights file (None for random init).
        dataset: the dataset the weights were trained on (the request's for random init).
        input_size / num_classes / width: what the model is built for.
        meta: the checkpoint's metadata (arch, metrics, recipe, manifest entry); empty for random init.
        note: why the source differs from the request (a shipped request that fell back to random init).
    """

    name: str
    source: WeightsSource
    weights: str
    sha256: str | None
    dataset: str | None
    input_size: int
    num_classes: int
    width: float
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    note: str = ""

    @property
    def trained(self) -> bool:
        """True for weights that were trained (anything but random init)."""
        return self.source != "random"

    @property
    def test_acc(self) -> float | None:
        """The test top-1 (%) recorded with the weights, if any."""
        acc = (self.meta.get("metrics") or {}).get("test_acc")
        return float(acc) if acc is not None else None

    def label(self) -> str:
        """One line for a person: ``shipped baseline (test top-1 91.2% on shapes10)``, ``untrained ...``."""
        acc = f"test top-1 {self.test_acc:.1f}% on {self.dataset}" if self.test_acc is not None else ""
        if self.source == "random":
            return "untrained (random init)" + (f": {self.note}" if self.note else "")
        if self.source == "shipped":
            return "shipped baseline" + (f" ({acc})" if acc else "")
        return f"weights from {Path(self.weights).name}" + (f" ({acc})" if acc else "")


@dataclass
class LoadedModel:
    """A model (eval mode) and its provenance; the flat fields are what the CLI commands read."""

    model: nn.Module
    provenance: ModelProvenance

    @property
    def name(self) -> str:
        return self.provenance.name

    @property
    def num_classes(self) -> int:
        return self.provenance.num_classes

    @property
    def width(self) -> float:
        return self.provenance.width

    @property
    def input_size(self) -> int:
        return self.provenance.input_size

    @property
    def weights(self) -> str:
        return self.provenance.weights

    @property
    def meta(self) -> dict[str, Any]:
        return self.provenance.meta


def load_shipped_baseline(name: str, dataset: str | None = None):
    """The shipped baseline of model `name` trained on `dataset` (``--checkpoint shipped``; default shapes10).

    The one resolution of ``shipped`` that the CLI and the GUI share.

    Raises:
        CheckpointError: none is shipped for that (model, dataset), or its file fails the sha256 check.
    """
    from engine.checkpoints import DEFAULT_DATASET, load_shipped

    return load_shipped(name, dataset=dataset or DEFAULT_DATASET)


def load_model(request: ModelRequest) -> LoadedModel:
    """Build ``request.name`` with the requested weights and say where they came from.

    Raises:
        CheckpointError: no shipped baseline for (model, dataset) (unless ``shipped_fallback``), a checkpoint
            file that is missing, unreadable or does not fit the model.
        ModelError: unknown model name or bad width.
    """
    from engine.zoo import CIFAR_MODELS, build_model, default_input_size

    r = request
    input_size = int(r.input_size or default_input_size(r.name))
    dataset = r.dataset
    note = ""
    if r.weights == "shipped" and r.shipped_fallback and r.name not in _shipped_names(dataset):
        note = f"no shipped baseline for this model on {dataset or 'shapes10'} yet"
    elif r.weights != "random":
        loaded, weights, source = _load_weights(r)
        meta = _meta_dict(loaded.meta)
        num_classes = int(meta.get("num_classes") or r.num_classes or 10)
        sha = (meta.get("manifest") or {}).get("sha256") if source == "shipped" else None
        if sha is None:
            from engine.checkpoints import sha256_file

            sha = sha256_file(meta.get("path") or weights)
        provenance = ModelProvenance(
            r.name,
            source,
            weights,
            sha,
            meta.get("dataset") or dataset,
            input_size,
            num_classes,
            float(meta.get("width") or r.width),
            meta,
        )
        return LoadedModel(loaded.model.eval(), provenance)
    # Without a checkpoint a model gets the class count it is known by (ImageNet's 1000 for torchvision).
    num_classes = int(r.num_classes or (10 if r.name in CIFAR_MODELS else 1000))
    model = build_model(r.name, num_classes=num_classes, width=r.width, seed=r.seed).eval()
    provenance = ModelProvenance(
        r.name, "random", "random", None, dataset, input_size, num_classes, r.width, {}, note
    )
    return LoadedModel(model, provenance)


def _shipped_names(dataset: str | None) -> list[str]:
    from engine.checkpoints import DEFAULT_DATASET, shipped_models

    try:
        return list(shipped_models(dataset or DEFAULT_DATASET))
    except TopoPruneError:  # an unreadable manifest means nothing is shipped
        return []


def _load_weights(r: ModelRequest) -> tuple[Any, str, WeightsSource]:
    if r.weights == "shipped":
        return load_shipped_baseline(r.name, r.dataset), "shipped", "shipped"
    from engine.checkpoints import load_checkpoint

    path = Path(r.weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path given to --checkpoint")
    kwargs: dict[str, Any] = {"arch": r.name, "allow_nonfinite": r.allow_nonfinite}
    if r.num_classes:
        kwargs["num_classes"] = r.num_classes
    if r.width != 1.0:
        kwargs["width"] = r.width
    try:
        loaded = load_checkpoint(path, **kwargs)
    except TopoPruneError:
        raise
    except Exception as exc:  # torch.load raises odd types on odd bytes (IndexError on text files)
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {detail}); provide a "
            f"state_dict saved with torch.save or a .safetensors file"
        ) from exc
    recipe = (loaded.meta or {}).get("recipe") or {}
    return loaded, str(path), "trained" if recipe.get("epochs") else "file"


def _meta_dict(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if isinstance(meta, dict):
        return meta
    to_dict = getattr(meta, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return dict(getattr(meta, "__dict__", {}))


# --------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainRequest:
    """A baseline to train on a dataset and where to save it.

    Attributes:
        name: a zoo model name (built with random init from `seed`, or `model` when given).
        out: the checkpoint file to write.
        config: the training recipe (engine.train.TrainConfig).
        dataset: the dataset name recorded in the checkpoint.
        width: channel width multiplier.
        eval_limit: evaluate on the first N test/val images (None: all).
        command: the command line that asked for it (recorded in the recipe).
    """

    name: str
    out: Path
    config: Any
    dataset: str
    width: float = 1.0
    eval_limit: int | None = None
    command: str = ""


@dataclass(frozen=True)
class SavedBaseline:
    """A trained baseline on disk: where, how good (test/val top-1 %), how long, and its file's sha256."""

    path: Path
    test_acc: float
    test_top5: float
    val_acc: float
    seconds: float
    sha256: str
    epoch_losses: list[float] = field(default_factory=list)
    images_per_s: float = 0.0


def baseline_path(home: Path, name: str, dataset: str) -> Path:
    """Where the GUI keeps a baseline it trained: ``$TOPOPRUNE_HOME/baselines/<model>-<dataset>-<time>.pt``."""
    return Path(home) / "baselines" / f"{name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}.pt"


def save_baseline(
    model: nn.Module, data: Any, request: TrainRequest, *, trained: Any = None, seconds: float | None = None
) -> SavedBaseline:
    """Evaluate a trained `model` on test and val, then save it with its metrics and recipe (atomically).

    Args:
        model: the trained model (saved from the CPU).
        data: the DataSplits it was trained on.
        request: what was trained; ``request.config`` goes into the recipe.
        trained: the TrainResult, for the losses and throughput it reports.
        seconds: wall time of training (default: the TrainResult's).

    Raises:
        TopoPruneError: the output folder does not exist.
    """
    from engine.checkpoints import save_checkpoint, sha256_file
    from engine.train import evaluate

    out = Path(request.out).expanduser()
    if not out.parent.is_dir():
        raise TopoPruneError(f"folder {out.parent} does not exist; create it or choose another --out path")
    test = evaluate(model, data, "test", limit=request.eval_limit)
    val = evaluate(model, data, "val", limit=request.eval_limit)
    seconds = float(seconds if seconds is not None else getattr(trained, "seconds", 0.0))
    c = request.config
    recipe = {
        "epochs": c.epochs,
        "lr": c.lr,
        "batch_size": c.batch_size,
        "seed": c.seed,
        "max_batches_per_epoch": c.max_batches_per_epoch,
        "augment": c.augment,
        "dataset": request.dataset,
        "seconds": seconds,
        "command": request.command,
    }
    metrics = {"test_acc": test.top1, "test_top5": test.top5, "val_acc": val.top1}
    num_classes = int(data.num_classes)
    path = save_checkpoint(
        out,
        model.cpu(),
        arch=request.name,
        dataset=request.dataset,
        num_classes=num_classes,
        width=request.width,
        metrics=metrics,
        recipe=recipe,
    )
    return SavedBaseline(
        Path(path).resolve(),
        test.top1,
        test.top5,
        val.top1,
        seconds,
        sha256_file(path),
        list(getattr(trained, "epoch_losses", []) or []),
        float(getattr(trained, "images_per_s", 0.0) or 0.0),
    )


def train_baseline(
    request: TrainRequest,
    data: Any,
    *,
    model: nn.Module | None = None,
    callback: Callable[[Any], None] | None = None,
) -> SavedBaseline:
    """Train a baseline on `data` (val reported per epoch), evaluate it and save it with its recipe.

    Args:
        request: model, recipe and output file.
        data: the DataSplits to train on.
        model: the model to train in place (default: `request.name` built with random init from the seed).
        callback: receives engine.train.TrainProgress after every step.

    Raises:
        TopoPruneError: the output folder does not exist (checked before training starts).
    """
    from engine.train import train_model
    from engine.zoo import build_model

    out = Path(request.out).expanduser()
    if not out.parent.is_dir():
        raise TopoPruneError(f"folder {out.parent} does not exist; create it or choose another --out path")
    if model is None:
        model = build_model(
            request.name, num_classes=data.num_classes, width=request.width, seed=request.config.seed
        )
    start = time.perf_counter()
    trained = train_model(model, data, request.config, callback=callback)
    return save_baseline(model, data, request, trained=trained, seconds=time.perf_counter() - start)
