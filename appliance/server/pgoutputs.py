"""Live output in PostgreSQL: what ``server.outputs`` keeps in files, for a shared store.

With a PostgreSQL ``store`` the output must outlive the host that took it: after a failover
the new active serves what the old one acknowledged. Same rules and same interface as the
file version (``core.output`` decides what of a chunk is new): chunks taken between two passes
are inserted in one transaction (group commit), fenced by the lease like every append of the
log, and a chunk is acknowledged, shown and readable only once that transaction committed.
A failed pass keeps its rows for the next one (the node resends what was not acknowledged).

The length of a stream is held in memory while its job is live; the new active reads those
of the jobs still live (`preload`) before it takes any node message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import psycopg
import trio

from appliance.core import output as coreoutput
from appliance.core.output import Kept, StreamState
from appliance.store.errors import StorageError
from appliance.store.pglog import PgLog

log = logging.getLogger("pushy.output")

Key = tuple[str, str, str]  # job, node, stream
RETRY_SECONDS = 1.0  # between two passes while the database refuses them


class PgOutputs:
    def __init__(self, pglog: PgLog, limit: int) -> None:
        self.pglog = pglog  # its lease fences the writes; its settings connect
        self.limit = limit
        self.write_errors = 0
        self._streams: dict[Key, StreamState] = {}
        self._rows: list[tuple[str, str, str, int, bytes, bool]] = []
        self._due: list[Callable[[], None]] = []
        self._wake = trio.Event()
        self._conns: dict[str, psycopg.Connection] = {}
        self._locks = {"write": threading.Lock(), "read": threading.Lock()}

    def _run(self, which: str, work: Callable[[psycopg.Connection], object]) -> object:
        """``work(conn)`` on the ``which`` connection (made again after a failure), in one
        transaction; `StorageError` when the database cannot do it."""
        with self._locks[which]:
            conn = self._conns.get(which)
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = self._conns[which] = self.pglog.connect()
                with conn.transaction():
                    return work(conn)
            except psycopg.Error as exc:
                raise StorageError(
                    0, f"live output in the database: {exc}", "pushy_output"
                ) from exc

    # -- taking chunks ---------------------------------------------------------------------

    def take(self, job_id: str, node: str, stream: str, offset: int, data: bytes) -> Kept | None:
        key = (job_id, node, stream)
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = StreamState()
        kept = coreoutput.accept(state, offset, data, self.limit)
        if kept is None:
            return None
        at = kept.offset
        if kept.data:
            self._rows.append((job_id, node, stream, at, kept.data, False))
        if kept.marker:
            self._rows.append((job_id, node, stream, at + len(kept.data), kept.marker, True))
        return kept

    def when_synced(self, then: Callable[[], None]) -> None:
        self._due.append(then)
        self._wake.set()

    async def preload(self, job_ids: Iterable[str]) -> None:
        """The kept length of every stream of ``job_ids`` (the jobs live when this server
        became active), so that their nodes' chunks go on where the old active stopped."""
        ids = list(job_ids)
        if not ids:
            return

        def read(conn: psycopg.Connection) -> list[tuple]:
            return conn.execute(
                "SELECT job, node, stream, sum(length(data)) FILTER (WHERE NOT truncated),"
                " bool_or(truncated) FROM pushy_output WHERE job = ANY(%s)"
                " GROUP BY job, node, stream",
                (ids,),
            ).fetchall()

        rows = await trio.to_thread.run_sync(self._run, "read", read)
        for job, node, stream, length, truncated in rows:  # type: ignore[union-attr]
            self._streams[(job, node, stream)] = StreamState(int(length or 0), truncated=truncated)

    # -- the group commit ------------------------------------------------------------------

    async def sync_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not await self.sync():
                await trio.sleep(RETRY_SECONDS)  # the database is away: try again, unasked
                self._wake.set()

    async def sync(self) -> bool:
        rows, self._rows = self._rows, []
        due, self._due = self._due, []
        if rows:
            pglog = self.pglog

            def insert(conn: psycopg.Connection) -> None:
                pglog.check_lease(conn)
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO pushy_output (job, node, stream, pos, data, truncated)"
                        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        rows,
                    )

            try:
                await trio.to_thread.run_sync(self._run, "write", insert)
            except StorageError as exc:
                log.error("live output: %d chunks not written yet: %s", len(rows), exc)
                self._rows = rows + self._rows  # the next pass tries again
                self._due = due + self._due
                return False
        for done in due:
            try:
                done()
            except Exception:
                log.exception("after an output commit")
        return True

    # -- reading ---------------------------------------------------------------------------

    async def read(self, job_id: str, node: str, stream: str) -> bytes | None:
        def read(conn: psycopg.Connection) -> list[tuple]:
            return conn.execute(
                "SELECT data FROM pushy_output WHERE job = %s AND node = %s AND stream = %s"
                " ORDER BY pos",
                (job_id, node, stream),
            ).fetchall()

        rows = await trio.to_thread.run_sync(self._run, "read", read)
        if not rows:
            return None
        return b"".join(bytes(row[0]) for row in rows)  # type: ignore[union-attr]

    async def streamed(self, job_id: str, node: str) -> bool:
        if any((job_id, node, s) in self._streams for s in coreoutput.STREAMS):
            return True

        def read(conn: psycopg.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM pushy_output WHERE job = %s AND node = %s LIMIT 1", (job_id, node)
            ).fetchone()
            return row is not None

        return bool(await trio.to_thread.run_sync(self._run, "read", read))

    def forget(self, job_ids: Iterable[str]) -> None:
        gone = set(job_ids)
        for key in [k for k in self._streams if k[0] in gone]:
            del self._streams[key]

    async def remove(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        self.forget(ids)

        def delete(conn: psycopg.Connection) -> None:
            conn.execute("DELETE FROM pushy_output WHERE job = ANY(%s)", (ids,))

        try:
            await trio.to_thread.run_sync(self._run, "write", delete)
        except StorageError as exc:
            log.error("the output of %d jobs past retention was not deleted: %s", len(ids), exc)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
