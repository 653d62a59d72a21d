"""The reducer as replay runs it: a job's events are kept raw until it is known who sees them.

A job's SSE events are shown only while it runs or lingers (``wait_complete_time`` after its
end); past that its feed answers with a summary and the server drops them (``Dispatcher``'s
``retire`` and ``resume``). In a long log nearly every event belongs to such a job, and
rendering its timestamp and merging its data was most of the replay's work. So the fold only
bumps each event's time (as `jobfsm.event_time` does, so that ``last_event_t`` and the org feed
come out exact) and keeps the bytes of the job's step records that added events (none for
a job that ended before the caller's ``ended_before``: it cannot be shown again); `settle`
decodes them again for the jobs a feed still shows, once the clock that decides is running,
and builds their events with the `jobfsm.add_event` of a live step. After `settle` the state
equals `state.apply` folded over the same records, except that the jobs `settle` was told not
to keep have no events (as the server leaves them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from appliance.core import jobfsm, migrations
from appliance.core.state import ORG_EVENTS_KEPT, ORG_FEED_EVENTS, State, apply, org_event

# A job's deferred events: its last_event_t before them, then each step record that added some,
# as the log's bytes (decoded again only for a job that keeps them) or, for a record migrated
# from an older format, the record. Keeping the decoded changes instead held millions of small
# objects until the start: a quarter of the replay's time went to that.
RawEvents = list[Any]
PROGRESS_EVERY = 1000  # records between two progress calls
_NODE = frozenset(jobfsm.NODE_STATUSES)
_FINISHED = jobfsm.FINISHED


class DeferredFold:
    """Folds a snapshot and log records into ``state`` like `state.apply`, job events deferred."""

    def __init__(self, state: State, *, ended_before: float | None = None) -> None:
        """``ended_before``: a job that ended before this time can show no events any more
        (its linger window closed before the caller's clock will start); its steps are not
        kept. Keeping them held a bytes object per record until `settle`: in a long log that
        was most of the replay's memory and a tenth of its time."""
        self.state = state
        self.ended_before = ended_before
        self.pending: dict[str, RawEvents] = {}  # job id -> its events not built yet
        # (n, job, t, name, data, stamped time) of the org feed's last events
        self._org: deque[tuple[int, jobfsm.Job, float, str, dict[str, Any], float]]
        self._org = deque(maxlen=ORG_EVENTS_KEPT)

    def replay(
        self,
        snapshot: tuple[bytes, int] | None,
        records: Iterable[tuple[int, bytes, int]],
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Apply a snapshot (payload, format), then the log's (seq, payload, format) records
        after it; returns the number of log records. ``progress(n)`` is called every
        `PROGRESS_EVERY` records (snapshot and log), so a long replay can show headway.

        Older formats go through ``core.migrations`` on their way in: the reducer only ever
        sees the current format. No reducer needs the seq: the caller sets ``last_seq``."""
        state, loads = self.state, orjson.loads
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
        jobs, pending, note_org = state.jobs, self.pending, self._org_events
        apply_change = jobfsm.apply_change
        ended_before = float("-inf") if self.ended_before is None else self.ended_before
        for _seq, payload, fmt in records:
            record = loads(payload)
            if fmt != current:
                record = upgrade(record, fmt)
            count += 1
            if progress is not None and (applied + count) % PROGRESS_EVERY == 0:
                progress(applied + count)
            if record["type"] != "job_step":
                apply(state, record)
                continue
            # A job step, inline: nine records in ten are one
            job_id = record["job"]
            job = jobs.get(job_id)
            if job is None:
                continue
            t = record["t"]
            nodes, org, before = job.nodes, None, job.last_event_t
            last_us = -1  # the step's last event in µs (jobfsm.event_time, inline: integers)
            for change in record["changes"]:
                kind = change[0]
                if kind == "event":
                    _, name, _data = change
                    if last_us < 0:
                        us = round(t * 1_000_000)
                        last_us = round(before * 1_000_000)
                    last_us = us if us > last_us else last_us + 1
                    if name in ORG_FEED_EVENTS:
                        org = org or []
                        org.append((last_us / 1_000_000, change))
                elif kind == "node":  # the commonest change: anything odd goes to apply_change
                    try:
                        plain = len(change) == 3 and change[1] in nodes and change[2] in _NODE
                    except TypeError:  # unhashable
                        plain = False
                    if plain:
                        nodes[change[1]] = change[2]
                    else:
                        apply_change(job, change, t)
                else:
                    apply_change(job, change, t)
            if last_us >= 0:  # the step had events: kept to be built later
                job.last_event_t = last_us / 1_000_000
                ended = job.finished_at
                if ended is not None and ended < ended_before and job.status in _FINISHED:
                    pending.pop(job_id, None)  # never shown again: settle drops its events
                else:
                    raw = pending.get(job_id)
                    if raw is None:
                        raw = pending[job_id] = [before]
                    raw.append(payload if fmt == current else record)
            if org:
                note_org(job, org)
        self._build_org_feed()
        return count

    def forget_ended(self, ended_before: float) -> None:
        """Move ``ended_before`` on (a standby folds records for as long as it waits) and drop
        what was kept of the jobs that ended before it: they can show no events any more."""
        self.ended_before = ended_before
        jobs, pending = self.state.jobs, self.pending
        for job_id in list(pending):
            job = jobs.get(job_id)
            if job is None or (
                job.finished_at is not None
                and job.finished_at < ended_before
                and job.status in _FINISHED
            ):
                del pending[job_id]

    def _org_events(self, job: jobfsm.Job, events: list[tuple[float, list[Any]]]) -> None:
        """Count a step's org feed events; keep the last ones, built in `_build_org_feed`."""
        state = self.state
        for ts, (_, name, data) in events:
            state.org_event_count += 1
            self._org.append((state.org_event_count, job, job.last_event_t, name, data, ts))

    def _build_org_feed(self) -> None:
        """The org feed keeps only the last ``ORG_EVENTS_KEPT`` events: only those are built."""
        feed, event_data = self.state.org_events, jobfsm.event_data
        for n, job, t, name, data, ts in self._org:
            feed.append(org_event(n, job, t, name, event_data(data, ts)))
        self._org.clear()

    def settle(self, keep: Callable[[jobfsm.Job], bool]) -> int:
        """Build the deferred events of the jobs ``keep`` accepts; every other job is left
        without events. Returns how many jobs' events were built; the fold is empty after."""
        built, pending = 0, self.pending
        for job in self.state.jobs.values():
            raw = pending.get(job.id)
            if raw is None and not job.events:
                continue  # most jobs of a long log: nothing to build, nothing to drop
            if not keep(job):
                job.events.clear()
            elif raw:
                _build_events(job, raw)
                built += 1
        self.pending.clear()
        return built


def _build_events(job: jobfsm.Job, raw: RawEvents) -> None:
    """Decode the job's deferred steps again and add their events, stamped as replay did."""
    last, loads, event_time, add_event = raw[0], orjson.loads, jobfsm.event_time, jobfsm.add_event
    for step in raw[1:]:
        record = loads(step) if isinstance(step, bytes) else step
        t = record["t"]
        for change in record["changes"]:
            if change[0] == "event":
                _, name, data = change
                last = event_time(last, t)
                add_event(job, name, data, last)
