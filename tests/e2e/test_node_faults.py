"""Client faults (issue 7): nodes that die at each step of a job, never answer, send duplicate,
reordered, late or malformed messages, or whose clocks are off.

Each test asserts what a user reads over REST (job status, per-node statuses, node states), that
the other nodes and jobs are unaffected, and that the server keeps serving. The expected
outcomes are taken from server-protocol.md §5.3 (voting table), §5.5 (running table), §5.7
(node going down mid-job), §4.4 (stray messages send a node to rehab), §2.5 (timestamp window)
and §10.1 #8 (a message from a node outside the job is ignored).

WireNodes (tests/e2e/helpers.py ``Node``) play the node by hand; one test kills a real
``pushy client`` with SIGKILL. One server serves the module; every test has its own org.

Regression guarded here: ``test_unknown_or_malformed_message_types_are_dropped`` (a JSON list
or object as ``type`` raised in the reactor's dispatch instead of being dropped as bad_type).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from appliance.core import wire
from tests.e2e.helpers import (
    SUCCESS,
    Feed,
    Fleet,
    Node,
    commit_and_run,
    feed_path,
    finish_run,
    get_job,
    join_node,
    pause,
    post_job,
    shape,
    wait_available,
    wait_job,
)
from tests.support import (
    Chef,
    ClientFleet,
    Server,
    kill_process_group,
    process_group_alive,
    server_fixture,
    wait_for,
)

# voting_timeout must outlast the liveness detection of a dead node (a few 200 ms intervals
# plus one 800 ms scan), so that a node killed before voting votes ``down``, not a timeout.
VOTING_TIMEOUT = 5
server = server_fixture(
    "node-faults",
    heartbeat_interval=200,
    voting_timeout=VOTING_TIMEOUT,
    wait_complete_time=2,
    keep_alive_time=1,
    rehab_timer=500,
)


# Helpers -------------------------------------------------------------------------------------
class FaultNode(Node):
    """A Node whose sends wait (up to 5 s) for room in the DEALER's small queue instead of
    dropping the message: every message of a test's burst must reach the server."""

    def connect(self, *, curve: bool = True) -> FaultNode:
        super().connect(curve=curve)
        assert self.dealer is not None
        self.dealer.sndtimeo = 5000
        return self

    def send_frames(self, frames: list[bytes]) -> None:
        assert self.dealer is not None
        self.dealer.send_multipart(frames)  # zmq.Again after 5 s fails the test


def add_node(fleet: Fleet, org: str, name: str, key: str, cls: type = FaultNode) -> Any:
    """A connected node (not joined yet), closed with the fleet."""
    node = cls(fleet.server, org, name, key, ctx=fleet.ctx)
    fleet.nodes.append(node)
    return node.connect()


def setup(fleet: Fleet, *names: str) -> tuple[str, Chef, list[FaultNode]]:
    """Like ``Fleet.setup`` (an org with these nodes, all joined and available), FaultNodes."""
    org, admin, keys = fleet.org(names)
    nodes = [add_node(fleet, org, n, keys[n]) for n in names]
    for node in nodes:
        join_node(node, others=tuple(n for n in nodes if n is not node))
    return org, admin, nodes


def node_state(node: Node) -> tuple[str, str]:
    """(status, availability) of a node from the single-node endpoint."""
    r = node.chef.get(f"/organizations/{node.org}/pushy/node_states/{node.name}")
    assert r.status_code == 200, r.text
    return r.json()["status"], r.json()["availability"]


def listed_states(admin: Any, org: str) -> dict[str, str]:
    r = admin.get(f"/organizations/{org}/pushy/node_states")
    assert r.status_code == 200, r.text
    return {s["node_name"]: s["availability"] for s in r.json()}


def counters(server: Server) -> dict[str, dict[str, int]]:
    return httpx.get(f"{server.url}/pushy/_status?counters=true", timeout=10).json()["counters"]


def send_dropped(
    server: Server, node: Node, reason: str, kind: str, others: tuple[Node, ...] = (), **fields
) -> None:
    """Send one message and wait until the server counts it dropped for ``reason`` (one at a
    time, so that each drop is seen to happen, not assumed from a quiet pause)."""
    before = counters(server)["dropped"].get(reason, 0)
    node.send(kind, **fields)
    wait_for(
        lambda: counters(server)["dropped"].get(reason, 0) > before,
        nodes=(node, *others),
        what=f"{kind} {fields} dropped as {reason}",
    )


def events_of(events: list[tuple[str, str, dict]], node: str) -> list[tuple]:
    return [e for e in shape(events) if e[1] == node]


