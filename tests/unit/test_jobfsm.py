"""The job state machine against server-protocol.md §5 and the pedant sequences of §6.8."""

from __future__ import annotations

import calendar
import dataclasses
import json
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core import jobfsm, render
from appliance.core.jobfsm import ArmTimer, Finished, Rehab, Send

T0 = 1_700_000_000.0
JOB_ID = "0123456789abcdef0123456789abcdef"
SERVER = "pushy.example"


_RUNS: list[Run] = []


class Run:
    """Drives one job and keeps the (t, changes) log, so every test also checks replay."""

    def __init__(self, nodes=("N",), *, quorum=None, run_timeout=3600, **options):
        self.args = dict(
            id=JOB_ID,
            org="acme",
            command="chef-client",
            nodes=list(nodes),
            quorum=len(nodes) if quorum is None else quorum,
            run_timeout=run_timeout,
            requestor="pivotal",
            **options,
        )
        self.job = jobfsm.new_job(**self.args, now=T0)
        self.now = T0
        self.log: list[tuple[float, list]] = []
        _RUNS.append(self)

    def _record(self, step: jobfsm.Step) -> jobfsm.Step:
        self.log.append((self.now, step.changes))
        return step

    def tick(self, dt: float = 1.0) -> Run:
        self.now += dt
        return self

    def start(self, unavailable=()):
        return self._record(
            jobfsm.start(
                self.job, set(unavailable), self.now, server_name=SERVER, voting_timeout=60.0
            )
        )

    def msg(self, node, msg_type, **body):
        return self._record(jobfsm.on_message(self.job, node, msg_type, body, self.now))

    def down(self, node):
        return self._record(jobfsm.on_node_down(self.job, node, self.now))

    def lost(self, node):
        return self._record(jobfsm.on_node_lost_job(self.job, node, self.now))

    def voting_timeout(self):
        return self._record(jobfsm.on_voting_timeout(self.job, self.now))

    def run_timeout(self):
        return self._record(jobfsm.on_run_timeout(self.job, self.now))

    def abort(self):
        return self._record(jobfsm.abort(self.job, self.now))

    def crash(self):
        return self._record(jobfsm.crash(self.job, self.now))

    def events(self):
        return [(name, _strip(data)) for _n, name, data in self.job.events]

    def replayed(self) -> jobfsm.Job:
        job = jobfsm.new_job(**self.args, now=T0)
        for t, changes in json.loads(json.dumps(self.log)):
            for change in changes:
                jobfsm.apply_change(job, change, t)
        return job


def _strip(data):
    return {k: v for k, v in data.items() if k != "timestamp"}


def step_events(step):
    return [(c[1], c[2]) for c in step.changes if c[0] == "event"]


def vote(node, status):
    return ("quorum_vote", {"node": node, "status": status})


def rehab(node):
    return ("rehab", {"node": node})


def run_complete(node, status):
    return ("run_complete", {"node": node, "status": status})


def run_start(node):
    return ("run_start", {"node": node})


def job_complete(status):
    return ("job_complete", {"status": status})


START_1 = (
    "start",
    {
        "command": "chef-client",
        "run_timeout": 3600,
        "quorum": 1,
        "node_count": 1,
        "user": "pivotal",
        "capture": False,
    },
)
QS = ("quorum_succeeded", {})


@pytest.fixture(autouse=True)
def _check_replay():
    """Every Run a test builds must replay to an identical Job."""
    _RUNS.clear()
    yield
    for run in _RUNS:
        assert run.replayed() == run.job
    _RUNS.clear()


# ---------------------------------------------------------------------------------------
# Start


def test_new_job():
    job = Run(("A", "B")).job
    assert job.status == "new"
    assert job.nodes == {"A": "new", "B": "new"}
    assert list(job.nodes) == ["A", "B"]
    assert job.created_at == job.updated_at == T0
    assert job.events == [] and job.outputs == {}


def test_new_job_rejects_duplicate_nodes():
    with pytest.raises(ValueError):
        Run(("A", "A"))


def test_start_without_options():
    r = Run(("A", "B"), quorum=1)
    step = r.start()
    assert r.job.status == "voting"
    assert r.job.voting_at == T0 and r.job.updated_at == T0
    name, data = r.job.events[0][1], r.job.events[0][2]
    assert name == "start"
    assert list(data) == [
        "timestamp",
        "command",
        "run_timeout",
        "quorum",
        "node_count",
        "user",
        "capture",
    ]
    assert _strip(data) == {
        "command": "chef-client",
        "run_timeout": 3600,
        "quorum": 1,
        "node_count": 2,
        "user": "pivotal",
        "capture": False,
    }
    commit = {
        "type": "commit",
        "job_id": JOB_ID,
        "server": SERVER,
        "command": "chef-client",
        "capture": False,
    }
    assert step.effects == [Send("A", commit), Send("B", commit), ArmTimer("voting", T0 + 60.0)]
    assert list(step.effects[0].body) == ["type", "job_id", "server", "command", "capture"]


