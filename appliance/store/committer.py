"""The single writer of the event log, with group commit.

Appends come from any trio task and never block; the committer task writes whatever arrived
while the previous write + fdatasync ran as the next batch (one write, one fdatasync, in a
worker thread), then wakes the tasks waiting for those records. Under load the batches grow
by themselves, which is where the throughput comes from.

When a write fails (ENOSPC, EROFS, EIO) the log has already cut the file back; the records
of that batch are dropped and their waiters get the `StorageError`. Records queued behind
the failed batch were never written, so they are renumbered down into the failed seqs: the
log on disk stays gap-free. A seq returned by `append` is therefore only final once it is
synced; `append_and_wait` returns the final one, and `wait_synced` follows the renumbering
for waiters already registered (call it before the next checkpoint after `append`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
import trio

from appliance.store.errors import StorageError
from appliance.store.log import EventLog

__all__ = ["Committer", "CommitterClosed"]

logger = logging.getLogger(__name__)


RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
CLOSE_ATTEMPTS = 3
# a write + fdatasync this slow is said in the log: every HTTP answer, config fetch and REST
# write waits for the disk, so a stalled disk looks like a stalled server
SLOW_WRITE_SECONDS = 2.0


class CommitterClosed(RuntimeError):
    """The committer no longer accepts records, or stopped before they were written."""


class _Entry:
    __slots__ = ("seq", "record", "payload", "on_synced", "waited")

    def __init__(self, seq: int, record: dict, payload: bytes, waited: bool = False) -> None:
        self.seq = seq
        self.record = record
        self.payload = payload
        self.on_synced: Callable[[], None] | None = None
        self.waited = waited  # from append_and_wait: dropped (and its writer told) on failure


class _Waiter:
    __slots__ = ("target", "event", "error")

    def __init__(self, target: int) -> None:
        self.target = target
        self.event = trio.Event()
        self.error: BaseException | None = None


def _copy_error(exc: StorageError) -> StorageError:
    # Each waiter raises its own instance: one exception object raised in many tasks would
    # have its traceback rewritten by each of them.
    err = StorageError(exc.errno, exc.strerror, exc.filename)
    err.__cause__ = exc
    return err


class Committer:
    """The single writer of the log; run `run()` in the nursery that owns the store.

    When the current segment is full the committer seals it (`EventLog.seal`: the records up
    to seq S stay in files no append touches again) and, while it goes on writing, awaits
    `snapshot(S)` in a task of its own; that must write the snapshot file of S (the bytes of
    `EventLog.write_snapshot_file`) with the state after S, built from those files, never
    from the live state (which has moved on). The files it makes obsolete are then dropped.
    """

    def __init__(
        self,
        log: EventLog,
        encode: Callable[[dict], bytes] = orjson.dumps,
        *,
        snapshot: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        if not log.ready:
            raise RuntimeError("open the event log and consume its replay before committing")
        self._log = log
        self._encode = encode
        self._snapshot = snapshot
        self._queue: list[_Entry] = []
        self._waiters: list[_Waiter] = []
        self._next_seq = log.last_seq + 1
        self._synced = log.last_seq
        self._wakeup = trio.Event()
        self._closed = False
        self._running = False
        self._finished = False
        self._snapshot_retry_at = 0
        self._snapshotting = False  # a snapshot task is under way
        self._log_lock = trio.Lock()  # one EventLog call in a worker thread at a time
        self.batches = 0
        self.failures = 0
        self.snapshots = 0
        self.failing = False  # the last write failed (readers then do not wait for the disk)

    @property
    def synced_seq(self) -> int:
        """Every record with seq <= this is on disk."""
        return self._synced

    @property
    def snapshot_under_way(self) -> bool:
        """A snapshot is being built or written."""
        return self._snapshotting

    @property
    def last_seq(self) -> int:
        """The last seq handed out (synced or queued)."""
        return self._next_seq - 1

    def append(self, record: dict) -> int:
        """Assign the next seq (stored into record["seq"], not into the encoded payload: the
        log's frame carries it), queue it, return the seq.

        Never blocks. The committer owns `record` from now on: do not mutate it.
        """
        if self._closed:
            raise CommitterClosed("the event log committer is closed")
        seq = self._next_seq
        record.pop("seq", None)
        payload = self._encode(record)  # without the seq: the log's frame carries it
        record["seq"] = seq
        self._queue.append(_Entry(seq, record, payload))
        self._next_seq = seq + 1
        self._wakeup.set()
        return seq

    async def append_and_wait(
        self, records: list[dict], on_synced: Callable[[], None] | None = None
    ) -> int:
        """Queue `records` (consecutive seqs, one batch) and wait until they are durable.

        `on_synced` runs on the committer task right after the write succeeded: the place to
        apply the records to in-memory state.

        Returns the last seq; raises `StorageError` if the write failed (none of them is then
        in the log, and `on_synced` did not run) or `CommitterClosed`.
        """
        if self._closed:
            raise CommitterClosed("the event log committer is closed")
        if not records:
            await self.wait_synced(self.last_seq)
            return self.last_seq
        first = self._next_seq
        entries = []
        for i, record in enumerate(records):
            record.pop("seq", None)
            entries.append(_Entry(first + i, record, self._encode(record), waited=True))
            record["seq"] = first + i
        entries[-1].on_synced = on_synced
        self._queue.extend(entries)
        self._next_seq = first + len(entries)
        self._wakeup.set()
        return await self._wait(self._next_seq - 1)

    async def wait_synced(self, seq: int) -> None:
        """Wait until `seq` is durable; raise `StorageError` if its write failed."""
        if seq <= self._synced:
            await trio.lowlevel.checkpoint()
            return
        if seq >= self._next_seq:
            raise ValueError(f"wait_synced: seq {seq} was never assigned")
        await self._wait(seq)

    async def _wait(self, target: int) -> int:
        if self._finished:
            raise CommitterClosed("the event log committer stopped")
        waiter = _Waiter(target)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        finally:
            if not waiter.event.is_set():
                self._waiters.remove(waiter)
        if waiter.error is not None:
            raise waiter.error
        return waiter.target

    def close(self) -> None:
        """Stop accepting records; `run()` writes what is queued, then returns."""
        self._closed = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer task. Returns after `close()` once the queue is written."""
        if self._running:
            raise RuntimeError("Committer.run is already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                try:
                    await self._write_until_closed(nursery)
                finally:
                    # a snapshot still being built is dropped: the log holds all it would
                    nursery.cancel_scope.cancel()
        finally:
            self._closed = True
            self._finished = True
            self._queue.clear()
            for waiter in self._waiters:
                waiter.error = CommitterClosed("the event log committer stopped")
                waiter.event.set()
            self._waiters.clear()

    async def _write_until_closed(self, nursery: trio.Nursery) -> None:
        failures_in_a_row = 0
        while True:
            while not self._queue and not self._closed:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            if not self._queue:
                return
            if await self._write_batch():
                failures_in_a_row = 0
                if not self._closed:
                    await self._maybe_snapshot(nursery)
                continue
            failures_in_a_row += 1
            if self._closed and failures_in_a_row >= CLOSE_ATTEMPTS:
                logger.error(
                    "event log: giving up at shutdown, %d records not written", len(self._queue)
                )
                return
            # Records nobody waits for stay queued: retry, backing off, until the disk
            # takes them again (new REST writes meanwhile fail fast with StorageError).
            await trio.sleep(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2**failures_in_a_row))

    async def _write_batch(self) -> bool:
        batch, self._queue = self._queue, []
        last = batch[-1].seq
        items = [(entry.seq, entry.payload) for entry in batch]
        started = trio.current_time()
        try:
            async with self._log_lock:
                await trio.to_thread.run_sync(self._log.append, items)
        except StorageError as exc:
            self._fail(batch, exc)
            return False
        took = trio.current_time() - started
        if took >= SLOW_WRITE_SECONDS:
            logger.warning(
                "event log: writing and syncing %d records (seq %d..%d, %d bytes) took %.1f s; "
                "every answer that waits for the log (HTTP replies, config fetches, REST "
                "writes) waited as long: is the disk slow or saturated?",
                len(items),
                items[0][0],
                last,
                sum(len(payload) for _, payload in items),
                took,
            )
        self.batches += 1
        self.failing = False
        self._synced = last
        for entry in batch:
            if entry.on_synced is not None:
                try:
                    entry.on_synced()
                except Exception:
                    logger.exception("event log: applying synced record %d failed", entry.seq)
        still_waiting = []
        for waiter in self._waiters:
            if waiter.target <= last:
                waiter.event.set()
            else:
                still_waiting.append(waiter)
        self._waiters = still_waiting
        return True

    def _fail(self, batch: list[_Entry], exc: StorageError) -> None:
        """A write failed: drop the records someone waits for (they get the error), keep the
        others queued for a retry, and renumber everything queued so seqs stay contiguous."""
        self.failures += 1
        self.failing = True
        first = batch[0].seq
        dropped = {entry.seq for entry in batch if entry.waited}
        queue = [entry for entry in batch if not entry.waited] + self._queue
        renumbered: dict[int, int] = {}
        for new_seq, entry in enumerate(queue, start=first):
            renumbered[entry.seq] = new_seq
            if entry.seq != new_seq:
                entry.seq = new_seq
                entry.record["seq"] = new_seq  # the payload has no seq: only the frame does
        self._queue = queue
        self._next_seq = first + len(queue)
        logger.error(
            "event log: write of seq %d..%d failed (%s): %d records refused to their writers, "
            "%d kept for a retry",
            first,
            batch[-1].seq,
            exc,
            len(dropped),
            len(batch) - len(dropped),
        )
        still_waiting = []
        for waiter in self._waiters:
            if waiter.target in renumbered:
                waiter.target = renumbered[waiter.target]
                still_waiting.append(waiter)
            else:
                waiter.error = _copy_error(exc)
                waiter.event.set()
        self._waiters = still_waiting

    async def _maybe_snapshot(self, nursery: trio.Nursery) -> None:
        """The segment is full: seal it and build the snapshot of its last seq meanwhile."""
        log = self._log
        if self._snapshot is None or self._snapshotting or not log.needs_snapshot():
            return
        if log.segment_bytes() < self._snapshot_retry_at:
            return
        self._snapshotting = True  # from now: a test waiting for idle must wait for it too
        try:
            async with self._log_lock:
                seq = await trio.to_thread.run_sync(log.seal)
        except BaseException as exc:
            self._snapshotting = False
            if not isinstance(exc, StorageError):
                raise
            logger.error("event log: cannot start a new segment for a snapshot: %s", exc)
            self._snapshot_retry_at = log.segment_bytes() + max(1, log.segment_max_bytes // 16)
            return
        self._snapshot_retry_at = 0
        nursery.start_soon(self._take_snapshot, seq)

    async def _take_snapshot(self, seq: int) -> None:
        """Have the snapshot of ``seq`` (sealed) built and written beside the appends, then
        drop what it makes obsolete. A failure leaves the log whole; the next full segment
        tries again."""
        assert self._snapshot is not None
        log = self._log
        try:
            await self._snapshot(seq)
            async with self._log_lock:
                await trio.to_thread.run_sync(log.snapshot_written, seq)
        except Exception as exc:  # noqa: BLE001 - any failure: the log still holds everything
            logger.error("event log: snapshot at seq %d failed: %s", seq, exc)
        else:
            self.snapshots += 1
        finally:
            self._snapshotting = False
