"""The kill campaign's CI slice, proofs that its checker catches violations, and regression
tests for what the campaign found (tests/campaigns/kill.py, docs/reliability.md).

Bugs found (one cause): job steps are applied before they are on disk (callers of
``Store.append`` do not wait), and the server showed that state at once.

1. GET /jobs, GET /jobs/ID and GET .../output: a client could read a job ``running`` (or a
   node's output) and a kill -9 a moment later took it back: after the restart the job was
   ``voting`` again, the output 404. Fix: those reads wait until the log is synced up to what
   they show (``Store.barrier``, appliance/server/store.py; ``Committer.failing`` lets reads
   skip the wait while the disk fails); the abort answer is rendered before its wait.
2. The SSE job and org feeds and the websocket stream sent job events before they were
   logged: after a kill -9 an id a reader had seen (``job-2``) named another event, or the
   event was gone. Fix: the feeds (pushy_routes.py) and the websocket sender (ws_routes.py)
   pass the same barrier before each send.

The ``test_..._survive(s)_kill_9`` tests reproduce them with a server whose fdatasync is
slowed down, so that a job step queues behind a batch being synced while the test reads it
(without the fixes the REST and job feed tests fail every time, the websocket one most
times).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
import trio
import zmq

from appliance.server.clock import Clock
from appliance.server.store import Store
from appliance.store.log import EventLog
from tests.campaigns.kill import (
    JobTold,
    Told,
    check_log_text,
    check_told,
    job_rank,
    observe_feed,
    observe_job,
    observe_output,
    read_feed,
    run_campaign,
)
from tests.e2e.helpers import (
    Feed,
    Fleet,
    commit_and_run,
    feed_path,
    get_job,
    jobs_path,
    post_job,
)
from tests.support import REPO, Chef, Server, setup_org, wait_for

SEED = 20260607

# ---------------------------------------------------------------------------------------------
# The CI slice


def test_kill_campaign_slice_has_no_violations(tmp_path):
    """A few kill -9s under the mixed workload: every invariant holds after each restart, every
    job finishes once the killing stops, and the fleet runs a new job on every node."""
    lines: list[str] = []
    summary = run_campaign(
        kills=4,
        seed=SEED,
        nodes=3,
        workdir=tmp_path,
        max_ops=6,
        segment_max_bytes=8192,  # a few snapshots, so some kills come after one
        progress=lines.append,
    )
    report = "\n".join(lines)
    assert summary.violations == [], report
    assert summary.kills == 4, report
    assert summary.jobs_created > 0 and summary.jobs_checked >= summary.jobs_created, report
    assert summary.identity_changes > 0 and summary.identity_checked > 0, report
    assert summary.snapshots > 0, report
    assert [line.split()[1] for line in lines if line.startswith("kill ")][1:] == [
        "1/4",
        "2/4",
        "3/4",
        "4/4",
    ], report


def test_kill_campaign_slice_with_edges_killed_has_no_violations(tmp_path):
    """kill -9 of edge processes mid-workload: no acknowledged job or output is lost, every job
    finishes, the server replaces each edge and the fleet runs a new job on every node."""
    lines: list[str] = []
    summary = run_campaign(
        kills=4,
        seed=SEED + 1,
        nodes=3,
        workdir=tmp_path,
        max_ops=6,
        edge_share=0.75,
        progress=lines.append,
    )
    report = "\n".join(lines)
    assert summary.violations == [], report
    assert summary.kills == 4 and summary.edge_kills >= 2, report
    assert summary.jobs_created > 0 and summary.jobs_checked >= summary.jobs_created, report


# ---------------------------------------------------------------------------------------------
# The checker catches what it must (so the campaign cannot pass silently)


def _told_job(job_id: str, **last: object) -> JobTold:
    readback = {
        "id": job_id,
        "command": "hello",
        "run_timeout": 10,
        "created_at": "Mon, 01 Jan 2026 00:00:00 GMT",
        "user": None,
        "dir": None,
        "env": None,
        "capture_output": True,
        "file": None,
    }
    job = JobTold(
        id=job_id,
        request={"command": "hello", "nodes": ["a", "b"], "capture_output": True},
        created={"id": job_id},
        readback=readback,
    )
    for key, value in last.items():
        setattr(job, key, value)
    return job


def _detail(job: JobTold, status: str, nodes: dict[str, list[str]], **changed: object) -> dict:
    fields = {k: v for k, v in job.readback.items() if v is not None}
    return {"nodes": nodes, **fields, "status": status, "updated_at": "x", **changed}


def test_observe_job_reports_a_status_going_back():
    job = _told_job("j1", status="running", nodes={"a": "running", "b": "ready"})
    violations = observe_job(job, _detail(job, "voting", {"ready": ["a"], "new": ["b"]}), "t")
    assert violations == [
        "t: job j1 status went back from running to voting",
        "t: job j1 node a went back from running to ready",
        "t: job j1 node b went back from ready to new",
    ]
    # reported once: the state now seen is the new reference
    assert observe_job(job, _detail(job, "voting", {"ready": ["a"], "new": ["b"]}), "t") == []


def test_observe_job_reports_a_finished_status_that_changes():
    job = _told_job("j2", status="complete", nodes={"a": "succeeded", "b": "failed"})
    got = observe_job(job, _detail(job, "crashed", {"succeeded": ["a"], "crashed": ["b"]}), "t")
    assert got == [
        "t: job j2 status went back from complete to crashed",
        "t: job j2 node b went back from failed to crashed",
    ]


def test_observe_job_accepts_progress_and_reports_changed_fields():
    job = _told_job("j3", status="voting", nodes={"a": "new", "b": "new"})
    forward = _detail(job, "complete", {"succeeded": ["a"], "unavailable": ["b"]})
    assert observe_job(job, forward, "t") == []
    assert (job.status, job.nodes) == ("complete", {"a": "succeeded", "b": "unavailable"})
    changed = _detail(job, "complete", {"succeeded": ["a"], "unavailable": ["c"]}, command="other")
    assert observe_job(job, changed, "t") == [
        "t: job j3 command is 'other', was 'hello'",
        "t: job j3 nodes are ['a', 'c'], were ['a', 'b']",
    ]


def test_observe_output_reports_lost_changed_and_wrong_outputs():
    job = _told_job("j4")
    assert observe_output(job, "a", "stdout", 200, b"hello\n", "t") == []
    assert observe_output(job, "a", "stdout", 200, b"hello\n", "t") == []
    assert observe_output(job, "a", "stdout", 404, b"", "t") == [
        "t: job j4 a stdout was readable, now 404"
    ]
    assert observe_output(job, "a", "stdout", 200, b"hellO\n", "t") == [
        "t: job j4 a stdout is b'hellO\\n', was b'hello\\n'"
    ]
    assert observe_output(job, "b", "stderr", 200, b"junk", "t") == [
        "t: job j4 b stderr is b'junk', expected ''"
    ]


def test_observe_feed_reports_changed_and_lost_events():
    job = _told_job("j5")
    start = ("start", "job-1", {"timestamp": "t1"})
    vote = ("quorum_vote", "job-2", {"timestamp": "t2", "node": "a", "status": "success"})
    assert observe_feed(job, [start, vote], "t") == []
    other = ("rehab", "job-2", {"timestamp": "t3", "node": "a"})
    assert observe_feed(job, [start, other], "t") == [
        "t: job j5 event job-2 is ('rehab', {'timestamp': 't3', 'node': 'a'}), was "
        "('quorum_vote', {'timestamp': 't2', 'node': 'a', 'status': 'success'})"
    ]
    assert observe_feed(job, [start], "t") == [
        "t: job j5 event job-2 ('quorum_vote', {'timestamp': 't2', 'node': 'a', 'status': "
        "'success'}) is gone"
    ]
    assert observe_feed(job, [start, None], "t") == []  # a read cut short proves nothing


def test_log_check_flags_corruption_recovery_and_tracebacks():
    text = (
        "INFO appliance.store.log: event log: opened at seq 9\n"
        "INFO event log: cut a torn tail of 12 bytes\n"
        "ERROR event log: file x offset 3: record checksum mismatch; recovering to the last\n"
        "Traceback (most recent call last):\n"
    )
    assert check_log_text(text, "k") == [
        "k: server log: ERROR event log: file x offset 3: record checksum mismatch; recovering"
        " to the last",
        "k: server log: Traceback (most recent call last):",
    ]


def test_checker_reports_fabricated_told_records_against_a_live_server(tmp_path):
    """Told records the server never acknowledged: a job that does not exist, a finished job
    told in another final status, an output never stored, identities that are not as told."""
    with Server(tmp_path / "state", voting_timeout=1) as server:
        admin, _ = setup_org(server, "chk", ("n1",))
        real = post_job(admin, "chk", ["ghost"], "hello")
        wait_for(lambda: job_rank(get_job(admin, "chk", real)["status"]) == 3)
        detail = get_job(admin, "chk", real, "?include_file=true")
        told = Told(org="chk")
        missing = "0" * 32
        told.jobs[missing] = _told_job(missing)
        fake = _told_job(real, status="complete", outputs={("ghost", "stdout"): b"hello\n"})
        fake.request = {"command": "hello", "nodes": ["ghost"]}
        fake.readback = {k: detail.get(k) for k in fake.readback}
        told.jobs[real] = fake
        told.identity["client:n1"] = ("absent", "/organizations/chk/clients/n1")
        told.identity["client:nobody"] = ("equal", "/organizations/chk/clients/nobody", {})
        told.identity["member:x"] = ("member", "/organizations/chk/users", "x")
        told.identity["group:g"] = ("present", "/organizations/chk/groups/g")
        violations, counts = check_told(admin, told, "fab")
    assert counts.jobs == 1 and counts.identity == 4
    text = "\n".join(violations)
    assert f"fab: job {missing} got a 201 but GET answers 404" in text
    assert f"fab: job {real} status went back from complete to {detail['status']}" in text
    assert f"fab: job {real} ghost stdout was readable, now 404" in text
    assert "client:n1: deleted, but GET /organizations/chk/clients/n1 is 200" in text
    assert "client:nobody: GET /organizations/chk/clients/nobody is 404" in text
    assert "member:x: x is not in GET /organizations/chk/users" in text
    assert "group:g: acknowledged, but GET /organizations/chk/groups/g is 404" in text
    assert len(violations) == 7, text


# ---------------------------------------------------------------------------------------------
# Regression: what a client read over REST survives a kill -9 (Store.barrier)

SLOW_SYNC = """\
import os
import time