def test_start_with_every_option():
    r = Run(
        ("A",),
        user="bob",
        dir="/tmp",
        env={"X": "1", "Y": "2"},
        file="raw:echo hi",
        capture=True,
        run_timeout=10,
    )
    step = r.start()
    data = r.job.events[0][2]
    assert list(data) == [
        "timestamp",
        "command",
        "run_timeout",
        "quorum",
        "node_count",
        "user",
        "job_user",
        "dir",
        "env",
        "file_specified",
        "capture",
    ]
    assert data["user"] == "pivotal" and data["job_user"] == "bob"
    assert data["env"] == {"X": "1", "Y": "2"}
    assert data["file_specified"] is True and data["capture"] is True
    body = step.effects[0].body
    assert list(body) == [
        "type",
        "job_id",
        "server",
        "command",
        "user",
        "dir",
        "env",
        "file",
        "capture",
    ]
    assert body["file"] == "raw:echo hi" and body["capture"] is True


def test_start_twice_is_refused():
    r = Run()
    r.start()
    with pytest.raises(ValueError):
        r.start()


def test_start_with_an_offline_node():
    """Pedant: a job on a nonexistent node."""
    r = Run(("DONKEY",))
    step = r.start(unavailable={"DONKEY"})
    assert [e[0] for e in r.events()] == ["start", "quorum_vote", "rehab", "job_complete"]
    assert r.events()[1:] == [
        vote("DONKEY", "down"),
        rehab("DONKEY"),
        job_complete("quorum_failed"),
    ]
    assert not any(isinstance(e, Send) for e in step.effects)
    assert Rehab("DONKEY") in step.effects
    assert step.effects[-1] == Finished("quorum_failed")
    assert r.job.status == "quorum_failed"
    assert jobfsm.nodes_by_status(r.job) == {"unavailable": ["DONKEY"]}


def test_start_with_one_offline_node_of_two_keeps_voting():
    r = Run(("A", "B"), quorum=1)
    step = r.start(unavailable={"B", "not-in-job"})
    assert [e for e in step.effects if isinstance(e, Send)] == [Send("A", step.effects[0].body)]
    assert r.job.nodes == {"A": "new", "B": "unavailable"}
    assert r.job.status == "voting"
    r.tick().msg("A", "ack_commit")
    assert r.job.status == "running"


# ---------------------------------------------------------------------------------------
# §5.3 voting table: node N is put in the column's state, node O stays new so voting goes on.

OTHER_VOTING_TYPES = ["ack_run", "nack_run", "succeeded", "failed", "aborted", "bogus"]

VOTING_ROWS = [
    # (input, column, N's status after, events, rehab effect?)
    ("ack_commit", "new", "ready", [vote("N", "success")], False),
    ("ack_commit", "ready", "ready", [vote("N", "unexpected_commit")], False),
    ("ack_commit", "terminal", "nacked", [rehab("N"), vote("N", "client_died_while_voting")], True),
    ("nack_commit", "new", "nacked", [vote("N", "failure")], False),
    ("nack_commit", "ready", "unavailable", [rehab("N"), vote("N", "lost_availibility")], True),
    (
        "nack_commit",
        "terminal",
        "nacked",
        [rehab("N"), vote("N", "client_died_while_voting")],
        True,
    ),
    ("down", "new", "unavailable", [vote("N", "down"), rehab("N")], True),
    ("down", "ready", "unavailable", [vote("N", "down"), rehab("N")], True),
    ("down", "terminal", "nacked", [vote("N", "down"), rehab("N")], True),
] + [
    row
    for t in OTHER_VOTING_TYPES
    for row in (
        (t, "new", "unavailable", [rehab("N")], True),
        (t, "ready", "unavailable", [rehab("N")], True),
        (t, "terminal", "nacked", [rehab("N")], True),
    )
]


def _send(r: Run, node: str, kind: str):
    return r.down(node) if kind == "down" else r.msg(node, kind)


