"""Where a search's candidates are scored: in this process (the default), in a local pool of worker processes,
or on Ray actors (this machine or a cluster). The search driver is the only caller, and the only writer of the
run store: workers score plans and return numbers, nothing else.

Every backend scores with the same protocol (engine.evaluate.Scorer: BN recalibration on the same train
images, val top-1 on the same val images), one torch thread per worker, so a plan gets the same score from any
backend. A worker that dies loses only the plans in flight: the executor starts a replacement and rescores
them (`rescored` counts them).

Workers receive the baseline model, the val and calibration tensors and the scoring settings once, when they
start; each then rebuilds the topology itself (group names are deterministic) and scores plan dicts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from engine.errors import TopoPruneError

BACKENDS = ("inline", "process", "ray")
MAX_RETRIES = 3
# fault injection for tests: a worker that finds this file deletes it and exits at once (one worker dies once)
FAULT_FILE_ENV = "TOPOPRUNE_FAULT_KILL_WORKER"


class ExecutorError(TopoPruneError):
    """A scoring backend that cannot start or keeps failing (the message names the fix)."""


class InlineExecutor:
    """Scores in this process with the context's scorer (or score_fn)."""

    backend = "inline"
    workers = 1

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.rescored = 0

    def score(self, plans: Sequence[Any]) -> list[float]:
        return [float(self.ctx.score(plan)) for plan in plans]

    def close(self) -> None:
        pass


def _payload(ctx: Any) -> dict[str, Any]:
    """What a worker needs to score plans exactly as this process would."""
    if ctx.score_fn is not None:
        raise ExecutorError(
            "a custom score_fn scores in this process only; drop workers (use 1) or score with the shared scorer"
        )
    scorer = ctx.get_scorer()
    val_x, val_y = scorer.val_tensors
    calib = scorer.calibration_inputs if scorer.config.recalibrate_bn else None
    shape = tuple(int(s) for s in val_x.shape[1:])
    return {
        "model": ctx.model,
        "input_shape": shape,
        "val_x": val_x.cpu(),
        "val_y": val_y.cpu(),
        "calib": None if calib is None else calib.cpu(),
        "scoring": scorer.config.to_dict(),
    }


