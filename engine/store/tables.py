"""Candidates and cached sensitivity tables: the store's record of pruned models and per-group curves.

A mixin over ``Database`` (needs its ``_read``/``_write``); RunStore is the class to use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.store import codec
from engine.store.database import UnknownRunError
from engine.store.database import now_iso as _now
from engine.store.records import CandidateRecord, SensitivityRecord


class CandidateTables:
    """Candidate and sensitivity-table methods of RunStore."""

    path: Any

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
            if (
                run_id is not None
                and conn.execute("SELECT 1 FROM runs WHERE id = ?", (int(run_id),)).fetchone() is None
            ):
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
        rows = self._read(
            f"SELECT {self._CANDIDATE_COLUMNS} FROM candidates WHERE id = ?", (int(candidate_id),)
        )
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
        where, params = filters(run_id=run_id, method=method, model=model, dataset=dataset)
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
        where, params = filters(model=model, dataset=dataset)
        return [r[0] for r in self._read(f"SELECT key FROM sensitivity{where} ORDER BY created_at", params)]


def filters(*, prefix: str = "", **equal: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{prefix}{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
