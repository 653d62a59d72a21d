"""Node state end to end: abort on first contact, rehab, ack on a new identity, incarnations,
liveness, and what the server sends each node (server-protocol.md §3.2, §4, §10.2 "Node state").

Real sockets against the real server process. Messages from the server are read as raw frames
and checked here independently (header, HMAC with the node's session key, RFC 1123 timestamp,
per-node sequence).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import (
    Chef,
    Server,
    WireNode,
    connect_bounded,
    server_fixture,
    setup_org,
    wait_for,
)

ORG = "nsorg"
# A long heartbeat interval keeps nodes that the tests drive by hand alive for ~15 s.
SETTINGS = {"heartbeat_interval": 5000, "rehab_timer": 300}
HEADER_RE = re.compile(r"^Version:2\.0;SigningMethod:hmac_sha256;Signature:([A-Za-z0-9+/]{43}=)$")
RFC1123_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT$"
)


# Helpers -------------------------------------------------------------------------------------
def receive(node: WireNode, timeout: float = 5.0) -> dict[str, Any] | None:
    """The next server → node message, checked byte by byte; None if none came in time."""
    assert node.dealer is not None
    if not node.dealer.poll(int(timeout * 1000)):
        return None
    frames = node.dealer.recv_multipart()
    assert len(frames) == 2, frames
    header, body = frames
    m = HEADER_RE.match(header.decode("ascii"))
    assert m, header
    expected = base64.b64encode(hmac.new(node.session_key, body, hashlib.sha256).digest())
    assert m.group(1).encode() == expected, "not signed with this node's session key"
    pairs = json.loads(body, object_pairs_hook=list)
    assert [k for k, _ in pairs][:3] == ["sequence", "timestamp", "type"], pairs
    msg = dict(pairs)
    assert isinstance(msg["sequence"], int)
    assert RFC1123_RE.match(msg["timestamp"]), msg
    return msg


def receive_type(node: WireNode, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    msg = receive(node, timeout)
    assert msg is not None, f"no {kind} within {timeout} s"
    assert msg["type"] == kind, msg
    return msg


def drain(node: WireNode) -> list[dict[str, Any]]:
    out = []
    for _ in range(100):
        msg = receive(node, 0.05)
        if msg is None:
            break
        out.append(msg)
    return out


def state(admin: Chef, name: str) -> tuple[str, str]:
    r = admin.get(f"/organizations/{ORG}/pushy/node_states/{name}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["node_name"] == name
    return body["status"], body["availability"]


def listed(admin: Chef, name: str) -> str | None:
    """The node's availability in the node_states list, or None if it is not listed."""
    r = admin.get(f"/organizations/{ORG}/pushy/node_states")
    assert r.status_code == 200, r.text
    found = [item for item in r.json() if item["node_name"] == name]
    assert len(found) <= 1, found
    return found[0]["availability"] if found else None


# Fixtures ------------------------------------------------------------------------------------
ns_server = server_fixture("node-state", **SETTINGS)


@pytest.fixture(scope="module")
def admin(ns_server) -> Chef:
    admin, _ = setup_org(ns_server, ORG, ())
    return admin


@pytest.fixture
def node(ns_server, admin, zctx) -> Iterator[WireNode]:
    """A fresh node (its own client) connected over CURVE, not yet known to the node table."""
    name = f"ns-{uuid.uuid4().hex[:10]}"
    r = admin.post(f"/organizations/{ORG}/clients", {"name": name, "create_key": True})
    assert r.status_code == 201, r.text
    n = WireNode(ns_server, ORG, name, r.json()["chef_key"]["private_key"], ctx=zctx)
    connect_bounded(n)
    yield n
    n.close()
    admin.delete(f"/organizations/{ORG}/clients/{name}")


def join(node: WireNode) -> dict[str, Any]:
    """First heartbeat → abort (sequence 1) → aborted: the node is available."""
    node.send("heartbeat")
    abort = receive_type(node, "abort")
    assert abort["sequence"] == 1
    node.send("aborted", job_id=None)
    return abort