@pytest.mark.parametrize("kind,column,after,events,rehabbed", VOTING_ROWS)
def test_voting_table(kind, column, after, events, rehabbed):
    r = Run(("N", "O"), quorum=2)
    r.start()
    if column == "ready":
        r.tick().msg("N", "ack_commit")
    elif column == "terminal":
        r.tick().msg("N", "nack_commit")
    before = len(r.job.events)
    step = _send(r.tick(), "N", kind)
    assert r.job.nodes == {"N": after, "O": "new"}
    assert step_events(step) == events
    assert r.events()[before:] == events
    assert step.effects == ([Rehab("N")] if rehabbed else [])
    assert r.job.status == "voting"


def test_voting_node_changes_come_before_the_rehab_event():
    r = Run(("N", "O"))
    r.start()
    r.tick().msg("N", "ack_commit")
    step = r.tick().msg("N", "nack_commit")
    assert [c[0] for c in step.changes] == ["node", "event", "event"]
    step = r.tick().down("O")
    assert step.changes[:3] == [
        ["event", "quorum_vote", {"node": "O", "status": "down"}],
        ["node", "O", "unavailable"],
        ["event", "rehab", {"node": "O"}],
    ]


def test_voting_timeout_row():
    r = Run(("A", "B", "C"), quorum=1)
    r.start()
    r.tick().msg("B", "ack_commit")
    step = r.tick(60).voting_timeout()
    # All votes first, then the status changes; no rehab events.
    assert step_events(step)[:2] == [vote("A", "voting_timeout"), vote("C", "voting_timeout")]
    assert [c[:2] for c in step.changes[2:4]] == [["node", "A"], ["node", "C"]]
    assert step.effects[:2] == [Rehab("A"), Rehab("C")]
    assert r.job.nodes == {"A": "unavailable", "B": "ready", "C": "unavailable"}
    assert r.job.status == "running"
    assert step_events(step)[2:] == [QS]
    assert Send("B", {"type": "run", "job_id": JOB_ID}) in step.effects
    assert ArmTimer("running", r.now + 3600) in step.effects


# ---------------------------------------------------------------------------------------
# §5.5 running table: both nodes ack the commit (quorum reached), O acks run so the job keeps
# running; N is then put in the column's state.

RUNNING_ROWS = [
    ("ack_run", "ready", "running", [run_start("N")], False),
    ("ack_run", "running", "running", [], False),
    (
        "ack_run",
        "terminal",
        "succeeded",
        [run_complete("N", "client_died_while_running"), rehab("N")],
        True,
    ),
    ("nack_run", "ready", "failed", [rehab("N"), run_complete("N", "run_nacked")], True),
    (
        "nack_run",
        "running",
        "failed",
        [rehab("N"), run_complete("N", "run_nacked_while_running")],
        True,
    ),
    (
        "nack_run",
        "terminal",
        "succeeded",
        [rehab("N"), run_complete("N", "client_died_while_running")],
        True,
    ),
    ("succeeded", "ready", "crashed", [rehab("N"), run_complete("N", "crashed")], True),
    ("succeeded", "running", "succeeded", [run_complete("N", "success")], False),
    (
        "succeeded",
        "terminal",
        "succeeded",
        [rehab("N"), run_complete("N", "client_died_while_running")],
        True,
    ),
    ("failed", "ready", "crashed", [rehab("N"), run_complete("N", "crashed")], True),
    ("failed", "running", "failed", [run_complete("N", "failure")], False),
    (
        "failed",
        "terminal",
        "succeeded",
        [rehab("N"), run_complete("N", "client_died_while_running")],
        True,
    ),
] + [
    row
    for t in ["down", "aborted", "ack_commit", "nack_commit", "bogus"]
    for row in (
        (t, "ready", "crashed", [rehab("N"), run_complete("N", "crashed")], True),
        (t, "running", "crashed", [rehab("N"), run_complete("N", "crashed")], True),
        (
            t,
            "terminal",
            "succeeded",
            [rehab("N"), run_complete("N", "client_died_while_running")],
            True,
        ),
    )
]


@pytest.mark.parametrize("kind,column,after,events,rehabbed", RUNNING_ROWS)
def test_running_table(kind, column, after, events, rehabbed):
    r = Run(("N", "O"), quorum=2)
    r.start()
    r.tick().msg("N", "ack_commit")
    r.tick().msg("O", "ack_commit")
    r.tick().msg("O", "ack_run")
    assert r.job.status == "running"
    if column in ("running", "terminal"):
        r.tick().msg("N", "ack_run")
    if column == "terminal":
        r.tick().msg("N", "succeeded")
    before = len(r.job.events)
    step = _send(r.tick(), "N", kind)
    assert r.job.nodes == {"N": after, "O": "running"}
    assert step_events(step) == events
    assert r.events()[before:] == events
    assert step.effects == ([Rehab("N")] if rehabbed else [])
    assert r.job.status == "running"


