"""Where TopoPrune keeps its files: the run store and caches (under $TOPOPRUNE_HOME) and the shipped assets.

Only path arithmetic lives here; nothing is read or written besides creating the folders.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def topoprune_home() -> Path:
    """The folder for the run store and caches: $TOPOPRUNE_HOME, else the user's data folder."""
    env = os.environ.get("TOPOPRUNE_HOME")
    if env:
        home = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        home = Path(base) / "topoprune"
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir() -> Path:
    """The cache folder: $TOPOPRUNE_HOME/cache when TOPOPRUNE_HOME is set, else the user's cache folder."""
    if os.environ.get("TOPOPRUNE_HOME"):
        path = topoprune_home() / "cache"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "topoprune"
    path.mkdir(parents=True, exist_ok=True)
    return path


def assets_dir() -> Path:
    """The shipped assets folder (baseline checkpoints and their manifest)."""
    return _REPO_ROOT / "assets"
