"""Files written for a user: checked before any work, written to a temporary file and renamed into place.

A failed write (disk full, read-only file system, Ctrl-C) leaves the previous file intact and no temporary
file behind. Whether an existing file may be replaced is the caller's rule (the CLI's ``--force``); this module
never decides what to write, only how.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.errors import TopoPruneError

__all__ = [
    "OutputError",
    "check_output",
    "check_output_dir",
    "check_outputs",
    "write_atomic",
    "write_text_atomic",
]


class OutputError(TopoPruneError):
    """An output path cannot be written: a folder, an existing file without --force, no space, read-only."""


def check_output(path: str | os.PathLike[str], *, force: bool = False, flag: str = "--out") -> Path:
    """Refuse an output file that cannot be written, before any work is done; returns it as a Path.

    Raises:
        OutputError: the path is a folder, exists and ``force`` is False, its folder is missing or not writable.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name inside it (e.g. {path / 'model.pt'})")
    if path.exists() and not force:
        raise OutputError(f"{flag} {path} already exists; pass --force to replace it or choose another path")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"folder {parent} does not exist; create it or choose another {flag} path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"folder {parent} is not writable; choose another {flag} path")
    return path


def check_outputs(
    paths: Iterable[str | os.PathLike[str]], *, force: bool = False, flag: str = "--out"
) -> None:
    """``check_output`` for each of several files (a command that writes a file and its sidecars)."""
    for path in paths:
        check_output(path, force=force, flag=flag)


def check_output_dir(
    path: str | os.PathLike[str], names: Iterable[str], *, force: bool = False, flag: str = "--out"
) -> Path:
    """Refuse an output folder (created later if missing) whose files ``names`` cannot be written.

    Raises:
        OutputError: the path is a file, a file in it exists and ``force`` is False, or it cannot be created.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(
            f"{flag} {path} is a file, not a folder; choose a folder path (it is created if missing)"
        )
    if path.is_dir():
        for name in names:
            check_output(path / name, force=force, flag=flag)
        return path
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(
            f"{flag} {path} cannot be created: {ancestor} is not a writable folder; choose another path"
        )
    return path


def _temp_path(path: Path) -> Path:
    # Same folder (so the rename is atomic), same suffix (writers that look at it), hidden, unique per process.
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Raises:
        OutputError: the write failed for a reason the user can fix (no space, read-only, a folder, no
            permission); the previous file at ``path`` is untouched and the temporary file removed.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        message = _user_message(exc, path)
        if message is None:
            raise
        raise OutputError(message) from exc
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see ``write_atomic``)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


_ERRNO_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another path",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another path",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.EISDIR: "it is a folder; give a file name inside it",
    errno.EACCES: "permission denied; choose a writable path",
    errno.EPERM: "permission denied; choose a writable path",
    errno.ENOENT: "its folder does not exist; create it or choose another path",
}


def _user_message(exc: BaseException, path: Path) -> str | None:
    """One line for a write failure a user can fix, or None for anything else (a bug, or Ctrl-C)."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_HINTS:
        return f"cannot write {path}: {_ERRNO_HINTS[exc.errno]}"
    cause = exc
    while cause is not None:  # torch.save wraps the OSError of its zip writer in a RuntimeError
        if isinstance(cause, OSError) and cause.errno in _ERRNO_HINTS:
            return f"cannot write {path}: {_ERRNO_HINTS[cause.errno]}"
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in text or "cannot be opened" in text):
        return f"cannot write {path} ({text.splitlines()[0][:120]}); check free space and that the folder is writable"
    if isinstance(exc, OSError):
        return f"cannot write {path} ({exc}); check free space and that the folder is writable"
    return None