def test_running_node_change_comes_first_in_rows_with_rehab():
    r = Run(("N", "O"))
    r.start()
    r.tick().msg("N", "ack_commit")
    r.tick().msg("O", "ack_commit")
    step = r.tick().msg("N", "nack_run")
    assert [c[0] for c in step.changes] == ["node", "event", "event"]
    step = r.tick().msg("O", "ack_run")
    assert step.changes[:2] == [["event", "run_start", {"node": "O"}], ["node", "O", "running"]]


def test_run_timeout_row():
    r = Run(("A", "B", "C"), run_timeout=5)
    r.start()
    for n in "ABC":
        r.tick().msg(n, "ack_commit")
    r.tick().msg("A", "ack_run")
    r.tick().msg("A", "succeeded")
    r.tick().msg("B", "ack_run")
    before = len(r.job.events)
    step = r.tick(5).run_timeout()
    assert r.job.nodes == {"A": "succeeded", "B": "timed_out", "C": "timed_out"}
    assert r.events()[before:] == [job_complete("timed_out")]
    assert step.effects == [Rehab("B"), Rehab("C"), Finished("timed_out")]
    assert r.job.status == "timed_out" and r.job.finished_at == r.now


def test_running_starts_with_run_messages_and_timer():
    r = Run(("A", "B", "C"), quorum=2, run_timeout=7)
    r.start()
    r.tick().msg("A", "ack_commit")
    r.tick().msg("B", "nack_commit")
    step = r.tick().msg("C", "ack_commit")
    assert step.effects == [
        Send("A", {"type": "run", "job_id": JOB_ID}),
        Send("C", {"type": "run", "job_id": JOB_ID}),
        ArmTimer("running", r.now + 7),
    ]
    assert r.job.running_at == r.now == r.job.updated_at
    assert jobfsm.running_deadline(r.job) == r.now + 7
    assert jobfsm.voting_deadline(r.job, 60.0) is None


# ---------------------------------------------------------------------------------------
# Canonical pedant sequences (§6.8)


def _names(r: Run):
    return [name for name, _ in r.events()]


def test_sequence_success():
    r = Run(("DONKEY",))
    r.start()
    r.tick().msg("DONKEY", "ack_commit")
    r.tick().msg("DONKEY", "ack_run")
    step = r.tick().msg("DONKEY", "succeeded")
    assert r.events() == [
        START_1,
        vote("DONKEY", "success"),
        QS,
        run_start("DONKEY"),
        run_complete("DONKEY", "success"),
        job_complete("complete"),
    ]
    assert step.effects == [Finished("complete")]
    assert r.job.status == "complete"
    assert jobfsm.nodes_by_status(r.job) == {"succeeded": ["DONKEY"]}
    assert jobfsm.job_finished(r.job)


def test_sequence_command_fails():
    r = Run(("DONKEY",))
    r.start()
    r.tick().msg("DONKEY", "ack_commit")
    r.tick().msg("DONKEY", "ack_run")
    r.tick().msg("DONKEY", "failed")
    assert r.events()[-2:] == [run_complete("DONKEY", "failure"), job_complete("complete")]
    assert _names(r) == [
        "start",
        "quorum_vote",
        "quorum_succeeded",
        "run_start",
        "run_complete",
        "job_complete",
    ]
    assert r.job.nodes == {"DONKEY": "failed"} and r.job.status == "complete"


def test_sequence_nack_commit():
    r = Run(("DONKEY",))
    r.start()
    r.tick().msg("DONKEY", "nack_commit")
    assert r.events() == [START_1, vote("DONKEY", "failure"), job_complete("quorum_failed")]
    assert jobfsm.nodes_by_status(r.job) == {"nacked": ["DONKEY"]}
    assert r.job.status == "quorum_failed"


def test_sequence_ignored_commit():
    r = Run(("DONKEY",))
    r.start()
    step = r.tick(60).voting_timeout()
    assert r.events() == [
        START_1,
        vote("DONKEY", "voting_timeout"),
        job_complete("quorum_failed"),
    ]
    assert step.effects == [Rehab("DONKEY"), Finished("quorum_failed")]
    assert r.job.nodes == {"DONKEY": "unavailable"}


