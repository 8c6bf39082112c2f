"""RunStore: the SQLite record of runs, episodes, candidates and sensitivity tables.

One file (WAL mode) under ``$TOPOPRUNE_HOME``; every write is one transaction, so a crash loses at most the
write in flight. It stores what it is given and never computes pruning results itself.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from engine.errors import StoreError
from engine.store import codec
from engine.store.database import Database, UnknownRunError
from engine.store.database import now_iso as _now
from engine.store.process import hostname, pid_alive, process_start_ticks
from engine.store.records import EpisodeRecord, RunRecord
from engine.store.schema import RUN_STATUSES
from engine.store.tables import CandidateTables, filters

RESUMABLE_STATUSES: tuple[str, ...] = ("paused", "interrupted")


class RunStore(CandidateTables, Database):
    """Thread-safe access to the run store: runs and their episodes, candidates, sensitivity tables.

    Opening checks the file (``PRAGMA quick_check``), applies pending schema migrations and marks runs whose
    process has died as ``interrupted``. One RunStore may be shared by the threads of a process; several
    processes may open the same file at once (SQLite WAL; writes wait up to ``timeout_s`` for each other).

    Args:
        path: the SQLite file; default ``topoprune_home() / "runs.sqlite"``.
        timeout_s: how long a write waits for another process's lock before raising StoreLockedError;
            default 10 s ($TOPOPRUNE_STORE_TIMEOUT_S overrides).
        mark_interrupted: run ``mark_interrupted()`` on open (skipped silently if the store is locked).
        retry_s: how long an episode write retries a lock held past ``timeout_s`` (default 600 s).
        read_only: open an existing file for reading only (nothing created, migrated or marked).

    Raises:
        StoreCorruptError: the file is not a SQLite database or fails its integrity check.
        StoreLockedError: a migration could not take the write lock in time.
        StoreError: the file cannot be opened, or was written by a newer TopoPrune.
    """

    # ----------------------------------------------------------------- runs
    _RUN_COLUMNS = (
        "r.id, r.method, r.model, r.dataset, r.budget, r.config, r.status, r.best_score, r.best_plan, "
        "r.state_path, r.extra, r.pid, r.host, r.created_at, r.updated_at, "
        "(SELECT COUNT(*) FROM episodes e WHERE e.run_id = r.id)"
    )

    @staticmethod
    def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
        return RunRecord(
            id=row[0], method=row[1], model=row[2], dataset=row[3], budget=row[4],
            config=codec.loads(row[5]) or {}, status=row[6], best_score=row[7],
            best_plan=codec.loads(row[8]), state_path=row[9], extra=codec.loads(row[10]) or {},
            pid=row[11], host=row[12], created_at=row[13], updated_at=row[14], n_episodes=row[15],
        )  # fmt: skip

    def create_run(
        self,
        *,
        method: str,
        model: str,
        dataset: str,
        budget: float | None = None,
        config: Mapping[str, Any] | None = None,
        status: str = "running",
        state_path: str | os.PathLike[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a new run owned by this process; returns its id."""
        _check_status(status)
        now, pid = _now(), os.getpid()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO runs (method, model, dataset, budget, config, status, state_path, extra, pid, "
                "pid_start, host, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    method, model, dataset, budget, codec.dumps(config or {}), status,
                    None if state_path is None else str(state_path), codec.dumps(extra or {}),
                    pid, process_start_ticks(pid), hostname(), now, now,
                ),
            )  # fmt: skip
            return int(cur.lastrowid)

    def get_run(self, run_id: int) -> RunRecord:
        """The run with id ``run_id``.

        Raises:
            UnknownRunError: no such run.
        """
        if not -(2**63) <= int(run_id) < 2**63:  # beyond SQLite's INTEGER: no such run, not an OverflowError
            raise UnknownRunError(self._unknown_run_message(run_id))
        rows = self._read(f"SELECT {self._RUN_COLUMNS} FROM runs r WHERE r.id = ?", (int(run_id),))
        if not rows:
            raise UnknownRunError(self._unknown_run_message(run_id))
        return self._run_from_row(rows[0])

    def list_runs(
        self,
        *,
        status: str | None = None,
        method: str | None = None,
        model: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first by default."""
        where, params = filters(status=status, method=method, model=model, prefix="r.")
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {self._RUN_COLUMNS} FROM runs r{where} ORDER BY r.id {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._run_from_row(row) for row in self._read(sql, params)]

    def update_run(
        self,
        run_id: int,
        *,
        status: str | None = None,
        best_score: float | None = None,
        best_plan: Any = None,
        state_path: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the given fields of a run (``None`` leaves a field as it is); ``extra`` is merged in.

        A lock another process holds past the busy timeout is retried, with backoff, for up to ``retry_s``.

        Raises:
            UnknownRunError: no such run.
            StoreLockedError: the lock was still held after ``retry_s``.
        """
        sets: list[str] = []
        params: list[Any] = []
        if status is not None:
            _check_status(status)
            sets.append("status = ?")
            params.append(status)
        if best_score is not None:
            sets.append("best_score = ?")
            params.append(float(best_score))
        if best_plan is not None:
            sets.append("best_plan = ?")
            params.append(codec.dumps(best_plan))
        if state_path is not None:
            sets.append("state_path = ?")
            params.append(str(state_path))
        if config is not None:
            sets.append("config = ?")
            params.append(codec.dumps(config))
        with self._write(
            retry=True
        ) as conn:  # a search saves its state here each batch: a held lock delays it
            row = conn.execute("SELECT extra FROM runs WHERE id = ?", (int(run_id),)).fetchone()
            if row is None:
                raise UnknownRunError(self._unknown_run_message(run_id))
            if extra is not None:
                merged = {**(codec.loads(row[0]) or {}), **codec.to_jsonable(dict(extra))}
                sets.append("extra = ?")
                params.append(codec.dumps(merged))
            sets.append("updated_at = ?")
            params.append(_now())
            conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, int(run_id)))

    def claim_run(self, run_id: int) -> RunRecord:
        """Mark a paused or interrupted run as running in this process (for resuming it).

        Raises:
            UnknownRunError: no such run.
            StoreError: the run is still running in a live process, or has already completed or failed.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT status, pid, pid_start, host FROM runs WHERE id = ?", (int(run_id),)
            ).fetchone()
            if row is None:
                raise UnknownRunError(self._unknown_run_message(run_id))
            status, pid, pid_start, host = row
            if status == "running" and pid == os.getpid() and host == hostname():
                pass  # already ours
            elif status == "running" and (host != hostname() or pid_alive(pid, start_ticks=pid_start)):
                raise StoreError(
                    f"run {run_id} is still running in process {pid} on {host}; wait for it to finish "
                    f"or stop that process, then resume"
                )
            elif status not in (*RESUMABLE_STATUSES, "running"):
                raise StoreError(
                    f"run {run_id} is {status}; only paused or interrupted runs can be resumed "
                    f"(`topoprune runs` shows each run's status)"
                )
            pid = os.getpid()
            conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, pid_start = ?, host = ?, updated_at = ? "
                "WHERE id = ?",
                (pid, process_start_ticks(pid), hostname(), _now(), int(run_id)),
            )
        return self.get_run(run_id)

    def delete_run(self, run_id: int) -> None:
        """Delete a run and its episodes (its candidates stay, detached)."""
        with self._write() as conn:
            if conn.execute("DELETE FROM runs WHERE id = ?", (int(run_id),)).rowcount == 0:
                raise UnknownRunError(self._unknown_run_message(run_id))

    def mark_interrupted(self) -> list[int]:
        """Mark as ``interrupted`` every ``running`` run of this host whose process is gone; returns their ids."""
        rows = self._read("SELECT id, pid, pid_start, host FROM runs WHERE status = 'running'")
        here = hostname()
        dead = [r[0] for r in rows if r[3] in (None, here) and not pid_alive(r[1], start_ticks=r[2])]
        if dead:
            marks = ", ".join("?" * len(dead))
            with self._write() as conn:
                conn.execute(
                    f"UPDATE runs SET status = 'interrupted', updated_at = ? "
                    f"WHERE status = 'running' AND id IN ({marks})",
                    (_now(), *dead),
                )
        return dead

    # ----------------------------------------------------------------- episodes
    def add_episode(
        self,
        run_id: int,
        *,
        reward: float | None = None,
        index: int | None = None,
        macs: int | None = None,
        macs_ratio: float | None = None,
        val_acc: float | None = None,
        plan: Any = None,
        extra: Mapping[str, Any] | None = None,
        update_best: bool = True,
        replace: bool = False,
    ) -> int:
        """Record one finished episode in one transaction; returns its index.

        Args:
            run_id: the run.
            reward: the episode's reward.
            index: episode number within the run; default: one past the last recorded.
            macs: MACs of the episode's plan. macs_ratio: ``macs`` over the baseline's MACs.
            val_acc: val top-1 in %; when ``update_best`` and it beats the run's ``best_score``, the run's
                best score and plan are updated in the same transaction.
            plan: the plan (a PruningPlan or its dict). extra: anything else (timings, step count, ...).
            replace: overwrite an episode already recorded at ``index`` instead of raising.

        A lock another process holds past the busy timeout is retried, with backoff, for up to ``retry_s``.

        Raises:
            UnknownRunError: no such run.
            StoreLockedError: the lock was still held after ``retry_s``.
            StoreError: the episode index is already recorded and ``replace`` is False.
        """
        plan_json = codec.dumps(plan)
        with self._write(retry=True) as conn:  # a lock held elsewhere delays a search; it does not end it
            run = conn.execute("SELECT best_score FROM runs WHERE id = ?", (int(run_id),)).fetchone()
            if run is None:
                raise UnknownRunError(self._unknown_run_message(run_id))
            if index is None:
                last = conn.execute(
                    "SELECT MAX(idx) FROM episodes WHERE run_id = ?", (int(run_id),)
                ).fetchone()
                index = 0 if last[0] is None else int(last[0]) + 1
            verb = "INSERT OR REPLACE" if replace else "INSERT"
            now = _now()
            try:
                conn.execute(
                    f"{verb} INTO episodes (run_id, idx, reward, macs, macs_ratio, val_acc, plan, extra, "
                    f"created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        int(run_id), int(index), _opt_float(reward), None if macs is None else int(macs),
                        _opt_float(macs_ratio), _opt_float(val_acc), plan_json, codec.dumps(extra or {}), now,
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise StoreError(
                    f"episode {index} of run {run_id} is already recorded; pass replace=True to overwrite it"
                ) from None
            if update_best and val_acc is not None and (run[0] is None or float(val_acc) > run[0]):
                conn.execute(
                    "UPDATE runs SET best_score = ?, best_plan = ?, updated_at = ? WHERE id = ?",
                    (float(val_acc), plan_json, now, int(run_id)),
                )
            else:
                conn.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, int(run_id)))
        return int(index)

    def episodes(self, run_id: int, *, start: int = 0) -> list[EpisodeRecord]:
        """The run's episodes with index >= ``start``, in index order.

        Raises:
            UnknownRunError: no such run.
        """
        self.get_run(run_id)
        rows = self._read(
            "SELECT run_id, idx, reward, macs, macs_ratio, val_acc, plan, extra, created_at FROM episodes "
            "WHERE run_id = ? AND idx >= ? ORDER BY idx",
            (int(run_id), int(start)),
        )
        return [
            EpisodeRecord(
                run_id=r[0],
                index=r[1],
                reward=r[2],
                macs=r[3],
                macs_ratio=r[4],
                val_acc=r[5],
                plan=codec.loads(r[6]),
                extra=codec.loads(r[7]) or {},
                created_at=r[8],
            )  # fmt: skip
            for r in rows
        ]


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
