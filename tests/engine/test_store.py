"""Tests for engine.store: schema, runs, episodes, candidates, sensitivity tables, interrupted runs."""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import subprocess
import sys
import threading

import pytest

from engine.errors import StoreError
from engine.store import (
    SCHEMA_VERSION,
    RunStore,
    UnknownRunError,
    default_store_path,
    sensitivity_key,
    strict_json,
)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPOPRUNE_HOME", str(tmp_path / "home"))
    with RunStore() as s:
        yield s


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _raw(path):
    return sqlite3.connect(str(path), isolation_level=None)


def test_store_lives_under_topoprune_home_in_wal_mode(store, tmp_path):
    assert store.path == tmp_path / "home" / "runs.sqlite" == default_store_path()
    assert store.schema_version == SCHEMA_VERSION >= 1
    conn = _raw(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "episodes", "candidates", "sensitivity"} <= tables


def test_run_roundtrip_and_reopen(store):
    run_id = store.create_run(
        method="gnnrl", model="cifar_resnet20", dataset="shapes10", budget=0.5, config={"episodes": 3}
    )
    run = store.get_run(run_id)
    assert (run.method, run.model, run.dataset, run.budget) == ("gnnrl", "cifar_resnet20", "shapes10", 0.5)
    assert run.config == {"episodes": 3} and run.status == "running" and run.pid == os.getpid()
    assert run.best_score is None and run.n_episodes == 0
    store.update_run(run_id, status="paused", state_path="/tmp/state.pt", extra={"seconds": 1.5})
    store.update_run(run_id, extra={"macs_ratio": 0.5})
    path = store.path
    store.close()
    with RunStore(path) as again:
        run = again.get_run(run_id)
        assert run.status == "paused" and run.resumable
        assert run.state_path == "/tmp/state.pt"
        assert run.extra == {"seconds": 1.5, "macs_ratio": 0.5}
        assert [r.id for r in again.list_runs()] == [run_id]


def test_list_runs_filters_and_order(store):
    a = store.create_run(method="amc", model="m1", dataset="shapes10")
    b = store.create_run(method="gnnrl", model="m2", dataset="shapes10")
    store.update_run(a, status="completed")
    assert [r.id for r in store.list_runs()] == [b, a]
    assert [r.id for r in store.list_runs(newest_first=False)] == [a, b]
    assert [r.id for r in store.list_runs(status="completed")] == [a]
    assert [r.id for r in store.list_runs(method="gnnrl", model="m2")] == [b]
    assert store.list_runs(limit=1)[0].id == b


def test_unknown_run_and_bad_status(store):
    with pytest.raises(UnknownRunError, match=r"no run with id 42 .*topoprune runs"):
        store.get_run(42)
    with pytest.raises(StoreError, match="no run with id 42"):
        store.add_episode(42, reward=1.0)
    with pytest.raises(StoreError, match="no run with id 42"):
        store.update_run(42, status="completed")
    with pytest.raises(StoreError, match="no run with id 42"):
        store.episodes(42)
    run_id = store.create_run(method="m", model="x", dataset="d")
    with pytest.raises(ValueError, match=r"'done' is not one of running, paused"):
        store.update_run(run_id, status="done")


def test_episodes_auto_index_best_and_duplicates(store):
    run_id = store.create_run(method="gnnrl", model="m", dataset="d", budget=0.5)
    assert store.add_episode(run_id, reward=-20.0, val_acc=80.0, macs=100, macs_ratio=0.5, plan={"k": 1}) == 0
    assert store.add_episode(run_id, reward=-10.0, val_acc=90.0, plan={"k": 2}, extra={"seconds": 0.1}) == 1
    assert store.add_episode(run_id, reward=-30.0, val_acc=70.0, plan={"k": 3}) == 2
    assert store.add_episode(run_id, reward=-100.0, val_acc=99.0, plan={"k": 4}, update_best=False) == 3
    run = store.get_run(run_id)
    assert run.n_episodes == 4 and run.best_score == 90.0 and run.best_plan == {"k": 2}
    eps = store.episodes(run_id)
    assert [e.index for e in eps] == [0, 1, 2, 3]
    assert (eps[0].macs, eps[0].macs_ratio, eps[1].extra) == (100, 0.5, {"seconds": 0.1})
    assert [e.index for e in store.episodes(run_id, start=2)] == [2, 3]
    with pytest.raises(StoreError, match="episode 1 of run .* already recorded"):
        store.add_episode(run_id, index=1, reward=0.0)
    store.add_episode(run_id, index=1, reward=-5.0, val_acc=95.0, plan={"k": 5}, replace=True)
    assert store.episodes(run_id)[1].reward == -5.0 and store.get_run(run_id).best_score == 95.0
    assert store.get_run(run_id).n_episodes == 4


