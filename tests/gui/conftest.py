"""Shared fixtures for the GUI tests: a fresh TOPOPRUNE_HOME per test and the AppTest entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    """Every GUI test gets its own run store and caches."""
    home = tmp_path / "home"
    monkeypatch.setenv("TOPOPRUNE_HOME", str(home))
    return home