_fdatasync = os.fdatasync


def _slow_fdatasync(fd):
    time.sleep(float(os.environ.get("PUSHY_TEST_SLOW_SYNC", "0")))
    _fdatasync(fd)


os.fdatasync = _slow_fdatasync
"""
PORT_KEYS = ("api_port", "command_port", "server_heartbeat_port")


@pytest.fixture
def slow_server(tmp_path):
    """A server whose every fdatasync takes 0.4 s more (a sitecustomize on its PYTHONPATH):
    records appended meanwhile wait in memory, as on a busy disk."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_SYNC)
    path = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])
    server = Server(
        tmp_path / "state",
        env={"PYTHONPATH": path, "PUSHY_TEST_SLOW_SYNC": "0.4"},
        voting_timeout=60,
        wait_complete_time=1,
        heartbeat_interval=1000,  # a node heartbeats only between two (slow) REST reads
    )
    with server:
        yield server


class DurableWrites(threading.Thread):
    """Keeps the committer busy: one durable write (a new group) after another."""

    def __init__(self, server: Server, org: str) -> None:
        super().__init__(daemon=True)
        self.admin = _superuser(server)
        self.org = org
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        for i in range(1000):  # bounded; stopped long before
            if self.stop.is_set():
                return
            try:
                r = self.admin.post(f"/organizations/{self.org}/groups", {"groupname": f"b{i}"})
            except httpx.TransportError:
                return
            self.written += r.status_code == 201