def test_sequence_nack_run():
    r = Run(("DONKEY",))
    r.start()
    r.tick().msg("DONKEY", "ack_commit")
    r.tick().msg("DONKEY", "nack_run")
    assert r.events() == [
        START_1,
        vote("DONKEY", "success"),
        QS,
        rehab("DONKEY"),
        run_complete("DONKEY", "run_nacked"),
        job_complete("complete"),
    ]
    assert r.job.nodes == {"DONKEY": "failed"}


def test_sequence_run_never_acked():
    r = Run(("DONKEY",), run_timeout=1)
    r.start()
    r.tick().msg("DONKEY", "ack_commit")
    r.tick(1).run_timeout()
    assert r.events() == [
        (START_1[0], {**START_1[1], "run_timeout": 1}),
        vote("DONKEY", "success"),
        QS,
        job_complete("timed_out"),
    ]
    assert r.job.nodes == {"DONKEY": "timed_out"} and r.job.status == "timed_out"


def test_sequence_ack_run_then_nack_run():
    r = Run(("DONKEY",))
    r.start()
    r.tick().msg("DONKEY", "ack_commit")
    r.tick().msg("DONKEY", "ack_run")
    r.tick().msg("DONKEY", "nack_run")
    assert r.events()[3:] == [
        run_start("DONKEY"),
        rehab("DONKEY"),
        run_complete("DONKEY", "run_nacked_while_running"),
        job_complete("complete"),
    ]


def test_sequence_two_nodes_quorum_two_one_nacks():
    r = Run(("D", "F"), quorum=2)
    r.start()
    r.tick().msg("D", "nack_commit")
    step = r.tick().msg("F", "ack_commit")
    assert _names(r) == ["start", "quorum_vote", "quorum_vote", "job_complete"]
    assert r.events()[1:] == [
        vote("D", "failure"),
        vote("F", "success"),
        job_complete("quorum_failed"),
    ]
    assert r.job.nodes == {"D": "nacked", "F": "was_ready"}
    assert step.effects == [Rehab("F"), Finished("quorum_failed")]
    assert jobfsm.nodes_by_status(r.job) == {"nacked": ["D"], "was_ready": ["F"]}


def test_sequence_two_nodes_quorum_one_one_nacks():
    r = Run(("D", "F"), quorum=1)
    r.start()
    r.tick().msg("D", "nack_commit")
    step = r.tick().msg("F", "ack_commit")
    assert [e for e in step.effects if isinstance(e, Send)] == [
        Send("F", {"type": "run", "job_id": JOB_ID})
    ]
    r.tick().msg("F", "ack_run")
    r.tick().msg("F", "succeeded")
    assert r.events()[1:] == [
        vote("D", "failure"),
        vote("F", "success"),
        QS,
        run_start("F"),
        run_complete("F", "success"),
        job_complete("complete"),
    ]
    assert jobfsm.nodes_by_status(r.job) == {"succeeded": ["F"], "nacked": ["D"]}


def test_sequence_ack_then_nack_run_while_the_other_is_slow():
    r = Run(("D", "F"), quorum=2)
    r.start()
    r.tick().msg("D", "ack_commit")
    r.tick().msg("D", "nack_run")
    r.tick().msg("F", "ack_commit")
    assert r.events()[1:] == [
        vote("D", "success"),
        rehab("D"),
        vote("F", "success"),
        job_complete("quorum_failed"),
    ]
    assert r.job.nodes == {"D": "unavailable", "F": "was_ready"}


def test_node_killed_after_ack_commit():
    r = Run(("DONKEY",))
    r.start()
    r.tick().msg("DONKEY", "ack_commit")
    r.tick().down("DONKEY")
    assert r.job.status == "complete" and r.job.nodes == {"DONKEY": "crashed"}
    assert r.events()[-3:] == [
        rehab("DONKEY"),
        run_complete("DONKEY", "crashed"),
        job_complete("complete"),
    ]


def test_node_killed_while_running():
    r = Run(("DONKEY",))
    r.start()
    r.tick().msg("DONKEY", "ack_commit")
    r.tick().msg("DONKEY", "ack_run")
    r.tick().down("DONKEY")
    assert r.job.status == "complete" and r.job.nodes == {"DONKEY": "crashed"}


def test_quorum_zero_with_every_node_refusing_completes():
    r = Run(("A", "B"), quorum=0)
    r.start()
    r.tick().msg("A", "nack_commit")
    step = r.tick().msg("B", "nack_commit")
    assert r.events()[1:] == [
        vote("A", "failure"),
        vote("B", "failure"),
        QS,
        job_complete("complete"),
    ]
    assert step.effects == [ArmTimer("running", r.now + 3600), Finished("complete")]


