"""Restarts and durability end to end (DESIGN.md "Durable state and restarts").

Beyond the original (server-protocol.md §5.8, which marked every unfinished job ``crashed``):
the server replays its log and resumes live jobs. A node's existing DEALER reconnects to the
restarted server on the same ports with the same CURVE key, gets an ``ack`` when its heartbeat
reports the job the server expects, and finishes it. kill -9 loses no acknowledged job, and a
torn tail of the log is cut at start.
"""

from __future__ import annotations

import datetime
import itertools
import re
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    SUCCESS,
    Feed,
    assert_runs_a_new_job,
    commit_and_run,
    feed_path,
    get_job,
    jobs_path,
    pause,
    post_job,
    shape,
    wait_job,
)
from tests.support import Chef, Server, server_fixture, wait_for

_barriers = itertools.count(1)


def restart(server: Server, *, kill: bool = False, down_for: float = 0.0, nodes=()) -> None:
    """Stop (SIGTERM, or kill -9) and start again on the same ports, nodes heartbeating."""
    ports = {k: server.ports[k] for k in ("api_port", "command_port", "server_heartbeat_port")}
    assert server.proc is not None
    if kill:
        server.kill()
    else:
        # The nodes keep heartbeating during the graceful stop, as real clients would.
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: server.proc.poll() is not None, 30, nodes)
        assert server.proc.returncode == 0, server.log()
    pause(down_for, nodes)
    server.settings.update(ports)
    server.start()
    assert {k: server.ports[k] for k in ports} == ports


def barrier(admin: Chef, org: str) -> None:
    """A durable write: once it is answered, every earlier log record is on disk too."""
    r = admin.post(f"/organizations/{org}/groups", {"groupname": f"barrier{next(_barriers)}"})
    assert r.status_code == 201, r.text


server = server_fixture(
    "restart", scope="function", voting_timeout=4, wait_complete_time=5, keep_alive_time=1
)


# ---------------------------------------------------------------------------------------------
# Live jobs resume


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill-9"])
def test_running_job_resumes_after_a_restart(fleet, server, kill):
    org, admin, (n1,) = fleet.setup("n1")
    incarnation = server.status()["incarnation_id"]
    job_id = post_job(admin, org, ["n1"], "sleep 30")
    commit_and_run(n1, job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, nodes=(n1,))
    barrier(admin, org)
    n1.inbox.clear()
    restart(server, kill=kill, down_for=0.5, nodes=(n1,))
    assert server.status()["incarnation_id"] == incarnation
    # The same DEALER re-handshakes; the heartbeat reports the running job: ack, not abort.
    ack = n1.expect("ack", seconds=10)
    assert ack["type"] == "ack"
    assert n1.take("abort") == []
    assert get_job(admin, org, job_id)["status"] == "running"
    n1.send("succeeded", job_id=job_id, stdout="resumed", stderr="")
    n1.idle()
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert job["nodes"] == {"succeeded": ["n1"]}
    events = admin.sse(f"/organizations/{org}/pushy/job_status_feed/{job_id}")
    assert shape(events) == SUCCESS
    assert [e[1] for e in events] == [f"job-{i}" for i in range(1, 7)]
    assert n1.take("abort") == []
    r = admin.get(f"{jobs_path(org, job_id)}/output/n1/stdout", headers={"Accept": "*/*"})
    assert (r.status_code, r.content) == (200, b"resumed")
    assert admin.get(f"/organizations/{org}/pushy/node_states/n1").json() == {
        "node_name": "n1",
        "status": "online",
        "availability": "available",
    }
    assert_runs_a_new_job(admin, org, n1)


def test_kill_9_right_after_ack_run_still_resumes_the_job(fleet, server):
    """Job steps are logged without waiting; if the kill lost the ack_run, the node's report of
    a running job makes up for it (an implied ack_run), so the job is not crashed.

    The vote is made durable first (a read waits for the log): a kill that also lost the
    quorum step leaves a node running a job the server has still voting, which no report
    can reconcile (the node is reset and the job crashed), and is not what this test is about."""
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "sleep 30")
    n1.expect("commit")
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)
    n1.expect("run")
    assert get_job(admin, org, job_id)["nodes"] == {"ready": ["n1"]}
    n1.working(job_id, "running")
    n1.send("ack_run", job_id=job_id)
    n1.inbox.clear()
    restart(server, kill=True, down_for=0.3, nodes=(n1,))
    assert n1.expect("ack", seconds=10)["type"] == "ack"
    wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, nodes=(n1,))
    n1.send("succeeded", job_id=job_id, stdout="", stderr="")
    n1.idle()
    assert wait_job(admin, org, job_id, "complete", (n1,))["nodes"] == {"succeeded": ["n1"]}
    assert n1.take("abort") == []


