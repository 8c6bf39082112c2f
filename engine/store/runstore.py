"""RunStore: the SQLite record of runs, episodes, candidates and sensitivity tables.

One file (WAL mode) under ``$TOPOPRUNE_HOME``; every write is one transaction, so a crash loses at most the
write in flight. It stores what it is given and never computes pruning results itself.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.paths import topoprune_home
from engine.store import codec
from engine.store.process import hostname, lock_holders, pid_alive, process_start_ticks
from engine.store.records import CandidateRecord, EpisodeRecord, RunRecord, SensitivityRecord
from engine.store.schema import MIGRATIONS, RUN_STATUSES, SCHEMA_VERSION

STORE_FILENAME = "runs.sqlite"
DEFAULT_TIMEOUT_S = 10.0
RESUMABLE_STATUSES: tuple[str, ...] = ("paused", "interrupted")


class StoreLockedError(StoreError):
    """Another process held the store's write lock for longer than the busy timeout."""


class StoreCorruptError(StoreError):
    """The store file is not a readable SQLite database (or fails its integrity check)."""


class UnknownRunError(StoreError):
    """No run (or candidate) with the given id exists in the store."""


def default_store_path() -> Path:
    """``topoprune_home() / "runs.sqlite"`` ($TOPOPRUNE_HOME overrides the home folder)."""
    return topoprune_home() / STORE_FILENAME


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _default_timeout_s() -> float:
    raw = os.environ.get("TOPOPRUNE_STORE_TIMEOUT_S")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


def corrupt_message(path: Path, detail: str) -> str:
    """The one-line explanation shown for a corrupt store file."""
    return (
        f"run store {path} is corrupt ({detail}); nothing in it was changed. Move it aside with "
        f"`topoprune runs --move-corrupt-store` (renamed to {path.name}.corrupt-<timestamp>, never deleted) "
        f"or point TOPOPRUNE_HOME elsewhere"
    )


_CORRUPT_HINTS = ("not a database", "malformed", "corrupt", "disk image", "file is encrypted")


