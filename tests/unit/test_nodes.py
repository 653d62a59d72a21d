"""The node table (server-protocol.md §4 with DESIGN.md's fixes), driven as a pure state machine:
creation, rehab, readdressing, incarnations, routing to jobs, liveness, ghosts after a restart."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.core import liveness
from appliance.core.nodes import (
    Down,
    JobView,
    Liveness,
    LostJob,
    NodeTable,
    Send,
    ToJob,
    Up,
)

T0 = 1_700_000_000.0
KEY = ("org", "n1")
OTHER = ("org", "n2")
ADDR = b"\x00addr-1"
ADDR2 = b"\x00addr-2"
INC = "inc-1"
JOB = "f" * 32
PARAMS = Liveness(interval=10.0, decay_window=4, threshold=0.6, rehab_interval=1.0)


class Jobs:
    """A stand-in for the job manager: which jobs are live, what each node is assigned."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.assigned: dict[tuple[str, str], tuple[str, str]] = {}

    @property
    def view(self) -> JobView:
        return JobView(is_live=self.live.__contains__, assignment=self.assigned.get)


def msg(kind: str, *, job_id=None, incarnation=INC, job_state="idle", **extra) -> dict:
    body = {"type": kind, "incarnation_id": incarnation, "job_id": job_id}
    if kind == "heartbeat":
        body["job_state"] = job_state
    body.update(extra)
    return body


@pytest.fixture
def table() -> NodeTable:
    return NodeTable(PARAMS)


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


def joined(table: NodeTable, jobs: Jobs, now: float = T0) -> None:
    """KEY's first heartbeat and its reply to the abort: idle and available."""
    table.on_message(KEY, ADDR, msg("heartbeat"), now, jobs.view)
    table.on_message(KEY, ADDR, msg("aborted"), now + 0.1, jobs.view)
    assert table.nodes[KEY].available


def kinds(effects: list) -> list:
    """Effects without the free-text reasons of ``Down``."""
    return [(type(e).__name__, e.key) if isinstance(e, Down) else e for e in effects]


# Creation ------------------------------------------------------------------------------------
def test_empty_table(table):
    assert table.online(KEY) is None
    assert table.online_count() == 0
    assert table.next_rehab_due() is None


def test_first_valid_heartbeat_creates_the_node_in_rehab_with_an_abort(table, jobs):
    effects = table.on_message(KEY, ADDR, msg("heartbeat"), T0, jobs.view)
    assert effects == [Up(KEY, INC), Send(KEY, "abort")]
    node = table.online(KEY)
    assert node is not None and node.state == "rehab" and not node.available
    assert node.incarnation == INC and node.address == ADDR
    assert table.addresses == {ADDR: KEY}
    assert table.online_count() == 1
    assert node.health == liveness.create(T0, PARAMS.threshold)


@pytest.mark.parametrize("kind", ["reconfigure", None, "", "abort", "ack", "commit"])
def test_unknown_type_creates_nothing(table, jobs, kind):
    assert table.on_message(KEY, ADDR, msg("heartbeat", type=kind), T0, jobs.view) == []
    assert table.nodes == {} and table.addresses == {}


def test_a_node_first_seen_by_another_message_also_starts_in_rehab(table, jobs):
    effects = table.on_message(KEY, ADDR, msg("ack_run", job_id=JOB), T0, jobs.view)
    assert effects == [Up(KEY, INC), Send(KEY, "abort")]
    node = table.online(KEY)
    assert node.state == "rehab" and node.health is None


def test_missing_incarnation_is_recorded_as_none(table, jobs):
    effects = table.on_message(KEY, ADDR, msg("heartbeat", incarnation=None), T0, jobs.view)
    assert effects[0] == Up(KEY, "")
    assert table.nodes[KEY].incarnation is None


# Rehab ---------------------------------------------------------------------------------------
def test_rehab_timer_resends_abort_until_aborted(table, jobs):
    table.on_message(KEY, ADDR, msg("heartbeat"), T0, jobs.view)
    assert table.next_rehab_due() == T0 + 1.0
    assert table.on_rehab_timer(T0 + 0.999) == []
    assert table.on_rehab_timer(T0 + 1.0) == [Send(KEY, "abort")]
    assert table.next_rehab_due() == T0 + 2.0
    assert table.on_rehab_timer(T0 + 2.5) == [Send(KEY, "abort")]
    assert table.on_message(KEY, ADDR, msg("aborted"), T0 + 2.6, jobs.view) == []
    node = table.nodes[KEY]
    assert node.state == "idle" and node.available and node.rehab_due is None
    assert table.next_rehab_due() is None
    assert table.on_rehab_timer(T0 + 100) == []


