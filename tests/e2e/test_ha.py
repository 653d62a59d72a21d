"""High availability on PostgreSQL (issue 16), end to end: a real PostgreSQL, two `pushy
server`s on 127.0.0.2 / 127.0.0.3 sharing it, a real HAProxy in front of their API ports, and
real `pushy client` processes that know only HAProxy's address.

- the roles: the active answers 200 ``"role": "active"``, the standby 503 ``standby`` on
  ``/_status`` and 503 with a JSON error elsewhere, and binds no ZeroMQ port;
- a kill -9 of the active mid-job: the standby takes over within ``lease_timeout`` + 5 s, the
  job finishes there with its output, the nodes come back through HAProxy, the killed server
  returns as a standby;
- fencing: the active paused (SIGSTOP) past its lease while the standby takes over and writes;
  resumed, it writes nothing more and turns standby;
- PostgreSQL restarted under a running job: reads go on, writes answer 503 meanwhile, nothing
  is lost and the job ends;
- a standby started empty catches up with a long log.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx
import jsonschema_rs
import orjson
import psycopg
import pytest

from appliance.bench.haproxy import HaProxy
from appliance.bench.replay import ORG, _node_name, build_state
from appliance.core import records
from appliance.store.migrate import migrate_file_to_postgresql
from appliance.store.pglog import PgLog
from tests.campaigns.hakill import Front, run_campaign
from tests.hacluster import Forwarder, HaServer, HaSet
from tests.support import Chef, ClientFleet, wait_for

LEASE = 3.0  # seconds: the tests' lease_timeout (the default is 10)
WHITELIST = '{"hello"=>"echo hello", "slow"=>"sleep 4; echo slow done", "nap"=>"sleep 1"}'


@pytest.fixture
def ha(cluster, tmp_path):
    rig = HaSet(tmp_path / "ha", cluster=cluster, lease_timeout=LEASE)
    try:
        yield rig.start()
    finally:
        rig.close()


@pytest.fixture
def fleet_of(ha, tmp_path):
    """``fleet_of(*names)``: real clients of org ``haorg`` that reach the service through
    HAProxy, available; killed at the test's end."""
    made: list[ClientFleet] = []

    def make(*names: str) -> ClientFleet:
        fleet = ClientFleet(
            Front(ha.proxy.url, ha.servers[0].pivotal_key), "haorg", tmp_path / "clients"
        )  # type: ignore[arg-type]
        made.append(fleet)
        for name in names:
            fleet.add(name, whitelist=WHITELIST)
        fleet.wait_available(*names, seconds=60)
        return fleet

    yield make
    for fleet in made:
        fleet.close()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets matched in /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def followed(server: HaServer) -> int | None:
    """How far a standby has read the log (None while it does not answer)."""
    try:
        return httpx.get(f"{server.url}/pushy/_status", timeout=2).json().get("seq")
    except (httpx.HTTPError, ValueError):
        return None


