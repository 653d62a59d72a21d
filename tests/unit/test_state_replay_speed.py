"""What the replay speed-ups must not change: timestamps, events, snapshots old and new.

Correctness only (no timings): the memoised SSE timestamp against the plain formula, the
event reducer against the formula it replaced, the compact snapshot form (``jobs_restore``)
against the state, and old snapshots (one ``job_restore`` object per job) still loading.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import random
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.core import jobfsm, render
from appliance.core import state as corestate
from appliance.core.migrations import FORMAT, upgrade_snapshot
from appliance.core.state import State, apply, to_records
from appliance.server import snapshots
from appliance.server.store import Store
from appliance.store.log import EventLog
from tests.unit.test_state import build, job_created

T0 = 1_700_000_000.0


def old_sse_timestamp(t: float) -> str:
    """The formula before the memo (render.sse_timestamp as it was)."""
    seconds, micros = divmod(round(t * 1_000_000), 1_000_000)
    tm = time.gmtime(seconds)
    return (
        f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}.{micros:06d}Z"
    )


def old_event(job: jobfsm.Job, name: str, data: dict, t: float) -> tuple:
    """What the "event" change appended before it was inlined, and the new last_event_t."""
    us = max(round(t * 1_000_000), round(job.last_event_t * 1_000_000) + 1)
    ts = us / 1_000_000
    return (len(job.events) + 1, name, {"timestamp": old_sse_timestamp(ts), **data}), ts


def old_job_restore_records(state: State) -> list[dict]:
    """The snapshot's job records as they were written before ``jobs_restore``."""
    return [{"type": "job_restore", "job": dataclasses.asdict(j)} for j in state.jobs.values()]


def json_roundtrip(records: list[dict]) -> list[dict]:
    return orjson.loads(orjson.dumps(records))


# -- timestamps ----------------------------------------------------------------------------


@given(st.integers(min_value=-(10**12), max_value=4_102_444_800 * 10**6))
def test_sse_timestamp_us_is_the_exact_utc_time(us: int) -> None:
    expected = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=us)
    assert render.sse_timestamp_us(us) == expected.strftime("%Y-%m-%d %H:%M:%S.%fZ")


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_sse_timestamp_of_a_float_is_unchanged(t: float) -> None:
    assert render.sse_timestamp(t) == old_sse_timestamp(t)


def test_sse_timestamp_edges() -> None:
    for us in (0, 1, 999_999, 1_000_000, 1_000_001, 1_999_999, -1, -1_000_000, -1_000_001):
        assert render.sse_timestamp_us(us) == old_sse_timestamp(us / 1_000_000), us
    assert render.sse_timestamp_us(1_404_969_464_995_958) == "2014-07-10 05:17:44.995958Z"


def test_the_per_second_memo_stays_bounded() -> None:
    for s in range(render._SECONDS_KEPT * 3):
        render.sse_timestamp_us((1_600_000_000 + s) * 1_000_000 + s)
    assert 0 < len(render._SECONDS) <= render._SECONDS_KEPT
    assert render.sse_timestamp(1_600_000_000.5) == old_sse_timestamp(1_600_000_000.5)


# -- the event reducer ---------------------------------------------------------------------


def new_job(nodes: list[str]) -> jobfsm.Job:
    return jobfsm.new_job(
        id="j" * 32,
        org="acme",
        command="true",
        nodes=nodes,
        quorum=len(nodes),
        run_timeout=60,
        requestor="pivotal",
        now=T0,
    )


def test_event_changes_match_the_old_reducer_even_for_same_and_backward_times() -> None:
    rng = random.Random(7)
    job, shadow = new_job(["a"]), new_job(["a"])
    t = T0
    for i in range(5000):
        t += rng.choice((0.0, 0.0, 1e-7, 1e-6, 0.5e-6, 0.37, -0.001, 1.0, 86400.0))
        data = {"node": "a", "status": "success"} if i % 3 else {}
        expected, last = old_event(shadow, "quorum_vote", data, t)
        shadow.events.append(expected)
        shadow.last_event_t = last
        jobfsm.apply_change(job, ["event", "quorum_vote", data], t)
    assert job.events == shadow.events
    assert job.last_event_t == shadow.last_event_t
    stamps = [e[2]["timestamp"] for e in job.events]
    assert stamps == sorted(set(stamps))


@pytest.mark.parametrize(
    "change",
    [
        ["node", "a", "bogus"],
        ["node", "a", ["ready"]],
        ["node", "nobody", "ready"],
        ["status", "bogus"],
        ["status", {"x": 1}],
        ["mystery"],
    ],
)
def test_bad_changes_are_still_value_errors(change: list) -> None:
    with pytest.raises(ValueError):
        jobfsm.apply_change(new_job(["a"]), change, T0)


def test_org_feed_gets_the_same_events_at_replay_as_live() -> None:
    live, records = build()
    # a job with no nodes: start, quorum and job_complete in one step
    created = job_created("c" * 32, "acme", [], T0 + 300)
    apply(live, created)
    job = live.jobs["c" * 32]
    step = jobfsm.start(job, set(), T0 + 300, server_name="s", voting_timeout=60)
    live.note_job_events(job, 0)
    records += [
        created,
        {"type": "job_step", "job": job.id, "t": T0 + 300, "changes": step.changes},
    ]
    replayed = State()
    for r in json_roundtrip(records):
        apply(replayed, r)
    assert replayed.jobs == live.jobs
    assert [(e.n, e.org, e.t, e.name, e.data) for e in replayed.org_events] == [
        (e.n, e.org, e.t, e.name, e.data) for e in live.org_events
    ]
    assert [e.name for e in replayed.org_events][-2:] == ["start", "job_complete"]


