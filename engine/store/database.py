"""The store's SQLite plumbing: connection, integrity check, migrations, transactions, error translation.

Knows nothing about runs or episodes; ``RunStore`` builds on it. sqlite3 errors a user can cause leave here
as StoreError subclasses with one clear message.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.paths import topoprune_home
from engine.store.process import lock_holders
from engine.store.schema import MIGRATIONS, SCHEMA_VERSION

STORE_FILENAME = "runs.sqlite"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY_S = 600.0  # how long a search's episode write keeps retrying a held lock before giving up


class StoreLockedError(StoreError):
    """Another process held the store's write lock for longer than the busy timeout."""


class StoreCorruptError(StoreError):
    """The store file is not a readable SQLite database (or fails its integrity check)."""


class UnknownRunError(StoreError):
    """No run (or candidate) with the given id exists in the store."""


def default_store_path() -> Path:
    """``topoprune_home() / "runs.sqlite"`` ($TOPOPRUNE_HOME overrides the home folder)."""
    return topoprune_home() / STORE_FILENAME


def now_iso() -> str:
    """The current UTC time as ISO 8601 text (what every *_at column holds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def _default_timeout_s() -> float:
    return _env_seconds("TOPOPRUNE_STORE_TIMEOUT_S", DEFAULT_TIMEOUT_S)


def corrupt_message(path: Path, detail: str) -> str:
    """The one-line explanation shown for a corrupt store file."""
    return (
        f"run store {path} is corrupt ({detail}); nothing in it was changed. Move it aside with "
        f"`topoprune runs --move-corrupt-store` (renamed to {path.name}.corrupt-<timestamp>, never deleted) "
        f"or point TOPOPRUNE_HOME elsewhere"
    )


_CORRUPT_HINTS = ("not a database", "malformed", "corrupt", "disk image", "file is encrypted")


class Database:
    """One thread-safe connection (serialised by a lock) to a checked, migrated store file.

    Opening checks the file (``PRAGMA quick_check``), applies pending schema migrations and, when asked,
    calls ``self.mark_interrupted()`` (defined by RunStore).

    Args:
        path: the SQLite file; default ``topoprune_home() / "runs.sqlite"``.
        timeout_s: how long a write waits for another process's lock before raising StoreLockedError;
            default 10 s ($TOPOPRUNE_STORE_TIMEOUT_S overrides).
        mark_interrupted: run ``mark_interrupted()`` on open (skipped silently if the store is locked).
        retry_s: how long a write opened with ``_write(retry=True)`` (a search's episode) keeps retrying, with
            backoff, a lock held past ``timeout_s``; default 600 s ($TOPOPRUNE_STORE_RETRY_S overrides).
        read_only: open an existing file for reading only (``runs``, ``info``): nothing is created, migrated or
            marked; a file that still needs a migration is opened for writing instead.

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
        retry_s: float | None = None,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout_s = _default_timeout_s() if timeout_s is None else float(timeout_s)
        self.retry_s = (
            _env_seconds("TOPOPRUNE_STORE_RETRY_S", DEFAULT_RETRY_S) if retry_s is None else float(retry_s)
        )
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.read_only = bool(read_only)
        if self.read_only and self._open_read_only():
            return
        self.read_only = False
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
                self._check_version()  # before WAL: a refused file is left byte-for-byte as it was
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

    def _open_read_only(self) -> bool:
        """Open ``mode=ro``; False (nothing kept open) when the file needs a migration first."""
        if not self.path.is_file():
            raise StoreError(
                f"run store {self.path} does not exist yet; runs are recorded there by "
                "`topoprune search` and `prune`"
            )
        with self._translate():
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self.timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        self._conn = conn
        try:
            with self._translate():
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
                self._check_integrity()
                self._check_version()
            if self.schema_version == SCHEMA_VERSION:
                return True
        except BaseException:
            conn.close()
            self._conn = None
            raise
        conn.close()
        self._conn = None
        return False

    # ----------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

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
    def _write(self, *, retry: bool = False) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on any exception (Ctrl-C too).

        With ``retry``, a lock still held after the busy timeout is waited for again, with backoff, for up to
        ``retry_s`` in all: a long write elsewhere delays the caller instead of ending it.
        """
        with self._lock, self._translate():
            conn = self._connection()
            self._begin(conn, retry=retry)
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            conn.execute("COMMIT")

    def _begin(self, conn: sqlite3.Connection, *, retry: bool) -> None:
        deadline = time.monotonic() + (self.retry_s if retry else 0.0)
        pause = 0.05
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if not ("locked" in text or "busy" in text) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # the busy timeout already waited; back off before asking again
            pause = min(2 * pause, 5.0)

    def _check_integrity(self) -> None:
        rows = self._connection().execute("PRAGMA quick_check").fetchall()
        result = "; ".join(str(r[0]) for r in rows[:3])
        if result != "ok":
            raise StoreCorruptError(corrupt_message(self.path, f"integrity check: {result}"))

    def _check_version(self) -> None:
        version = int(self._connection().execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"run store {self.path} has schema version {version}, newer than this TopoPrune understands "
                f"({SCHEMA_VERSION}); upgrade TopoPrune or point TOPOPRUNE_HOME elsewhere"
            )

    def _migrate(self) -> None:
        if self.schema_version == SCHEMA_VERSION:
            return
        with self._write() as conn:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for i in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[i]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def mark_interrupted(self) -> list[int]:
        """Overridden by RunStore."""
        return []

    def _unknown_run_message(self, run_id: Any) -> str:
        return f"no run with id {run_id} in {self.path}; `topoprune runs` lists the runs there"
