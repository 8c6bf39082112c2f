"""What a model or a plan costs: MACs (FLOPs = 2 x MACs), params, activation memory and CPU latency.

MACs count the multiply-accumulates of conv and linear layers (the papers' convention); memory_bytes is the
conv/linear output activation memory; all per sample (batch 1). `plan_macs`/`plan_costs` are analytic
(a Topology's cost table, microseconds), `count_costs` counts a real model with FlopCounterMode; the two
agree exactly. This module measures; it never edits models (engine.pruning does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.graph.topology import Topology
from engine.graph.trace import as_input_tuple, meta_copy, meta_inputs


@dataclass
class LayerCost:
    """One conv/linear layer's MACs, parameters (weight + bias) and output activation bytes (batch 1)."""

    macs: int
    params: int
    memory_bytes: int


@dataclass
class CostReport:
    """Whole-model costs per sample; `per_layer` maps conv/linear module names to their share."""

    macs: int
    flops: int
    params: int
    memory_bytes: int
    per_layer: dict[str, LayerCost] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready totals (per-layer rows included)."""
        return {
            "macs": self.macs,
            "flops": self.flops,
            "params": self.params,
            "memory_bytes": self.memory_bytes,
            "per_layer": {k: vars(v) for k, v in self.per_layer.items()},
        }


def _keep_of(keep) -> Mapping[str, int]:
    return getattr(keep, "keep", keep)


def plan_macs(topology: Topology, keep) -> int:
    """Analytic MACs (batch 1) of the model pruned to `keep` (a {group name: channels kept} map or a plan).

    Raises:
        ValueError: the keep map names an unknown group or a count outside [1, channels].
    """
    return topology.table.macs(topology.keep_vector(_keep_of(keep)))


def plan_costs(topology: Topology, keep) -> CostReport:
    """Analytic MACs, params, memory and per-layer costs of the model pruned to `keep`.

    Raises:
        ValueError: the keep map names an unknown group or a count outside [1, channels].
    """
    table = topology.table
    result = table.evaluate(topology.keep_vector(_keep_of(keep)))
    per_layer = {
        spec.name: LayerCost(
            int(round(result.layer_macs[i])),
            int(round(result.layer_params[i])),
            int(round(result.layer_memory_bytes[i])),
        )
        for i, spec in enumerate(table.specs)
        if spec.kind in ("conv", "linear")
    }
    return CostReport(result.macs, 2 * result.macs, result.params, result.memory_bytes, per_layer)


def count_costs(model: nn.Module, example_inputs: torch.Tensor | tuple) -> CostReport:
    """Count a real model's costs: FlopCounterMode for MACs, parameter tensors for params, hooks for memory.

    Runs on a weightless meta copy at batch 1, so it is cheap and leaves `model` untouched.

    Raises:
        ValueError: `example_inputs` is not a tensor or tuple of tensors.
    """
    from torch.utils.flop_counter import FlopCounterMode

    inputs = meta_inputs(as_input_tuple(example_inputs))
    meta_model = meta_copy(model).eval()
    per_layer: dict[str, LayerCost] = {}
    handles = []
    for name, module in meta_model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):

            def hook(mod, args, out, name=name):
                row = per_layer.setdefault(name, LayerCost(0, sum(p.numel() for p in mod.parameters()), 0))
                row.memory_bytes += out.numel() * out.element_size()

            handles.append(module.register_forward_hook(hook))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            meta_model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    root = type(meta_model).__name__
    counts = counter.get_flop_counts()
    for name, row in per_layer.items():
        row.macs = int(sum(counts.get(f"{root}.{name}", {}).values()) // 2)
    macs = int(counter.get_total_flops() // 2)
    params = sum(p.numel() for p in model.parameters())
    memory = sum(row.memory_bytes for row in per_layer.values())
    return CostReport(macs, 2 * macs, params, memory, per_layer)


@dataclass
class Latency:
    """CPU latency of one forward pass over a batch, from torch.utils.benchmark."""

    median_ms: float
    iqr_ms: float
    mean_ms: float
    batch: int
    threads: int
    runs: int
    noisy: bool  # torch.utils.benchmark flagged a high IQR or too few runs

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return dict(vars(self))


def measure_latency(
    model: nn.Module,
    input_size: int | tuple[int, ...],
    *,
    batch: int = 1,
    threads: int | None = None,
    min_run_time_s: float = 1.0,
    channels_last: bool = False,
    device: str = "cpu",
) -> Latency:
    """Median forward latency of `model` in eval/inference mode (warm-up included, model not modified).

    Args:
        model: the model; a deepcopy is timed, in eval mode.
        input_size: spatial size (e.g. 32) or a full per-sample shape (C, H, W).
        batch: batch size.
        threads: torch threads for the measurement (default: torch.get_num_threads()).
        min_run_time_s: measuring time budget (blocked_autorange).
        channels_last: run in channels_last memory format.
        device: "cpu" or "cuda".

    Raises:
        ValueError: batch < 1, threads < 1, or a malformed input_size.
    """
    import copy

    import torch.utils.benchmark as benchmark

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if isinstance(input_size, int):
        shape = (3, input_size, input_size)
    elif len(input_size) in (2, 3):
        shape = (3, *input_size) if len(input_size) == 2 else tuple(input_size)
    else:
        raise ValueError(f"input_size must be an int or (C, H, W), got {input_size!r}")
    threads = threads or torch.get_num_threads()
    timed = copy.deepcopy(model).eval().to(device)
    x = torch.randn(batch, *shape, device=device)
    if channels_last:
        timed = timed.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        timed(x)  # warm-up outside the timer (first-call allocations)
    timer = benchmark.Timer(
        stmt="with torch.inference_mode(): model(x)",
        globals={"model": timed, "x": x, "torch": torch},
        num_threads=threads,
    )
    m = timer.blocked_autorange(min_run_time=min_run_time_s)
    return Latency(
        median_ms=m.median * 1e3,
        iqr_ms=m.iqr * 1e3,
        mean_ms=m.mean * 1e3,
        batch=batch,
        threads=threads,
        runs=len(m.times),
        noisy=bool(m.has_warnings),
    )


@dataclass
class LatencyStats:
    """Batch latency of one model over `repeats` independent measurements (each a blocked_autorange median).

    One measurement on a shared machine is noise-prone (the same model measured 3.7, 22 and 33 ms in one
    session); the spread over repeats says how far to trust the median.
    """

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    batch: int
    threads: int

    @property
    def iqr_ms(self) -> float:
        """Interquartile range over the repeats."""
        return self.p75_ms - self.p25_ms

    @property
    def noisy(self) -> bool:
        """True when the interquartile range exceeds 10 % of the median (re-measure on a quieter machine)."""
        return self.iqr_ms > 0.1 * self.median_ms

    def to_dict(self) -> dict:
        """JSON-ready fields, with iqr_ms and noisy."""
        return {**vars(self), "iqr_ms": self.iqr_ms, "noisy": self.noisy}


def measure_latency_stats(
    models: Mapping[str, nn.Module],
    input_size: int | tuple[int, ...],
    *,
    repeats: int = 5,
    batch: int = 1,
    threads: int | None = None,
    min_run_time_s: float = 0.5,
    device: str = "cpu",
) -> dict[str, LatencyStats]:
    """Latency statistics of several models measured in interleaved rounds (models not modified).

    Each of `repeats` rounds times every model once (blocked_autorange, `min_run_time_s / repeats` each), in an
    order that alternates between rounds, so a load spike hits the models alike and a baseline measured next to
    a candidate is comparable with it.

    Args:
        models: name -> model, e.g. {"baseline": model, "pruned": pruned}; deep copies are timed in eval mode.
        input_size: spatial size (e.g. 32) or a full per-sample shape (C, H, W).
        repeats: independent measurements per model (>= 1); the statistics are over these.
        batch: batch size.
        threads: torch threads (default: torch.get_num_threads()).
        min_run_time_s: total measuring time per model, split over the repeats.
        device: "cpu" or "cuda".

    Returns:
        name -> LatencyStats, in the order of `models`.

    Raises:
        ValueError: no models, repeats < 1, batch < 1, threads < 1, or a malformed input_size.
    """
    import copy

    import torch.utils.benchmark as benchmark

    if not models:
        raise ValueError("measure_latency_stats needs at least one model, got none")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if isinstance(input_size, int):
        shape = (3, input_size, input_size)
    elif len(input_size) in (2, 3):
        shape = (3, *input_size) if len(input_size) == 2 else tuple(input_size)
    else:
        raise ValueError(f"input_size must be an int or (C, H, W), got {input_size!r}")
    threads = threads or torch.get_num_threads()
    x = torch.randn(batch, *shape, device=device)
    timers = {}
    for name, model in models.items():
        timed = copy.deepcopy(model).eval().to(device)
        with torch.inference_mode():
            timed(x)  # warm-up outside the timer
        timers[name] = benchmark.Timer(
            stmt="with torch.inference_mode(): model(x)",
            globals={"model": timed, "x": x, "torch": torch},
            num_threads=threads,
        )
    samples: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            m = timers[name].blocked_autorange(min_run_time=min_run_time_s / repeats)
            samples[name].append(m.median * 1e3)
    out = {}
    for name, times in samples.items():
        q = torch.tensor(times, dtype=torch.float64).quantile(
            torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
        )
        out[name] = LatencyStats(
            median_ms=float(q[1]),
            p25_ms=float(q[0]),
            p75_ms=float(q[2]),
            min_ms=min(times),
            max_ms=max(times),
            repeats=repeats,
            batch=batch,
            threads=threads,
        )
    return out