def test_rehab_timer_follows_nodes_in_and_out_of_rehab_without_walking_the_others(table, jobs):
    """The timer looks only at the nodes put in rehab (a 20,000-node connect storm sent one
    ``abort`` after another, and each re-armed a timer that walked every node)."""
    keys = [("org", f"n{i}") for i in range(50)]
    for i, key in enumerate(keys):
        table.on_message(key, b"\x00a%d" % i, msg("heartbeat"), T0, jobs.view)
    for i, key in enumerate(keys[:48]):
        table.on_message(key, b"\x00a%d" % i, msg("aborted"), T0 + 0.5, jobs.view)
    assert table.on_rehab_timer(T0 + 1.0) == [Send(k, "abort") for k in keys[48:]]
    assert list(table.rehab) == keys[48:]  # the ones that left were dropped from the index
    table.on_message(keys[48], b"\x00a48", msg("aborted"), T0 + 1.1, jobs.view)
    assert table.do_rehab(keys[0], T0 + 1.2) == [Send(keys[0], "abort")]
    assert table.next_rehab_due() == T0 + 2.0  # keys[49], re-armed by the timer at T0 + 1
    assert table.on_rehab_timer(T0 + 2.2) == [Send(keys[49], "abort"), Send(keys[0], "abort")]
    table.drop(keys[49])
    assert table.next_rehab_due() == T0 + 3.2 and list(table.rehab) == [keys[0]]


def test_other_messages_in_rehab_do_nothing(table, jobs):
    table.on_message(KEY, ADDR, msg("heartbeat"), T0, jobs.view)
    assert table.on_message(KEY, ADDR, msg("heartbeat", job_id=JOB), T0 + 0.1, jobs.view) == []
    assert table.on_message(KEY, ADDR, msg("ack_commit"), T0 + 0.2, jobs.view) == []
    assert table.do_rehab(KEY, T0 + 0.3) == []
    assert table.nodes[KEY].state == "rehab"
    assert table.next_rehab_due() == T0 + 1.0  # a do_rehab in rehab does not re-arm the timer


def test_aborted_in_idle_stays_idle(table, jobs):
    joined(table, jobs)
    assert table.on_message(KEY, ADDR, msg("aborted"), T0 + 1, jobs.view) == []
    assert table.nodes[KEY].state == "idle"


def test_do_rehab_from_idle(table, jobs):
    joined(table, jobs)
    assert table.do_rehab(KEY, T0 + 5) == [Send(KEY, "abort")]
    node = table.nodes[KEY]
    assert node.state == "rehab" and not node.available and node.rehab_due == T0 + 6
    assert table.do_rehab(OTHER, T0 + 5) == []


# Readdressing --------------------------------------------------------------------------------
def test_new_identity_gets_ack_and_keeps_the_state(table, jobs):
    joined(table, jobs)
    effects = table.on_message(KEY, ADDR2, msg("heartbeat"), T0 + 1, jobs.view)
    assert effects == [Send(KEY, "ack")]
    node = table.nodes[KEY]
    assert node.address == ADDR2 and node.available
    assert table.addresses == {ADDR2: KEY}


def test_new_identity_in_rehab_gets_ack_and_stays_in_rehab(table, jobs):
    table.on_message(KEY, ADDR, msg("heartbeat"), T0, jobs.view)
    assert table.on_message(KEY, ADDR2, msg("heartbeat"), T0 + 0.5, jobs.view) == [Send(KEY, "ack")]
    assert table.nodes[KEY].state == "rehab"


def test_ack_comes_before_the_message_is_handled(table, jobs):
    joined(table, jobs)
    jobs.live.add(JOB)
    body = msg("ack_commit", job_id=JOB)
    effects = table.on_message(KEY, ADDR2, body, T0 + 1, jobs.view)
    assert effects == [Send(KEY, "ack"), ToJob(KEY, JOB, "ack_commit", body)]


def test_two_nodes_keep_their_own_addresses(table, jobs):
    table.on_message(KEY, ADDR, msg("heartbeat"), T0, jobs.view)
    table.on_message(OTHER, ADDR2, msg("heartbeat", incarnation="inc-2"), T0, jobs.view)
    assert table.addresses == {ADDR: KEY, ADDR2: OTHER}
    assert table.online_count() == 2


