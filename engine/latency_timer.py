"""A robust paired timer: how much faster is model B than model A, on a machine other programs share.

It times forwards of A and B interleaved (A B, B A, A B, ..., in eval + inference mode, on the calling thread's current
torch thread setting, which it never changes) and returns the median of the per-pair ratios B/A. It does not
decide anything and keeps no state; engine.latency_table and engine.pruning.budget build on it.

Which clock. With one intra-op thread (torch.get_num_threads() == 1) all the forward's compute runs on the
calling thread, so the clock is that thread's CPU time (time.thread_time_ns): it is what a single-threaded
deployment pays, and it is immune to being descheduled, since time spent waiting for a core while other
processes run is not charged to the thread. With more threads the work is spread over a pool the caller's
clock cannot see, so the clock is wall time (time.perf_counter_ns, with torch.cuda.synchronize on CUDA).
Cache and memory contention still inflate either clock a little and drift with the load; pairing each B with
the A timed just before it and taking the median of the ratios cancels the drift and ignores the outliers.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

CPU_CLOCK = "thread_cpu"
WALL_CLOCK = "wall"


@dataclass(frozen=True)
class PairedTiming:
    """The result of `measure_paired`.

    Attributes:
        ratio: median over pairs of (B ms / A ms): B's latency as a fraction of A's.
        ratio_se: standard error of that median (1.2533 x the scaled MAD of the ratios / sqrt(pairs)).
        a_ms: median forward time of A (ms, on `clock`).
        b_ms: median forward time of B.
        pairs: number of A/B pairs timed.
        threads: torch.get_num_threads() of the calling thread during the timing.
        clock: "thread_cpu" (one thread) or "wall".
    """

    ratio: float
    ratio_se: float
    a_ms: float
    b_ms: float
    pairs: int
    threads: int
    clock: str

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def clock_for(threads: int) -> str:
    """The clock `measure_paired` uses at `threads` intra-op threads."""
    return CPU_CLOCK if threads == 1 else WALL_CLOCK


def _example(input_shape: tuple[int, ...], batch: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)  # a private stream: the global RNG is left alone
    return torch.randn(batch, *input_shape, generator=generator).to(device)


def _forward_ns(model: nn.Module, x: torch.Tensor, clock: str, device: str) -> int:
    if clock == CPU_CLOCK:
        start = time.thread_time_ns()
        model(x)
        return time.thread_time_ns() - start
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter_ns()
    model(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter_ns() - start


def measure_paired(
    a: nn.Module,
    b: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    device: str = "cpu",
    min_run_time_s: float = 0.2,
    min_pairs: int = 7,
    max_pairs: int = 400,
    warmup: int = 2,
) -> PairedTiming:
    """Time `a` and `b` interleaved and return the median ratio of b's forward time to a's.

    Args:
        a: the reference model (typically the baseline); not modified (a deep copy in eval mode is timed).
        b: the model compared with it; not modified.
        input_shape: per-sample input shape (C, H, W).
        batch: batch size.
        device: "cpu" or "cuda".
        min_run_time_s: keep timing pairs until this much time (on the chosen clock) went into them.
        min_pairs: at least this many pairs.
        max_pairs: at most this many pairs.
        warmup: untimed forwards of each model first (allocations, kernel selection).

    Raises:
        ValueError: batch < 1, min_pairs < 1 or max_pairs < min_pairs.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if min_pairs < 1 or max_pairs < min_pairs:
        raise ValueError(f"need 1 <= min_pairs <= max_pairs, got {min_pairs} and {max_pairs}")
    threads = torch.get_num_threads()  # the caller's setting, never changed here
    clock = clock_for(threads)
    models = [copy.deepcopy(m).eval().to(device) for m in (a, b)]
    x = _example(tuple(input_shape), batch, device)
    times: tuple[list[int], list[int]] = ([], [])
    budget_ns = min_run_time_s * 1e9
    spent = 0
    with torch.inference_mode():
        for _ in range(max(warmup, 0)):
            for m in models:
                m(x)
        while len(times[0]) < max_pairs and (len(times[0]) < min_pairs or spent < budget_ns):
            order = (0, 1) if len(times[0]) % 2 == 0 else (1, 0)  # A B, B A, A B, ...: order effects cancel
            for i in order:
                times[i].append(_forward_ns(models[i], x, clock, device))
            spent += times[0][-1] + times[1][-1]
    ratios = [tb / max(ta, 1) for ta, tb in zip(*times, strict=True)]
    ratio = statistics.median(ratios)
    mad = statistics.median(abs(r - ratio) for r in ratios) * 1.4826
    se = 1.2533 * mad / len(ratios) ** 0.5
    return PairedTiming(
        ratio=float(ratio),
        ratio_se=float(se),
        a_ms=statistics.median(times[0]) / 1e6,
        b_ms=statistics.median(times[1]) / 1e6,
        pairs=len(ratios),
        threads=threads,
        clock=clock,
    )