def test_quorum_larger_than_the_node_count_fails():
    r = Run(("A",), quorum=999)
    r.start()
    r.tick().msg("A", "ack_commit")
    assert r.job.status == "quorum_failed" and r.job.nodes == {"A": "was_ready"}


# ---------------------------------------------------------------------------------------
# Output


def _running_node(**options) -> Run:
    r = Run(("N", "O"), **options)
    r.start()
    r.tick().msg("N", "ack_commit")
    r.tick().msg("O", "ack_commit")
    r.tick().msg("N", "ack_run")
    return r


def test_output_is_stored_before_the_status_change():
    r = _running_node(capture=True)
    step = r.tick().msg("N", "succeeded", stdout="out", stderr="")
    assert step.changes[0] == ["output", "N", "out", ""]
    assert r.job.outputs == {"N": ("out", "")}


def test_output_is_stored_without_capture_and_from_a_ready_node():
    r = _running_node()
    r.tick().msg("O", "failed", stdout="o", stderr="e")
    assert r.job.nodes["O"] == "crashed"
    assert r.job.outputs == {"O": ("o", "e")}


def test_output_needs_both_streams_and_is_stored_once():
    r = _running_node()
    step = r.tick().msg("N", "succeeded", stdout="only")
    assert r.job.outputs == {}
    assert not any(c[0] == "output" for c in step.changes)
    r = _running_node()
    r.tick().msg("N", "succeeded", stdout="first", stderr="")
    r.tick().msg("N", "succeeded", stdout="second", stderr="")
    assert r.job.outputs == {"N": ("first", "")}


def test_apply_change_output_guards_non_strings():
    job = Run().job
    jobfsm.apply_change(job, ["output", "N", None, "x"], T0)
    assert job.outputs == {}


# ---------------------------------------------------------------------------------------
# Timestamps


def test_sse_timestamp_format():
    t = calendar.timegm((2014, 7, 10, 5, 17, 44)) + 0.995958
    assert render.sse_timestamp(t) == "2014-07-10 05:17:44.995958Z"
    assert render.sse_timestamp(0.0) == "1970-01-01 00:00:00.000000Z"


def test_event_timestamps_strictly_increase_at_one_instant():
    r = Run(("A", "B", "C"), quorum=1)
    r.start()
    for n in "ABC":
        r.msg(n, "ack_commit")  # no tick: every input at the same now
    for n in "ABC":
        r.msg(n, "ack_run")
        r.msg(n, "succeeded")
    stamps = [data["timestamp"] for _n, _name, data in r.job.events]
    assert len(stamps) > 10
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z", s) for s in stamps)
    assert stamps == sorted(set(stamps))
    assert [n for n, _name, _data in r.job.events] == list(range(1, len(stamps) + 1))


def test_event_timestamps_increase_for_sub_microsecond_steps():
    r = Run(("A", "B"), quorum=2)
    r.start()
    for _ in range(20):
        r.tick(3e-7).msg("A", "ack_commit")
    stamps = [data["timestamp"] for _n, _name, data in r.job.events]
    assert stamps == sorted(set(stamps))


# ---------------------------------------------------------------------------------------
# Abort, crash, lost job, stale timers, outsiders


def test_abort_while_new():
    r = Run(("A",))
    step = r.abort()
    assert r.job.status == "aborted" and r.job.nodes == {"A": "aborted"}
    assert step.effects == [Finished("aborted")]  # no commit went out: nothing to reset
    assert r.events() == [job_complete("aborted")]


def test_abort_while_voting():
    r = Run(("A", "B", "C"))
    r.start()
    r.tick().msg("A", "ack_commit")
    r.tick().msg("B", "nack_commit")
    step = r.tick().abort()
    assert r.job.nodes == {"A": "aborted", "B": "nacked", "C": "aborted"}
    assert step.effects == [Rehab("A"), Rehab("C"), Finished("aborted")]
    assert step_events(step) == [job_complete("aborted")]
    assert r.job.finished_at == r.now


def test_abort_while_running():
    r = Run(("A", "B", "C"))
    r.start()
    for n in "ABC":
        r.tick().msg(n, "ack_commit")
    r.tick().msg("A", "ack_run")
    r.tick().msg("B", "ack_run")
    r.tick().msg("B", "succeeded")
    step = r.tick().abort()
    assert r.job.nodes == {"A": "aborted", "B": "succeeded", "C": "aborted"}
    assert step.effects == [Rehab("A"), Rehab("C"), Finished("aborted")]
    assert r.events()[-1] == job_complete("aborted")


