"""The replay's reducer (``core.replayfold``): the same state as ``state.apply`` folded over the
same records, except the events of the jobs ``settle`` is told not to keep.

The records come from the real FSM handlers (several events per step, so same-microsecond
timestamps are bumped), a snapshot taken mid-job, the org feed past its bound, and records the
fast path must hand to ``jobfsm.apply_change`` to fail the same way.
"""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from appliance.core import jobfsm
from appliance.core.migrations import FORMAT
from appliance.core.replayfold import DeferredFold
from appliance.core.state import ORG_EVENTS_KEPT, State, apply, to_records
from tests.unit.test_state import T0, build, job_created


def encoded(records: list[dict]) -> list[tuple[int, bytes, int]]:
    return [(seq, orjson.dumps(r), FORMAT) for seq, r in enumerate(records, start=1)]


def folded(records: list[dict], snapshot: list[dict] | None = None) -> tuple[State, DeferredFold]:
    state = State()
    fold = DeferredFold(state)
    snap = (orjson.dumps(snapshot), FORMAT) if snapshot is not None else None
    fold.replay(snap, encoded(records))
    return state, fold


def applied(records: list[dict]) -> State:
    state = State()
    for r in orjson.loads(orjson.dumps(records)):
        apply(state, r)
    return state


def org_feed(state: State) -> list[tuple]:
    return [(e.n, e.org, e.t, e.name, e.data) for e in state.org_events]


def assert_same(got: State, want: State, *, without_events: frozenset[str] = frozenset()) -> None:
    """Equal in every field; the jobs named have no events and every other field equal."""
    assert set(got.jobs) == set(want.jobs)
    for job_id, job in want.jobs.items():
        expected = dataclasses.replace(job, events=[]) if job_id in without_events else job
        assert got.jobs[job_id] == expected, job_id
    assert org_feed(got) == org_feed(want)
    assert got.org_event_count == want.org_event_count
    assert got.identity == want.identity
    assert got.node_keys == want.node_keys
    assert got.up_nodes == want.up_nodes
    assert got.curve_index == want.curve_index
    assert got.server == want.server


def fleet_records(jobs: int, *, t0: float = T0, finish_all: bool = True) -> list[dict]:
    """Jobs of three nodes run by the FSM; the even ones in one microsecond per step."""
    records: list[dict] = []
    for i in range(jobs):
        nodes = ["n1", "n2", "n3"]
        created = job_created(f"{i:032x}", "acme", nodes, t0 + i)
        records.append(created)
        job = State()
        apply(job, created)
        live = job.jobs[f"{i:032x}"]
        t = t0 + i
        steps = [jobfsm.start(live, set(), t, server_name="s", voting_timeout=60)]
        for kind in ("ack_commit", "ack_run", "succeeded"):
            if kind == "succeeded" and not finish_all and i == jobs - 1:
                break  # the last job is left running
            for node in nodes:
                t += 0 if i % 2 == 0 else 0.25
                body = {"stdout": f"out {node}", "stderr": ""} if kind == "succeeded" else {}
                steps.append(jobfsm.on_message(live, node, kind, body, t))
        for step in steps:
            records.append({"type": "job_step", "job": live.id, "t": t, "changes": step.changes})
    return records


def test_keeping_every_job_rebuilds_exactly_what_apply_does() -> None:
    _, base = build()
    records = base + fleet_records(6, t0=T0 + 1000, finish_all=False)
    state, fold = folded(records)
    fold.settle(lambda job: True)
    assert_same(state, applied(records))
    assert fold.pending == {}


def test_jobs_past_their_linger_window_get_no_events_and_nothing_else_differs() -> None:
    records = fleet_records(5, finish_all=False)
    want = applied(records)
    finished = {j.id: j.finished_at for j in want.jobs.values() if j.finished_at is not None}
    now, linger = max(finished.values()) + 0.5, 2.0  # the last two finished ones linger
    past = frozenset(i for i, at in finished.items() if now - at >= linger)
    assert 0 < len(past) < len(finished) < len(want.jobs)  # past, lingering and running jobs
    state, fold = folded(records)
    built = fold.settle(lambda job: jobfsm.shows_events(job, now, linger))
    assert built == len(want.jobs) - len(past)
    assert_same(state, want, without_events=past)


def test_jobs_that_ended_before_the_cutoff_keep_no_steps_and_settle_the_same() -> None:
    records = fleet_records(5, finish_all=False)
    want = applied(records)
    finished = sorted(j.finished_at for j in want.jobs.values() if j.finished_at is not None)
    now, linger = finished[-1] + 0.5, 2.0
    past = frozenset(
        j.id for j in want.jobs.values() if j.finished_at and now - j.finished_at >= linger
    )
    state = State()
    fold = DeferredFold(state, ended_before=now - linger)
    fold.replay(None, encoded(records))
    assert set(fold.pending) == set(want.jobs) - past  # the lingering and the running jobs
    built = fold.settle(lambda job: jobfsm.shows_events(job, now, linger))
    assert built == len(want.jobs) - len(past)
    assert_same(state, want, without_events=past)


