"""What the event log raises: damage it will not silently cut, and failed writes."""

from __future__ import annotations

import errno
from pathlib import Path

from appliance.core import migrations


class LogCorruption(Exception):
    """Damage that would lose acknowledged data if ignored: mid-log, seq gap, snapshot."""

    def __init__(
        self,
        reason: str,
        *,
        path: Path | str | None = None,
        offset: int | None = None,
        seq: int | None = None,
    ) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.offset = offset
        self.seq = seq
        where = [
            f"file {self.path}" if self.path is not None else None,
            f"offset {offset}" if offset is not None else None,
            f"seq {seq}" if seq is not None else None,
        ]
        prefix = ", ".join(w for w in where if w)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


class UnsupportedFormat(LogCorruption):
    """A file of a format this release cannot read (a newer one, after a downgrade): never
    'recovered' by deleting it. ``found`` is the file's format."""

    def __init__(self, found: int, what: str, *, path: Path | str, seq: int | None = None):
        self.found = found
        if found > migrations.FORMAT:
            why = f"it was written in format {found}, by a newer release of pushy"
        else:
            why = f"it is in format {found}, older than any this release reads"
        super().__init__(
            f"{what} cannot be read: {why}; this release reads formats "
            f"{migrations.OLDEST_FORMAT} to {migrations.FORMAT}",
            path=path,
            offset=8,
            seq=seq,
        )


class StorageError(OSError):
    """A write failed (ENOSPC, EROFS, EIO...); `.errno` says why. Nothing half-written stays."""


def storage_error(exc: OSError, what: str, path: Path | str) -> StorageError:
    code = exc.errno if exc.errno is not None else errno.EIO
    return StorageError(code, f"{what} failed: {exc.strerror or exc}", str(path))
