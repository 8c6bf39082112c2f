"""The run store's SQLite schema as an ordered list of migrations, tracked by ``PRAGMA user_version``.

Migration ``i`` takes a store from schema version ``i`` to ``i + 1``; never edit a released migration, append
a new one. Only DDL lives here; reading and writing rows is ``engine.store.runstore``'s job.
"""

from __future__ import annotations

RUN_STATUSES: tuple[str, ...] = ("running", "paused", "interrupted", "completed", "failed")

_STATUS_CHECK = "CHECK (status IN (" + ", ".join(f"'{s}'" for s in RUN_STATUSES) + "))"

# Each migration is a list of single statements, run together in one transaction.
MIGRATIONS: list[list[str]] = [
    # v0 -> v1: runs, episodes, candidates, sensitivity tables.
    [
        f"""
        CREATE TABLE runs (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            method      TEXT NOT NULL,
            model       TEXT NOT NULL,
            dataset     TEXT NOT NULL,
            budget      REAL,
            config      TEXT NOT NULL DEFAULT '{{}}',
            status      TEXT NOT NULL DEFAULT 'running' {_STATUS_CHECK},
            best_score  REAL,
            best_plan   TEXT,
            state_path  TEXT,
            extra       TEXT NOT NULL DEFAULT '{{}}',
            pid         INTEGER,
            pid_start   INTEGER,
            host        TEXT,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL
        )
        """,
        "CREATE INDEX runs_status ON runs (status)",
        """
        CREATE TABLE episodes (
            run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            idx         INTEGER NOT NULL,
            reward      REAL,
            macs        INTEGER,
            macs_ratio  REAL,
            val_acc     REAL,
            plan        TEXT,
            extra       TEXT NOT NULL DEFAULT '{}',
            created_at  TEXT NOT NULL,
            UNIQUE (run_id, idx)
        )
        """,
        """
        CREATE TABLE candidates (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id      INTEGER REFERENCES runs (id) ON DELETE SET NULL,
            method      TEXT NOT NULL,
            model       TEXT NOT NULL,
            dataset     TEXT NOT NULL,
            plan        TEXT,
            metrics     TEXT NOT NULL DEFAULT '{}',
            artifacts   TEXT NOT NULL DEFAULT '{}',
            created_at  TEXT NOT NULL
        )
        """,
        "CREATE INDEX candidates_run ON candidates (run_id)",
        """
        CREATE TABLE sensitivity (
            key         TEXT NOT NULL UNIQUE,
            model       TEXT NOT NULL,
            dataset     TEXT NOT NULL,
            settings    TEXT NOT NULL DEFAULT '{}',
            "table"     TEXT NOT NULL,
            created_at  TEXT NOT NULL
        )
        """,
    ],
]

SCHEMA_VERSION: int = len(MIGRATIONS)