def test_node_back_without_its_job_is_crashed_and_aborted(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "sleep 30")
    commit_and_run(n1, job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, nodes=(n1,))
    barrier(admin, org)
    n1.idle()  # it lost the job while the server was away
    n1.inbox.clear()
    restart(server, down_for=0.3, nodes=(n1,))
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert job["nodes"] == {"crashed": ["n1"]}
    assert shape(admin.sse(f"/organizations/{org}/pushy/job_status_feed/{job_id}")) == [
        *SUCCESS[:4],
        ("rehab", "n1", None),
        ("run_complete", "n1", "crashed"),
        ("job_complete", None, "complete"),
    ]
    n1.answer_abort(seconds=10)
    assert_runs_a_new_job(admin, org, n1)


def test_voting_timer_is_rearmed_from_the_logged_time(fleet, server):
    voting_timeout = server.settings["voting_timeout"]
    org, admin, (n1,) = fleet.setup("n1")
    posted = time.monotonic()
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")  # never answered
    barrier(admin, org)
    # Down past the voting deadline: a re-armed timer fires at once after the restart, a
    # fresh one would wait a whole voting_timeout more.
    down_for = voting_timeout + 0.5 - (time.monotonic() - posted)
    restart(server, kill=True, down_for=down_for, nodes=(n1,))
    job = wait_job(admin, org, job_id, "quorum_failed", (n1,), seconds=voting_timeout - 1.5)
    assert job["nodes"] == {"unavailable": ["n1"]}
    events = admin.sse(f"/organizations/{org}/pushy/job_status_feed/{job_id}")
    assert shape(events) == [
        ("start", None, None),
        ("quorum_vote", "n1", "voting_timeout"),
        ("job_complete", None, "quorum_failed"),
    ]
    started, voted = (_epoch(e[2]["timestamp"]) for e in events[:2])
    assert voted - started >= voting_timeout  # the timer kept its deadline, not an earlier one


def _epoch(sse_timestamp: str) -> float:
    parsed = datetime.datetime.strptime(sse_timestamp, "%Y-%m-%d %H:%M:%S.%fZ")
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def _org_feed_replay(
    server: Server, org: str, count: int, nodes: tuple = ()
) -> list[tuple[str, str, dict]]:
    """The org feed from an unknown Last-Event-ID: start_of_history, then ``count`` events."""
    feed = Feed(server, feed_path(org), last_event_id="unknown").begin()
    wait_for(lambda: len(feed.events) >= count + 1, nodes=nodes)
    return feed.stop(nodes=nodes)


def test_sse_ids_never_repeat_across_a_restart(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    before = [post_job(admin, org, ["off"], f"before {i}") for i in range(2)]
    replay = _org_feed_replay(server, org, 4, (n1,))
    running = post_job(admin, org, ["n1"])
    commit_and_run(n1, running)
    wait_for(lambda: get_job(admin, org, running)["nodes"] == {"running": ["n1"]}, nodes=(n1,))
    barrier(admin, org)
    restart(server, nodes=(n1,))
    n1.expect("ack", seconds=10)
    live = Feed(server, feed_path(org)).begin()  # no Last-Event-ID: only what happens next
    after = post_job(admin, org, ["off"], "after")
    n1.send("succeeded", job_id=running)
    n1.idle()
    wait_job(admin, org, running, "complete", (n1,))
    wait_for(lambda: len(live.events) == 3, nodes=(n1,))
    events = _org_feed_replay(server, org, 8, (n1,))
    assert events[0][0] == "start_of_history"
    assert [(e[0], e[2]["job"]) for e in events[1:]] == [
        ("start", before[0]),
        ("job_complete", before[0]),
        ("start", before[1]),
        ("job_complete", before[1]),
        ("start", running),
        ("start", after),
        ("job_complete", after),
        ("job_complete", running),
    ]
    assert events[1:5] == replay[1:5]  # the buffered events survived, ids included
    assert live.stop(nodes=(n1,)) == events[6:]
    ids = [e[1] for e in events[1:]]
    numbers = [int(re.fullmatch(r"org-(\d+)", i).group(1)) for i in ids]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), ids
    # The resumed job's own feed continued its ids: job-1 .. job-6, no repeats.
    job_feed = admin.sse(f"/organizations/{org}/pushy/job_status_feed/{running}")
    assert [e[1] for e in job_feed] == [f"job-{i}" for i in range(1, 7)]
    assert shape(job_feed) == SUCCESS