def _superuser(server: Server) -> Chef:
    return Chef(server.url, "pivotal", server.pivotal_key.read_bytes())


def _kill_and_restart(server: Server) -> None:
    ports = {k: server.ports[k] for k in PORT_KEYS}
    server.kill()
    server.settings.update(ports)
    server.start()
    assert {k: server.ports[k] for k in PORT_KEYS} == ports


@pytest.fixture
def zfleet(slow_server):
    ctx = zmq.Context()
    fleet = Fleet(slow_server, ctx)
    yield fleet
    fleet.close()
    ctx.destroy(linger=0)


def _busy(server: Server, org: str, nodes) -> DurableWrites:
    writes = DurableWrites(server, org)
    writes.start()
    wait_for(lambda: writes.written >= 1, 20, nodes, what="durable writes going")
    return writes


def test_a_job_state_read_over_rest_survives_kill_9(slow_server, zfleet):
    """Seen ``running`` over REST, then kill -9: after the restart the job is not ``voting``
    again (it was, before GET waited for the log)."""
    org, admin, (n1,) = zfleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "hello")
    assert n1.expect("commit", seconds=10)["job_id"] == job_id
    writes = _busy(slow_server, org, (n1,))
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)  # the quorum step queues behind a slow sync
    seen = wait_for(
        lambda: get_job(admin, org, job_id)["status"] == "running",
        20,
        (n1,),
        what=f"running {get_job(admin, org, job_id)}",
    )
    assert seen
    _kill_and_restart(slow_server)
    writes.stop.set()
    writes.join(30)
    admin = _superuser(slow_server)
    job = get_job(admin, org, job_id)
    assert job_rank(job["status"]) >= job_rank("running"), (job, slow_server.log())
    assert "new" not in job["nodes"], job


