"""Train the shipped baselines with the project's own training code and record them in the manifest.

Usage: python bench/train_baselines.py cifar_resnet20 [--dataset shapes10|fashion-mnist] [--threads 1]
Writes assets/<arch>.pt (shapes10) or assets/<dataset>/<arch>.pt, and updates assets/manifest.json under the key
`<arch>` (shapes10) or `<arch>@<dataset>` (file, sha256, test accuracy, val accuracy, the exact command, wall
time, machine). Model selection uses nothing but the final epoch; test is evaluated once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
import sys
import time

import torch

from engine.checkpoints import DEFAULT_DATASET, manifest_key, save_checkpoint, sha256_file
from engine.data import load_data
from engine.paths import assets_dir
from engine.train import TrainConfig, evaluate, train_model
from engine.zoo import build_model

RECIPES = {  # dataset -> arch -> recipe; sized for ~10-15 minutes on one CPU thread
    "shapes10": {
        "cifar_resnet20": {"width": 1.0, "epochs": 15},
        "cifar_resnet56": {"width": 1.0, "epochs": 4},
        "cifar_mobilenet_v2": {"width": 0.5, "epochs": 6},
        "cifar_vgg16": {"width": 0.25, "epochs": 8},
    },
    # Fashion-MNIST has 54,000 training images (after val), 422 batches an epoch: short schedules, capped batches.
    "fashion-mnist": {
        "cifar_resnet20": {"width": 1.0, "epochs": 2, "warmup_epochs": 0.3},
        "cifar_resnet56": {"width": 1.0, "epochs": 1, "max_batches": 120, "warmup_epochs": 0.15},
        "cifar_mobilenet_v2": {"width": 0.5, "epochs": 2, "warmup_epochs": 0.3},
        "cifar_vgg16": {"width": 0.25, "epochs": 2, "warmup_epochs": 0.3},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(RECIPES[DEFAULT_DATASET]))
    parser.add_argument("--dataset", choices=sorted(RECIPES), default=DEFAULT_DATASET)
    parser.add_argument(
        "--data-dir", default=None, help="dataset folder (fashion-mnist: default the Debian one)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument(
        "--max-batches", type=int, default=None, help="override the recipe's batches per epoch"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = dict(RECIPES[args.dataset][args.arch])
    if args.epochs:
        recipe["epochs"] = args.epochs
    if args.max_batches:
        recipe["max_batches"] = args.max_batches
    data = load_data(args.dataset, data_dir=args.data_dir, seed=0)
    model = build_model(args.arch, num_classes=data.num_classes, width=recipe["width"])
    config = TrainConfig(
        epochs=recipe["epochs"],
        lr=0.1,
        batch_size=128,
        seed=0,
        warmup_epochs=recipe.get("warmup_epochs", 1.0),
        max_batches_per_epoch=recipe.get("max_batches"),
    )
    started = time.time()

    def report(progress):
        if progress.val is not None:
            print(
                f"{args.arch} epoch {progress.epoch}/{progress.epochs} loss {progress.loss:.3f} "
                f"val {progress.val.top1:.2f}% ({time.time() - started:.0f}s)",
                flush=True,
            )

    train_model(model, data, config, callback=report)
    seconds = time.time() - started
    val = evaluate(model, data, "val")
    test = evaluate(model, data, "test")
    key = manifest_key(args.arch, args.dataset)
    file = f"{args.arch}.pt" if args.dataset == DEFAULT_DATASET else f"{args.dataset}/{args.arch}.pt"
    path = assets_dir() / file
    command = "python bench/train_baselines.py " + " ".join(sys.argv[1:])
    save_checkpoint(
        path,
        model,
        arch=args.arch,
        dataset=args.dataset,
        num_classes=data.num_classes,
        width=recipe["width"],
        metrics={"val_acc": val.top1, "test_acc": test.top1, "test_top5": test.top5},
        recipe={**config.to_dict(), "width": recipe["width"], "data_seed": 0},
    )
    entry = {
        "file": file,
        "sha256": sha256_file(path),
        "arch": args.arch,
        "width": recipe["width"],
        "dataset": args.dataset,
        "num_classes": data.num_classes,
        "epochs": recipe["epochs"],
        **({"max_batches_per_epoch": recipe["max_batches"]} if recipe.get("max_batches") else {}),
        "val_acc": round(val.top1, 2),
        "test_acc": round(test.top1, 2),
        "test_top5": round(test.top5, 2),
        "command": command,
        "train_seconds": round(seconds, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    manifest_path = assets_dir() / "manifest.json"
    with open(assets_dir() / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
        manifest["models"][key] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
