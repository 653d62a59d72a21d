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
- ``pushy_output (job, node, stream, pos, data, truncated)``: live output, as the file store's
  output folder keeps it (``server.pgoutputs``), fenced the same way.

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
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import psycopg

from appliance.core import migrations
from appliance.core.timings import Timings
from appliance.store.errors import LogCorruption, StorageError, UnsupportedFormat
from appliance.store.replay import OpenReport

__all__ = ["Diverged", "Fenced", "Lease", "PgLog", "SCHEMA"]

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
CREATE TABLE IF NOT EXISTS pushy_output (
    job text NOT NULL,
    node text NOT NULL,
    stream text NOT NULL,
    pos bigint NOT NULL,
    data bytea NOT NULL,
    truncated boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job, node, stream, pos)
);
"""
_REPLAY_BATCH = 2000  # rows fetched per round trip while replaying
FOLLOW_BATCH = 5000  # records a standby applies per step (PgLog.wait_after)


class Fenced(StorageError):
    """This server's lease is gone (expired, or another server holds a newer epoch): it must
    not write, and turns standby."""

    def __init__(self, detail: str) -> None:
        super().__init__(errno.EPERM, f"not the active server: {detail}", "pushy_lease")


class Diverged(Fenced):
    """The table holds records after the ones this server knows: a write it was told had
    failed (the connection broke during its commit) went in after all. Its state no longer
    matches the log: it must read the log again (the server steps down and starts over)."""

    def __init__(self, ours: int, theirs: int) -> None:
        StorageError.__init__(
            self,
            errno.EIO,
            f"the log ends at seq {theirs}, this server knew {ours}: reading it again",
            "pushy_log",
        )


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
        segment_max_bytes: int = 64 * 1024 * 1024,
        format: int | None = None,
        connect_timeout: float = 10.0,
        password: str | None = None,
    ) -> None:
        self.url = url
        self.password = password  # None: libpq finds it (PGPASSFILE, ~/.pgpass)
        self.holder = holder  # who this server is, in the lease row (host, pid, incarnation)
        self.lease_seconds = lease_seconds
        # bytes of records after the newest snapshot that call for the next one (what a file
        # log's full segment means: the same setting, ``log_segment_max_bytes``)
        self.segment_max_bytes = segment_max_bytes
        self.format = migrations.FORMAT if format is None else format
        self.connect_timeout = connect_timeout
        self.report = OpenReport()
        self.epoch: int | None = None  # our lease's epoch while we hold it
        self.diverged = False  # an append found records after ours (`Diverged`)
        self._conn: psycopg.Connection | None = None
        # the lease's own connection: renewals run beside appends, in another worker thread
        self._lease_conn: psycopg.Connection | None = None
        self._listener: psycopg.Connection | None = None  # a standby's LISTEN connection
        self._last_seq = 0
        self._since_snapshot = 0  # bytes of the records after the newest snapshot
        self._ready = False
        # each append's statements and its commit, the file log's write and fdatasync
        self.write_timings = Timings()
        self.sync_timings = Timings()

    # -- connection ------------------------------------------------------------------------

    def where(self) -> str:
        """The database, as logs show it (never a password the URL may hold)."""
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    def connect(self, **options: object) -> psycopg.Connection:
        """A new connection to the database (`StorageError` when it cannot be reached)."""
        if self.password is not None:
            options["password"] = self.password
        try:
            return psycopg.connect(self.url, connect_timeout=self.connect_timeout, **options)
        except psycopg.OperationalError as exc:
            raise StorageError(errno.ECONNREFUSED, f"cannot reach the database: {exc}") from exc

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._conn = self.connect()
        return conn

    def _lease_connection(self) -> psycopg.Connection:
        conn = self._lease_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._lease_conn = self.connect()
        return conn

    def _lease_query(self, sql: str, params: tuple = ()) -> tuple | None:
        conn = self._lease_connection()
        try:
            with conn.transaction():
                return conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            raise StorageError(errno.EIO, f"the lease: {exc}", "pushy_lease") from exc

    def create_schema(self) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute(SCHEMA)

    # -- the lease -------------------------------------------------------------------------

    def lease(self) -> Lease:
        """Who holds the lease now, by the database's clock."""
        row = self._lease_query(
            "SELECT epoch, holder, extract(epoch FROM expires_at - clock_timestamp())"
            " FROM pushy_lease WHERE id = 1"
        )
        assert row is not None
        left = row[2]
        return Lease(row[0], row[1], float(left) if left is not None else float("-inf"))

    def try_acquire(self) -> int | None:
        """Take the lease if it has expired (or we hold it): its new epoch, or None."""
        row = self._lease_query(
            "UPDATE pushy_lease SET epoch = epoch + 1, holder = %s,"
            " expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE id = 1 AND (expires_at < clock_timestamp() OR (holder = %s AND epoch = %s))"
            " RETURNING epoch",
            (self.holder, self.lease_seconds, self.holder, self.epoch or -1),
        )
        if row is None:
            return None
        self.epoch = row[0]
        log.info("lease taken: epoch %d, for %.0f s", self.epoch, self.lease_seconds)
        return self.epoch

    def renew(self) -> None:
        """Extend our lease by ``lease_seconds``; `Fenced` when it is no longer ours.

        A lease that expired while nobody took it (the database was away longer than the
        lease) is still ours to renew: taking it bumps the epoch, so nobody else has written
        meanwhile, and our appends were refused while it had expired."""
        epoch = self.epoch
        if epoch is None:
            raise Fenced("no lease held")
        row = self._lease_query(
            "UPDATE pushy_lease SET expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE id = 1 AND epoch = %s RETURNING epoch",
            (self.lease_seconds, epoch),
        )
        if row is None:
            lost, self.epoch = self.epoch, None
            raise Fenced(f"the lease of epoch {lost} expired or was taken")

    def check_lease(self, conn: psycopg.Connection) -> None:
        """Inside a write's transaction on ``conn``: `Fenced` unless our lease holds. The share
        lock keeps a takeover (an UPDATE of the row) waiting until the transaction ends."""
        row = conn.execute(
            "SELECT epoch, expires_at > clock_timestamp() FROM pushy_lease WHERE id = 1 FOR SHARE"
        ).fetchone()
        if row is None or row[0] != self.epoch or not row[1]:
            raise Fenced(
                f"lease epoch {row[0] if row else None} "
                f"{'held' if row and row[1] else 'expired'}, ours {self.epoch}"
            )

    def release(self) -> None:
        """Give the lease up at once (a clean stop): a standby need not wait for it to expire."""
        if self.epoch is None:
            return
        epoch, self.epoch = self.epoch, None
        self._lease_query(
            "UPDATE pushy_lease SET expires_at = '-infinity' WHERE id = 1 AND epoch = %s"
            " RETURNING epoch",
            (epoch,),
        )

    # -- open and replay -------------------------------------------------------------------

    def open(
        self, *, recover: bool = False
    ) -> tuple[tuple[bytes, int] | None, Iterator[tuple[int, bytes, int]]]:
        """As `EventLog.open`: ((snapshot payload, format) or None, the records after it).
        ``recover`` is accepted for the interface; a database has no torn tail to cut."""
        try:
            self.create_schema()
            conn = self._connection()
            row = conn.execute(
                "SELECT seq, format, payload FROM pushy_snapshots ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            conn.commit()
        except psycopg.Error as exc:
            raise StorageError(errno.EIO, f"opening the event log: {exc}", "pushy_log") from exc
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
            self._since_snapshot += len(payload)
            expect += 1
            yield seq, payload, fmt
        self._last_seq = expect - 1
        self.report.last_seq = self._last_seq
        self._ready = True
        log.info("event log (PostgreSQL): opened at seq %d", self._last_seq)

    def read_after(self, seq: int, limit: int | None = None) -> Iterator[tuple[int, int, bytes]]:
        """(seq, format, payload) of the records after ``seq``, in order (a standby follows the
        log with this); read in batches, so that a long log is not held in memory at once."""
        left = limit
        while left is None or left > 0:
            batch = _REPLAY_BATCH if left is None else min(left, _REPLAY_BATCH)
            conn = self._connection()
            try:
                rows = conn.execute(
                    "SELECT seq, format, payload FROM pushy_log WHERE seq > %s ORDER BY seq"
                    " LIMIT %s",
                    (seq, batch),
                ).fetchall()
                conn.commit()
            except psycopg.Error as exc:
                raise StorageError(errno.EIO, f"reading the event log: {exc}", "pushy_log") from exc
            for row_seq, fmt, payload in rows:
                yield row_seq, fmt, bytes(payload)
            if len(rows) < batch:
                return
            seq = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def wait_after(
        self, seq: int, timeout: float, limit: int = FOLLOW_BATCH
    ) -> list[tuple[int, int, bytes]]:
        """A standby's step: at most ``limit`` records after ``seq``, waiting up to ``timeout``
        seconds for some. A notification only wakes it up; what it returns is always read from
        the table, so a notification lost (a reconnect, a full queue) costs at most ``timeout``.
        The limit keeps a standby that fell far behind from holding minutes of the active's
        records in memory and from applying them in one step of its event loop."""
        found = list(self.read_after(seq, limit))
        if found:
            return found
        listener = self._listener
        if listener is None or listener.closed or listener.broken:
            listener = self._listener = self.connect(autocommit=True)
            try:
                listener.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as exc:
                raise StorageError(errno.EIO, f"LISTEN: {exc}", "pushy_log") from exc
            found = list(self.read_after(seq, limit))  # written between the read and the LISTEN
            if found:
                return found
        try:
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.Error as exc:
            raise StorageError(errno.EIO, f"waiting for the event log: {exc}", "pushy_log") from exc
        return list(self.read_after(seq, limit))

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
            started = time.perf_counter()
            with conn.transaction():
                self.check_lease(conn)
                end = conn.execute("SELECT max(seq) FROM pushy_log").fetchone()
                if end is not None and end[0] is not None and end[0] > self._last_seq:
                    self.diverged = True
                    raise Diverged(self._last_seq, end[0])
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO pushy_log (seq, format, epoch, payload) VALUES (%s, %s, %s, %s)",
                        [(seq, self.format, self.epoch, payload) for seq, payload in records],
                    )
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(expect - 1)))
                wrote = time.perf_counter()
            self.write_timings.observe(wrote - started)
            self.sync_timings.observe(time.perf_counter() - wrote)  # the COMMIT
        except Diverged:
            raise  # the lease is still ours: the server reads the log again, then writes on
        except Fenced:
            self.epoch = None
            raise
        except psycopg.Error as exc:
            raise StorageError(
                errno.EIO, f"appending to the event log: {exc}", "pushy_log"
            ) from exc
        self._last_seq = expect - 1
        self._since_snapshot += sum(len(payload) for _, payload in records)

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

    def followed(self, seq: int, size: int) -> None:
        """A standby applied the records up to ``seq`` (``size`` bytes of them, read with
        `wait_after`): appends, once it is active, go on from there."""
        if seq > self._last_seq:
            self._since_snapshot += size
            self._last_seq = seq

    # -- snapshots -------------------------------------------------------------------------

    def segment_bytes(self) -> int:
        """Bytes of records since the newest snapshot (the committer's "segment")."""
        return self._since_snapshot

    def needs_snapshot(self) -> bool:
        return self._ready and self._since_snapshot >= self.segment_max_bytes

    def snapshot_written(self, seq: int) -> None:
        """The snapshot of ``seq`` was written (by `write_snapshot`, maybe in a child): the
        count starts again (the few records written meanwhile are not counted)."""
        self._since_snapshot = 0

    def read_upto(
        self, seq: int
    ) -> tuple[tuple[bytes, int] | None, Iterator[tuple[int, bytes, int]]]:
        """The newest snapshot at or before ``seq`` and the records after it up to ``seq``
        (the snapshot child's input, as `replay.read_upto` for the file log)."""
        conn = self._connection()
        row = conn.execute(
            "SELECT seq, format, payload FROM pushy_snapshots WHERE seq <= %s"
            " ORDER BY seq DESC LIMIT 1",
            (seq,),
        ).fetchone()
        conn.commit()
        base, snapshot = 0, None
        if row is not None:
            base, snapshot = row[0], (bytes(row[2]), row[1])

        def records() -> Iterator[tuple[int, bytes, int]]:
            expect = base + 1
            for row_seq, fmt, payload in self.read_after(base, limit=seq - base):
                if row_seq != expect:
                    raise LogCorruption(f"a gap: record {row_seq} after {expect - 1}", seq=row_seq)
                expect += 1
                yield row_seq, payload, fmt
            if expect != seq + 1:
                raise LogCorruption(f"the log ends at seq {expect - 1}, before {seq}", seq=seq)

        return snapshot, records()

    def seal(self) -> int:
        """Rows need no sealing: every record up to the last one is written for good."""
        return self._last_seq

    def write_snapshot(self, seq: int, payload: bytes, *, fmt: int | None = None) -> None:
        """Store the state after ``seq``; keep it and the previous snapshot, and the records
        after the previous one (so a damaged newest snapshot still leaves a replay path).

        Not fenced: the state after ``seq`` is a function of records already written for
        good, so whoever writes it (a snapshot child, even a deposed server's) writes the
        same thing."""
        if self._ready and seq > self._last_seq:
            raise ValueError(f"write_snapshot: seq {seq} is after the last record")
        conn = self._connection()
        with conn.transaction():
            conn.execute(
                "INSERT INTO pushy_snapshots (seq, format, payload) VALUES (%s, %s, %s)"
                " ON CONFLICT (seq) DO NOTHING",
                (seq, self.format if fmt is None else fmt, payload),
            )
            row = conn.execute(
                "SELECT max(seq) FROM pushy_snapshots WHERE seq < %s", (seq,)
            ).fetchone()
            previous = row[0] if row else None
            if previous is not None:
                conn.execute("DELETE FROM pushy_snapshots WHERE seq < %s", (previous,))
                conn.execute("DELETE FROM pushy_log WHERE seq <= %s", (previous,))
        if self._ready:
            self._since_snapshot = 0

    def close(self) -> None:
        self._ready = False
        for name in ("_listener", "_lease_conn", "_conn"):
            conn = getattr(self, name)
            if conn is not None:
                conn.close()
                setattr(self, name, None)
