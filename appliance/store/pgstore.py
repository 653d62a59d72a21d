"""Opening the PostgreSQL event log from the settings (``store``, ``store_password_file``).

Kept apart from ``store.pglog`` so that the callers that only need a connected `PgLog` (the
server, the snapshot child, ``pushy admin migrate-store``) read the password the same way.
"""

from __future__ import annotations

import errno
import os
import socket

from appliance.store.errors import StorageError
from appliance.store.pglog import PgLog


def read_password(path: str | None) -> str | None:
    """The password alone in ``path`` (its trailing newline dropped); None without a file,
    when libpq finds one itself (``PGPASSFILE``, ``~/.pgpass``)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise StorageError(
            exc.errno or errno.EIO, f"cannot read store_password_file: {exc.strerror}", path
        ) from exc


def holder_name() -> str:
    """Who holds the lease, as the lease row and the logs show it: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def open_pglog(
    url: str,
    password_file: str | None,
    *,
    holder: str | None = None,
    lease_seconds: float = 10.0,
    segment_max_bytes: int = 64 * 1024 * 1024,
) -> PgLog:
    """A `PgLog` for ``url`` (not opened: call ``open`` or one of its readers)."""
    return PgLog(
        url,
        holder=holder or holder_name(),
        lease_seconds=lease_seconds,
        segment_max_bytes=segment_max_bytes,
        password=read_password(password_file),
    )
