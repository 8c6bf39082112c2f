"""Shared test set-up: every test gets a fresh TOPOPRUNE_HOME; the shapes10 cache is shared across the session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# One cache for the whole test session so shapes10 is generated once, never in the user's folders.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="topoprune-test-home-"))

# One thread: the e2e server and the suite share two cores; oversubscribed torch threads run far slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    """Point the run store and caches at a fresh folder for each test."""
    home = tmp_path / "topoprune-home"
    monkeypatch.setenv("TOPOPRUNE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shapes10():
    """The default shapes10 splits (generated once per session into a session cache folder)."""
    from engine.data import load_data

    previous = os.environ.get("TOPOPRUNE_HOME")
    os.environ["TOPOPRUNE_HOME"] = str(_SESSION_HOME)
    try:
        return load_data("shapes10", seed=0)
    finally:
        if previous is None:
            os.environ.pop("TOPOPRUNE_HOME", None)
        else:
            os.environ["TOPOPRUNE_HOME"] = previous


@pytest.fixture(scope="session")
def small_shapes10():
    """A small shapes10 (600 train, 200 test) for fast training tests."""
    from engine.data import load_data

    previous = os.environ.get("TOPOPRUNE_HOME")
    os.environ["TOPOPRUNE_HOME"] = str(_SESSION_HOME)
    try:
        return load_data("shapes10", seed=0, train_size=600, test_size=200)
    finally:
        if previous is None:
            os.environ.pop("TOPOPRUNE_HOME", None)
        else:
            os.environ["TOPOPRUNE_HOME"] = previous