def kill(node: Node) -> None:
    """The node process dies: its sockets close, it heartbeats no more."""
    node.beating = False
    node.close()


def revive(node: Node, others: tuple[Node, ...]) -> None:
    """The node's client starts again: a new incarnation, fresh config and sockets, first contact."""
    node.restart_client()
    node.beating = True
    node.config = {}
    node.inbox.clear()
    node.connect()
    join_node(node, others=others)


def run_new_job(admin: Any, org: str, node: Node, others: tuple[Node, ...] = ()) -> None:
    """The node is usable: once available, a new job on it alone runs to success (the others
    keep beating)."""
    node.take("commit", "run")  # stale ones of the faulty job
    wait_available(admin, org, node, others)
    job_id = post_job(admin, org, [node.name])
    commit_and_run(node, job_id, others=others)
    node.send("succeeded", job_id=job_id)
    node.idle()
    job = wait_job(admin, org, job_id, "complete", (node, *others))
    assert job["nodes"] == {"succeeded": [node.name]}


def job_feed(server: Server, org: str, job_id: str) -> Feed:
    """The job's SSE feed, read in the background until the server ends it at job_complete."""
    return Feed(server, feed_path(org, job_id), seconds=60).begin()


def no_abort(node: Node, others: tuple[Node, ...] = (), seconds: float = 0.6) -> bool:
    pause(seconds, (node, *others))
    return node.take("abort") == []


# ---------------------------------------------------------------------------------------------
# 1. A node killed at each step of a job (§5.3 "down", §5.5 "anything else", §5.7)

# "voted": the victim acked while the vote was still open (the buddy votes after the kill);
# "ack_commit": the victim's ack ended the vote (the buddy had voted).
KILL_STEPS = ["commit", "voted", "ack_commit", "run", "ack_run", "mid_run"]
# The victim's own events in its job, after the kill, per step.
KILLED_EVENTS = {
    "commit": [("quorum_vote", "victim", "down"), ("rehab", "victim", None)],
    "voted": [
        ("quorum_vote", "victim", "success"),
        ("quorum_vote", "victim", "down"),
        ("rehab", "victim", None),
    ],
    "ack_commit": [
        ("quorum_vote", "victim", "success"),
        ("rehab", "victim", None),
        ("run_complete", "victim", "crashed"),
    ],
    "ack_run": [
        ("quorum_vote", "victim", "success"),
        ("run_start", "victim", None),
        ("rehab", "victim", None),
        ("run_complete", "victim", "crashed"),
    ],
}
KILLED_EVENTS["run"] = KILLED_EVENTS["ack_commit"]
KILLED_EVENTS["mid_run"] = KILLED_EVENTS["ack_run"]


@pytest.mark.parametrize("step", KILL_STEPS)
def test_node_killed_at_each_step_of_a_job(fleet, server, step):
    """A job on [victim, buddy] with quorum 1 while another job runs on a bystander node; the
    victim dies after ``step``. Before the end of voting it is ``unavailable`` (vote ``down``,
    §5.3 "down" on new/ready); from the end of voting on it is ``crashed`` (§5.5, §5.7); the job
    still completes on the buddy, the other job and nodes carry on, and the victim can come
    back and run a new job."""
    org, admin, (victim, buddy, by) = setup(fleet, "victim", "buddy", "by")
    everyone = (victim, buddy, by)
    other = post_job(admin, org, ["by"])
    commit_and_run(by, other, others=(victim, buddy))

    job_id = post_job(admin, org, ["victim", "buddy"], quorum=1)
    feed = job_feed(server, org, job_id)
    assert victim.expect("commit", others=(buddy, by))["job_id"] == job_id
    buddy.expect("commit", others=(victim, by))
    buddy.working(job_id, "committed")
    if step != "voted":
        buddy.send("ack_commit", job_id=job_id)
    if step != "commit":
        victim.working(job_id, "committed")
        victim.send("ack_commit", job_id=job_id)
    if step in ("run", "ack_run", "mid_run"):
        assert victim.expect("run", others=(buddy, by))["job_id"] == job_id
    if step in ("ack_run", "mid_run"):
        victim.working(job_id, "running")
        victim.send("ack_run", job_id=job_id)
    if step == "voted":
        wait_for(lambda: get_job(admin, org, job_id)["nodes"].get("ready"), nodes=everyone)
    if step == "mid_run":  # it runs for a while, heartbeating with its job, then dies
        wait_for(
            lambda: "victim" in get_job(admin, org, job_id)["nodes"].get("running", []),
            nodes=everyone,
        )
        pause(0.5, everyone)
    kill(victim)

    rest = (buddy, by)
    outcome = "unavailable" if step in ("commit", "voted") else "crashed"
    wait_for(
        lambda: get_job(admin, org, job_id)["nodes"].get(outcome) == ["victim"],
        20,
        rest,
        what=f"victim {outcome}\n{server.log()[-3000:]}",
    )
    assert node_state(victim) == ("offline", "unavailable")
    if step == "voted":
        buddy.send("ack_commit", job_id=job_id)
    finish_run(buddy, job_id, others=(by,))
    job = wait_job(admin, org, job_id, "complete", rest)
    assert job["nodes"] == {outcome: ["victim"], "succeeded": ["buddy"]}
    events = feed.finish()
    assert events_of(events, "victim") == KILLED_EVENTS[step]
    assert events_of(events, "buddy") == [
        ("quorum_vote", "buddy", "success"),
        ("run_start", "buddy", None),
        ("run_complete", "buddy", "success"),
    ]
    assert shape(events)[-1] == ("job_complete", None, "complete")

    # The bystander's job was not disturbed and finishes normally.
    assert get_job(admin, org, other)["nodes"] == {"running": ["by"]}
    by.send("succeeded", job_id=other)
    by.idle()
    assert wait_job(admin, org, other, "complete", rest)["nodes"] == {"succeeded": ["by"]}
    assert buddy.take("abort") == [] and by.take("abort") == []
    assert listed_states(admin, org) == {"buddy": "available", "by": "available"}

    revive(victim, rest)
    run_new_job(admin, org, victim, rest)
    assert node_state(victim) == ("online", "available")


