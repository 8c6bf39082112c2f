"""CLI commands about one model: ``info`` (costs and topology summary), ``graph`` (export the op graph) and
``train`` (train a baseline and save a checkpoint). Pruning lives in prune_cmds, searches in run_cmds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from engine.cli.context import CommandContext
from engine.errors import TopoPruneError
from engine.outputs import check_output


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``info``, ``graph`` and ``train`` to the sub-command parser."""
    from engine.cli import _non_negative_int, _positive_float, _positive_int

    p = commands.add_parser(
        "info",
        parents=[common],
        help="a model's params, MACs, layers, groups and stages",
        description="Print a model's parameter count, MACs/FLOPs and topology summary.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="zoo name (cifar_resnet20, resnet50, ...)")
    p.add_argument("--list", action="store_true", help="list every model name and exit")
    p.add_argument("--methods", action="store_true", help="list every pruning method and exit")
    p.set_defaults(handler=cmd_info)

    p = commands.add_parser(
        "graph",
        parents=[common],
        help="export a model's op graph (.json or .graphml)",
        description="Build the topology graph of a model and write it to a file.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--export", required=True, metavar="FILE", help="output file: .json (node-link) or .graphml"
    )
    p.set_defaults(handler=cmd_graph)

    p = commands.add_parser(
        "train",
        parents=[common],
        help="train a model and save a checkpoint",
        description="Train a model on the dataset, evaluate on test, save a checkpoint.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--epochs", type=_positive_int, required=True, metavar="N")
    p.add_argument("--out", required=True, metavar="FILE", help="checkpoint file to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--lr", type=_positive_float, default=0.1, help="peak learning rate (default: 0.1)")
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="N")
    p.add_argument(
        "--max-batches-per-epoch", type=_positive_int, metavar="N", help="cap each epoch (quick runs)"
    )
    p.add_argument("--no-augment", action="store_true", help="train without crop/flip augmentation")
    p.add_argument(
        "--eval-limit", type=_non_negative_int, metavar="N", help="evaluate on the first N test images"
    )
    p.set_defaults(handler=cmd_train)


# ----------------------------------------------------------------------------------------------- info
def cmd_info(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune info MODEL``: params, macs, flops, layers, groups, stages, graph_build_s."""
    a = ctx.args
    if a.list:
        from engine.zoo import list_models

        models = list_models()
        return {"models": models}, lambda r: "\n".join(r["models"])
    if a.methods:
        from engine.methods import list_methods

        methods = [
            {
                "name": m.name,
                "kind": m.kind,
                "description": m.description,
                "options": {k: o.default for k, o in m.options.items()},
            }
            for m in list_methods()
        ]
        return {"methods": methods}, lambda r: "\n".join(
            f"{m['name']:<14} {m['kind']:<8} {m['description']}" for m in r["methods"]
        )
    if not a.model:
        raise TopoPruneError("info needs a MODEL name (or --list to see them)")
    import torch

    from engine.cli.inputs import build_topology_for
    from engine.cost import count_costs

    loaded = ctx.load_model(a.model)
    model = loaded.model.eval()
    start = time.perf_counter()
    topology = build_topology_for(ctx, loaded)  # first: a model that cannot run fails here with a ModelError
    graph_build_s = time.perf_counter() - start
    costs = count_costs(model, ctx.example_inputs(loaded))
    groups = list(getattr(topology, "groups", []))
    result = {
        "model": a.model,
        "weights": loaded.weights,
        "input_size": loaded.input_size,
        "num_classes": loaded.num_classes,
        "params": int(costs.params),
        "macs": int(costs.macs),
        "flops": int(getattr(costs, "flops", 2 * costs.macs)),
        "memory_bytes": int(getattr(costs, "memory_bytes", 0) or 0),
        **_quant_costs(model, ctx.example_inputs(loaded)),
        "layers": len(getattr(topology, "layers", [])),
        "groups": len(groups),
        "prunable_groups": sum(1 for g in groups if getattr(g, "prunable", False)),
        "stages": len(getattr(topology, "stages", [])),
        "nodes": topology.graph.number_of_nodes(),
        "edges": topology.graph.number_of_edges(),
        "graph_build_s": graph_build_s,
        "torch": torch.__version__,
    }
    return result, _human_info


def _quant_costs(model: Any, example: Any) -> dict[str, Any]:
    """Weight size in KB and BitOPs (MACs x weight bits x activation bits; fp32 here), engine.quant_cost."""
    from engine.quant_cost import count_quant_cost

    cost = count_quant_cost(model, example)
    return {"size_kb": cost.size_kb, "bitops": int(cost.bitops)}


def _si(n: float) -> str:
    """4089184256 -> '4.09 G'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def _human_info(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{r['model']} ({r['weights']} weights, {r['input_size']}x{r['input_size']} input, {r['num_classes']} classes)",
            f"  params     {r['params']:,}  ({_si(r['params'])})",
            f"  size       {r['size_kb']:.1f} KB (fp32 weights), {_si(r['bitops'])} BitOPs",
            f"  MACs       {r['macs']:,}  ({_si(r['macs'])}; FLOPs = 2 x MACs = {_si(r['flops'])})",
            f"  layers     {r['layers']}   groups {r['groups']} ({r['prunable_groups']} prunable)   stages {r['stages']}",
            f"  graph      {r['nodes']} nodes, {r['edges']} edges, built in {r['graph_build_s']:.3f} s",
        ]
    )