# Incarnations --------------------------------------------------------------------------------
def test_heartbeat_with_a_new_incarnation_restarts_the_node(table, jobs):
    joined(table, jobs)
    effects = table.on_message(KEY, ADDR, msg("heartbeat", incarnation="inc-2"), T0 + 1, jobs.view)
    assert kinds(effects) == [("Down", KEY), Up(KEY, "inc-2"), Send(KEY, "abort")]
    node = table.nodes[KEY]
    assert node.incarnation == "inc-2" and node.state == "rehab"


def test_only_heartbeats_compare_the_incarnation(table, jobs):
    joined(table, jobs)
    effects = table.on_message(KEY, ADDR, msg("aborted", incarnation="inc-2"), T0 + 1, jobs.view)
    assert effects == []
    assert table.nodes[KEY].incarnation == INC


# Routing -------------------------------------------------------------------------------------
def test_heartbeat_with_an_unknown_job_sends_the_node_to_rehab(table, jobs):
    joined(table, jobs)
    effects = table.on_message(KEY, ADDR, msg("heartbeat", job_id="a"), T0 + 1, jobs.view)
    assert effects == [Send(KEY, "abort")]
    assert table.nodes[KEY].state == "rehab"


def test_heartbeat_with_a_live_job_or_no_job_changes_nothing(table, jobs):
    joined(table, jobs)
    jobs.live.add(JOB)
    for job_id in (JOB, None, "null"):
        body = msg("heartbeat", job_id=job_id, job_state="running")
        assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == []
    assert table.nodes[KEY].available


def test_heartbeat_with_an_overlong_job_id_goes_to_rehab(table, jobs):
    joined(table, jobs)
    jobs.live.add("x" * 65)
    body = msg("heartbeat", job_id="x" * 65)
    assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == [Send(KEY, "abort")]


def test_aborted_with_an_unknown_job_causes_no_rehab(table, jobs):
    joined(table, jobs)
    assert table.on_message(KEY, ADDR, msg("aborted", job_id="a"), T0 + 1, jobs.view) == []
    assert table.nodes[KEY].available


def test_aborted_with_a_live_job_goes_to_the_job(table, jobs):
    joined(table, jobs)
    jobs.live.add(JOB)
    body = msg("aborted", job_id=JOB)
    assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == [
        ToJob(KEY, JOB, "aborted", body)
    ]


@pytest.mark.parametrize(
    "kind", ["ack_commit", "nack_commit", "ack_run", "nack_run", "succeeded", "failed"]
)
def test_job_messages_go_to_a_live_job(table, jobs, kind):
    joined(table, jobs)
    jobs.live.add(JOB)
    body = msg(kind, job_id=JOB)
    assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == [ToJob(KEY, JOB, kind, body)]
    assert table.nodes[KEY].available


@pytest.mark.parametrize("job_id", [None, "null", "a", JOB])
def test_job_messages_without_a_live_job_send_the_node_to_rehab(table, jobs, job_id):
    joined(table, jobs)
    body = msg("succeeded", job_id=job_id)
    assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == [Send(KEY, "abort")]
    assert table.nodes[KEY].state == "rehab"


def test_job_message_in_rehab_still_goes_to_a_live_job(table, jobs):
    table.on_message(KEY, ADDR, msg("heartbeat"), T0, jobs.view)
    jobs.live.add(JOB)
    body = msg("nack_commit", job_id=JOB)
    assert table.on_message(KEY, ADDR, body, T0 + 0.1, jobs.view) == [
        ToJob(KEY, JOB, "nack_commit", body)
    ]


# Liveness ------------------------------------------------------------------------------------
def test_scanner_stops_a_silent_node(table, jobs):
    joined(table, jobs)
    # avg 1.2 → 1.15 → 0.8625 → 0.647 → 0.485 < 0.6 after the fourth interval.
    assert table.scan(T0 + 39.9) == []
    effects = table.scan(T0 + 40.0)
    assert kinds(effects) == [("Down", KEY)]
    assert table.nodes == {} and table.addresses == {}
    assert table.online_count() == 0


