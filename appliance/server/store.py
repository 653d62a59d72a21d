"""The server's side of the event log: replay at start, live appends, snapshots.

Two kinds of write: ``append`` for records the server already applied (job steps, node
transitions; callers do not wait), and ``durable`` for REST writes that answer only after the
batch is synced (jobs, identity), which the committer applies right after the write. Either
way every assigned record is in the state before the committer can take a snapshot, so a
snapshot at seq S is exactly "the state after S".
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import trio

from appliance.core import jobfsm, migrations
from appliance.core import state as corestate
from appliance.core.replayfold import DeferredFold
from appliance.server import snapshots
from appliance.server.clock import Clock
from appliance.store.committer import Committer, CommitterClosed
from appliance.store.errors import StorageError
from appliance.store.log import EventLog
from appliance.store.replay import OpenReport

if TYPE_CHECKING:  # psycopg is imported only when the store is PostgreSQL
    from appliance.store.pglog import PgLog

log = logging.getLogger("pushy.store")
READ_SYNC_WAIT_SECONDS = 5.0  # a read waits at most this long for the disk (see `barrier`)
# The events a replay defers are built once the server's clock runs (`settle_events`), a
# moment after the replay read the wall clock: a clock stepped back by up to this much
# meanwhile still finds every job its feed shows.
CLOCK_SLACK = 60.0


class Store:
    def __init__(
        self,
        directory: Path,
        *,
        segment_max_bytes: int,
        retention_days: float,
        linger: float = 5.0,
        log: PgLog | None = None,
    ) -> None:
        """``log``: the PostgreSQL log of a ``store`` URL; otherwise the file log under
        ``directory``. The rest of the server does not know which it holds."""
        self.log: EventLog | PgLog = (
            log if log is not None else EventLog(directory, segment_max_bytes=segment_max_bytes)
        )
        self.retention = retention_days * 86400.0
        self.linger = linger  # wait_complete_time: how long a finished job's events are shown
        self.state = corestate.State()
        self.committer: Committer | None = None
        self.report: OpenReport | None = None
        self.clock: Clock | None = None
        self._fold: DeferredFold | None = None  # the events `load` deferred
        self.password_file: str | None = None  # a PostgreSQL store's (the snapshot child reads it)
        # told of the jobs retention dropped, once the snapshot without them is written
        self.on_pruned: Callable[[list[str]], Awaitable[None]] | None = None

    # Start -----------------------------------------------------------------------------------
    def load(
        self,
        *,
        recover: bool = False,
        progress: Callable[[int], None] | None = None,
        defer_events: bool = False,
        now: float | None = None,
    ) -> corestate.State:
        """Replay snapshot + log into a fresh state (blocking; call before trio starts serving).

        ``progress(n)`` is called every 1000 records applied (snapshot and log), so a long
        replay can tell systemd it is still making headway. With ``defer_events`` the jobs'
        SSE events are left unbuilt until `settle_events` (the server calls it once its clock
        runs, to build only those a feed still shows); otherwise all are built here. ``now``
        (with ``defer_events``): the wall time the server starts at; the jobs that ended more
        than the linger window (and `CLOCK_SLACK`) before it keep nothing to build.

        The garbage collector is paused meanwhile: replay makes millions of objects that all
        stay alive, so each collection would walk them for nothing (a third of the time). What
        replay built is frozen by the server process afterwards (``gc.freeze`` in
        ``server.main``), not here: freezing belongs to the process, not to a library call."""
        started = time.monotonic()
        collecting = gc.isenabled()
        gc.disable()
        try:
            snapshot, records = self.log.open(recover=recover)
            ended_before = None
            if defer_events and now is not None:
                ended_before = now - self.linger - CLOCK_SLACK
            fold = DeferredFold(self.state, ended_before=ended_before)
            count = fold.replay(snapshot, records, progress)
            if not defer_events:
                fold.settle(lambda _job: True)
        finally:
            if collecting:
                gc.enable()
        self._fold = fold if defer_events else None
        self.state.last_seq = self.log.last_seq
        self.report = self.log.report
        log.info(
            "replayed %d records (snapshot at %s) in %.3f s",
            count,
            self.report.snapshot_seq,
            time.monotonic() - started,
        )
        older = sorted(f for f in self.report.formats if f != migrations.FORMAT)
        if older:
            log.info(
                "the event log holds files of format %s (an older release's), migrated to "
                "format %d as they were read; new records are written in format %d",
                ", ".join(map(str, older)),
                migrations.FORMAT,
                migrations.FORMAT,
            )
        self.committer = Committer(self.log, snapshot=self._snapshot)
        return self.state

    def follow(self, records: list[tuple[int, int, bytes]], *, now: float) -> None:
        """A standby's step: apply the records (seq, format, payload) that the active wrote
        after ours, as the replay did (events deferred when the replay deferred them), so the
        state stays what a start would read. ``now``: the wall time, which lets the events of
        jobs past their linger window go (a standby may follow for months)."""
        if not records:
            return
        rows = [(seq, payload, fmt) for seq, fmt, payload in records]
        if self._fold is not None:
            self._fold.forget_ended(now - self.linger - CLOCK_SLACK)
            self._fold.replay(None, rows)
        else:
            fold = DeferredFold(self.state)
            fold.replay(None, rows)
            fold.settle(lambda _job: True)
        last = records[-1][0]
        self.state.last_seq = last
        size = sum(len(payload) for _, _, payload in records)
        self.log.followed(last, size)  # type: ignore[union-attr]  # only a PgLog is followed

    def start_writing(self) -> None:
        """Appends go on from the last record read (a standby that became active)."""
        self.committer = Committer(self.log, snapshot=self._snapshot)

    def settle_events(self, keep: Callable[[jobfsm.Job], bool]) -> int:
        """Build the events `load` deferred for the jobs ``keep`` accepts (the others are left
        without any); returns how many jobs got theirs. Nothing to do after a plain load."""
        fold, self._fold = self._fold, None
        if fold is None:
            return 0
        started = time.monotonic()
        built = fold.settle(keep)
        log.info("built the events of %d jobs in %.3f s", built, time.monotonic() - started)
        return built

    def initialise(self, records: list[dict[str, Any]]) -> None:
        """First start: write the server's founding records synchronously, then apply them."""
        assert self.committer is not None
        batch = []
        for record in records:
            seq = self.log.last_seq + len(batch) + 1
            batch.append((seq, orjson.dumps(record)))  # the seq is in the frame only
        self.log.append(batch)
        for (seq, _), record in zip(batch, records, strict=True):
            record["seq"] = seq
            corestate.apply(self.state, record)
        self.committer = Committer(self.log, snapshot=self._snapshot)

    # Running ---------------------------------------------------------------------------------
    async def run(
        self, clock: Clock, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The committer task; returns once ``close`` was called and the queue is on disk.
        ``clock`` dates the retention of finished jobs at each snapshot."""
        assert self.committer is not None
        self.clock = clock
        await self.committer.run(task_status=task_status)

    def append(self, record: dict[str, Any]) -> int:
        """Log a record whose effect the caller already made (e.g. a job FSM step)."""
        assert self.committer is not None
        return self.committer.append(record)

    def last_seq(self) -> int:
        """The seq of the last record appended (written or not)."""
        assert self.committer is not None
        return self.committer.last_seq

    def record(self, record: dict[str, Any]) -> int:
        """Apply a record to the state now and log it without waiting (e.g. a node going up)."""
        corestate.apply(self.state, record)
        return self.append(record)

    async def durable(self, records: list[dict[str, Any]]) -> int:
        """Write records, wait until synced; the reducer applies them right after the write.

        Applying happens on the committer task right after the write, before any snapshot, so
        a snapshot never covers a record whose effect is missing from the state.
        """
        assert self.committer is not None

        def apply_all() -> None:
            for record in records:
                corestate.apply(self.state, record)

        return await self.committer.append_and_wait(records, apply_all)

    async def barrier(self) -> None:
        """Wait until every record logged so far is on disk.

        Job steps are applied before they are written, so without this a reader could see a
        state that a kill -9 a moment later takes back (a job seen running is voting again
        after the restart, an output read over REST is gone). It is called in one place per
        way out (``server.durable``: every HTTP answer, SSE chunk and websocket message), never
        by handlers. A failing disk does not hold reads up: they are answered at once (or
        after a bound) from the state in memory."""
        committer = self.committer
        assert committer is not None
        seq = committer.last_seq
        if seq <= committer.synced_seq or committer.failing:
            return
        with trio.move_on_after(READ_SYNC_WAIT_SECONDS):
            try:
                await committer.wait_synced(seq)
            except (StorageError, CommitterClosed):
                pass

    async def wait_synced(self, seq: int) -> None:
        assert self.committer is not None
        if seq:
            await self.committer.wait_synced(seq)

    async def _snapshot(self, seq: int) -> None:
        """The committer's hook when a segment is full: the snapshot of the state after ``seq``
        (sealed), built and written by a child process from the log's files
        (``server.snapshots``), never on this loop.

        Finished jobs past the retention period leave the live state here too, at the same
        ``now`` the child prunes with, so both hold the same jobs."""
        now = self.clock.now() if self.clock is not None else time.time()
        expired = corestate.prune_jobs(self.state, now=now, retention=self.retention)
        if expired:
            log.info("dropped %d finished jobs older than the retention period", len(expired))
        started = time.monotonic()
        engine = self.log
        if isinstance(engine, EventLog):
            source: dict[str, Any] = {"dir": str(engine.directory)}
        else:
            source = {"url": engine.url, "password_file": self.password_file}
        await snapshots.build_in_child(
            source, seq, fmt=engine.format, now=now, linger=self.linger, retention=self.retention
        )
        log.info(
            "snapshot at seq %d built in %.3f s by a child process", seq, time.monotonic() - started
        )
        if expired and self.on_pruned is not None:
            await self.on_pruned(expired)

    def close(self) -> None:
        """Stop accepting appends; ``run`` returns once every queued record is on disk."""
        if self.committer is not None:
            self.committer.close()