def test_an_output_read_over_rest_survives_kill_9(slow_server, zfleet):
    """An output read over REST, then kill -9: still there after the restart, identical."""
    org, admin, (n1,) = zfleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "hello", capture_output=True)
    commit_and_run(n1, job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, 20, (n1,))
    writes = _busy(slow_server, org, (n1,))
    n1.send("succeeded", job_id=job_id, stdout="kept output\n", stderr="")
    n1.idle()
    path = f"{jobs_path(org, job_id)}/output/n1/stdout"
    octets = {"Accept": "application/octet-stream"}
    wait_for(lambda: admin.get(path, headers=octets).status_code == 200, 20, (n1,))
    _kill_and_restart(slow_server)
    writes.stop.set()
    writes.join(30)
    admin = _superuser(slow_server)
    r = admin.get(path, headers=octets)
    assert (r.status_code, r.content) == (200, b"kept output\n"), slow_server.log()


def test_job_feed_events_seen_survive_kill_9(slow_server, zfleet):
    """SSE events a client saw on a job feed, then kill -9: the restarted feed replays the same
    events under the same ids (they went out before the log had them, so ids were reused for
    other events after the restart)."""
    org, admin, (n1,) = zfleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "hello")
    assert n1.expect("commit", seconds=10)["job_id"] == job_id
    feed = Feed(slow_server, feed_path(org, job_id), seconds=60).begin()
    writes = _busy(slow_server, org, (n1,))
    n1.working(job_id, "committed")
    n1.send("ack_commit", job_id=job_id)
    wait_for(lambda: len(feed.events) >= 3, 20, (n1,), what="quorum events on the feed")
    seen = feed.events
    _kill_and_restart(slow_server)
    writes.stop.set()
    writes.join(30)
    feed.join(30)
    admin = _superuser(slow_server)
    told = JobTold(
        id=job_id, request={"command": "hello", "nodes": ["n1"]}, created={}, readback={}
    )
    after = read_feed(admin, org, job_id, seconds=0.5)
    assert after is not None and observe_feed(told, seen, "before") == []
    assert observe_feed(told, after, "after") == [], (seen, after)