def test_failed_write_is_rolled_back(store):
    run_id = store.create_run(method="m", model="x", dataset="d")
    with pytest.raises(KeyboardInterrupt), store._write() as conn:
        conn.execute("INSERT INTO episodes (run_id, idx, created_at) VALUES (?, 0, 'now')", (run_id,))
        raise KeyboardInterrupt
    assert store.episodes(run_id) == []
    assert store.add_episode(run_id, reward=1.0) == 0  # the store is still usable


def test_candidates(store):
    run_id = store.create_run(method="gnnrl", model="m", dataset="d")
    c1 = store.add_candidate(
        method="uniform", model="m", dataset="d", plan={"keep": {"a": 3}}, metrics={"val_acc": 80}
    )
    c2 = store.add_candidate(
        method="gnnrl", model="m", dataset="d", run_id=run_id, artifacts={"state_dict": "/x.pt"}
    )
    store.update_candidate(c1, metrics={"test_acc": 79.5})
    cand = store.get_candidate(c1)
    assert cand.metrics == {"val_acc": 80, "test_acc": 79.5} and cand.plan == {"keep": {"a": 3}}
    assert cand.run_id is None
    assert [c.id for c in store.candidates()] == [c1, c2]
    assert [c.id for c in store.candidates(run_id=run_id)] == [c2]
    assert [c.id for c in store.candidates(method="uniform")] == [c1]
    with pytest.raises(StoreError, match="no run with id 99"):
        store.add_candidate(method="m", model="m", dataset="d", run_id=99)
    with pytest.raises(StoreError, match="no candidate with id 99"):
        store.get_candidate(99)
    store.delete_run(run_id)  # candidates outlive their run, detached
    assert store.get_candidate(c2).run_id is None


def test_sensitivity_tables(store):
    key = sensitivity_key("abc123", "shapes10", {"keep_ratios": [0.9, 0.5]})
    assert key == sensitivity_key("abc123", "shapes10", {"keep_ratios": [0.9, 0.5]})
    assert key != sensitivity_key("abc124", "shapes10", {"keep_ratios": [0.9, 0.5]})
    assert store.load_sensitivity(key) is None
    store.save_sensitivity(
        key, model="m", dataset="shapes10", settings={"val_size": 64}, table={"g": [1.0, 2.0]}
    )
    store.save_sensitivity(key, model="m", dataset="shapes10", settings={"val_size": 64}, table={"g": [3.0]})
    rec = store.load_sensitivity(key)
    assert rec.table == {"g": [3.0]} and rec.settings == {"val_size": 64} and rec.model == "m"
    assert store.sensitivity_keys(model="m") == [key] and store.sensitivity_keys(model="other") == []


def test_json_columns_accept_engine_objects(store):
    @dataclasses.dataclass
    class Plan:
        model: str
        keep: dict

    class WithToDict:
        def to_dict(self):
            return {"model": "m", "keep": {"g": 2}}

    run_id = store.create_run(
        method="m", model="m", dataset="d", config={"path": __import__("pathlib").Path("/a")}
    )
    store.add_episode(run_id, reward=1.0, val_acc=1.0, plan=Plan("m", {"g": (1, 2)}))
    store.add_episode(run_id, reward=1.0, plan=WithToDict())
    eps = store.episodes(run_id)
    assert eps[0].plan == {"model": "m", "keep": {"g": [1, 2]}} and eps[1].plan["keep"] == {"g": 2}
    assert store.get_run(run_id).config == {"path": "/a"}
    with pytest.raises(TypeError, match="cannot store a object"):
        store.add_episode(run_id, reward=1.0, extra={"x": object()})
    assert strict_json({"a": float("nan"), "b": [float("inf"), 1.0]}) == {"a": None, "b": [None, 1.0]}


