"""Checking a store file and moving a corrupt one aside (only when the user asks; nothing is ever deleted)."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import StoreError
from engine.store.database import default_store_path


def check_store_file(path: str | os.PathLike[str] | None = None) -> str | None:
    """Why the store file at ``path`` is unusable as SQLite (None when it reads fine or does not exist).

    Opens the file read-only: nothing on disk changes.
    """
    path = Path(path) if path is not None else default_store_path()
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            return None  # in use by another process, not corrupt
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    result = "; ".join(str(r[0]) for r in rows[:3])
    return None if result == "ok" else f"integrity check: {result}"


def move_corrupt_store(path: str | os.PathLike[str] | None = None) -> Path:
    """Rename a corrupt store file (and its -wal/-shm companions) to ``<name>.corrupt-<timestamp>``.

    Returns:
        The new path of the store file; the next RunStore opened at ``path`` starts empty.

    Raises:
        StoreError: there is no store file at ``path``, or it is not corrupt (a healthy store is never moved).
    """
    path = Path(path) if path is not None else default_store_path()
    if not path.exists():
        raise StoreError(f"there is no run store at {path}; nothing to move")
    problem = check_store_file(path)
    if problem is None:
        raise StoreError(f"run store {path} is not corrupt; it was left where it is")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm"):
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            companion.rename(Path(f"{target}{suffix}"))
    path.rename(target)
    return target