# ----------------------------------------------------------------------------------------------- graph
def cmd_graph(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune graph MODEL --export FILE``: nodes, edges, groups, path."""
    from engine.cli.inputs import build_topology_for
    from engine.graph import export_graph

    a = ctx.args
    path = Path(a.export).expanduser()
    if path.suffix.lower() not in (".json", ".graphml"):
        raise TopoPruneError(f"--export {path} must end in .json or .graphml")
    if not path.parent.is_dir():
        raise TopoPruneError(
            f"folder {path.parent} does not exist; create it or choose another --export path"
        )
    loaded = ctx.load_model(a.model)
    topology = build_topology_for(ctx, loaded)
    written = Path(export_graph(topology, path))
    result = {
        "model": a.model,
        "nodes": topology.graph.number_of_nodes(),
        "edges": topology.graph.number_of_edges(),
        "groups": len(topology.groups),
        "prunable_groups": sum(1 for g in topology.groups if g.prunable),
        "path": str(written.resolve()),
    }
    return (
        result,
        lambda r: f"wrote {r['path']}: {r['nodes']} nodes, {r['edges']} edges, {r['groups']} groups",
    )


# ----------------------------------------------------------------------------------------------- train
def cmd_train(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune train MODEL --epochs N --out FILE``: test_acc, path."""
    from engine.services import TrainRequest, train_baseline
    from engine.train import TrainConfig

    a = ctx.args
    out = check_output(a.out, force=a.force)  # before any training: a whole run is not thrown away at the end
    data = ctx.data()
    loaded = ctx.load_model(a.model, need_data=True)
    extra: dict[str, Any] = {}
    if ctx.device() != "cpu":
        if "device" in getattr(TrainConfig, "__dataclass_fields__", {}):
            extra["device"] = ctx.device()
        else:
            ctx.log(
                f"topoprune: warning: engine.train has no device option yet; training on cpu, not {a.device}"
            )
    config = TrainConfig(
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        seed=a.seed,
        max_batches_per_epoch=a.max_batches_per_epoch,
        augment=not a.no_augment,
        **extra,
    )
    request = TrainRequest(
        a.model, out, config, a.dataset, width=loaded.width, eval_limit=a.eval_limit, command=ctx.command_line
    )
    bar = ctx.progress(total=100, desc=f"train {a.model} (%)")

    def on_progress(p: Any) -> None:
        bar.update_to(round(100 * p.fraction), 100, f"epoch {p.epoch} loss {p.loss:.3f} lr {p.lr:.3g}")

    saved = train_baseline(request, data, model=loaded.model, callback=on_progress)
    bar.close()
    result = {
        "model": a.model,
        "dataset": a.dataset,
        "epochs": a.epochs,
        "test_acc": saved.test_acc,
        "val_acc": saved.val_acc,
        "epoch_losses": saved.epoch_losses,
        "images_per_s": saved.images_per_s,
        "seconds": saved.seconds,
        "path": str(saved.path),
    }
    return (
        result,
        lambda r: (
            f"trained {r['model']} on {r['dataset']} for {r['epochs']} epochs in "
            f"{r['seconds']:.1f} s: test top-1 {r['test_acc']:.2f}%, val {r['val_acc']:.2f}%\n"
            f"saved {r['path']}"
        ),
    )
