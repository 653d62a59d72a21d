"""The event log in PostgreSQL: the same records as the file log, one writer at a time.

The second engine behind the log's interface (DESIGN.md "One store interface, two engines"):
`PgLog` answers what `EventLog` answers (`open`, `append`, `last_seq`, snapshots), so the
committer and the replay above it do not know which one they hold. Everything here is
blocking psycopg 3 (its blocking API is thread-safe; the committer calls it from a worker
thread, as it calls the file log's write and fsync).

Tables (created if missing, in the database the URL names):

- ``pushy_log (seq, format, epoch, payload)``: one row per record, ``seq`` the primary key; a
  start replays the rows after the newest snapshot in ``seq`` order and refuses a gap.
- ``pushy_snapshots (seq, format, payload)``: the state after ``seq``; the newest two are kept,
  and the records the older of them covers are deleted when a newer one is written.
- ``pushy_lease (epoch, holder, expires_at)``: one row, the lease of the one server that may
  append.

The lease is time-based, on the database's clock alone (``clock_timestamp()``): a server is
active while the row names its epoch and has not expired; it renews well before then. Another
server takes the lease only once it has expired, by bumping the epoch. Every append checks, in
its own transaction and under a share lock of that row, that the epoch is still its own and
unexpired, so a server deposed while it was paused (SIGSTOP, a VM freeze, a partition) can
never write after its successor's first record: a takeover's UPDATE waits for an append that
holds the row, and an append after the takeover sees the new epoch (`Fenced`). A session
advisory lock would not do: a stopped process's kernel keeps its connection, and its lock,
alive.

``NOTIFY pushy_log`` goes out with every append, only as a wake-up for the standbys that follow
the log; they read the rows after their last seq whatever the notification said.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import psycopg

from appliance.core import migrations
from appliance.store.errors import LogCorruption, StorageError, UnsupportedFormat
from appliance.store.replay import OpenReport

__all__ = ["Fenced", "Lease", "PgLog", "SCHEMA"]

log = logging.getLogger(__name__)

CHANNEL = "pushy_log"
SCHEMA = """
CREATE TABLE IF NOT EXISTS pushy_log (
    seq bigint PRIMARY KEY,
    format smallint NOT NULL,
    epoch bigint NOT NULL,
    payload bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS pushy_snapshots (
    seq bigint PRIMARY KEY,
    format smallint NOT NULL,
    payload bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS pushy_lease (
    id smallint PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
INSERT INTO pushy_lease VALUES (1, 0, '', '-infinity') ON CONFLICT (id) DO NOTHING;
"""
_REPLAY_BATCH = 2000  # rows fetched per round trip while replaying


class Fenced(StorageError):
    """This server's lease is gone (expired, or another server holds a newer epoch): it must
    not write, and turns standby."""

    def __init__(self, detail: str) -> None:
        super().__init__(errno.EPERM, f"not the active server: {detail}", "pushy_lease")


@dataclass(frozen=True)
class Lease:
    epoch: int
    holder: str
    seconds_left: float  # by the database's clock, when it was read


class PgLog:
    """The event log in the database ``url`` names (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        holder: str,
        lease_seconds: float = 10.0,
        snapshot_every: int = 100_000,
        format: int | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.holder = holder  # who this server is, in the lease row (host, pid, incarnation)
        self.lease_seconds = lease_seconds
        self.snapshot_every = snapshot_every  # records after the newest snapshot that call for one
        self.format = migrations.FORMAT if format is None else format
        self.connect_timeout = connect_timeout
        self.report = OpenReport()
        self.epoch: int | None = None  # our lease's epoch while we hold it
        self._conn: psycopg.Connection | None = None
        self._listener: psycopg.Connection | None = None  # a standby's LISTEN connection
        self._last_seq = 0
        self._since_snapshot = 0
        self._ready = False

    # -- connection ------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            try:
                conn = psycopg.connect(self.url, connect_timeout=self.connect_timeout)
            except psycopg.OperationalError as exc:
                raise StorageError(
                    errno.ECONNREFUSED, f"cannot reach the database: {exc}", ""
                ) from exc
            self._conn = conn
        return conn

    def create_schema(self) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute(SCHEMA)

    # -- the lease -------------------------------------------------------------------------

    def lease(self) -> Lease:
        """Who holds the lease now, by the database's clock."""
        conn = self._connection()
        with conn.transaction():
            row = conn.execute(
                "SELECT epoch, holder, extract(epoch FROM expires_at - clock_timestamp())"
                " FROM pushy_lease WHERE id = 1"
            ).fetchone()
        assert row is not None
        left = row[2]
        return Lease(row[0], row[1], float(left) if left is not None else float("-inf"))

    def try_acquire(self) -> int | None:
        """Take the lease if it has expired (or we hold it): its new epoch, or None."""
        conn = self._connection()
        with conn.transaction():
            row = conn.execute(
                "UPDATE pushy_lease SET epoch = epoch + 1, holder = %s,"
                " expires_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = 1 AND (expires_at < clock_timestamp() OR (holder = %s AND epoch = %s))"
                " RETURNING epoch",
                (self.holder, self.lease_seconds, self.holder, self.epoch or -1),
            ).fetchone()
        if row is None:
            return None
        self.epoch = row[0]
        log.info("lease taken: epoch %d, for %.0f s", self.epoch, self.lease_seconds)
        return self.epoch

    def renew(self) -> None:
        """Extend our lease by ``lease_seconds``; `Fenced` when it is no longer ours."""
        if self.epoch is None:
            raise Fenced("no lease held")
        conn = self._connection()
        with conn.transaction():
            row = conn.execute(
                "UPDATE pushy_lease SET expires_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = 1 AND epoch = %s AND expires_at > clock_timestamp() RETURNING epoch",
                (self.lease_seconds, self.epoch),
            ).fetchone()
        if row is None:
            lost, self.epoch = self.epoch, None
            raise Fenced(f"the lease of epoch {lost} expired or was taken")

    def release(self) -> None:
        """Give the lease up at once (a clean stop): a standby need not wait for it to expire."""
        if self.epoch is None:
            return
        conn = self._connection()
        with conn.transaction():
            conn.execute(
                "UPDATE pushy_lease SET expires_at = '-infinity' WHERE id = 1 AND epoch = %s",
                (self.epoch,),
            )
        self.epoch = None

    # -- open and replay -------------------------------------------------------------------

    def open(
        self, *, recover: bool = False
    ) -> tuple[tuple[bytes, int] | None, Iterator[tuple[int, bytes, int]]]:
        """As `EventLog.open`: ((snapshot payload, format) or None, the records after it).
        ``recover`` is accepted for the interface; a database has no torn tail to cut."""
        self.create_schema()
        conn = self._connection()
        row = conn.execute(
            "SELECT seq, format, payload FROM pushy_snapshots ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        conn.commit()
        base = 0
        snapshot = None
        if row is not None:
            base, fmt, payload = row
            if not migrations.readable(fmt):
                raise UnsupportedFormat(fmt, "the snapshot", path="pushy_snapshots", seq=base)
            snapshot = (bytes(payload), fmt)
            self.report.snapshot_seq = base
        return snapshot, self._records_after(base)

    def _records_after(self, base: int) -> Iterator[tuple[int, bytes, int]]:
        expect = base + 1
        for seq, fmt, payload in self.read_after(base):
            if seq != expect:
                raise LogCorruption(
                    f"a gap: record {seq} after {expect - 1}", path="pushy_log", seq=seq
                )
            self.report.formats.add(fmt)
            self.report.records_replayed += 1
            expect += 1
            yield seq, payload, fmt
        self._last_seq = expect - 1
        self._since_snapshot = expect - 1 - base
        self.report.last_seq = self._last_seq
        self._ready = True
        log.info("event log (PostgreSQL): opened at seq %d", self._last_seq)

    def read_after(self, seq: int, limit: int | None = None) -> Iterator[tuple[int, int, bytes]]:
        """(seq, format, payload) of the records after ``seq``, in order (a standby follows the
        log with this); read in batches, so that a long log is not held in memory at once."""
        conn = self._connection()
        left = limit
        while left is None or left > 0:
            batch = _REPLAY_BATCH if left is None else min(left, _REPLAY_BATCH)
            rows = conn.execute(
                "SELECT seq, format, payload FROM pushy_log WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, batch),
            ).fetchall()
            conn.commit()
            for row_seq, fmt, payload in rows:
                yield row_seq, fmt, bytes(payload)
            if len(rows) < batch:
                return
            seq = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def wait_after(self, seq: int, timeout: float) -> list[tuple[int, int, bytes]]:
        """A standby's step: the records after ``seq``, waiting up to ``timeout`` seconds for
        some. A notification only wakes it up; what it returns is always read from the table,
        so a notification lost (a reconnect, a full queue) costs at most ``timeout``."""
        found = list(self.read_after(seq))
        if found:
            return found
        listener = self._listener
        if listener is None or listener.closed or listener.broken:
            listener = self._listener = psycopg.connect(
                self.url, autocommit=True, connect_timeout=self.connect_timeout
            )
            listener.execute(f"LISTEN {CHANNEL}")
            found = list(self.read_after(seq))  # written between the read and the LISTEN
            if found:
                return found
        for _ in listener.notifies(timeout=timeout, stop_after=1):
            break
        return list(self.read_after(seq))

    # -- appends ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def append(self, records: list[tuple[int, bytes]]) -> None:
        """Write ``records`` (consecutive seqs after `last_seq`) in one transaction, fenced by
        our lease's epoch; `Fenced` when the lease is not ours, and nothing is written."""
        if not self._ready:
            raise RuntimeError("event log is not open (consume the replay iterator first)")
        if not records:
            return
        expect = self._last_seq + 1
        for seq, _ in records:
            if seq != expect:
                raise ValueError(f"append: seq {seq}, expected {expect}")
            expect += 1
        if self.epoch is None:
            raise Fenced("no lease held")
        conn = self._connection()
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT epoch, expires_at > clock_timestamp() FROM pushy_lease"
                    " WHERE id = 1 FOR SHARE"
                ).fetchone()
                if row is None or row[0] != self.epoch or not row[1]:
                    raise Fenced(
                        f"lease epoch {row[0] if row else None} "
                        f"{'held' if row and row[1] else 'expired'}, ours {self.epoch}"
                    )
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO pushy_log (seq, format, epoch, payload) VALUES (%s, %s, %s, %s)",
                        [(seq, self.format, self.epoch, payload) for seq, payload in records],
                    )
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(expect - 1)))
        except Fenced:
            self.epoch = None
            raise
        except psycopg.Error as exc:
            raise StorageError(
                errno.EIO, f"appending to the event log: {exc}", "pushy_log"
            ) from exc
        self._last_seq = expect - 1
        self._since_snapshot += len(records)

    # -- migration -------------------------------------------------------------------------

    def held_records(self) -> int:
        """How many records and snapshots the database holds (0: an empty log)."""
        self.create_schema()
        conn = self._connection()
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pushy_log) + (SELECT count(*) FROM pushy_snapshots)"
        ).fetchone()
        conn.commit()
        return int(row[0]) if row else 0

    def copy_in(
        self,
        snapshot: tuple[int, bytes, int] | None,
        records: Iterable[tuple[int, bytes, int]],
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Copy another log (``pushy admin migrate-store``): the snapshot ``(seq, payload,
        format)`` and the records after it, each in its own format, in one transaction, into
        a database that holds none; returns the records copied. Seqs must follow on."""
        if self.held_records():
            raise ValueError("the database already holds an event log")
        conn = self._connection()
        count = 0
        with conn.transaction():
            expect = 1
            if snapshot is not None:
                seq, payload, fmt = snapshot
                conn.execute(
                    "INSERT INTO pushy_snapshots (seq, format, payload) VALUES (%s, %s, %s)",
                    (seq, fmt, payload),
                )
                expect = seq + 1
            with conn.cursor() as cur:
                with cur.copy("COPY pushy_log (seq, format, epoch, payload) FROM STDIN") as copy:
                    for seq, payload, fmt in records:
                        if seq != expect:
                            raise LogCorruption(f"a gap: record {seq} after {expect - 1}", seq=seq)
                        copy.write_row((seq, fmt, 0, payload))
                        expect += 1
                        count += 1
                        if progress is not None and count % 10_000 == 0:
                            progress(count)
        return count

    # -- snapshots -------------------------------------------------------------------------

    def needs_snapshot(self) -> bool:
        return self._ready and self._since_snapshot >= self.snapshot_every

    def seal(self) -> int:
        """Rows need no sealing: every record up to the last one is written for good."""
        return self._last_seq

    def write_snapshot(self, seq: int, payload: bytes) -> None:
        """Store the state after ``seq``; keep it and the previous snapshot, and the records
        after the previous one (so a damaged newest snapshot still leaves a replay path)."""
        if seq > self._last_seq:
            raise ValueError(f"write_snapshot: seq {seq} is after the last record")
        conn = self._connection()
        with conn.transaction():
            conn.execute(
                "INSERT INTO pushy_snapshots (seq, format, payload) VALUES (%s, %s, %s)"
                " ON CONFLICT (seq) DO NOTHING",
                (seq, self.format, payload),
            )
            row = conn.execute(
                "SELECT max(seq) FROM pushy_snapshots WHERE seq < %s", (seq,)
            ).fetchone()
            previous = row[0] if row else None
            if previous is not None:
                conn.execute("DELETE FROM pushy_snapshots WHERE seq < %s", (previous,))
                conn.execute("DELETE FROM pushy_log WHERE seq <= %s", (previous,))
        self._since_snapshot = self._last_seq - seq

    def close(self) -> None:
        self._ready = False
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
