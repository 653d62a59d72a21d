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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import trio

from appliance.core import migrations
from appliance.core import state as corestate
from appliance.server.clock import Clock
from appliance.store.committer import Committer, CommitterClosed
from appliance.store.errors import StorageError
from appliance.store.log import EventLog
from appliance.store.replay import OpenReport

log = logging.getLogger("pushy.store")
PROGRESS_EVERY = 1000  # records between two replay progress calls
READ_SYNC_WAIT_SECONDS = 5.0  # a read waits at most this long for the disk (see `barrier`)


class Store:
    def __init__(self, directory: Path, *, segment_max_bytes: int, retention_days: float) -> None:
        self.log = EventLog(directory, segment_max_bytes=segment_max_bytes)
        self.retention = retention_days * 86400.0
        self.state = corestate.State()
        self.committer: Committer | None = None
        self.report: OpenReport | None = None
        self.clock: Clock | None = None

    # Start -----------------------------------------------------------------------------------
    def load(
        self, *, recover: bool = False, progress: Callable[[int], None] | None = None
    ) -> corestate.State:
        """Replay snapshot + log into a fresh state (blocking; call before trio starts serving).

        ``progress(n)`` is called every `PROGRESS_EVERY` records applied (snapshot and log),
        so a long replay can tell systemd it is still making headway.

        The garbage collector is paused meanwhile: replay makes millions of objects that all
        stay alive, so each collection would walk them for nothing (a third of the time). What
        replay built is frozen by the server process afterwards (``gc.freeze`` in
        ``server.main``), not here: freezing belongs to the process, not to a library call."""
        started = time.monotonic()
        collecting = gc.isenabled()
        gc.disable()
        try:
            count = self._replay(recover, progress)
        finally:
            if collecting:
                gc.enable()
        self.state.last_seq = self.log.last_seq
        self.report = self.log.report
        log.info(
            "replayed %d records (snapshot at %s) in %.3f s",
            count,
            self.report.snapshot_seq,
            time.monotonic() - started,
        )
        self.committer = Committer(self.log, snapshot=self._snapshot)
        return self.state

    def _replay(self, recover: bool, progress: Callable[[int], None] | None) -> int:
        """Apply the snapshot, then the log after it; returns the number of log records.

        Records of an older format go through ``core.migrations`` on their way in: the
        reducer only ever sees the current format."""
        snapshot, records = self.log.open(recover=recover)
        state, apply, loads = self.state, corestate.apply, orjson.loads
        upgrade, current = migrations.upgrade_record, migrations.FORMAT
        applied = 0
        if snapshot is not None:
            payload, fmt = snapshot
            for record in migrations.upgrade_snapshot(loads(payload), fmt):
                apply(state, record)
                applied += 1
                if progress is not None and applied % PROGRESS_EVERY == 0:
                    progress(applied)
        count = 0
        for _seq, payload, fmt in records:
            record = loads(payload)
            if fmt != current:
                record = upgrade(record, fmt)
            apply(state, record)  # no reducer needs the seq; ``load`` sets state.last_seq
            count += 1
            if progress is not None and (applied + count) % PROGRESS_EVERY == 0:
                progress(applied + count)
        older = sorted(f for f in self.log.report.formats if f != current)
        if older:
            log.info(
                "the event log holds files of format %s (an older release's), migrated to "
                "format %d as they were read; new records are written in format %d",
                ", ".join(map(str, older)),
                current,
                current,
            )
        return count

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

    def _snapshot(self, seq: int) -> bytes:
        """Called by the committer when the segment is full: the state after every record so far."""
        now = self.clock.now() if self.clock is not None else time.time()
        expired = corestate.prune_jobs(self.state, now=now, retention=self.retention)
        if expired:
            log.info("dropped %d finished jobs older than the retention period", len(expired))
        records = corestate.to_records(self.state)
        payload = orjson.dumps(records)
        log.info("snapshot at seq %d: %d records, %d bytes", seq, len(records), len(payload))
        return payload

    def close(self) -> None:
        """Stop accepting appends; ``run`` returns once every queued record is on disk."""
        if self.committer is not None:
            self.committer.close()