# ---------------------------------------------------------------------------------------------
# kill -9 durability and a torn log tail


JOB_BODIES = [
    {"command": "plain", "nodes": ["off1"]},
    {"command": "two nodes", "nodes": ["off1", "off2"], "quorum": 1, "run_timeout": 60},
    {"command": "as user", "nodes": ["off2"], "user": "deploy", "dir": "/srv"},
    {
        "command": "with env",
        "nodes": ["off1"],
        "env": {"A": "1", "B": "x y"},
        "capture_output": True,
    },
    {"command": "with file", "nodes": ["off3"], "file": "raw:#!/bin/sh\necho hi\n"},
]


def _post_all(admin: Chef, org: str) -> list[str]:
    ids = []
    for body in JOB_BODIES:
        r = admin.post(jobs_path(org), body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["uri"].rsplit("/", 1)[1])
    return ids


def _check_jobs(admin: Chef, org: str, ids: list[str], extra: tuple | list = ()) -> None:
    """Every job is back with everything that was POSTed (§6.5 shape)."""
    for job_id, body in zip(ids, JOB_BODIES, strict=True):
        job = get_job(admin, org, job_id, "?include_file=true")
        expected = {
            "nodes": {"unavailable": sorted(body["nodes"])},
            "id": job_id,
            "command": body["command"],
            "status": "quorum_failed",
            "run_timeout": body.get("run_timeout", 3600),
            "created_at": job["created_at"],
            "updated_at": job["updated_at"],
        }
        for key in ("user", "dir", "env", "capture_output", "file"):
            if key in body:
                expected[key] = body[key]
        assert job == expected
        assert list(job) == list(expected)
    assert [j["id"] for j in admin.get(jobs_path(org)).json()] == [*extra, *ids[::-1]]


def test_kill_9_right_after_the_201s_loses_no_job(fleet, server):
    org, admin, _keys = fleet.org(("off1", "off2", "off3", "n1"))
    n1 = fleet.node(org, "n1", _keys["n1"])
    ids = _post_all(admin, org)
    voting = post_job(admin, org, ["n1"], "in voting", env={"X": "y"})
    server.kill()  # immediately after the last 201
    restart(server, kill=True, nodes=(n1,))
    _check_jobs(admin, org, ids, extra=[voting])
    job = get_job(admin, org, voting)
    assert job["status"] in ("voting", "quorum_failed"), job
    assert (job["command"], job["env"], list(job["nodes"].values())) == (
        "in voting",
        {"X": "y"},
        [["n1"]],
    )


def _newest_segment(server: Server) -> Path:
    segments = sorted((server.state_dir / "log").glob("*.seg"))
    assert segments, list(server.state_dir.rglob("*"))
    return segments[-1]


def test_torn_log_tail_is_cut_and_acknowledged_jobs_survive(fleet, server):
    org, admin, _keys = fleet.org(("off1", "off2", "off3"))
    ids = _post_all(admin, org)
    r = admin.post(f"/organizations/{org}/groups", {"groupname": "torn"})  # the last record
    assert r.status_code == 201, r.text
    server.kill()
    segment = _newest_segment(server)
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 5)  # as if the last write were cut short
    log_before = server.log_path.stat().st_size
    restart(server, kill=True)
    with open(server.log_path, errors="replace") as f:
        f.seek(log_before)
        restart_log = f.read()
    assert "torn tail" in restart_log, restart_log[-5000:]
    _check_jobs(admin, org, ids)
    # Only the torn record is gone.
    assert admin.get(f"/organizations/{org}/groups/torn").status_code == 404
