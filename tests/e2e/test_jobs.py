"""Jobs end to end (server-protocol.md §5, §6.4-6.6, §10.2 "Jobs"), with the abort endpoint.

WireNodes play the node client by hand, message by message. One server serves the module (it
runs under a non-UTC TZ, so the timestamps checked here must be true UTC); every test has its
own organization and node names.

The helpers (``Node``, ``Fleet``, the job helpers) are in tests/e2e/helpers.py, shared with
test_sse.py and test_restart.py.
"""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from tests.e2e.helpers import (
    SUCCESS,
    Feed,
    Node,
    assert_runs_a_new_job,
    bare,
    commit_and_run,
    get_job,
    job_events,
    jobs_path,
    pause,
    post_job,
    run_to_success,
    shape,
    wait_available,
    wait_job,
)
from tests.support import Chef, server_fixture, wait_for

# The API must still say true UTC when the server runs under another TZ.
server = server_fixture(
    "jobs",
    env={"TZ": "America/New_York"},
    voting_timeout=1.5,
    wait_complete_time=3,
    keep_alive_time=1,
    heartbeat_interval=200,
)


# ---------------------------------------------------------------------------------------------
# The §10.2 job cases


def test_success_runs_the_six_event_sequence(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    commit = run_to_success(n1, job_id)
    assert {k: v for k, v in commit.items() if k not in ("sequence", "timestamp")} == {
        "type": "commit",
        "job_id": job_id,
        "server": "127.0.0.1",
        "command": "chef-client",
        "capture": False,
    }
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert bare(job) == {
        "nodes": {"succeeded": ["n1"]},
        "command": "chef-client",
        "status": "complete",
        "run_timeout": 3600,
    }
    assert list(job) == [
        "nodes",
        "id",
        "command",
        "status",
        "run_timeout",
        "created_at",
        "updated_at",
    ]
    events = job_events(admin, org, job_id)
    assert shape(events) == SUCCESS
    assert [e[1] for e in events] == [f"job-{i}" for i in range(1, 7)]
    state = admin.get(f"/organizations/{org}/pushy/node_states/n1").json()
    assert state == {"node_name": "n1", "status": "online", "availability": "available"}


def test_command_failure_is_a_failed_node_in_a_complete_job(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "false")
    commit_and_run(n1, job_id)
    n1.send("failed", job_id=job_id)
    n1.idle()
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert job["nodes"] == {"failed": ["n1"]}
    assert shape(job_events(admin, org, job_id))[-2:] == [
        ("run_complete", "n1", "failure"),
        ("job_complete", None, "complete"),
    ]


def test_nacked_commit_fails_the_quorum(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")
    n1.send("nack_commit", job_id=job_id)
    job = wait_job(admin, org, job_id, "quorum_failed", (n1,))
    assert bare(job) == {
        "nodes": {"nacked": ["n1"]},
        "command": "chef-client",
        "status": "quorum_failed",
        "run_timeout": 3600,
    }
    assert shape(job_events(admin, org, job_id)) == [
        ("start", None, None),
        ("quorum_vote", "n1", "failure"),
        ("job_complete", None, "quorum_failed"),
    ]


def test_offline_node_votes_down(fleet):
    org, admin, _keys = fleet.org(("ghost",))
    job_id = post_job(admin, org, ["ghost"], "sleep 1")
    job = get_job(admin, org, job_id)  # decided synchronously, before the 201
    assert bare(job) == {
        "nodes": {"unavailable": ["ghost"]},
        "command": "sleep 1",
        "status": "quorum_failed",
        "run_timeout": 3600,
    }
    assert shape(job_events(admin, org, job_id)) == [
        ("start", None, None),
        ("quorum_vote", "ghost", "down"),
        ("rehab", "ghost", None),
        ("job_complete", None, "quorum_failed"),
    ]


def test_ignored_commit_times_out_the_vote_and_the_node_stays_online(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")  # and never answered
    job = wait_job(admin, org, job_id, "quorum_failed", (n1,))
    assert job["nodes"] == {"unavailable": ["n1"]}
    assert shape(job_events(admin, org, job_id)) == [
        ("start", None, None),
        ("quorum_vote", "n1", "voting_timeout"),
        ("job_complete", None, "quorum_failed"),
    ]
    n1.answer_abort()  # the node is sent to rehab
    state = admin.get(f"/organizations/{org}/pushy/node_states/n1").json()
    assert state["status"] == "online"
    # ... and, once it answered, runs the next job.
    wait_available(admin, org, n1)
    second = post_job(admin, org, ["n1"])
    run_to_success(n1, second)
    wait_job(admin, org, second, "complete", (n1,))


def test_run_timeout_times_out_the_job_and_the_node(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "sleep 2", run_timeout=1)
    commit_and_run(n1, job_id)  # ... and never finishes
    job = wait_job(admin, org, job_id, "timed_out", (n1,))
    assert bare(job) == {
        "nodes": {"timed_out": ["n1"]},
        "command": "sleep 2",
        "status": "timed_out",
        "run_timeout": 1,
    }
    assert shape(job_events(admin, org, job_id)) == [
        *SUCCESS[:4],
        ("job_complete", None, "timed_out"),
    ]
    n1.answer_abort()


def _kill(node: Node, how: str) -> None:
    if how == "new_incarnation":
        node.restart_client()  # the next heartbeat carries a new incarnation
    else:
        node.beating = False  # the liveness scanner takes it down


@pytest.mark.parametrize("how", ["new_incarnation", "silence"])
@pytest.mark.parametrize("phase", ["after_ack_commit", "running"])
def test_node_killed_mid_job_crashes_in_a_complete_job(fleet, how, phase):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)
    n1.expect("run")
    if phase == "running":
        n1.working(job_id, "running")
        n1.send("ack_run", job_id=job_id)
        wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, nodes=(n1,))
    _kill(n1, how)
    job = wait_job(admin, org, job_id, "complete", (n1,), seconds=15)
    assert job["nodes"] == {"crashed": ["n1"]}
    assert shape(job_events(admin, org, job_id)) == [
        *SUCCESS[: 4 if phase == "running" else 3],
        ("rehab", "n1", None),
        ("run_complete", "n1", "crashed"),
        ("job_complete", None, "complete"),
    ]
    if how == "silence":
        state = admin.get(f"/organizations/{org}/pushy/node_states/n1").json()
        assert state == {"node_name": "n1", "status": "offline", "availability": "unavailable"}
        n1.beating = True
    n1.answer_abort()  # back (or new): the usual first-contact abort


def test_client_restarted_while_voting_votes_down(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")
    n1.restart_client()  # before answering the commit
    job = wait_job(admin, org, job_id, "quorum_failed", (n1,))
    assert job["nodes"] == {"unavailable": ["n1"]}
    assert shape(job_events(admin, org, job_id)) == [
        ("start", None, None),
        ("quorum_vote", "n1", "down"),
        ("rehab", "n1", None),
        ("job_complete", None, "quorum_failed"),
    ]
    n1.answer_abort()


def test_quorum_two_with_one_nack_fails_and_aborts_the_ready_node(fleet):
    org, admin, (a, b) = fleet.setup("a", "b")
    job_id = post_job(admin, org, ["a", "b"], quorum=2)
    a.expect("commit", others=(b,))
    b.expect("commit", others=(a,))
    a.send("nack_commit", job_id=job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"].get("nacked") == ["a"], nodes=(a, b))
    b.working(job_id, "committed")
    b.send("ack_commit", job_id=job_id)
    job = wait_job(admin, org, job_id, "quorum_failed", (a, b))
    assert job["nodes"] == {"nacked": ["a"], "was_ready": ["b"]}
    assert shape(job_events(admin, org, job_id)) == [
        ("start", None, None),
        ("quorum_vote", "a", "failure"),
        ("quorum_vote", "b", "success"),
        ("job_complete", None, "quorum_failed"),
    ]
    b.answer_abort(others=(a,))
    assert a.take("abort") == []  # the nacked node is not sent to rehab


def test_quorum_one_with_one_nack_runs_on_the_other(fleet):
    org, admin, (a, b) = fleet.setup("a", "b")
    job_id = post_job(admin, org, ["a", "b"], quorum=1)
    a.expect("commit", others=(b,))
    b.expect("commit", others=(a,))
    a.send("nack_commit", job_id=job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"].get("nacked") == ["a"], nodes=(a, b))
    b.working(job_id, "committed")
    b.send("ack_commit", job_id=job_id)
    b.expect("run", others=(a,))
    b.working(job_id, "running")
    b.send("ack_run", job_id=job_id)
    b.send("succeeded", job_id=job_id)
    b.idle()
    job = wait_job(admin, org, job_id, "complete", (a, b))
    assert job["nodes"] == {"nacked": ["a"], "succeeded": ["b"]}
    assert shape(job_events(admin, org, job_id)) == [
        ("start", None, None),
        ("quorum_vote", "a", "failure"),
        ("quorum_vote", "b", "success"),
        ("quorum_succeeded", None, None),
        ("run_start", "b", None),
        ("run_complete", "b", "success"),
        ("job_complete", None, "complete"),
    ]


def test_busy_node_nacks_a_second_job_and_finishes_the_first(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    first = post_job(admin, org, ["n1"], "sleep 5")
    commit_and_run(n1, first)
    second = post_job(admin, org, ["n1"], "chef-client")
    commit = n1.expect("commit")
    assert commit["job_id"] == second
    n1.send("nack_commit", job_id=second)  # the client is busy with the first job
    job2 = wait_job(admin, org, second, "quorum_failed", (n1,))
    assert job2["nodes"] == {"nacked": ["n1"]}
    assert get_job(admin, org, first)["nodes"] == {"running": ["n1"]}
    n1.send("succeeded", job_id=first)
    n1.idle()
    job1 = wait_job(admin, org, first, "complete", (n1,))
    assert job1["nodes"] == {"succeeded": ["n1"]}
    assert n1.take("abort") == []


def test_nack_commit_during_a_run_crashes_the_node_and_a_later_job_works(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    commit_and_run(n1, job_id)
    n1.send("nack_commit", job_id=job_id)
    job = wait_job(admin, org, job_id, "complete", (n1,))
    assert job["nodes"] == {"crashed": ["n1"]}
    assert shape(job_events(admin, org, job_id))[-3:] == [
        ("rehab", "n1", None),
        ("run_complete", "n1", "crashed"),
        ("job_complete", None, "complete"),
    ]
    n1.answer_abort()
    assert_runs_a_new_job(admin, org, n1)


def test_nack_commit_naming_no_job_sends_the_node_to_rehab(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    n1.send("nack_commit", job_id="a")
    n1.answer_abort()
    assert_runs_a_new_job(admin, org, n1)


def test_message_from_a_node_outside_the_job_is_ignored(fleet):
    """§10.1 #8: the original crashed the job; the port ignores the stray message."""
    org, admin, (n1, n2) = fleet.setup("n1", "n2")
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit", others=(n2,))
    n2.send("ack_commit", job_id=job_id)
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)
    n1.expect("run", others=(n2,))
    n1.working(job_id, "running")
    n1.send("ack_run", job_id=job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, nodes=(n1, n2))
    for kind in ("ack_run", "nack_run", "failed", "succeeded"):
        n2.send(kind, job_id=job_id)
    pause(0.5, (n1, n2))
    job = get_job(admin, org, job_id)
    assert (job["status"], job["nodes"]) == ("running", {"running": ["n1"]})
    n1.send("succeeded", job_id=job_id)
    n1.idle()
    job = wait_job(admin, org, job_id, "complete", (n1, n2))
    assert job["nodes"] == {"succeeded": ["n1"]}
    assert shape(job_events(admin, org, job_id)) == SUCCESS


def test_linger_window_ignores_late_messages_then_the_job_is_gone(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    commit_and_run(n1, job_id)
    n1.send("succeeded", job_id=job_id)  # still names the job in its heartbeats
    wait_job(admin, org, job_id, "complete", (n1,))
    assert job_id in server.status()["job_processes"]
    n1.send("failed", job_id=job_id)  # ignored while the job lingers
    pause(0.3, (n1,))
    assert n1.take("abort") == []  # heartbeats naming a lingering job are fine
    assert job_id in server.status()["job_processes"], "the linger window ended too early"
    assert get_job(admin, org, job_id)["nodes"] == {"succeeded": ["n1"]}
    assert len(job_events(admin, org, job_id)) == 6
    wait_for(lambda: job_id not in server.status()["job_processes"], 10, (n1,))
    n1.answer_abort()  # now a heartbeat naming the finished job is an abnormal state
    assert get_job(admin, org, job_id)["nodes"] == {"succeeded": ["n1"]}


# ---------------------------------------------------------------------------------------------
# Job JSON, options, listing, timestamps


def test_options_reach_the_commit_the_job_json_and_the_start_event(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    opts = {
        "user": "deploy",
        "dir": "/srv/app",
        "env": {"A": "1", "B": "two"},
        "file": "raw:hello file",
        "capture_output": True,
        "run_timeout": 30,
        "quorum": 1,
    }
    job_id = post_job(admin, org, ["n1"], "deploy.sh", **opts)
    commit = run_to_success(n1, job_id, stdout="", stderr="")
    assert {k: v for k, v in commit.items() if k not in ("sequence", "timestamp")} == {
        "type": "commit",
        "job_id": job_id,
        "server": "127.0.0.1",
        "command": "deploy.sh",
        "user": "deploy",
        "dir": "/srv/app",
        "env": {"A": "1", "B": "two"},
        "file": "raw:hello file",
        "capture": True,
    }
    job = wait_job(admin, org, job_id, "complete", (n1,))
    expected = {
        "nodes": {"succeeded": ["n1"]},
        "command": "deploy.sh",
        "status": "complete",
        "run_timeout": 30,
        "user": "deploy",
        "dir": "/srv/app",
        "env": {"A": "1", "B": "two"},
        "capture_output": True,
        "file_specified": True,
    }
    assert bare(job) == expected
    assert "quorum" not in job
    with_file = get_job(admin, org, job_id, "?include_file=true")
    assert "file_specified" not in with_file
    assert with_file["file"] == "raw:hello file"
    assert "file" not in get_job(admin, org, job_id, "?include_file=yes")
    listed = admin.get(jobs_path(org)).json()
    assert [bare(j) for j in listed] == [{k: v for k, v in expected.items() if k != "nodes"}]
    start = job_events(admin, org, job_id)[0]
    assert start[2] == {
        "timestamp": start[2]["timestamp"],
        "command": "deploy.sh",
        "run_timeout": 30,
        "quorum": 1,
        "node_count": 1,
        "user": "pivotal",
        "job_user": "deploy",
        "dir": "/srv/app",
        "env": {"A": "1", "B": "two"},
        "file_specified": True,
        "capture": True,
    }


def test_list_is_newest_first_and_timestamps_are_true_utc(fleet):
    org, admin, _keys = fleet.org(("x",))
    assert admin.get(jobs_path(org)).json() == []
    ids = [post_job(admin, org, ["x"], f"cmd {i}") for i in range(3)]
    listed = admin.get(jobs_path(org)).json()
    assert [j["id"] for j in listed] == ids[::-1]
    assert all("nodes" not in j and "quorum" not in j for j in listed)
    for job in [*listed, get_job(admin, org, ids[0])]:
        created = email.utils.parsedate_to_datetime(job["created_at"])
        updated = email.utils.parsedate_to_datetime(job["updated_at"])
        assert job["created_at"].endswith(" GMT") and job["updated_at"].endswith(" GMT")
        assert created <= updated
        # The server runs with TZ=America/New_York: a local-time rendering would be hours off.
        assert abs(created.timestamp() - time.time()) < 600, job["created_at"]


def test_another_orgs_job_is_not_found(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    other, _, _ = fleet.org(("n1",))
    job_id = post_job(admin, org, ["n1"], capture_output=True)
    run_to_success(n1, job_id, stdout="out", stderr="err")
    wait_job(admin, org, job_id, "complete", (n1,))
    for path in (
        jobs_path(other, job_id),
        f"{jobs_path(other, job_id)}/output/n1/stdout",
        f"/organizations/{other}/pushy/job_status_feed/{job_id}",
    ):
        accept = {"Accept": "*/*"}
        r = admin.get(path, headers=accept)
        assert r.status_code == 404, (path, r.status_code, r.text)
    assert admin.post(f"{jobs_path(other, job_id)}/abort").status_code == 404
    assert admin.get(jobs_path(org, job_id)).status_code == 200


# ---------------------------------------------------------------------------------------------
# Captured output


def _output(chef: Chef, path: str, accept: str | None) -> httpx.Response:
    """GET with exactly the given Accept header (None: no Accept header at all)."""
    request = chef.http.build_request("GET", path, headers=chef.headers("GET", path, b""))
    if accept is None:
        del request.headers["Accept"]
    else:
        request.headers["Accept"] = accept
    return chef.http.send(request)


def test_captured_output_is_served_as_octets(fleet):
    org, admin, (n1, n2) = fleet.setup("n1", "n2")
    job_id = post_job(admin, org, ["n1", "n2"], "report", capture_output=True)
    for node, other in ((n1, n2), (n2, n1)):
        node.expect("commit", others=(other,))
        node.working(job_id, "committed")
        node.send("ack_commit", job_id=job_id)
    for node, other in ((n1, n2), (n2, n1)):
        node.expect("run", others=(other,))
        node.working(job_id, "running")
        node.send("ack_run", job_id=job_id)
    feed = Feed(fleet.server, f"/organizations/{org}/pushy/job_status_feed/{job_id}")
    feed.start()
    assert feed.opened.wait(10)
    n1.send("succeeded", job_id=job_id, stdout="line 1\nline 2 \u00e9\n", stderr="warning\n")
    n2.send("failed", job_id=job_id, stdout="", stderr="")
    n1.idle()
    n2.idle()
    wait_job(admin, org, job_id, "complete", (n1, n2))
    base = f"{jobs_path(org, job_id)}/output"
    r = _output(admin, f"{base}/n1/stdout", "application/octet-stream")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/octet-stream")
    assert r.content == "line 1\nline 2 \u00e9\n".encode()
    r = _output(admin, f"{base}/n1/stderr", None)
    assert (r.status_code, r.content) == (200, b"warning\n")
    assert _output(admin, f"{base}/n1/stdout", "application/json").status_code == 406
    for stream in ("stdout", "stderr"):  # empty strings are stored too (from ``failed``)
        r = _output(admin, f"{base}/n2/{stream}", "application/octet-stream")
        assert (r.status_code, r.content) == (200, b"")
    for missing in ("n3/stdout", "n3/stderr"):
        assert _output(admin, f"{base}/{missing}", None).status_code == 404
    # the feed shows an original client's output once, at the end, as output events
    feed.join(20)
    outputs = [data for name, _, data in feed.events if name == "output"]
    assert [(d["node"], d["stream"], d["offset"], d["data"]) for d in outputs] == [
        ("n1", "stdout", 0, "line 1\nline 2 \u00e9\n"),
        ("n1", "stderr", 0, "warning\n"),
    ]


def test_no_output_without_a_stored_result(fleet):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])  # no capture, and the node sends none
    run_to_success(n1, job_id)
    wait_job(admin, org, job_id, "complete", (n1,))
    for stream in ("stdout", "stderr"):
        r = _output(admin, f"{jobs_path(org, job_id)}/output/n1/{stream}", None)
        assert r.status_code == 404, r.text


def test_output_is_stored_even_without_capture(fleet):
    """§6.6/§7.2: the original stores whatever succeeded/failed carries."""
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    run_to_success(n1, job_id, stdout="done", stderr="")
    wait_job(admin, org, job_id, "complete", (n1,))
    r = _output(admin, f"{jobs_path(org, job_id)}/output/n1/stdout", None)
    assert (r.status_code, r.content) == (200, b"done")


# ---------------------------------------------------------------------------------------------
# POST /jobs/ID/abort


def test_abort_a_running_job(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "sleep 600")
    commit_and_run(n1, job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, nodes=(n1,))
    r = admin.post(f"{jobs_path(org, job_id)}/abort")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body == get_job(admin, org, job_id)
    assert bare(body) == {
        "nodes": {"aborted": ["n1"]},
        "command": "sleep 600",
        "status": "aborted",
        "run_timeout": 3600,
    }
    n1.answer_abort()  # over ZeroMQ
    assert shape(job_events(admin, org, job_id)) == [
        *SUCCESS[:4],
        ("job_complete", None, "aborted"),
    ]
    again = admin.post(f"{jobs_path(org, job_id)}/abort")
    assert again.status_code == 409
    assert isinstance(again.json()["error"], str)
    # The node is usable again.
    assert_runs_a_new_job(admin, org, n1)


def test_abort_while_voting_aborts_new_and_ready_nodes(fleet):
    org, admin, (a, b) = fleet.setup("a", "b")
    job_id = post_job(admin, org, ["a", "b", "offline"], quorum=1)
    a.expect("commit", others=(b,))
    b.expect("commit", others=(a,))
    a.working(job_id, "committed")
    a.send("ack_commit", job_id=job_id)  # b says nothing: still "new"
    wait_for(lambda: get_job(admin, org, job_id)["nodes"].get("ready") == ["a"], nodes=(a, b))
    r = admin.post(f"{jobs_path(org, job_id)}/abort")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "aborted"
    assert r.json()["nodes"] == {"aborted": ["a", "b"], "unavailable": ["offline"]}
    a.answer_abort(others=(b,))
    b.answer_abort(others=(a,))
    assert shape(job_events(admin, org, job_id))[-1] == ("job_complete", None, "aborted")


def test_abort_refusals(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    r = admin.post("/users", {"username": f"reader-{org}", "create_key": True})
    assert r.status_code == 201, r.text
    reader = Chef(server.url, f"reader-{org}", r.json()["chef_key"]["private_key"])
    r = admin.post(f"/organizations/{org}/users", {"username": f"reader-{org}"})
    assert r.status_code == 201, r.text
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")
    assert reader.get(jobs_path(org, job_id)).status_code == 200  # a reader...
    r = reader.post(f"{jobs_path(org, job_id)}/abort")
    assert r.status_code == 403, r.text  # ... but not a writer
    assert n1.chef.post(f"{jobs_path(org, job_id)}/abort").status_code == 403
    assert get_job(admin, org, job_id)["status"] == "voting"
    assert admin.post(f"{jobs_path(org, '0' * 32)}/abort").status_code == 404
    assert admin.post(f"/organizations/{org}/pushy/jobs/{job_id}/abort").status_code == 200