def log_rows(url: str) -> list[tuple[int, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT seq, epoch FROM pushy_log ORDER BY seq").fetchall()


def test_the_active_serves_and_the_standby_answers_503_without_zeromq(ha):
    active, standby = ha.servers
    r = httpx.get(f"{active.url}/pushy/_status")
    assert r.status_code == 200 and r.json()["role"] == "active"
    r = httpx.get(f"{standby.url}/pushy/_status")
    assert r.status_code == 503
    body = r.json()
    assert body["role"] == "standby" and body["status"] == "standby"
    assert (
        body["incarnation_id"] == httpx.get(f"{active.url}/pushy/_status").json()["incarnation_id"]
    )
    assert body["active"]  # who holds the lease
    document = httpx.get(f"{active.url}/pushy/openapi.json").json()
    schemas = document["components"]["schemas"]
    jsonschema_rs.validator_for(schemas["StandbyStatus"]).validate(body)
    r = httpx.get(f"{standby.url}/organizations/haorg/pushy/jobs")
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    assert "standby" in r.json()["error"][0]
    # the web dashboard too: only the active serves it (sessions live in its memory)
    assert httpx.get(f"{active.url}/").status_code == 200
    assert httpx.get(f"{standby.url}/").status_code == 503
    assert listening_ports(standby.proc.pid) == {standby.api_port}
    assert {active.ports["command_port"], active.ports["server_heartbeat_port"]} <= (
        listening_ports(active.proc.pid)
    )
    # through HAProxy, the active answers
    r = httpx.get(f"{ha.proxy.url}/pushy/_status")
    assert r.status_code == 200 and r.json()["role"] == "active"


def test_kill_9_of_the_active_mid_job_fails_over_and_the_job_finishes(ha, fleet_of):
    fleet = fleet_of("n1", "n2")
    old = ha.active()
    job_id = fleet.post("slow", ["n1", "n2"], capture_output=True)
    fleet.wait_nodes(job_id, {"running": ["n1", "n2"]}, seconds=30)
    old.proc.kill()
    killed = time.monotonic()
    old.proc.wait(10)
    new = ha.active(seconds=LEASE + 5 + 5)
    took = time.monotonic() - killed
    assert new is not old
    assert took < LEASE + 5, f"the standby took over after {took:.1f} s"
    ha.proxy.wait_backend()
    fleet.admin = Chef(ha.proxy.url, "pivotal", old.pivotal_key.read_bytes())
    job = fleet.wait_job(job_id, 60)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["n1", "n2"]}, job
    for node in ("n1", "n2"):
        r = fleet.output(job_id, node)
        assert r.status_code == 200 and r.text == "slow done\n", (r.status_code, r.text)
    fleet.wait_available("n1", "n2", seconds=60)
    again = fleet.run("hello", ["n1", "n2"], capture_output=True)
    assert again["nodes"] == {"succeeded": ["n1", "n2"]}, again
    old.start(role="standby")  # the killed server comes back as a standby
    assert new.role() == "active"


def test_an_active_paused_past_its_lease_never_writes_again(ha, fleet_of):
    fleet = fleet_of("n1")
    old, other = ha.servers
    assert old.role() == "active"
    old.pause()
    try:
        other.wait_role("active", LEASE + 10)
        epoch = max(e for _, e in log_rows(ha.url))
        fleet.admin = Chef(ha.proxy.url, "pivotal", old.pivotal_key.read_bytes())
        ha.proxy.wait_backend()
        fleet.wait_available("n1", seconds=60)
        job = fleet.run("hello", ["n1"], capture_output=True)
        assert job["nodes"] == {"succeeded": ["n1"]}, job
    finally:
        old.resume()
    old.wait_role("standby", 30)
    ha.proxy.wait_backend()  # HAProxy's checks see it go standby (fall 2 × 500 ms)
    rows = log_rows(ha.url)
    seqs = [s for s, _ in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap in the log"
    # after the first record of the new epoch, no record of an older one
    first_new = next(i for i, (_, e) in enumerate(rows) if e == epoch)
    assert all(e >= epoch for _, e in rows[first_new:]), rows[first_new:]
    assert "stepping down to standby" in old.log()
    job = fleet.run("hello", ["n1"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["n1"]}, job


def test_postgresql_restarting_under_a_running_job_loses_nothing(ha, fleet_of):
    fleet = fleet_of("n1", "n2")
    active = ha.active()
    admin = Chef(active.url, "pivotal", active.pivotal_key.read_bytes())
    job_id = fleet.post("slow", ["n1", "n2"], capture_output=True)
    fleet.wait_nodes(job_id, {"running": ["n1", "n2"]}, seconds=30)
    ha.cluster.stop("fast")
    try:
        r = admin.get(f"/organizations/haorg/pushy/jobs/{job_id}")
        assert r.status_code == 200, r.text  # reads go on from memory
        r = admin.post("/organizations/haorg/pushy/jobs", {"command": "hello", "nodes": ["n1"]})
        assert r.status_code == 503, r.text
    finally:
        ha.cluster.start()
    job = fleet.wait_job(job_id, 60)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["n1", "n2"]}, job
    assert ha.active() is active, "a short database restart made the active step down"
    for node in ("n1", "n2"):
        r = fleet.output(job_id, node)
        assert r.status_code == 200 and r.text == "slow done\n", (r.status_code, r.text)
    again = fleet.run("hello", ["n1", "n2"])
    assert again["nodes"] == {"succeeded": ["n1", "n2"]}, again
    # what the active had in memory is what a fresh read of the database gives
    standby = next(s for s in ha.servers if s is not active)
    wait_for(
        lambda: httpx.get(f"{standby.url}/pushy/_status").json()["seq"] == max(log_rows(ha.url))[0],
        20,
        what="the standby caught up",
    )


# the log's size: 25,000 jobs in scripts/test (a quarter of a million records, a short slice);
# PUSHY_HA_CATCH_UP_JOBS=100000 is the full run (about a million records) the docs quote
CATCH_UP_JOBS = int(os.environ.get("PUSHY_HA_CATCH_UP_JOBS", "25000"))


def test_a_standby_started_empty_catches_up_with_a_long_log(cluster, tmp_path):
    """A log of many finished jobs (CATCH_UP_JOBS, copied in with migrate-store) and an
    active that goes on writing: a server started empty replays it as a standby,
    follows what is written meanwhile, and once the lease is free serves every job."""
    built = build_state(tmp_path / "built", jobs=CATCH_UP_JOBS, fleet=50, nodes_per_job=3)
    url = cluster.createdb("catchup")
    copied = migrate_file_to_postgresql(tmp_path / "built", url)
    writer = PgLog(url, holder="the test, as the active")
    _, replay = writer.open()
    for _ in replay:
        pass
    assert writer.try_acquire() is not None
    server = HaServer(tmp_path / "standby" / "state", "127.0.0.2", url, lease_timeout=LEASE)
    server.state_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "built" / "pivotal.pem", server.pivotal_key)
    keep = threading.Event()

    def renew() -> None:
        while not keep.wait(LEASE / 4):
            writer.renew()

    try:
        renewer = threading.Thread(target=renew, daemon=True)
        renewer.start()
        try:
            server.start(role="standby")
            seq = lambda: httpx.get(f"{server.url}/pushy/_status").json()["seq"]  # noqa: E731
            wait_for(lambda: seq() == copied.last_seq, 120, what="the standby replayed the log")
            # the active writes on: the standby follows (node_up records of the built fleet)
            more = [
                (writer.last_seq + i, orjson.dumps(records.node_up(ORG, _node_name(i), f"inc-{i}")))
                for i in range(1, 51)
            ]
            writer.append(more)
            wait_for(lambda: seq() == writer.last_seq, 30, what="the standby followed the writes")
        finally:
            keep.set()
            renewer.join(10)
        writer.release()
        writer.close()
        server.wait_role("active", 60)
        admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        r = admin.get(f"/organizations/{ORG}/pushy/jobs")
        assert r.status_code == 200 and len(r.json()) == CATCH_UP_JOBS
        for job_id, status in list(built.samples.items())[:20]:
            r = admin.get(f"/organizations/{ORG}/pushy/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["status"] == status, (job_id, r.text[:200])
    finally:
        server.kill()


def test_failover_campaign_slice_has_no_violations(cluster, tmp_path):
    """The failover campaign's CI slice (tests/campaigns/hakill.py; 20 kills and more by
    hand): kill -9 of the active under the mixed workload, three times in a row."""
    lines: list[str] = []
    summary, failovers = run_campaign(
        kills=3,
        seed=20261206,
        nodes=3,
        workdir=tmp_path,
        max_ops=6,
        cluster=cluster,
        lease_timeout=LEASE,
        segment_max_bytes=16 * 1024,  # snapshots in the database, some kills after one
        progress=lines.append,
    )
    report = "\n".join(lines)
    assert summary.violations == [], report
    assert summary.kills == 3 and len(failovers) == 3, report
    assert all(took < LEASE + 5 for took in failovers), report
    assert summary.jobs_created > 0 and summary.jobs_checked >= summary.jobs_created, report


def test_an_active_cut_off_from_the_database_steps_down(cluster, tmp_path):
    """The active reaches PostgreSQL through a forwarder that is cut (a partition): the standby,
    which still reaches it, takes over once the lease expires; the cut-off server answers 503
    before then and never serves beside its successor; back on the network, it is a standby."""
    url = cluster.createdb("partition")
    forwarder = Forwarder((cluster.host, cluster.port)).start()
    via = url.replace(f":{cluster.port}/", f":{forwarder.port}/")
    cut_off = HaServer(tmp_path / "s0" / "state", "127.0.0.2", via, lease_timeout=LEASE)
    other = HaServer(tmp_path / "s1" / "state", "127.0.0.3", url, lease_timeout=LEASE)
    proxy = HaProxy(tmp_path / "haproxy", [(s.host, s.api_port) for s in (cut_off, other)])
    for server in (cut_off, other):
        server.state_dir.parent.mkdir(parents=True)
    try:
        cut_off.start(role="active")
        other.start(role="standby")
        proxy.start()
        proxy.wait_backend()
        front_admin = Chef(proxy.url, "pivotal", cut_off.pivotal_key.read_bytes())
        r = front_admin.post("/organizations", {"name": "cutorg", "full_name": "cutorg"})
        assert r.status_code == 201, r.text
        forwarder.cut()
        cut = time.monotonic()
        # within the lease it must stop answering as the active
        wait_for(lambda: cut_off.role() != "active", LEASE + 1, what="the cut-off server gave up")
        assert time.monotonic() - cut <= LEASE + 1
        other.wait_role("active", LEASE + 10)
        proxy.wait_backend()
        r = Chef(proxy.url, "pivotal", cut_off.pivotal_key.read_bytes()).get("/organizations")
        assert r.status_code == 200 and "cutorg" in r.json(), r.text
        assert "stepping down to standby" in cut_off.log()
        forwarder.start()  # the network is back
        cut_off.wait_role("standby", 60)
        assert other.role() == "active"
    finally:
        forwarder.cut()
        proxy.stop()
        for server in (cut_off, other):
            server.kill()


@pytest.fixture
def ha_small_segments(cluster, tmp_path):
    """The rig with a snapshot every 4 KiB of records (the smallest segment)."""
    rig = HaSet(tmp_path / "ha", cluster=cluster, lease_timeout=LEASE, log_segment_max_bytes=4096)
    try:
        yield rig.start()
    finally:
        rig.close()


def test_a_standby_left_behind_past_two_snapshots_reads_the_log_again(ha_small_segments):
    """A standby paused while the active writes enough for two snapshots (which delete the
    records the older one covers) finds a gap when it resumes: it reads the log again, from
    the newest snapshot, and follows on."""
    ha = ha_small_segments
    active, behind = ha.servers
    behind.pause()
    try:
        admin = Chef(active.url, "pivotal", active.pivotal_key.read_bytes())
        for i in range(40):  # an identity record each, a snapshot every 4 KiB of them
            r = admin.post("/organizations", {"name": f"gap{i}", "full_name": f"gap {i}"})
            assert r.status_code == 201, r.text

        def snapshots() -> int:
            with psycopg.connect(ha.url) as conn:
                return conn.execute("SELECT count(*) FROM pushy_snapshots").fetchone()[0]

        wait_for(lambda: snapshots() >= 2, 60, what="two snapshots")
        with psycopg.connect(ha.url) as conn:
            first = conn.execute("SELECT min(seq) FROM pushy_log").fetchone()[0]
        assert first > 1, "no record was deleted"
    finally:
        behind.resume()
    last = max(log_rows(ha.url))[0]
    wait_for(lambda: followed(behind) == last, 60, what="the standby caught up again")
    assert "reading the log again" in behind.log()
    assert behind.role() == "standby" and active.role() == "active"
