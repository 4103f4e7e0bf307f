"""Files and directories only their owner may read (disclosure rule 7).

Everything genofed writes that holds a secret (tokens, keys), people's data (node stores, derived
tables) or privacy state (SQLite ledgers and trackers, audit logs, MPC inputs) is created with mode
0600 inside directories of mode 0700, from the moment it exists: files are opened with that mode
(never written world-readable and tightened afterwards), and the process umask is left alone (it is
process-wide, and a node serves from many threads).

>>> from genofed.engine.privatefs import private_dir, write_private
>>> d = private_dir(tmp / "state")                      # doctest: +SKIP
>>> write_private(d / "token", "s3cret")                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: str | os.PathLike[str], *, parents: bool = True) -> Path:
    """Create ``path`` (mode 0700), or tighten an existing directory of ours to 0700."""
    p = Path(path)
    p.mkdir(mode=DIR_MODE, parents=parents, exist_ok=True)
    with contextlib.suppress(PermissionError):  # a directory someone else owns: theirs to set
        if stat.S_IMODE(p.stat().st_mode) != DIR_MODE:
            os.chmod(p, DIR_MODE)
    return p


def open_private(path: str | os.PathLike[str], mode: str = "wb") -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``a``, with or without ``b``/``+``), the file
    created with mode 0600; an existing file is tightened to 0600 before anything is written."""
    if not mode or mode[0] not in "wa":
        raise ValueError(f"open_private writes files: mode must start with 'w' or 'a', not {mode!r}")
    flags = os.O_CREAT | (os.O_RDWR if "+" in mode else os.O_WRONLY) | (os.O_APPEND if mode[0] == "a" else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: str | bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (a 0600 temporary file beside it, then a rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open_private(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def make_private(path: str | os.PathLike[str]) -> Path:
    """Tighten a file a library wrote (mode 0600), or a directory (0700); symlinks are left alone."""
    p = Path(path)
    st = p.lstat()
    if stat.S_ISLNK(st.st_mode):
        return p
    want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
    if stat.S_IMODE(st.st_mode) != want:
        os.chmod(p, want)
    return p


def private_tree(root: str | os.PathLike[str]) -> Path:
    """:func:`make_private` for ``root`` and everything under it (files written by libraries
    such as Parquet or NumPy into a directory that was private from the start)."""
    top = Path(root)
    make_private(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            make_private(Path(dirpath) / name)
    return top


def private_sqlite(path: str | os.PathLike[str]) -> Path:
    """Prepare a SQLite database file before it is opened: its directory 0700, the file created
    empty with mode 0600 (SQLite gives its ``-wal``/``-shm`` files the database file's mode), and
    such side files left by an earlier, wider-moded version tightened."""
    p = Path(path)
    private_dir(p.parent)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in SQLITE_SIDE_FILES:
        side = p.with_name(p.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            make_private(side)
    return p


__all__ = ["DIR_MODE", "FILE_MODE", "make_private", "open_private", "private_dir", "private_sqlite", "private_tree", "write_private"]