def test_real_client_killed_while_its_command_runs(server, tmp_path):
    """SIGKILL of a real ``pushy client`` while its ``sleep`` runs: the liveness scanner takes
    the node down, the job ends ``complete`` with the node ``crashed`` (§5.7, pedant "client
    killed while running"); a restarted client comes back available and runs a new job."""
    pidfile = tmp_path / "nap.pid"
    whitelist = f"{{'nap'=>'echo $$ > {pidfile}; sleep 60', 'hello'=>'echo hello'}}"
    clients = ClientFleet(server, "realkill", tmp_path / "clients")
    pgid = None
    try:
        client = clients.add("rk1", whitelist=whitelist)
        clients.add("rk2", whitelist=whitelist)
        clients.wait_available("rk1", "rk2")
        job_id = clients.post("nap", ["rk1"])
        clients.wait_nodes(job_id, {"running": ["rk1"]})
        pgid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10))
        assert process_group_alive(pgid)

        client.kill()
        job = clients.wait_job(job_id)
        assert (job["status"], job["nodes"]) == ("complete", {"crashed": ["rk1"]}), server.log()
        assert clients.state("rk1") == ("offline", "unavailable")
        assert clients.states() == {"rk2": "available"}
        assert clients.run("hello", ["rk2"])["nodes"] == {"succeeded": ["rk2"]}

        client.start()
        clients.wait_available("rk1")
        assert clients.run("hello", ["rk1", "rk2"])["nodes"] == {"succeeded": ["rk1", "rk2"]}
    finally:
        if pgid is not None:
            kill_process_group(pgid)
        clients.close()


# ---------------------------------------------------------------------------------------------
# 2. A node that never answers (§5.3 "voting timer fires", §10.2 "Commit ignored")


def test_node_that_never_answers_times_out_the_vote(fleet, server):
    """Connected and heartbeating but ignoring the commit: after voting_timeout it votes
    ``voting_timeout`` and becomes ``unavailable`` (no rehab event), the job runs on the node
    that answered (quorum 1), and the silent node stays online (it is sent ``abort``)."""
    org, admin, (silent, good) = setup(fleet, "silent", "good")
    job_id = post_job(admin, org, ["silent", "good"], quorum=1)
    feed = job_feed(server, org, job_id)
    silent.expect("commit", others=(good,))
    good.expect("commit", others=(silent,))
    good.working(job_id, "committed")
    good.send("ack_commit", job_id=job_id)
    pause(0.5, (silent, good))
    assert get_job(admin, org, job_id)["status"] == "voting"

    # the run arrives only after the timeout
    finish_run(good, job_id, others=(silent,), seconds=VOTING_TIMEOUT + 10)
    job = wait_job(admin, org, job_id, "complete", (silent, good), seconds=VOTING_TIMEOUT + 10)
    assert job["nodes"] == {"succeeded": ["good"], "unavailable": ["silent"]}
    assert events_of(feed.finish(), "silent") == [("quorum_vote", "silent", "voting_timeout")]
    assert node_state(silent) == ("online", "unavailable")  # in rehab until it answers
    silent.answer_abort(others=(good,))
    wait_for(lambda: node_state(silent) == ("online", "available"), nodes=(silent, good))
    run_new_job(admin, org, silent, (good,))