def wait_available(admin: Chef, node: WireNode) -> None:
    wait_for(
        lambda: state(admin, node.name) == ("online", "available"),
        what=f"{node.name} available\n{node.server.log()}",
    )


# Tests ---------------------------------------------------------------------------------------
def test_first_heartbeat_gets_abort_repeated_until_aborted(ns_server, admin, node):
    assert state(admin, node.name) == ("offline", "unavailable")
    assert listed(admin, node.name) is None
    node.send("heartbeat")
    first = receive_type(node, "abort", timeout=2)
    assert list(first) == ["sequence", "timestamp", "type"]
    assert first["sequence"] == 1
    # Still in rehab: unavailable in both the single endpoint and the list.
    assert state(admin, node.name) == ("online", "unavailable")
    assert listed(admin, node.name) == "unavailable"
    # rehab_timer is 300 ms: the abort comes again, and again, with the next sequence numbers.
    again = [receive_type(node, "abort", timeout=5) for _ in range(2)]
    assert [m["sequence"] for m in again] == [2, 3]
    assert all(list(m) == ["sequence", "timestamp", "type"] for m in again)

    node.send("aborted", job_id=None)
    wait_available(admin, node)
    assert listed(admin, node.name) == "available"
    late = drain(node)  # an abort may have crossed our aborted on the wire
    assert [m["sequence"] for m in late] == list(range(4, 4 + len(late)))
    assert receive(node, 1.0) is None, "abort re-sent after aborted"  # > 3 rehab periods


def test_rehab_is_unavailable_in_list_and_single_endpoint(ns_server, admin, node):
    """§10.1 #9 fix: a node that was idle and is back in rehab is unavailable in both views."""
    join(node)
    wait_available(admin, node)
    assert listed(admin, node.name) == "available"
    node.job_id = "0" * 32  # a job the server does not know
    node.send("heartbeat")
    abort = receive_type(node, "abort")
    assert abort["sequence"] == 2
    assert state(admin, node.name) == ("online", "unavailable")
    assert listed(admin, node.name) == "unavailable"
    node.job_id = None
    node.send("aborted", job_id=None)
    wait_available(admin, node)
    assert listed(admin, node.name) == "available"


def test_heartbeat_with_unknown_job_id_gets_abort(ns_server, admin, node):
    join(node)
    wait_available(admin, node)
    node.job_id, node.job_state = "a", "running"
    node.send("heartbeat")
    receive_type(node, "abort")


def test_aborted_with_unknown_job_id_gets_no_abort(ns_server, admin, node):
    join(node)
    wait_available(admin, node)
    node.send("aborted", job_id="a")
    assert receive(node, 1.0) is None
    assert state(admin, node.name) == ("online", "available")


def test_new_identity_same_incarnation_gets_ack(ns_server, admin, node):
    join(node)
    wait_available(admin, node)
    connect_bounded(node)  # a new DEALER: a new router identity, same client incarnation
    node.send("heartbeat")
    ack = receive_type(node, "ack")
    assert list(ack) == ["sequence", "timestamp", "type"]
    assert ack["sequence"] == 2  # the node's counter continues: same node, same FSM
    assert receive(node, 1.0) is None, "no abort: the node stays as it was"
    assert state(admin, node.name) == ("online", "available")
    assert listed(admin, node.name) == "available"


def test_new_incarnation_restarts_the_node(ns_server, admin, node):
    join(node)
    wait_available(admin, node)
    node.incarnation = str(uuid.uuid4())  # the client process restarted
    node.send("heartbeat")
    abort = receive_type(node, "abort")
    assert abort["sequence"] == 1, "a fresh node FSM starts its own counter"
    wait_for(
        lambda: f"node {ORG}/{node.name} is offline" in ns_server.log(),
        what="the old node FSM stopped",
    )
    assert state(admin, node.name) == ("online", "unavailable")
    node.send("aborted", job_id=None)
    wait_available(admin, node)


