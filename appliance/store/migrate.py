"""``pushy admin migrate-store --from file --to URL``: the file log copied into PostgreSQL.

The server must be stopped (the file log's lock says so). The newest snapshot and every record
after it are copied as they are, each in its own format, in one transaction, into a database
that holds no log yet: the database then replays exactly what the directory would have. The
directory is left as it was (the way back is to keep using it).

The server's RSA key (``STATE_DIR/server.pem``) goes in too, as a ``server_key`` record after
the last one: every server sharing the database signs with it, so the nodes that trust it now
go on trusting whichever server is active.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from appliance.core import migrations, records
from appliance.core.keys import load_private_pem, private_pem, public_pem
from appliance.store.log import EventLog


def _server_key_record(state_dir: Path) -> bytes | None:
    """The ``server_key`` record of ``STATE_DIR/server.pem`` (None without one)."""
    try:
        pem = (state_dir / "server.pem").read_bytes()
    except FileNotFoundError:
        return None
    key = load_private_pem(pem)
    return orjson.dumps(records.server_key(private_pem(key), public_pem(key)))


@dataclass(frozen=True)
class Copied:
    snapshot_seq: int | None
    records: int
    last_seq: int
    seconds: float


def migrate_file_to_postgresql(
    state_dir: Path,
    url: str,
    *,
    password_file: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Copied:
    """Copy the event log of ``state_dir`` into the empty database ``url``. Raises
    ``StorageError`` (the log is in use: a running server), ``LogCorruption``, ``ValueError``
    (the database already holds a log) or ``psycopg.Error``."""
    from appliance.store.pgstore import open_pglog  # psycopg: only for this command

    started = time.monotonic()
    source = EventLog(state_dir)
    target = open_pglog(url, password_file, holder=f"migrate-store@{socket.gethostname()}")
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

        def with_key() -> Iterator[tuple[int, bytes, int]]:
            last = base or 0
            for seq, payload, fmt in records:
                last = seq
                yield seq, payload, fmt
            key = _server_key_record(state_dir)
            if key is not None:
                yield last + 1, key, migrations.FORMAT

        count = target.copy_in(first, with_key(), counted)
    finally:
        source.close()
        target.close()
    return Copied(base, count, (base or 0) + count, time.monotonic() - started)
