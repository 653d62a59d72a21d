"""``pushy admin migrate-store --from file --to URL``: the file log copied into PostgreSQL.

The server must be stopped (the file log's lock says so). The newest snapshot and every record
after it are copied as they are, each in its own format, in one transaction, into a database
that holds no log yet: the database then replays exactly what the directory would have. The
directory is left as it was (the way back is to keep using it).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.store.log import EventLog


@dataclass(frozen=True)
class Copied:
    snapshot_seq: int | None
    records: int
    last_seq: int
    seconds: float


def migrate_file_to_postgresql(
    state_dir: Path, url: str, *, progress: Callable[[str], None] | None = None
) -> Copied:
    """Copy the event log of ``state_dir`` into the empty database ``url``. Raises
    ``StorageError`` (the log is in use: a running server), ``LogCorruption``, ``ValueError``
    (the database already holds a log) or ``psycopg.Error``."""
    from appliance.store.pglog import PgLog  # psycopg: only for this command

    started = time.monotonic()
    source = EventLog(state_dir)
    target = PgLog(url, holder=f"migrate-store@{socket.gethostname()}")
    try:
        if target.held_records():
            raise ValueError(
                "the database already holds an event log; migrate-store copies into an empty one"
            )
        snapshot, records = source.open()
        base = source.report.snapshot_seq
        first = None if snapshot is None or base is None else (base, snapshot[0], snapshot[1])

        def counted(n: int) -> None:
            if progress is not None:
                progress(f"{n} records copied")

        count = target.copy_in(first, ((s, p, f) for s, p, f in records), counted)
    finally:
        source.close()
        target.close()
    return Copied(base, count, source.last_seq, time.monotonic() - started)