def test_late_ack_commit_after_the_voting_timeout_does_not_revive_the_node(fleet, server):
    """An ack_commit arriving after the node timed out of the vote, while the job runs on
    another node: terminal node in the running phase → rehab event and run_complete
    ``client_died_while_running``; its status stays ``unavailable``."""
    org, admin, (late, good) = setup(fleet, "late", "good")
    job_id = post_job(admin, org, ["late", "good"], quorum=1)
    feed = job_feed(server, org, job_id)
    late.expect("commit", others=(good,))
    good.expect("commit", others=(late,))
    good.working(job_id, "committed")
    good.send("ack_commit", job_id=job_id)
    good.expect("run", others=(late,), seconds=VOTING_TIMEOUT + 10)
    good.working(job_id, "running")
    good.send("ack_run", job_id=job_id)
    late.take("abort")
    late.send("ack_commit", job_id=job_id)
    late.answer_abort(others=(good,))
    wait_for(
        lambda: len(events_of(feed.events, "late")) == 3, nodes=(late, good), what="late events"
    )
    assert get_job(admin, org, job_id)["nodes"] == {"running": ["good"], "unavailable": ["late"]}
    good.send("succeeded", job_id=job_id)
    good.idle()
    job = wait_job(admin, org, job_id, "complete", (late, good))
    assert job["nodes"] == {"succeeded": ["good"], "unavailable": ["late"]}
    assert events_of(feed.finish(), "late") == [
        ("quorum_vote", "late", "voting_timeout"),
        ("rehab", "late", None),
        ("run_complete", "late", "client_died_while_running"),
    ]
    run_new_job(admin, org, late, (good,))


# ---------------------------------------------------------------------------------------------
# 3. Duplicate, reordered and late messages


def test_frozen_node_that_returns_with_its_result_stays_crashed(fleet, server):
    """A node paused past the liveness window (SIGSTOP, a VM freeze) is taken down and its
    running job marks it ``crashed``. When it wakes with the same incarnation and reports
    ``succeeded``, a fresh node FSM sends it ``abort`` and the job takes the report as from a
    terminal node (§5.5: rehab, ``client_died_while_running``): it stays ``crashed``."""
    org, admin, (frozen, other) = setup(fleet, "frozen", "other")
    job_id = post_job(admin, org, ["frozen", "other"])
    feed = job_feed(server, org, job_id)
    for node in (frozen, other):
        node.expect("commit", others=(frozen, other))
        node.working(job_id, "committed")
        node.send("ack_commit", job_id=job_id)
    for node in (frozen, other):
        node.expect("run", others=(frozen, other))
        node.working(job_id, "running")
        node.send("ack_run", job_id=job_id)
    frozen.beating = False
    wait_for(
        lambda: (
            get_job(admin, org, job_id)["nodes"] == {"crashed": ["frozen"], "running": ["other"]}
        ),
        20,
        (other,),
    )
    assert node_state(frozen) == ("offline", "unavailable")
    frozen.send("succeeded", job_id=job_id)
    frozen.beating = True
    frozen.answer_abort(others=(other,))
    wait_for(lambda: len(events_of(feed.events, "frozen")) == 6, nodes=(frozen, other))
    assert get_job(admin, org, job_id)["nodes"] == {"crashed": ["frozen"], "running": ["other"]}
    other.send("succeeded", job_id=job_id)
    other.idle()
    job = wait_job(admin, org, job_id, "complete", (frozen, other))
    assert job["nodes"] == {"crashed": ["frozen"], "succeeded": ["other"]}
    assert events_of(feed.finish(), "frozen") == [
        ("quorum_vote", "frozen", "success"),
        ("run_start", "frozen", None),
        ("rehab", "frozen", None),
        ("run_complete", "frozen", "crashed"),
        ("rehab", "frozen", None),
        ("run_complete", "frozen", "client_died_while_running"),
    ]
    run_new_job(admin, org, frozen, (other,))