class RunStore:
    """Thread-safe access to the run store (one connection, serialised by a lock).

    Opening checks the file (``PRAGMA quick_check``), applies pending schema migrations and marks runs whose
    process has died as ``interrupted``.

    Args:
        path: the SQLite file; default ``topoprune_home() / "runs.sqlite"``.
        timeout_s: how long a write waits for another process's lock before raising StoreLockedError;
            default 10 s ($TOPOPRUNE_STORE_TIMEOUT_S overrides).
        mark_interrupted: run ``mark_interrupted()`` on open (skipped silently if the store is locked).

    Raises:
        StoreCorruptError: the file is not a SQLite database or fails its integrity check.
        StoreLockedError: a migration could not take the write lock in time.
        StoreError: the file cannot be opened, or was written by a newer TopoPrune.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout_s: float | None = None,
        mark_interrupted: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout_s = _default_timeout_s() if timeout_s is None else float(timeout_s)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._translate():
            conn = sqlite3.connect(
                str(self.path), timeout=self.timeout_s, isolation_level=None, check_same_thread=False
            )
        self._conn = conn
        try:
            with self._translate():
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
                self._check_integrity()
                conn.execute("PRAGMA foreign_keys = ON")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"run store {self.path} could not switch to WAL mode (got {mode!r})")
            self._migrate()
            if mark_interrupted:
                try:
                    self.mark_interrupted()
                except StoreLockedError:
                    pass  # another process is writing; it (or the next open) will mark them
        except BaseException:
            conn.close()
            self._conn = None
            raise

    # ----------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @property
    def schema_version(self) -> int:
        """The store's ``PRAGMA user_version``."""
        return int(self._read("PRAGMA user_version")[0][0])

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn sqlite3 errors a user can cause into StoreError subclasses with one clear message."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                holders = lock_holders(self.path, Path(f"{self.path}-shm"), Path(f"{self.path}-wal"))
                who = "pid " + ", ".join(map(str, holders)) if holders else "pid unknown"
                raise StoreLockedError(
                    f"run store {self.path} is locked by another process ({who}) for more than "
                    f"{self.timeout_s:g} s; wait for it to finish or point TOPOPRUNE_HOME elsewhere"
                ) from None
            if any(h in text for h in _CORRUPT_HINTS):
                raise StoreCorruptError(corrupt_message(self.path, str(exc))) from None
            if "unable to open" in text or "readonly" in text or "disk is full" in text or "i/o" in text:
                raise StoreError(
                    f"run store {self.path} cannot be used ({exc}); check that the folder is writable and "
                    f"has free space, or point TOPOPRUNE_HOME elsewhere"
                ) from None
            raise
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError or any(h in str(exc).lower() for h in _CORRUPT_HINTS):
                raise StoreCorruptError(corrupt_message(self.path, str(exc))) from None
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"run store {self.path} is closed; open a new RunStore")
        return self._conn

    def _read(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        with self._lock, self._translate():
            return self._connection().execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on any exception (Ctrl-C too)."""
        with self._lock, self._translate():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            conn.execute("COMMIT")

    def _check_integrity(self) -> None:
        rows = self._connection().execute("PRAGMA quick_check").fetchall()
        result = "; ".join(str(r[0]) for r in rows[:3])
        if result != "ok":
            raise StoreCorruptError(corrupt_message(self.path, f"integrity check: {result}"))

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"run store {self.path} has schema version {version}, newer than this TopoPrune understands "
                f"({SCHEMA_VERSION}); upgrade TopoPrune or point TOPOPRUNE_HOME elsewhere"
            )
        if version == SCHEMA_VERSION:
            return
        with self._write() as conn:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for i in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[i]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
        where, params = _filters(status=status, method=method, model=model, prefix="r.")
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

        Raises:
            UnknownRunError: no such run.
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
        with self._write() as conn:
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
        dead = [
            r[0] for r in rows if r[3] in (None, here) and not pid_alive(r[1], start_ticks=r[2])
        ]
        if dead:
            marks = ", ".join("?" * len(dead))
            with self._write() as conn:
                conn.execute(
                    f"UPDATE runs SET status = 'interrupted', updated_at = ? "
                    f"WHERE status = 'running' AND id IN ({marks})",
                    (_now(), *dead),
                )
        return dead

    def _unknown_run_message(self, run_id: Any) -> str:
        return f"no run with id {run_id} in {self.path}; `topoprune runs` lists the runs there"

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

        Raises:
            UnknownRunError: no such run.
            StoreError: the episode index is already recorded and ``replace`` is False.
        """
        plan_json = codec.dumps(plan)
        with self._write() as conn:
            run = conn.execute("SELECT best_score FROM runs WHERE id = ?", (int(run_id),)).fetchone()
            if run is None:
                raise UnknownRunError(self._unknown_run_message(run_id))
            if index is None:
                last = conn.execute("SELECT MAX(idx) FROM episodes WHERE run_id = ?", (int(run_id),)).fetchone()
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
                run_id=r[0], index=r[1], reward=r[2], macs=r[3], macs_ratio=r[4], val_acc=r[5],
                plan=codec.loads(r[6]), extra=codec.loads(r[7]) or {}, created_at=r[8],
            )  # fmt: skip
            for r in rows
        ]

    # ----------------------------------------------------------------- candidates
    def add_candidate(
        self,
        *,
        method: str,
        model: str,
        dataset: str,
        plan: Any = None,
        metrics: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, Any] | None = None,
        run_id: int | None = None,
    ) -> int:
        """Record a pruned candidate (plan, metrics, artifact paths); returns its id."""
        with self._write() as conn:
            if run_id is not None and conn.execute(
                "SELECT 1 FROM runs WHERE id = ?", (int(run_id),)
            ).fetchone() is None:
                raise UnknownRunError(self._unknown_run_message(run_id))
            cur = conn.execute(
                "INSERT INTO candidates (run_id, method, model, dataset, plan, metrics, artifacts, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    None if run_id is None else int(run_id), method, model, dataset, codec.dumps(plan),
                    codec.dumps(metrics or {}), codec.dumps(artifacts or {}), _now(),
                ),
            )  # fmt: skip
            return int(cur.lastrowid)

    def update_candidate(
        self,
        candidate_id: int,
        *,
        metrics: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, Any] | None = None,
    ) -> None:
        """Merge ``metrics`` and ``artifacts`` into a candidate's (e.g. a test accuracy after fine-tuning)."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT metrics, artifacts FROM candidates WHERE id = ?", (int(candidate_id),)
            ).fetchone()
            if row is None:
                raise UnknownRunError(f"no candidate with id {candidate_id} in {self.path}")
            merged_metrics = {**(codec.loads(row[0]) or {}), **codec.to_jsonable(dict(metrics or {}))}
            merged_artifacts = {**(codec.loads(row[1]) or {}), **codec.to_jsonable(dict(artifacts or {}))}
            conn.execute(
                "UPDATE candidates SET metrics = ?, artifacts = ? WHERE id = ?",
                (codec.dumps(merged_metrics), codec.dumps(merged_artifacts), int(candidate_id)),
            )

    _CANDIDATE_COLUMNS = "id, run_id, method, model, dataset, plan, metrics, artifacts, created_at"

    @staticmethod
    def _candidate_from_row(r: tuple[Any, ...]) -> CandidateRecord:
        return CandidateRecord(
            id=r[0], run_id=r[1], method=r[2], model=r[3], dataset=r[4], plan=codec.loads(r[5]),
            metrics=codec.loads(r[6]) or {}, artifacts=codec.loads(r[7]) or {}, created_at=r[8],
        )  # fmt: skip

    def get_candidate(self, candidate_id: int) -> CandidateRecord:
        """The candidate with id ``candidate_id`` (UnknownRunError if none)."""
        rows = self._read(f"SELECT {self._CANDIDATE_COLUMNS} FROM candidates WHERE id = ?", (int(candidate_id),))
        if not rows:
            raise UnknownRunError(f"no candidate with id {candidate_id} in {self.path}")
        return self._candidate_from_row(rows[0])

    def candidates(
        self,
        *,
        run_id: int | None = None,
        method: str | None = None,
        model: str | None = None,
        dataset: str | None = None,
        limit: int | None = None,
    ) -> list[CandidateRecord]:
        """Candidates matching every given filter, oldest first."""
        where, params = _filters(run_id=run_id, method=method, model=model, dataset=dataset)
        sql = f"SELECT {self._CANDIDATE_COLUMNS} FROM candidates{where} ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._candidate_from_row(r) for r in self._read(sql, params)]

    def delete_candidate(self, candidate_id: int) -> None:
        """Delete one candidate (its artifact files are left alone)."""
        with self._write() as conn:
            if conn.execute("DELETE FROM candidates WHERE id = ?", (int(candidate_id),)).rowcount == 0:
                raise UnknownRunError(f"no candidate with id {candidate_id} in {self.path}")

    # ----------------------------------------------------------------- sensitivity
    def save_sensitivity(
        self, key: str, *, model: str, dataset: str, settings: Mapping[str, Any] | None = None, table: Any
    ) -> None:
        """Store (or overwrite) the sensitivity table cached under ``key``."""
        with self._write() as conn:
            conn.execute(
                'INSERT INTO sensitivity (key, model, dataset, settings, "table", created_at) '
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET model = excluded.model, "
                'dataset = excluded.dataset, settings = excluded.settings, "table" = excluded."table", '
                "created_at = excluded.created_at",
                (key, model, dataset, codec.dumps(settings or {}), codec.dumps(table), _now()),
            )

    def load_sensitivity(self, key: str) -> SensitivityRecord | None:
        """The sensitivity table cached under ``key``, or None."""
        rows = self._read(
            'SELECT key, model, dataset, settings, "table", created_at FROM sensitivity WHERE key = ?', (key,)
        )
        if not rows:
            return None
        r = rows[0]
        return SensitivityRecord(
            key=r[0], model=r[1], dataset=r[2], settings=codec.loads(r[3]) or {}, table=codec.loads(r[4]),
            created_at=r[5],
        )  # fmt: skip

    def sensitivity_keys(self, *, model: str | None = None, dataset: str | None = None) -> list[str]:
        """Keys of the cached sensitivity tables matching the filters."""
        where, params = _filters(model=model, dataset=dataset)
        return [r[0] for r in self._read(f"SELECT key FROM sensitivity{where} ORDER BY created_at", params)]


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _filters(*, prefix: str = "", **equal: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{prefix}{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