def test_scanner_keeps_a_node_that_beats_every_interval(table, jobs):
    joined(table, jobs)
    for k in range(1, 30):
        assert table.on_message(KEY, ADDR, msg("heartbeat"), T0 + 10 * k, jobs.view) == []
        assert table.scan(T0 + 10 * k + 5) == []
    assert table.nodes[KEY].available


def test_the_tables_own_standstill_is_excused_and_a_silent_node_still_stops(jobs):
    """The shell reads the time every tick; a standstill of the server (its beats queued in
    the socket) kills no node, on a late scan or on the first beat read after it. The node
    that truly stopped beating is still stopped, about as late as without the standstill."""
    table = NodeTable(dataclasses.replace(PARAMS, tick=2.5))
    other = ("org", "silent")
    table.on_message(other, ADDR2, msg("heartbeat"), T0, jobs.view)
    joined(table, jobs)
    t = T0
    for _ in range(4):  # both beat a while, the shell attending every tick
        for _ in range(4):
            t += 2.5
            table.attend(t)
        for key, addr in ((KEY, ADDR), (other, ADDR2)):
            assert table.on_message(key, addr, msg("heartbeat"), t, jobs.view) == []
    t += 60.0  # the server stood still a minute (six silent intervals)
    assert table.scan(t) == []
    assert table.on_message(KEY, ADDR, msg("heartbeat"), t, jobs.view) == []
    stopped_at = None
    for k in range(1, 40):  # KEY beats on; ``other`` never again
        t += 2.5
        table.attend(t)
        if k % 4 == 0:
            assert table.on_message(KEY, ADDR, msg("heartbeat"), t, jobs.view) == []
        effects = table.scan(t)
        if effects:
            assert kinds(effects) == [("Down", other)] and stopped_at is None
            stopped_at = k * 2.5
    assert stopped_at is not None and stopped_at <= 50.0
    assert table.nodes[KEY].available and other not in table.nodes


def test_without_attention_a_standstill_stops_the_node(jobs):
    table = NodeTable(PARAMS)  # tick None: the times are taken as given
    joined(table, jobs)
    for k in range(1, 5):
        table.on_message(KEY, ADDR, msg("heartbeat"), T0 + 10 * k, jobs.view)
    assert kinds(table.scan(T0 + 100)) == [("Down", KEY)]


def test_scanner_ignores_a_node_that_never_sent_a_heartbeat(table, jobs):
    table.on_message(KEY, ADDR, msg("aborted"), T0, jobs.view)
    assert table.scan(T0 + 10_000) == []
    assert KEY in table.nodes


def test_a_heartbeat_after_a_long_gap_stops_the_node(table, jobs):
    joined(table, jobs)
    effects = table.on_message(KEY, ADDR, msg("heartbeat"), T0 + 100, jobs.view)
    assert kinds(effects) == [("Down", KEY)]
    assert KEY not in table.nodes
    # The next message starts a fresh node.
    effects = table.on_message(KEY, ADDR, msg("heartbeat"), T0 + 101, jobs.view)
    assert effects == [Up(KEY, INC), Send(KEY, "abort")]


def test_drop_forgets_the_node(table, jobs):
    joined(table, jobs)
    assert kinds(table.drop(KEY)) == [("Down", KEY)]
    assert table.nodes == {} and table.addresses == {}
    assert table.drop(KEY) == []


# Ghosts: nodes that were up when the server stopped -------------------------------------------
def test_a_ghost_is_not_online(table, jobs):
    table.restore(KEY, INC, T0)
    assert table.online(KEY) is None
    assert table.online_count() == 0
    assert not table.nodes[KEY].available
    assert table.do_rehab(KEY, T0) == []


def test_idle_ghost_reporting_idle_resumes_with_ack_and_no_abort(table, jobs):
    table.restore(KEY, INC, T0)
    effects = table.on_message(KEY, ADDR, msg("heartbeat"), T0 + 1, jobs.view)
    assert effects == [Send(KEY, "ack")]
    node = table.online(KEY)
    assert node is not None and node.available and node.address == ADDR
    assert table.addresses == {ADDR: KEY}


def test_ghost_reporting_its_running_job_resumes(table, jobs):
    table.restore(KEY, INC, T0)
    jobs.live.add(JOB)
    jobs.assigned[KEY] = (JOB, "running")
    body = msg("heartbeat", job_id=JOB, job_state="running")
    assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == [Send(KEY, "ack")]
    assert table.online(KEY) is not None