@pytest.mark.parametrize("how", ["complete", "quorum_failed", "timed_out", "aborted", "crashed"])
def test_abort_of_a_finished_job_raises(how):
    r = Run(("A",), quorum=1)
    r.start()
    if how == "complete":
        r.tick().msg("A", "ack_commit")
        r.tick().msg("A", "nack_run")
    elif how == "quorum_failed":
        r.tick().msg("A", "nack_commit")
    elif how == "timed_out":
        r.tick().msg("A", "ack_commit")
        r.tick().run_timeout()
    elif how == "aborted":
        r.tick().abort()
    else:
        r.tick().crash()
    assert r.job.status == how
    snapshot = dataclasses.replace(r.job, nodes=dict(r.job.nodes), events=list(r.job.events))
    with pytest.raises(jobfsm.JobFinished):
        jobfsm.abort(r.job, r.now + 1)
    assert r.job == snapshot


def test_crash_leaves_node_rows_alone():
    r = Run(("A", "B", "C"))
    r.start()
    r.tick().msg("A", "ack_commit")
    r.tick().msg("B", "nack_commit")
    step = r.tick().crash()
    assert r.job.nodes == {"A": "ready", "B": "nacked", "C": "new"}
    assert step.effects == [Rehab("A"), Rehab("C"), Finished("crashed")]
    assert step_events(step) == [job_complete("crashed")]
    assert r.job.status == "crashed"
    assert r.crash().changes == []


def test_lost_job_while_voting():
    r = Run(("A", "B"))
    r.start()
    r.tick().msg("A", "ack_commit")
    step = r.tick().lost("A")
    assert r.job.nodes == {"A": "unavailable", "B": "new"}
    assert step_events(step) == [rehab("A")]
    assert step.effects == [Rehab("A")]
    step = r.tick().lost("B")
    assert r.job.status == "quorum_failed"
    assert step_events(step) == [rehab("B"), job_complete("quorum_failed")]


def test_lost_job_while_running():
    r = Run(("A", "B"))
    r.start()
    r.tick().msg("A", "ack_commit")
    r.tick().msg("B", "ack_commit")
    r.tick().msg("A", "ack_run")
    r.tick().msg("B", "ack_run")
    r.tick().msg("B", "succeeded")
    assert r.tick().lost("B").changes == []  # a terminal node is expected not to hold the job
    step = r.tick().lost("A")
    assert step_events(step) == [
        rehab("A"),
        run_complete("A", "crashed"),
        job_complete("complete"),
    ]
    assert r.job.nodes == {"A": "crashed", "B": "succeeded"}


def test_stale_timers_are_ignored():
    r = Run(("A",))
    assert r.voting_timeout().changes == [] and r.run_timeout().changes == []
    r.start()
    assert r.tick().run_timeout() == jobfsm.Step()
    r.tick().msg("A", "ack_commit")
    assert r.tick(60).voting_timeout() == jobfsm.Step()
    assert r.job.status == "running"
    r.tick().msg("A", "ack_run")
    r.tick().msg("A", "succeeded")
    events = list(r.job.events)
    assert r.tick().run_timeout() == jobfsm.Step()
    assert r.tick().voting_timeout() == jobfsm.Step()
    assert r.job.events == events and r.job.status == "complete"


def test_a_node_not_in_the_job_is_ignored():
    r = Run(("A",))
    r.start()
    events, nodes = list(r.job.events), dict(r.job.nodes)
    for kind in ["ack_commit", "nack_commit", "succeeded", "aborted"]:
        assert r.tick().msg("Z", kind, stdout="x", stderr="y") == jobfsm.Step()
    assert r.down("Z") == jobfsm.Step()
    assert r.lost("Z") == jobfsm.Step()
    assert r.job.events == events and r.job.nodes == nodes and r.job.outputs == {}


def test_messages_are_ignored_before_start_and_after_finish():
    r = Run(("A",))
    assert r.msg("A", "ack_commit") == jobfsm.Step()
    assert r.job.nodes == {"A": "new"}
    r.start()
    r.tick().msg("A", "nack_commit")
    events = list(r.job.events)
    for kind in ["ack_commit", "ack_run", "succeeded", "aborted"]:
        assert r.tick().msg("A", kind, stdout="", stderr="") == jobfsm.Step()
    assert r.down("A") == jobfsm.Step()
    assert r.job.events == events and r.job.outputs == {}