class _WorkerScorer:
    """The scorer a worker builds from a payload (val/calibration tensors preset, no dataset needed)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        import torch

        from engine.evaluate import Scorer, ScoringConfig
        from engine.graph import build_topology

        torch.set_num_threads(1)  # a worker process: its own thread count, no one else's
        model = payload["model"].eval()
        topology = build_topology(model, torch.zeros(1, *payload["input_shape"]))
        self.scorer = Scorer(model, topology, None, ScoringConfig(**payload["scoring"]))
        self.scorer._val = (payload["val_x"], payload["val_y"])
        if payload["calib"] is not None:
            self.scorer._calib = payload["calib"]

    def score(self, plan_dict: dict[str, Any]) -> float:
        from engine.pruning import PruningPlan

        fault = os.environ.get(FAULT_FILE_ENV)
        if fault:
            try:
                os.remove(fault)
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return float(self.scorer.score(PruningPlan.from_dict(plan_dict)))


_WORKER: _WorkerScorer | None = None


def _init_worker(payload: dict[str, Any]) -> None:
    global _WORKER
    _WORKER = _WorkerScorer(payload)


def _score_in_worker(plan_dict: dict[str, Any]) -> float:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.score(plan_dict)


class ProcessExecutor:
    """A local pool of worker processes (multiprocessing 'spawn': safe beside the GUI's threads)."""

    backend = "process"

    def __init__(self, ctx: Any, workers: int) -> None:
        self.workers = int(workers)
        self.rescored = 0
        self._payload = _payload(ctx)
        self._pool = self._start()

    def _start(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._payload,),
        )

    def score(self, plans: Sequence[Any]) -> list[float]:
        from concurrent.futures.process import BrokenProcessPool

        dicts = [p.to_dict() for p in plans]
        results: list[float | None] = [None] * len(dicts)
        for attempt in range(MAX_RETRIES + 1):
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                break
            if attempt:
                self.rescored += len(todo)
            futures = {i: self._pool.submit(_score_in_worker, dicts[i]) for i in todo}
            broken = False
            for i, future in futures.items():
                try:
                    results[i] = float(future.result())
                except BrokenProcessPool:
                    broken = True
            if broken:  # a worker died: the pool is unusable; start a new one and rescore what is missing
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
        if any(r is None for r in results):
            raise ExecutorError(
                f"scoring workers died {MAX_RETRIES + 1} times in a row; check memory "
                "(`dmesg`), or run with --workers 1"
            )
        return [float(r) for r in results]  # type: ignore[arg-type]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Ray actors, each holding the baseline and the val split, scoring the plans it is sent.

    Without `address`, a local Ray starts on this machine, bound to 127.0.0.1, dashboard and usage stats off.
    """

    backend = "ray"

    def __init__(self, ctx: Any, workers: int, *, address: str | None = None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            raise ExecutorError(
                "--workers and --ray-address need Ray, an optional extra: pip install -e '.[ray]' "
                "(or use --executor process for a local process pool)"
            ) from None
        self.ray = ray
        self.workers = int(workers)
        self.rescored = 0
        self._started_here = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
                else:
                    ray.init(
                        num_cpus=self.workers,
                        include_dashboard=False,
                        _node_ip_address="127.0.0.1",
                        log_to_driver=False,
                        configure_logging=False,
                    )
            except Exception as exc:  # ConnectionError, timeouts: Ray's own messages are long
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise ExecutorError(
                    f"could not start or join {where} ({type(exc).__name__}); check the address and that "
                    "`ray status` answers there, or run without --ray-address"
                ) from None
            self._started_here = True
        self._payload_ref = ray.put(_payload(ctx))
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=0)(_RayScorer)
        self._actors = [self._actor_cls.remote(self._payload_ref) for _ in range(self.workers)]

    def score(self, plans: Sequence[Any]) -> list[float]:
        ray = self.ray
        dicts = [p.to_dict() for p in plans]
        results: list[float | None] = [None] * len(dicts)
        for attempt in range(MAX_RETRIES + 1):
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                break
            if attempt:
                self.rescored += len(todo)
            refs = {i: self._actors[k % len(self._actors)].score.remote(dicts[i]) for k, i in enumerate(todo)}
            dead: set[int] = set()
            for k, (i, ref) in enumerate(refs.items()):
                try:
                    results[i] = float(ray.get(ref))
                except ray.exceptions.RayActorError:
                    dead.add(k % len(self._actors))
            for index in dead:  # replace each dead actor; its plans are rescored on the next pass
                self._actors[index] = self._actor_cls.remote(self._payload_ref)
        if any(r is None for r in results):
            raise ExecutorError(
                f"Ray scoring actors died {MAX_RETRIES + 1} times in a row; check the cluster's "
                "memory and logs, or run with --workers 1"
            )
        return [float(r) for r in results]  # type: ignore[arg-type]

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        if self._started_here:
            self.ray.shutdown()


class _RayScorer:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.scorer = _WorkerScorer(payload)

    def score(self, plan_dict: dict[str, Any]) -> float:
        return self.scorer.score(plan_dict)

    def pid(self) -> int:
        return os.getpid()


def make_executor(
    ctx: Any, *, backend: str | None = None, workers: int = 1, address: str | None = None
) -> Any:
    """The executor a run asks for: inline for one worker, else a process pool or Ray.

    Raises:
        ExecutorError: workers < 1, an unknown backend, or a backend that cannot start.
    """
    workers = int(workers)
    if workers < 1:
        raise ExecutorError(f"--workers must be >= 1, got {workers}; 1 scores in this process")
    backend = backend or ("ray" if address else "inline" if workers == 1 else "ray")
    if backend not in BACKENDS:
        raise ExecutorError(f"unknown executor {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "inline":
        return InlineExecutor(ctx)
    if backend == "process":
        return ProcessExecutor(ctx, workers)
    return RayExecutor(ctx, workers, address=address)