def test_ghost_reporting_its_result_resumes_and_the_result_reaches_the_job(table, jobs):
    table.restore(KEY, INC, T0)
    jobs.live.add(JOB)
    jobs.assigned[KEY] = (JOB, "running")
    body = msg("succeeded", job_id=JOB)
    assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == [
        Send(KEY, "ack"),
        ToJob(KEY, JOB, "succeeded", body),
    ]


def test_ghost_committed_matches_ready(table, jobs):
    table.restore(KEY, INC, T0)
    jobs.live.add(JOB)
    jobs.assigned[KEY] = (JOB, "ready")
    body = msg("heartbeat", job_id=JOB, job_state="committed")
    assert table.on_message(KEY, ADDR, body, T0 + 1, jobs.view) == [Send(KEY, "ack")]


@pytest.mark.parametrize(
    ("expected", "job_state", "implied"),
    [
        ("ready", "running", ["ack_run"]),  # the server was killed before logging the ack_run
        ("new", "committed", ["ack_commit"]),  # ... before logging the ack_commit
        ("new", "idle", []),  # the commit is still on its way or was lost: the vote decides
    ],
)
def test_ghost_one_step_ahead_resumes_and_the_lost_reply_reaches_the_job(
    table, jobs, expected, job_state, implied
):
    table.restore(KEY, INC, T0)
    jobs.live.add(JOB)
    jobs.assigned[KEY] = (JOB, expected)
    body = msg("heartbeat", job_id=None if job_state == "idle" else JOB, job_state=job_state)
    effects = table.on_message(KEY, ADDR, body, T0 + 1, jobs.view)
    assert effects == [Send(KEY, "ack"), *(ToJob(KEY, JOB, kind, {}) for kind in implied)]
    assert table.online(KEY) is not None


def test_ghost_two_steps_ahead_is_reset(table, jobs):
    table.restore(KEY, INC, T0)
    jobs.live.add(JOB)
    jobs.assigned[KEY] = (JOB, "new")
    body = msg("heartbeat", job_id=JOB, job_state="running")
    effects = table.on_message(KEY, ADDR, body, T0 + 1, jobs.view)
    assert kinds(effects) == [LostJob(KEY, JOB), ("Down", KEY), Up(KEY, INC), Send(KEY, "abort")]


def test_ghost_that_lost_its_job_is_reset(table, jobs):
    table.restore(KEY, INC, T0)
    jobs.live.add(JOB)
    jobs.assigned[KEY] = (JOB, "running")
    effects = table.on_message(KEY, ADDR, msg("heartbeat"), T0 + 1, jobs.view)
    assert kinds(effects) == [LostJob(KEY, JOB), ("Down", KEY), Up(KEY, INC), Send(KEY, "abort")]
    assert table.nodes[KEY].state == "rehab" and not table.nodes[KEY].ghost


def test_ghost_with_a_job_the_server_does_not_expect_is_reset(table, jobs):
    table.restore(KEY, INC, T0)
    body = msg("heartbeat", job_id=JOB, job_state="running")
    effects = table.on_message(KEY, ADDR, body, T0 + 1, jobs.view)
    assert kinds(effects) == [("Down", KEY), Up(KEY, INC), Send(KEY, "abort")]


def test_ghost_with_a_new_incarnation_is_reset(table, jobs):
    table.restore(KEY, INC, T0)
    jobs.assigned[KEY] = (JOB, "running")
    body = msg("heartbeat", incarnation="inc-2", job_id=JOB, job_state="running")
    effects = table.on_message(KEY, ADDR, body, T0 + 1, jobs.view)
    assert kinds(effects) == [
        LostJob(KEY, JOB),
        ("Down", KEY),
        Up(KEY, "inc-2"),
        Send(KEY, "abort"),
    ]


def test_a_ghost_that_never_speaks_is_stopped_by_the_scanner_after_the_grace(table, jobs):
    table.restore(KEY, INC, T0)
    grace = PARAMS.restart_grace
    assert grace > 4 * PARAMS.interval  # longer than the liveness window: clients back off
    assert table.scan(T0 + grace - 0.1) == []
    assert kinds(table.scan(T0 + grace)) == [("Down", KEY)]
    assert table.nodes == {}


def test_unknown_type_from_a_ghost_changes_nothing(table, jobs):
    table.restore(KEY, INC, T0)
    assert table.on_message(KEY, ADDR, msg("bogus"), T0 + 1, jobs.view) == []
    assert table.nodes[KEY].ghost