def test_deadlines():
    r = Run(("A",), run_timeout=30)
    assert jobfsm.voting_deadline(r.job, 60.0) is None
    assert jobfsm.running_deadline(r.job) is None
    r.start()
    assert jobfsm.voting_deadline(r.job, 60.0) == T0 + 60.0
    r.tick(2).msg("A", "ack_commit")
    assert jobfsm.running_deadline(r.job) == T0 + 32
    r.tick().msg("A", "nack_run")
    assert jobfsm.running_deadline(r.job) is None


def test_apply_change_rejects_unknown_changes():
    job = Run().job
    for bad in (["what"], ["node", "Z", "ready"], ["node", "N", "bogus"], ["status", "bogus"]):
        with pytest.raises(ValueError):
            jobfsm.apply_change(job, bad, T0)


# ---------------------------------------------------------------------------------------
# Replay property

NODE_NAMES = ["A", "B", "C", "D"]
MSG_TYPES = [
    "ack_commit",
    "nack_commit",
    "ack_run",
    "nack_run",
    "succeeded",
    "failed",
    "aborted",
    "heartbeat",
]

inputs = st.one_of(
    st.tuples(
        st.just("msg"),
        st.sampled_from(NODE_NAMES + ["Z"]),
        st.sampled_from(MSG_TYPES),
        st.booleans(),
    ),
    st.tuples(st.sampled_from(["down", "lost"]), st.sampled_from(NODE_NAMES + ["Z"])),
    st.tuples(st.sampled_from(["voting_timeout", "run_timeout", "abort", "crash"])),
)


@settings(max_examples=300, deadline=None)
@given(
    n_nodes=st.integers(1, 4),
    quorum=st.integers(0, 5),
    unavailable=st.sets(st.sampled_from(NODE_NAMES)),
    script=st.lists(st.tuples(inputs, st.sampled_from([0.0, 3e-7, 1e-6, 0.5, 61.0])), max_size=25),
    options=st.booleans(),
)
def test_replay_rebuilds_the_same_job(n_nodes, quorum, unavailable, script, options):
    extra = dict(user="u", dir="/d", env={"K": "V"}, file="raw:x", capture=True) if options else {}
    r = Run(NODE_NAMES[:n_nodes], quorum=quorum, **extra)
    first = r.start(unavailable=unavailable)
    finished_effects = sum(isinstance(e, Finished) for e in first.effects)
    for inp, dt in script:
        r.tick(dt)
        kind = inp[0]
        was_finished = jobfsm.job_finished(r.job)
        if kind == "msg":
            body = {"stdout": "o", "stderr": "e"} if inp[3] else {}
            step = r.msg(inp[1], inp[2], **body)
        elif kind == "down":
            step = r.down(inp[1])
        elif kind == "lost":
            step = r.lost(inp[1])
        elif kind == "abort":
            if was_finished:
                with pytest.raises(jobfsm.JobFinished):
                    r.abort()
                continue
            step = r.abort()
        else:
            step = getattr(r, kind)()
        if was_finished:
            assert step == jobfsm.Step()
        finished_effects += sum(isinstance(e, Finished) for e in step.effects)
        json.dumps(step.changes)  # durable changes are JSON
        # the kept status counts (what ends voting and running) match the nodes
        counts = r.job.__dict__.get("_counts")
        if counts is not None:
            assert +counts == Counter(r.job.nodes.values())
    job = r.job
    assert finished_effects == (1 if jobfsm.job_finished(job) else 0)
    assert r.replayed() == job
    # The snapshot form (state.py's job_restore) rebuilds it too.
    restored = json.loads(json.dumps(dataclasses.asdict(job)))
    restored["events"] = [tuple(e) for e in restored["events"]]
    restored["outputs"] = {k: tuple(v) for k, v in restored["outputs"].items()}
    assert jobfsm.Job(**restored) == job
    # Invariants of the event list.
    assert [e[0] for e in job.events] == list(range(1, len(job.events) + 1))
    stamps = [e[2]["timestamp"] for e in job.events]
    assert stamps == sorted(set(stamps))
    completes = [i for i, e in enumerate(job.events) if e[1] == "job_complete"]
    if jobfsm.job_finished(job):
        assert completes == [len(job.events) - 1]
        assert job.events[-1][2]["status"] == job.status
        assert job.finished_at is not None
        assert not any(s in ("ready", "running") for s in job.nodes.values()) or (
            job.status == "crashed"
        )
    else:
        assert completes == []
        assert job.status in ("voting", "running")
    assert job.created_at <= job.updated_at
