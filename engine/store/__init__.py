"""The run store: a SQLite record (WAL mode, under $TOPOPRUNE_HOME) of runs, episodes, candidates and
sensitivity tables, shared safely by the GUI, the CLI and search processes.

Import from here: ``from engine.store import RunStore``. The store records results; it computes none.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.store.codec import strict_json, to_jsonable
from engine.store.database import (
    STORE_FILENAME,
    StoreCorruptError,
    StoreLockedError,
    UnknownRunError,
    default_store_path,
)
from engine.store.records import CandidateRecord, EpisodeRecord, RunRecord, SensitivityRecord
from engine.store.repair import check_store_file, move_corrupt_store
from engine.store.runstore import RESUMABLE_STATUSES, RunStore
from engine.store.schema import RUN_STATUSES, SCHEMA_VERSION


def sensitivity_key(*parts: Any) -> str:
    """A stable key for a sensitivity table from its inputs (e.g. weights hash, dataset, settings dict)."""
    text = json.dumps(to_jsonable(list(parts)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


__all__ = [
    "RESUMABLE_STATUSES",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "CandidateRecord",
    "EpisodeRecord",
    "RunRecord",
    "RunStore",
    "SensitivityRecord",
    "StoreCorruptError",
    "StoreLockedError",
    "UnknownRunError",
    "check_store_file",
    "default_store_path",
    "move_corrupt_store",
    "sensitivity_key",
    "strict_json",
    "to_jsonable",
]