def test_new_incarnation_during_a_run_marks_the_node_crashed(ns_server, admin, node):
    join(node)
    wait_available(admin, node)
    r = admin.post(
        f"/organizations/{ORG}/pushy/jobs", {"command": "chef-client", "nodes": [node.name]}
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["uri"][-32:]
    commit = receive_type(node, "commit")
    assert commit["job_id"] == job_id
    node.job_id, node.job_state = job_id, "committed"
    node.send("ack_commit", job_id=job_id)
    receive_type(node, "run")
    node.job_state = "running"
    node.send("ack_run", job_id=job_id)
    wait_for(
        lambda: (
            admin.get(f"/organizations/{ORG}/pushy/jobs/{job_id}").json()["nodes"]
            == {"running": [node.name]}
        ),
        what="the node running",
    )
    node.incarnation = str(uuid.uuid4())
    node.job_id, node.job_state = None, "idle"
    node.send("heartbeat")
    job = wait_for(
        lambda: (
            (j := admin.get(f"/organizations/{ORG}/pushy/jobs/{job_id}").json())["status"]
            == "complete"
            and j
        ),
        what="the job complete",
    )
    assert job["nodes"] == {"crashed": [node.name]}


def test_server_messages_carry_a_per_node_sequence(ns_server, admin, node):
    """Every server → node message: the node's own counter from 1, +1 each, signed with its key."""
    seen = [join(node)]
    wait_available(admin, node)
    node.send("ack_commit", job_id=None)  # a message about no job: rehab
    seen.append(receive_type(node, "abort"))
    node.send("aborted", job_id=None)
    wait_available(admin, node)
    seen += drain(node)
    connect_bounded(node)
    node.send("heartbeat")
    seen.append(receive_type(node, "ack"))
    r = admin.post(
        f"/organizations/{ORG}/pushy/jobs", {"command": "chef-client", "nodes": [node.name]}
    )
    assert r.status_code == 201, r.text
    seen.append(receive_type(node, "commit"))
    node.send("nack_commit", job_id=seen[-1]["job_id"])
    assert [m["sequence"] for m in seen] == list(range(1, len(seen) + 1)), seen
    now = time.time()
    for m in seen:  # RFC 1123 dates of the server's clock (a sanity bound, not a timing test)
        t = calendar.timegm(time.strptime(m["timestamp"], "%a, %d %b %Y %H:%M:%S GMT"))
        assert abs(t - now) < 120, m


# Liveness: a server with a 100 ms heartbeat interval ------------------------------------------
def test_silent_node_goes_offline(tmp_path, zctx):
    with Server(tmp_path / "state", heartbeat_interval=100, rehab_timer=300) as srv:
        admin, keys = setup_org(srv, ORG, ("quiet",))
        n = connect_bounded(WireNode(srv, ORG, "quiet", keys["quiet"], ctx=zctx))
        assert srv.status()["node_fsm_count"] == 0
        join(n)
        for _ in range(5):  # beat at the configured rate for a while
            n.send("heartbeat")
            time.sleep(0.1)
        assert srv.status()["node_fsm_count"] == 1
        assert state(admin, "quiet") == ("online", "available")

        # Silence: the decayed rate falls below the threshold and the scanner stops the node.
        wait_for(lambda: srv.status()["node_fsm_count"] == 0, what=f"offline\n{srv.log()}")
        assert state(admin, "quiet") == ("offline", "unavailable")
        assert listed(admin, "quiet") is None
        assert "node nsorg/quiet is offline: missed heartbeats" in srv.log()

        # Back again: a fresh node FSM, so a fresh abort with sequence 1.
        drain(n)
        n.send("heartbeat")
        assert receive_type(n, "abort")["sequence"] == 1
        assert srv.status()["node_fsm_count"] == 1