def test_duplicate_ack_commit_while_voting_is_an_unexpected_commit(fleet, server):
    """§5.3 ack_commit on a ``ready`` node: no change, vote ``unexpected_commit``."""
    org, admin, (a, b) = setup(fleet, "a", "b")
    job_id = post_job(admin, org, ["a", "b"])
    feed = job_feed(server, org, job_id)
    a.expect("commit", others=(b,))
    a.working(job_id, "committed")
    a.send("ack_commit", job_id=job_id)
    a.send("ack_commit", job_id=job_id)
    wait_for(lambda: len(events_of(feed.events, "a")) == 2, nodes=(a, b), what="a's two votes")
    assert get_job(admin, org, job_id)["nodes"] == {"new": ["b"], "ready": ["a"]}
    b.expect("commit", others=(a,))
    b.working(job_id, "committed")
    b.send("ack_commit", job_id=job_id)
    finish_run(a, job_id, others=(b,))
    finish_run(b, job_id, others=(a,))
    job = wait_job(admin, org, job_id, "complete", (a, b))
    assert job["nodes"] == {"succeeded": ["a", "b"]}
    assert events_of(feed.finish(), "a") == [
        ("quorum_vote", "a", "success"),
        ("quorum_vote", "a", "unexpected_commit"),
        ("run_start", "a", None),
        ("run_complete", "a", "success"),
    ]
    assert a.take("abort") == [] and b.take("abort") == []


def test_duplicate_ack_commit_after_voting_ended_crashes_the_node(fleet, server):
    """The first ack ends the vote of a one-node job; the duplicate arrives in the running
    phase, where ack_commit on a ``ready`` node is "anything else" (§5.5): ``crashed``."""
    org, admin, (n1,) = setup(fleet, "n1")
    job_id = post_job(admin, org, ["n1"])
    feed = job_feed(server, org, job_id)
    n1.expect("commit")
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)
    n1.send("ack_commit", job_id=job_id)
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert job["nodes"] == {"crashed": ["n1"]}
    assert shape(feed.finish()) == [
        *SUCCESS[:3],
        ("rehab", "n1", None),
        ("run_complete", "n1", "crashed"),
        ("job_complete", None, "complete"),
    ]
    n1.answer_abort()
    run_new_job(admin, org, n1)


def test_ack_run_before_ack_commit_makes_the_node_unavailable(fleet, server):
    """A run-phase message while voting (§5.3 "any other type"): ``unavailable``, rehab, no
    vote; the one-node job fails its quorum; the reordered ack_commit that follows is ignored."""
    org, admin, (n1,) = setup(fleet, "n1")
    job_id = post_job(admin, org, ["n1"])
    feed = job_feed(server, org, job_id)
    n1.expect("commit")
    n1.working(job_id, "running")
    n1.send("ack_run", job_id=job_id)
    n1.send("ack_commit", job_id=job_id)
    job = wait_job(admin, org, job_id, "quorum_failed", (n1,))
    assert job["nodes"] == {"unavailable": ["n1"]}
    assert shape(feed.finish()) == [
        ("start", None, None),
        ("rehab", "n1", None),
        ("job_complete", None, "quorum_failed"),
    ]
    n1.answer_abort()
    run_new_job(admin, org, n1)


def test_succeeded_without_ack_run_crashes_the_node_and_keeps_the_output(fleet, server):
    """§5.5 succeeded on a ``ready`` node → ``crashed``; the output is stored anyway (§7)."""
    org, admin, (n1,) = setup(fleet, "n1")
    job_id = post_job(admin, org, ["n1"], capture_output=True)
    feed = job_feed(server, org, job_id)
    n1.expect("commit")
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)
    n1.expect("run")
    n1.send("succeeded", job_id=job_id, stdout="out", stderr="")
    n1.idle()
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert job["nodes"] == {"crashed": ["n1"]}
    assert shape(feed.finish())[3:] == [
        ("rehab", "n1", None),
        ("run_complete", "n1", "crashed"),
        ("job_complete", None, "complete"),
    ]
    r = admin.get(
        f"/organizations/{org}/pushy/jobs/{job_id}/output/n1/stdout",
        headers={"Accept": "application/octet-stream"},
    )
    assert (r.status_code, r.content) == (200, b"out")
    n1.answer_abort()
    run_new_job(admin, org, n1)


