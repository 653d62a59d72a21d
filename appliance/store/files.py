"""Durability steps on plain files: fsync a directory, truncate a file for good, write one
whole or not at all."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(path: Path, offset: int) -> None:
    """Cut ``path`` at ``offset`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    final: Path, parts: list[bytes], write: Callable[[int, memoryview], int] = os.write
) -> None:
    """Write ``parts`` to ``final`` through a synced temporary file and a rename: a crash
    leaves the old file or the new one, never half of it (``write`` is a fault seam)."""
    tmp = final.with_name(final.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            for data in parts:
                view = memoryview(data)
                written = 0
                while written < len(data):  # each pass writes >= 1 byte or raises
                    n = write(fd, view[written:])
                    if n <= 0:
                        raise OSError(errno.EIO, "write returned no progress")
                    written += n
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