# -- snapshots -----------------------------------------------------------------------------


def test_snapshot_jobs_are_rows_in_records_of_bounded_size() -> None:
    state, _ = build()
    for i in range(corestate.JOBS_PER_RECORD + 5):
        apply(state, job_created(f"{i:032x}", "acme", ["n1", "n2"], T0 + i))
    records = to_records(state)
    rows = [r for r in records if r["type"] == "jobs_restore"]
    assert [len(r["rows"]) for r in rows] == [corestate.JOBS_PER_RECORD, 7]
    assert all(r["fields"] == corestate.JOB_FIELDS for r in rows)
    assert not any(r["type"] == "job_restore" for r in records)
    restored = State()
    for r in json_roundtrip(records):
        apply(restored, r)
    assert restored.jobs == state.jobs
    assert list(restored.jobs) == list(state.jobs)  # order kept (GET /jobs lists in it)


def test_snapshot_records_share_nothing_mutable_with_the_state() -> None:
    state, _ = build()
    records = to_records(state)
    before = orjson.dumps(records)
    for job in state.jobs.values():
        job.nodes["n1"] = "faulty"
        job.events.append((99, "rehab", {"node": "n1"}))
        job.outputs["zz"] = ("o", "e")
        if job.env is not None:
            job.env["NEW"] = "1"
        for _n, _name, data in job.events:
            data["extra"] = True
    assert orjson.dumps(records) == before


def test_an_old_snapshot_with_one_job_restore_per_job_still_loads() -> None:
    state, _ = build()
    records = [r for r in to_records(state) if r["type"] != "jobs_restore"]
    records[1:1] = old_job_restore_records(state)
    restored = State()
    for r in upgrade_snapshot(json_roundtrip(records), 1):
        apply(restored, r)
    assert restored.jobs == state.jobs
    assert restored.node_keys == state.node_keys
    assert restored.org_event_count == state.org_event_count


def test_rows_are_read_by_field_name_when_the_order_differs() -> None:
    state, _ = build()
    fields = list(reversed(corestate.JOB_FIELDS))
    rows = [
        list(reversed(corestate._job_row(job)))  # same values, the other way round
        for job in state.jobs.values()
    ]
    restored = State()
    apply(restored, json_roundtrip([{"type": "jobs_restore", "fields": fields, "rows": rows}])[0])
    assert restored.jobs == state.jobs


def _write_log(
    directory: Path, records: list[dict], snapshot: bytes | None, split: int, fmt: int = FORMAT
) -> None:
    """A log as release writing format ``fmt`` left it (format 1 repeated the seq inside)."""
    log = EventLog(directory, segment_max_bytes=2**40, format=fmt)
    _, replay = log.open()
    assert list(replay) == []
    extra = (lambda seq: {"seq": seq}) if fmt == 1 else (lambda seq: {})
    batch = [(seq, orjson.dumps({**r, **extra(seq)})) for seq, r in enumerate(records, start=1)]
    log.append(batch[:split])
    if snapshot is not None:
        log.write_snapshot(split, snapshot)
    log.append(batch[split:])
    log.close()


def test_store_loads_a_format_1_snapshot_and_the_log_after_it(tmp_path: Path) -> None:
    """Format 1 snapshots may hold one ``job_restore`` object per job (migrated to rows)."""
    live, records = build()
    split = len(records) - 2  # the last two job steps come after the snapshot
    before = State()
    for r in json_roundtrip(records[:split]):
        apply(before, r)
    old_snapshot = [r for r in to_records(before) if r["type"] != "jobs_restore"]
    old_snapshot[1:1] = old_job_restore_records(before)
    _write_log(tmp_path, records, orjson.dumps(old_snapshot), split, fmt=1)
    store = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    state = store.load()
    store.log.close()
    assert store.report is not None and store.report.snapshot_seq == split
    assert state.jobs == live.jobs
    assert state.last_seq == len(records)


@pytest.mark.parametrize("collecting", [True, False])
def test_store_load_leaves_the_collector_as_it_found_it(tmp_path: Path, collecting: bool) -> None:
    _, records = build()
    _write_log(tmp_path, records, None, len(records))
    was = gc.isenabled()
    try:
        (gc.enable if collecting else gc.disable)()
        store = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
        store.load()
        store.log.close()
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()


def test_store_snapshot_round_trip_through_the_new_form(tmp_path: Path) -> None:
    live, records = build()
    _write_log(tmp_path, records, None, len(records))
    store = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    store.load()
    payload = snapshots.payload(store.state)
    assert b'"jobs_restore"' in payload and b'"job_restore"' not in payload
    store.log.write_snapshot(store.log.last_seq, payload)
    store.log.close()
    again = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    state = again.load()
    again.log.close()
    assert again.report is not None and again.report.snapshot_seq == len(records)
    assert state.jobs == live.jobs
    assert state.node_keys == live.node_keys
    assert state.up_nodes == live.up_nodes