def test_succeeded_twice_keeps_the_first_result(fleet, server):
    """A second ``succeeded`` while the job still runs on another node: terminal node →
    rehab event, run_complete ``client_died_while_running``; its status and output stay."""
    org, admin, (a, b) = setup(fleet, "a", "b")
    job_id = post_job(admin, org, ["a", "b"], capture_output=True)
    feed = job_feed(server, org, job_id)
    for node in (a, b):
        node.expect("commit", others=(a, b))
        node.working(job_id, "committed")
        node.send("ack_commit", job_id=job_id)
    for node in (a, b):
        node.expect("run", others=(a, b))
        node.working(job_id, "running")
        node.send("ack_run", job_id=job_id)
    a.send("succeeded", job_id=job_id, stdout="first", stderr="")
    a.send("succeeded", job_id=job_id, stdout="second", stderr="")
    a.idle()
    a.answer_abort(others=(b,))
    wait_for(lambda: len(events_of(feed.events, "a")) == 5, nodes=(a, b), what="a's events")
    assert get_job(admin, org, job_id)["nodes"] == {"running": ["b"], "succeeded": ["a"]}
    b.send("succeeded", job_id=job_id, stdout="b", stderr="")
    b.idle()
    job = wait_job(admin, org, job_id, "complete", (a, b))
    assert job["nodes"] == {"succeeded": ["a", "b"]}
    assert events_of(feed.finish(), "a") == [
        ("quorum_vote", "a", "success"),
        ("run_start", "a", None),
        ("run_complete", "a", "success"),
        ("rehab", "a", None),
        ("run_complete", "a", "client_died_while_running"),
    ]
    r = admin.get(
        f"/organizations/{org}/pushy/jobs/{job_id}/output/a/stdout",
        headers={"Accept": "application/octet-stream"},
    )
    assert (r.status_code, r.content) == (200, b"first")
    assert b.take("abort") == []


def test_nack_commit_after_ack_commit_loses_availability(fleet, server):
    """§5.3 nack_commit on a ``ready`` node → ``unavailable``, rehab, vote
    ``lost_availibility`` (sic); with quorum 1 the job runs on the other node."""
    org, admin, (a, b) = setup(fleet, "a", "b")
    job_id = post_job(admin, org, ["a", "b"], quorum=1)
    feed = job_feed(server, org, job_id)
    a.expect("commit", others=(b,))
    a.working(job_id, "committed")
    a.send("ack_commit", job_id=job_id)
    a.send("nack_commit", job_id=job_id)
    a.idle()
    a.answer_abort(others=(b,))
    b.expect("commit", others=(a,))
    b.working(job_id, "committed")
    b.send("ack_commit", job_id=job_id)
    finish_run(b, job_id, others=(a,))
    job = wait_job(admin, org, job_id, "complete", (a, b))
    assert job["nodes"] == {"succeeded": ["b"], "unavailable": ["a"]}
    assert events_of(feed.finish(), "a") == [
        ("quorum_vote", "a", "success"),
        ("rehab", "a", None),
        ("quorum_vote", "a", "lost_availibility"),
    ]
    run_new_job(admin, org, a, (b,))


def test_nack_run_after_ack_run_fails_the_node(fleet, server):
    """§5.5 nack_run on a ``running`` node → ``failed``, rehab, ``run_nacked_while_running``."""
    org, admin, (n1,) = setup(fleet, "n1")
    job_id = post_job(admin, org, ["n1"])
    feed = job_feed(server, org, job_id)
    commit_and_run(n1, job_id)
    n1.send("nack_run", job_id=job_id)
    n1.idle()
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert job["nodes"] == {"failed": ["n1"]}
    assert shape(feed.finish())[4:] == [
        ("rehab", "n1", None),
        ("run_complete", "n1", "run_nacked_while_running"),
        ("job_complete", None, "complete"),
    ]
    n1.answer_abort()
    run_new_job(admin, org, n1)


def test_unsolicited_aborted_naming_the_job_crashes_the_node_and_costs_an_extra_rehab(
    fleet, server
):
    """A buggy client that says ``aborted`` for its running job: "anything else" on a
    ``running`` node → ``crashed`` (§5.5). Answering the abort with the job's id again is one
    more message from a terminal node: another rehab round (§10.1 #17), ended by a reply with
    job_id null. The other node's run is not disturbed."""
    org, admin, (a, b) = setup(fleet, "a", "b")
    job_id = post_job(admin, org, ["a", "b"])
    feed = job_feed(server, org, job_id)
    for node in (a, b):
        node.expect("commit", others=(a, b))
        node.working(job_id, "committed")
        node.send("ack_commit", job_id=job_id)
    for node in (a, b):
        node.expect("run", others=(a, b))
        node.working(job_id, "running")
        node.send("ack_run", job_id=job_id)
    a.send("aborted", job_id=job_id)
    a.expect("abort", others=(b,))
    a.send("aborted", job_id=job_id)  # still naming the job
    a.answer_abort(others=(b,))  # the second round, answered with job_id null
    wait_for(lambda: node_state(a) == ("online", "available"), nodes=(a, b))
    assert get_job(admin, org, job_id)["nodes"] == {"crashed": ["a"], "running": ["b"]}
    b.send("succeeded", job_id=job_id)
    b.idle()
    job = wait_job(admin, org, job_id, "complete", (a, b))
    assert job["nodes"] == {"crashed": ["a"], "succeeded": ["b"]}
    assert events_of(feed.finish(), "a") == [
        ("quorum_vote", "a", "success"),
        ("run_start", "a", None),
        ("rehab", "a", None),
        ("run_complete", "a", "crashed"),
        ("rehab", "a", None),
        ("run_complete", "a", "client_died_while_running"),
    ]
    assert b.take("abort") == []


