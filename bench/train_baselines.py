"""Train the shipped baselines on shapes10 with the project's own training code and record them in the manifest.

Usage: python bench/train_baselines.py cifar_resnet20 [--threads 1]
Writes assets/<arch>.pt and updates assets/manifest.json (file, sha256, test accuracy, val accuracy, the exact
command, wall time, machine). Model selection uses nothing but the final epoch; test is evaluated once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
import sys
import time

import torch

from engine.checkpoints import save_checkpoint, sha256_file
from engine.data import load_data
from engine.paths import assets_dir
from engine.train import TrainConfig, evaluate, train_model
from engine.zoo import build_model

RECIPES = {
    "cifar_resnet20": {"width": 1.0, "epochs": 15},
    "cifar_resnet56": {"width": 1.0, "epochs": 4},
    "cifar_mobilenet_v2": {"width": 0.5, "epochs": 6},
    "cifar_vgg16": {"width": 0.25, "epochs": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = dict(RECIPES[args.arch])
    if args.epochs:
        recipe["epochs"] = args.epochs
    data = load_data("shapes10", seed=0)
    model = build_model(args.arch, num_classes=data.num_classes, width=recipe["width"])
    config = TrainConfig(epochs=recipe["epochs"], lr=0.1, batch_size=128, seed=0, warmup_epochs=1.0)
    started = time.time()

    def report(progress):
        if progress.val is not None:
            print(f"{args.arch} epoch {progress.epoch}/{progress.epochs} loss {progress.loss:.3f} "
                  f"val {progress.val.top1:.2f}% ({time.time() - started:.0f}s)", flush=True)

    train_model(model, data, config, callback=report)
    seconds = time.time() - started
    val = evaluate(model, data, "val")
    test = evaluate(model, data, "test")
    path = assets_dir() / f"{args.arch}.pt"
    command = "python bench/train_baselines.py " + " ".join(sys.argv[1:])
    save_checkpoint(path, model, arch=args.arch, dataset="shapes10", num_classes=data.num_classes,
                    width=recipe["width"], metrics={"val_acc": val.top1, "test_acc": test.top1, "test_top5": test.top5},
                    recipe={**config.to_dict(), "width": recipe["width"], "data_seed": 0})
    entry = {
        "file": path.name,
        "sha256": sha256_file(path),
        "arch": args.arch,
        "width": recipe["width"],
        "dataset": "shapes10",
        "num_classes": data.num_classes,
        "epochs": recipe["epochs"],
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
        manifest["models"][args.arch] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