def test_dead_runs_are_marked_interrupted_on_open(store):
    alive = store.create_run(method="m", model="x", dataset="d")
    dead = store.create_run(method="m", model="x", dataset="d")
    remote = store.create_run(method="m", model="x", dataset="d")
    paused = store.create_run(method="m", model="x", dataset="d", status="paused")
    conn = _raw(store.path)
    conn.execute(
        "UPDATE runs SET pid = ?, pid_start = NULL WHERE id IN (?, ?, ?)", (_dead_pid(), dead, remote, paused)
    )
    conn.execute("UPDATE runs SET host = 'elsewhere' WHERE id = ?", (remote,))
    conn.close()
    with RunStore(store.path) as again:
        status = {r.id: r.status for r in again.list_runs()}
    assert status == {alive: "running", dead: "interrupted", remote: "running", paused: "paused"}


def test_reused_pid_counts_as_dead(store):
    run_id = store.create_run(method="m", model="x", dataset="d")
    conn = _raw(store.path)
    conn.execute(
        "UPDATE runs SET pid_start = pid_start + 1 WHERE id = ?", (run_id,)
    )  # same pid, other process
    conn.close()
    if store.get_run(run_id).host == socket.gethostname() and os.path.exists("/proc/self/stat"):
        assert store.mark_interrupted() == [run_id]
        assert store.get_run(run_id).status == "interrupted"


def test_claim_run_rules(store):
    run_id = store.create_run(method="m", model="x", dataset="d")
    conn = _raw(store.path)
    conn.execute("UPDATE runs SET pid = 1, pid_start = NULL WHERE id = ?", (run_id,))  # pid 1 is alive
    conn.close()
    with pytest.raises(StoreError, match=f"run {run_id} is still running in process 1"):
        store.claim_run(run_id)
    store.update_run(run_id, status="interrupted")
    claimed = store.claim_run(run_id)
    assert claimed.status == "running" and claimed.pid == os.getpid()
    store.update_run(run_id, status="completed")
    with pytest.raises(StoreError, match=f"run {run_id} is completed; only paused or interrupted"):
        store.claim_run(run_id)
    with pytest.raises(StoreError, match="no run with id 77"):
        store.claim_run(77)


def test_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "runs.sqlite"
    conn = _raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"schema version \d+, newer than this TopoPrune understands"):
        RunStore(path)
    assert path.read_bytes() == before


def test_concurrent_threads_share_one_store(store):
    run_ids = [store.create_run(method="m", model=f"x{i}", dataset="d") for i in range(4)]
    errors = []

    def worker(run_id):
        try:
            for _ in range(25):
                store.add_episode(run_id, reward=1.0, val_acc=50.0)
                store.list_runs()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in run_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for run_id in run_ids:
        assert [e.index for e in store.episodes(run_id)] == list(range(25))


def test_closed_store_says_so(store):
    store.close()
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.list_runs()


def test_a_json_column_edited_outside_topoprune_is_a_clear_error(store):
    run_id = store.create_run(method="m", model="x", dataset="d")
    store.add_episode(run_id, reward=1.0, plan={"keep": {}})
    conn = _raw(store.path)
    conn.execute("UPDATE episodes SET plan = 'not json' WHERE run_id = ?", (run_id,))
    conn.close()
    with pytest.raises(StoreError, match="a value in the run store is not valid JSON .*'not json'"):
        store.episodes(run_id)
    assert store.get_run(run_id).n_episodes == 1  # the rest of the store still reads


def test_a_new_migration_upgrades_an_old_store_in_place(store, monkeypatch):
    import engine.store.database as database
    from engine.store.schema import MIGRATIONS

    run_id = store.create_run(method="m", model="x", dataset="d")
    store.add_episode(run_id, reward=1.0)
    store.close()
    v2 = [*MIGRATIONS, ["ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT ''"]]
    monkeypatch.setattr(database, "MIGRATIONS", v2)
    monkeypatch.setattr(database, "SCHEMA_VERSION", len(v2))
    with RunStore(store.path) as upgraded:
        assert upgraded.schema_version == len(v2)
        assert upgraded.get_run(run_id).n_episodes == 1
    conn = _raw(store.path)
    assert conn.execute("SELECT note FROM runs WHERE id = ?", (run_id,)).fetchone() == ("",)
    conn.close()