def test_message_for_a_finished_job_sends_the_node_to_rehab_and_changes_nothing(fleet, server):
    """While the job lingers (wait_complete_time) a late message is ignored (§5.6); past it the
    job has no process and the message is a stray one (§4.4, the node goes to rehab). The
    stored result and output are untouched either way."""
    org, admin, (n1,) = setup(fleet, "n1")
    job_id = post_job(admin, org, ["n1"], capture_output=True)
    commit_and_run(n1, job_id)
    n1.send("succeeded", job_id=job_id, stdout="kept", stderr="")
    n1.idle()
    before = wait_job(admin, org, job_id, "complete", (n1,))
    n1.send("failed", job_id=job_id, stdout="late", stderr="late")  # while the job lingers
    assert no_abort(n1, seconds=0.3)
    assert job_id in server.status()["job_processes"], "the linger window ended too early"
    wait_for(lambda: job_id not in server.status()["job_processes"], 15, (n1,))
    for kind in ("failed", "ack_commit", "nack_run"):
        n1.send(kind, job_id=job_id, stdout="late", stderr="late")
        n1.answer_abort()
        wait_for(lambda: node_state(n1) == ("online", "available"), nodes=(n1,))
    after = get_job(admin, org, job_id)
    assert after == before
    r = admin.get(
        f"/organizations/{org}/pushy/jobs/{job_id}/output/n1/stdout",
        headers={"Accept": "application/octet-stream"},
    )
    assert (r.status_code, r.content) == (200, b"kept")
    run_new_job(admin, org, n1)


def test_messages_naming_a_job_without_this_node_are_ignored_while_voting(fleet, server):
    """§10.1 #8: the original crashed the job; here the messages change nothing, the outsider
    is not sent to rehab, and the job runs its normal six events."""
    org, admin, (n1, out) = setup(fleet, "n1", "out")
    job_id = post_job(admin, org, ["n1"])
    feed = job_feed(server, org, job_id)
    n1.expect("commit", others=(out,))
    for kind in ("ack_commit", "nack_commit", "ack_run", "succeeded", "aborted"):
        out.send(kind, job_id=job_id)
    pause(0.5, (n1, out))
    job = get_job(admin, org, job_id)
    assert (job["status"], job["nodes"]) == ("voting", {"new": ["n1"]})
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)
    finish_run(n1, job_id, others=(out,))
    job = wait_job(admin, org, job_id, "complete", (n1, out))
    assert job["nodes"] == {"succeeded": ["n1"]}
    assert shape(feed.finish()) == SUCCESS
    assert out.take("abort") == []
    assert node_state(out) == ("online", "available")


def test_message_for_an_unknown_job_sends_only_that_node_to_rehab(fleet, server):
    """§4.4: a message naming no existing job (a random id, an over-long id) → abort for the
    sender; another node's running job is not disturbed. ``aborted`` naming an unknown job
    is the exception: no abort."""
    org, admin, (stray, n1) = setup(fleet, "stray", "n1")
    job_id = post_job(admin, org, ["n1"])
    feed = job_feed(server, org, job_id)
    commit_and_run(n1, job_id, others=(stray,))
    for bogus in (uuid.uuid4().hex, "f" * 65):
        stray.send("ack_commit", job_id=bogus)
        stray.answer_abort(others=(n1,))
        wait_for(lambda: node_state(stray) == ("online", "available"), nodes=(stray, n1))
    stray.send("aborted", job_id=uuid.uuid4().hex)
    assert no_abort(stray, (n1,))
    assert get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}
    n1.send("succeeded", job_id=job_id)
    n1.idle()
    assert wait_job(admin, org, job_id, "complete", (stray, n1))["nodes"] == {"succeeded": ["n1"]}
    assert shape(feed.finish()) == SUCCESS
    run_new_job(admin, org, stray, (n1,))


BAD_TYPES = ["bogus", "commit", "run", "abort", "ack", "", None, 7, ["ack_run"], {"t": 1}]


