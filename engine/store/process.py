"""Process facts the run store needs: is a recorded pid still our run's process, and who holds a file lock.

Linux /proc is used where present for exactness (zombies, pid reuse, lock holders); elsewhere the answers
degrade to ``os.kill(pid, 0)`` and "unknown".
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def hostname() -> str:
    """This machine's name, recorded with a run's pid (a pid means nothing on another host)."""
    return socket.gethostname()


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing paren.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2 :].startswith("Z")


def pid_alive(pid: int | None, *, start_ticks: int | None = None) -> bool:
    """True when ``pid`` names a live (non-zombie) process that started at ``start_ticks`` (if given)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if _is_zombie(pid):
        return False
    if start_ticks is not None:
        now_ticks = process_start_ticks(pid)
        if now_ticks is not None and now_ticks != start_ticks:
            return False  # the pid was reused by another process
    return True


def lock_holders(*paths: Path) -> list[int]:
    """Pids (other than ours) holding a POSIX write lock on any of ``paths``, read from /proc/locks."""
    inodes: set[tuple[int, int]] = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    me = os.getpid()
    pids: list[int] = []
    for line in lines:
        parts = line.split()
        # "1: POSIX  ADVISORY  WRITE 12345 08:01:123456 0 EOF" (blocked waiters carry a "->" field)
        if "->" in parts:
            continue
        try:
            kind, mode, pid, dev_ino = parts[1], parts[3], int(parts[4]), parts[5]
            major, minor, inode = dev_ino.split(":")
            dev = os.makedev(int(major, 16), int(minor, 16))
            key = (dev, int(inode))
        except (IndexError, ValueError):
            continue
        if kind in ("POSIX", "OFDLCK") and mode == "WRITE" and key in inodes and pid not in (me, -1):
            if pid not in pids:
                pids.append(pid)
    return pids