def test_websocket_job_events_seen_survive_kill_9(slow_server, zfleet, tmp_path):
    """The same for the websocket stream (``pushy watch -F json``): a job event it delivered
    is in the job's history after a kill -9, under the same id."""
    org, admin, (n1,) = zfleet.setup("n1")
    job_id = post_job(admin, org, ["n1"], "hello")
    assert n1.expect("commit", seconds=10)["job_id"] == job_id
    command = [
        *("python", "-m", "appliance", "watch", "-F", "json", "-u", "pivotal"),
        *("--server-url", f"{slow_server.url}/organizations/{org}"),
        *("-k", str(slow_server.pivotal_key)),
    ]
    out = tmp_path / "watch.out"
    with open(out, "wb") as sink:
        watch = subprocess.Popen(
            [sys.executable, *command[1:]], stdout=sink, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:

        def job_events() -> list[dict]:
            lines = out.read_text(errors="replace").splitlines()
            messages = [json.loads(line) for line in lines if line.startswith("{")]
            return [m for m in messages if m.get("type") == "job_event" and m["job"] == job_id]

        wait_for(lambda: out.read_text().startswith("{"), 30, (n1,), what="watch connected")
        writes = _busy(slow_server, org, (n1,))
        n1.working(job_id, "committed")
        n1.send("ack_commit", job_id=job_id)
        wait_for(lambda: any(m["event"] == "quorum_succeeded" for m in job_events()), 20, (n1,))
        seen = [(m["event"], m["id"], m["data"]) for m in job_events()]
        _kill_and_restart(slow_server)
    finally:
        watch.kill()
        watch.wait(10)
    writes.stop.set()
    writes.join(30)
    told = JobTold(
        id=job_id, request={"command": "hello", "nodes": ["n1"]}, created={}, readback={}
    )
    observe_feed(told, seen, "websocket")
    after = read_feed(_superuser(slow_server), org, job_id, seconds=0.5)
    assert after is not None
    assert observe_feed(told, after, "after") == [], (seen, after)


# ---------------------------------------------------------------------------------------------
# Store.barrier itself (in process: the seam of the event log)


async def test_barrier_waits_for_the_sync_but_not_for_a_failing_disk(tmp_path):
    """A read waits until what it shows is synced; while the disk fails (ENOSPC), reads are
    answered at once instead of hanging on the committer's retries."""
    gate = threading.Event()
    full = threading.Event()

    def fdatasync(fd: int) -> None:
        gate.wait(20)
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fdatasync(fd)

    store = Store(tmp_path, segment_max_bytes=1 << 20, retention_days=0)
    store.log = EventLog(tmp_path, segment_max_bytes=1 << 20, fdatasync=fdatasync)
    store.load()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, Clock())
        read = trio.Event()

        async def reader() -> None:
            await store.barrier()
            read.set()

        store.append({"type": "node_down", "org": "o", "node": "n"})
        nursery.start_soon(reader)
        await trio.sleep(0.3)
        assert not read.is_set()  # the record is not on disk yet: the read waits
        gate.set()
        with trio.fail_after(10):
            await read.wait()
        assert store.committer.synced_seq == store.committer.last_seq

        full.set()
        store.append({"type": "node_down", "org": "o", "node": "n"})
        with trio.fail_after(10):
            while not store.committer.failing:
                await trio.sleep(0.01)
        with trio.fail_after(1):  # failing: no wait at all (READ_SYNC_WAIT_SECONDS is 5)
            await store.barrier()
        full.clear()
        with trio.fail_after(10):  # the retry goes through once the disk has room again
            while store.committer.failing or store.committer.synced_seq < store.committer.last_seq:
                await trio.sleep(0.01)
        store.close()