def test_a_job_restored_from_a_snapshot_numbers_its_later_events_on() -> None:
    records = fleet_records(3)
    split = len(records) - 4  # the last job is mid-run at the snapshot
    snapshot = to_records(applied(records[:split]))
    state, fold = folded(records[split:], snapshot)
    fold.settle(lambda job: True)
    want = applied(records)
    for job_id, job in want.jobs.items():
        assert state.jobs[job_id] == job
    events = state.jobs[f"{2:032x}"].events
    at_split = applied(records[:split]).jobs[f"{2:032x}"].events
    assert 0 < len(at_split) < len(events)
    assert [n for n, _, _ in events] == list(range(1, len(events) + 1))


def test_the_org_feed_keeps_its_last_events_exactly() -> None:
    records: list[dict] = []
    for i in range(ORG_EVENTS_KEPT // 2 + 3):  # two org events a job: past the feed's bound
        job_id = f"{i:032x}"
        records.append(job_created(job_id, "acme", ["n1"], T0 + i))
        start = [["event", "start", {"command": "x"}], ["status", "voting"]]
        end = [["node", "n1", "aborted"], ["event", "job_complete", {"status": "aborted"}]]
        end.append(["status", "aborted"])
        records.append({"type": "job_step", "job": job_id, "t": T0 + i, "changes": start})
        records.append({"type": "job_step", "job": job_id, "t": T0 + i, "changes": end})
    state, fold = folded(records)
    fold.settle(lambda job: False)
    want = applied(records)
    assert len(state.org_events) == ORG_EVENTS_KEPT < want.org_event_count
    assert_same(state, want, without_events=frozenset(want.jobs))


@pytest.mark.parametrize(
    "change",
    [["node", "n1", "bogus"], ["node", "n1", ["ready"]], ["node", "ghost", "ready"], ["node"]],
)
def test_odd_node_changes_fail_as_the_reducer_does(change: list) -> None:
    records = [job_created("a" * 32, "acme", ["n1"], T0)]
    records.append({"type": "job_step", "job": "a" * 32, "t": T0, "changes": [change]})
    with pytest.raises(ValueError) as live:
        applied(records)
    with pytest.raises(ValueError) as replayed:
        folded(records)
    assert str(replayed.value) == str(live.value)


def test_steps_of_an_unknown_job_are_ignored_as_the_reducer_does() -> None:
    records = [{"type": "job_step", "job": "f" * 32, "t": T0, "changes": [["status", "bogus"]]}]
    state, fold = folded(records)
    assert state.jobs == {} and fold.pending == {}


def test_shows_events_is_the_linger_window() -> None:
    job = applied(fleet_records(1)).jobs[f"{0:032x}"]
    end = job.finished_at
    assert end is not None
    assert jobfsm.shows_events(job, end + 4.9, 5.0)
    assert not jobfsm.shows_events(job, end + 5.0, 5.0)
    assert jobfsm.shows_events(dataclasses.replace(job, status="running"), end + 99, 5.0)
    assert not jobfsm.shows_events(dataclasses.replace(job, finished_at=None), end, 5.0)


def test_a_fold_fed_in_pieces_equals_one_replay_and_forgets_what_ended_meanwhile() -> None:
    """A standby folds the log in pieces as it is written (``Store.follow``), moving
    ``ended_before`` on each time: the state it settles to is one replay's, and the steps kept
    for events are only those of the jobs that may still show them."""
    records = fleet_records(6, finish_all=False)
    want = applied(records)
    finished = sorted(j.finished_at for j in want.jobs.values() if j.finished_at is not None)
    now, linger = finished[-1] + 0.5, 2.0
    past = frozenset(
        j.id for j in want.jobs.values() if j.finished_at and now - j.finished_at >= linger
    )
    assert 0 < len(past) < len(want.jobs)
    state = State()
    fold = DeferredFold(state, ended_before=None)  # a standby's first replay keeps everything
    rows = encoded(records)
    for start in range(0, len(rows), 7):  # the follower's batches
        fold.replay(None, rows[start : start + 7])
    assert set(fold.pending) == set(want.jobs)
    fold.forget_ended(now - linger)
    assert set(fold.pending) == set(want.jobs) - past  # the lingering and the running jobs
    built = fold.settle(lambda job: jobfsm.shows_events(job, now, linger))
    assert built == len(want.jobs) - len(past)
    assert_same(state, want, without_events=past)