def test_unknown_or_malformed_message_types_are_dropped(fleet, server):
    """§3.3: a missing or unknown ``type`` is logged and dropped: no abort, no job change.
    Regression: a non-string ``type`` (list, object) used to raise in the dispatcher
    (unhashable in a set lookup) and was counted as an internal error with a traceback."""
    org, admin, (n1,) = setup(fleet, "n1")
    job_id = post_job(admin, org, ["n1"])
    commit_and_run(n1, job_id)
    before = counters(server)["dropped"]
    for kind in BAD_TYPES:
        send_dropped(server, n1, "bad_type", "succeeded", job_id=job_id, type=kind)
    after = counters(server)["dropped"]
    assert after.get("internal_error", 0) == before.get("internal_error", 0), server.log()[-3000:]
    assert after.get("bad_type", 0) == before.get("bad_type", 0) + len(BAD_TYPES)
    assert n1.take("abort") == []
    assert get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}
    n1.send("succeeded", job_id=job_id)
    n1.idle()
    assert wait_job(admin, org, job_id, "complete", (n1,))["nodes"] == {"succeeded": ["n1"]}


# ---------------------------------------------------------------------------------------------
# 4. Clock skew (§2.5: accepted only if |now - timestamp| < max_time_skew = 300 s)


class SkewedNode(FaultNode):
    """A node whose clock is ``skew`` seconds off: every message it sends carries that time."""

    skew = 0.0

    def body(self, kind: str, **extra: Any) -> dict[str, Any]:
        extra.setdefault("timestamp", wire.http_date(time.time() + self.skew))
        return super().body(kind, **extra)


def skewed_node(fleet: Fleet, org: str, name: str, key: str, skew: float) -> SkewedNode:
    node = add_node(fleet, org, name, key, SkewedNode)
    node.skew = skew
    return node


@pytest.mark.parametrize("skew", [-310, 310, -3600])
def test_node_with_a_clock_beyond_the_window_is_never_seen(fleet, server, skew):
    """Every message is dropped before it can create node state: no abort, the node stays
    offline, a job on it votes ``down`` → ``quorum_failed`` / ``unavailable``. A node with a
    good clock in the same org is unaffected."""
    org, admin, keys = fleet.org(("skewed", "good"))
    good = add_node(fleet, org, "good", keys["good"])
    join_node(good)
    node = skewed_node(fleet, org, "skewed", keys["skewed"], skew)
    for _ in range(3):
        send_dropped(server, node, "bad_timestamp", "heartbeat", others=(good,))
    send_dropped(server, node, "bad_timestamp", "aborted", job_id=None, others=(good,))
    assert node.take("abort") == []
    assert node_state(node) == ("offline", "unavailable")
    job_id = post_job(admin, org, ["skewed"])
    feed = job_feed(server, org, job_id)
    job = wait_job(admin, org, job_id, "quorum_failed", (node, good))
    assert job["nodes"] == {"unavailable": ["skewed"]}
    assert shape(feed.finish()) == [
        ("start", None, None),
        ("quorum_vote", "skewed", "down"),
        ("rehab", "skewed", None),
        ("job_complete", None, "quorum_failed"),
    ]
    assert node.take("commit", "abort") == []
    run_new_job(admin, org, good, (node,))
    assert node_state(node) == ("offline", "unavailable")


@pytest.mark.parametrize("skew", [-290, -100, 100, 290])
def test_node_with_a_clock_within_the_window_works(fleet, server, skew):
    org, admin, keys = fleet.org(("skewed",))
    node = skewed_node(fleet, org, "skewed", keys["skewed"], skew)
    join_node(node)
    assert node_state(node) == ("online", "available")
    run_new_job(admin, org, node)


def test_an_ack_with_a_skewed_timestamp_is_not_counted(fleet, server):
    """A joined node's ack_commit stamped 400 s in the past is dropped: the node stays ``new``
    in the vote; its next, well-stamped ack counts and the job runs."""
    org, admin, (n1,) = setup(fleet, "n1")
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")
    n1.working(job_id, "committed")
    stamp = wire.http_date(time.time() - 400)
    send_dropped(server, n1, "bad_timestamp", "ack_commit", job_id=job_id, timestamp=stamp)
    job = get_job(admin, org, job_id)
    assert (job["status"], job["nodes"]) == ("voting", {"new": ["n1"]})
    n1.send("ack_commit", job_id=job_id)
    finish_run(n1, job_id)
    assert wait_job(admin, org, job_id, "complete", (n1,))["nodes"] == {"succeeded": ["n1"]}
