"""Node impersonation (issue 7, "Security"): nobody but a node gets its keys or speaks for it.

A node's identity on the command channel is two secrets: its HMAC session key (handed out only
in its config, encrypted to the requester's key) and the CURVE key it registered as ``ccpk`` in
an authenticated config fetch (the ZAP allow-list). These tests try to get or use either one
as somebody else: another node, users of every kind, refused or forged fetches, another node's
``ccpk``, a deleted client; and check that the superuser, who may read a node's config
(DESIGN.md), does not cut the node off by doing so.

The server runs with ``session_key_grace = 0``: had any fetch rotated a node's session key, the
node's next message (signed with the key it holds) would be dropped at once, so "the node still
works" really means "its key did not change".

Existing tests this extends rather than repeats: test_wire.py (a message claiming an *offline*
node; a CURVE key never sent; a newer fetch replacing the allowed key; a deleted client's key
refused at handshake), test_config_endpoint.py (who may fetch; rotation on the node's own fetch).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
import zmq
import zmq.utils.monitor

from appliance.core import wire
from appliance.core.keys import decrypt_session_key, generate_rsa, load_private_pem, private_pem
from tests.e2e.helpers import (
    Node,
    assert_runs_a_new_job,
    join_node,
    pause,
    post_job,
    wait_job,
)
from tests.support import (
    Chef,
    Server,
    new_user,
    server_fixture,
    set_group,
    setup_org,
    sign,
    wait_for,
)

ORG = "imp"
NAME_MATCH = {"error": ["Client and node name must match"]}
BAD_CCPK = {"error": ["Bad ccpk"]}

srv = server_fixture("impersonation", heartbeat_interval=200, session_key_grace=0)


def forbidden(user: str) -> dict:
    return {
        "error": [f"User or client '{user}' does not have access to that action on this server."]
    }


# --------------------------------------------------------------------------- helpers


def config_path(node: str, ccpk: bytes, org: str = ORG) -> str:
    return f"/organizations/{org}/pushy/config/{node}?ccpk={urllib.parse.quote_plus(ccpk.decode())}"


def handshake(srv: Server, server_curve: str, public: bytes, secret: bytes) -> str:
    """A fresh CURVE DEALER with this client keypair: "ok" or "denied" (ZAP) at handshake."""
    events = {
        zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok",
        zmq.EVENT_HANDSHAKE_FAILED_AUTH: "denied",
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
    }
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = server_curve.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    monitor = sock.get_monitor_socket(sum(events))
    try:
        sock.connect(f"tcp://127.0.0.1:{srv.ports['command_port']}")
        if not monitor.poll(5000):
            return "timeout"
        return events.get(zmq.utils.monitor.recv_monitor_message(monitor)["event"], "other")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def dropped(srv: Server, reason: str) -> int:
    r = httpx.get(f"{srv.url}/pushy/_status?counters=true", timeout=10)
    return r.json()["counters"]["dropped"].get(reason, 0)


def state_of(admin: Chef, name: str, org: str = ORG) -> dict:
    r = admin.get(f"/organizations/{org}/pushy/node_states/{name}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def world(srv):
    names = ("victim", "attacker", "n_cfg", "n_other", "n_super", "n_ccpk1", "n_ccpk2", "n_del")
    names += ("n_replay", "n_fresh")
    admin, keys = setup_org(srv, ORG, names)
    return {"admin": admin, "keys": keys}


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def joined(srv: Server, world: dict, name: str, ctx: zmq.Context) -> Node:
    node = Node(srv, ORG, name, world["keys"][name], ctx=ctx)
    node.connect()
    join_node(node)
    return node


# --------------------------------------------------------------------------- config and keys


def test_a_node_cannot_fetch_another_nodes_config_or_session_key(srv, world, zctx):
    """403 "Client and node name must match" on config and connect; the victim keeps its
    session key (grace 0) and its CURVE key, and the attacker's ccpk is not allowed."""
    victim = joined(srv, world, "n_cfg", zctx)
    server_curve = victim.config["curve_public_key"]
    other = Chef(srv.url, "n_other", world["keys"]["n_other"])
    try:
        for alias in ("config", "connect"):
            public, secret = zmq.curve_keypair()
            path = config_path("n_cfg", public).replace("/config/", f"/{alias}/")
            r = other.get(path)
            assert (r.status_code, r.json()) == (403, NAME_MATCH), (alias, r.text)
            assert "encoded_session_key" not in r.text
            assert handshake(srv, server_curve, public, secret) == "denied", alias
        assert handshake(srv, server_curve, victim.curve_public, victim.curve_secret) == "ok"
        assert_runs_a_new_job(world["admin"], ORG, victim)  # its session key did not change
    finally:
        victim.close()


def test_users_never_get_a_nodes_session_key(srv, zctx):
    """Admin, job writer, job reader and plain member: 403 with the exact body, no key, and
    the ccpk they sent is not allowed on the command channel."""
    org = "impusers"
    admin, keys = setup_org(srv, org, ("un1",))
    users = {role: new_user(admin, f"imp_{role}", org) for role in ("adm", "wri", "rea", "mem")}
    set_group(admin, org, "admins", users=["imp_adm"])
    set_group(admin, org, "pushy_job_writers", users=["imp_wri"])
    set_group(admin, org, "pushy_job_readers", users=["imp_rea"], clients=["un1"])
    node = Node(srv, org, "un1", keys["un1"], ctx=zctx)
    try:
        assert node.fetch_config().status_code == 200
        server_curve = node.config["curve_public_key"]
        for role, chef in users.items():
            public, secret = zmq.curve_keypair()
            r = chef.get(config_path("un1", public, org))
            assert (r.status_code, r.json()) == (403, forbidden(chef.user)), role
            assert handshake(srv, server_curve, public, secret) == "denied", role
        node.connect()
        join_node(node)  # its key and CURVE key still work (grace 0)
    finally:
        node.close()


def test_superuser_may_read_a_config_without_cutting_the_node_off(srv, world, zctx):
    """DESIGN: the superuser may fetch a node's config. It gets the node's current session key
    (encrypted to pivotal's key); its own ccpk is not registered; the node's CURVE key and
    session key stay as they were, so the node keeps working and can reconnect."""
    node = joined(srv, world, "n_super", zctx)
    admin = world["admin"]
    pivotal = load_private_pem(srv.pivotal_key.read_bytes())
    server_curve = node.config["curve_public_key"]
    try:
        for _ in range(2):
            public, secret = zmq.curve_keypair()
            r = admin.get(config_path("n_super", public))
            assert r.status_code == 200, r.text
            key = decrypt_session_key(pivotal, r.json()["encoded_session_key"]["key"])
            assert key == node.session_key
            assert handshake(srv, server_curve, public, secret) == "denied"
        assert handshake(srv, server_curve, node.curve_public, node.curve_secret) == "ok"
        assert_runs_a_new_job(admin, ORG, node)
        # a new connection with the node's own keys, no new fetch: known node, new identity
        node.connect()
        node.send("heartbeat")
        assert node.expect("ack", seconds=5)["type"] == "ack"
        assert state_of(admin, "n_super")["availability"] == "available"
    finally:
        node.close()


# --------------------------------------------------------------------------- the command channel


def test_messages_claiming_an_online_node_change_nothing(srv, world, zctx):
    """Extends test_wire's offline case: the attacker signs with its own session key but names
    the (online, available) victim. Every such message is dropped; the victim gets nothing,
    stays available, and runs its next job normally."""
    admin = world["admin"]
    victim = joined(srv, world, "victim", zctx)
    attacker = joined(srv, world, "attacker", zctx)
    try:
        before = dropped(srv, "bad_signature")
        job_id = post_job(admin, ORG, ["victim"])
        commit = victim.expect("commit", others=(attacker,))
        assert commit["job_id"] == job_id
        forged = [
            {"type": "heartbeat", "incarnation_id": "restarted-elsewhere", "job_state": "idle"},
            {"type": "nack_commit", "job_id": job_id},
            {"type": "ack_commit", "job_id": job_id},
            {"type": "aborted", "job_id": None},
            {"type": "failed", "job_id": job_id},
        ]
        for fields in forged:
            body = attacker.body(fields["type"], node="victim")
            body.update(fields)
            attacker.send_frames(wire.hmac_frames(attacker.session_key, body))
            pause(0.2, (victim, attacker))  # the DEALER's SNDHWM is 3: no burst
        wait_for(
            lambda: dropped(srv, "bad_signature") >= before + len(forged),
            nodes=(victim, attacker),
            what="every forged message dropped as a bad signature",
        )
        pause(0.5, (victim, attacker))
        assert victim.take("abort", "ack", "run", "commit") == []
        job = admin.get(f"/organizations/{ORG}/pushy/jobs/{job_id}").json()
        assert job["status"] == "voting" and job["nodes"] == {"new": ["victim"]}, job
        # the real victim goes on with the job as if nothing happened
        victim.working(job_id, "committed")
        victim.send("ack_commit", job_id=job_id)
        victim.expect("run", others=(attacker,))
        victim.working(job_id, "running")
        victim.send("ack_run", job_id=job_id)
        victim.send("succeeded", job_id=job_id)
        victim.idle()
        done = wait_job(admin, ORG, job_id, "complete", (victim, attacker))
        assert done["nodes"] == {"succeeded": ["victim"]}
        assert state_of(admin, "victim")["availability"] == "available"
    finally:
        victim.close()
        attacker.close()


def test_a_node_cannot_answer_for_a_job_it_is_not_in(srv, world, zctx):
    """Signed as itself (valid), the attacker names the victim's job: ignored (§10.1 #8: the
    original crashed that job); the job's nodes and outcome are the victim's alone."""
    admin = world["admin"]
    victim = joined(srv, world, "victim", zctx)
    attacker = joined(srv, world, "attacker", zctx)
    try:
        job_id = post_job(admin, ORG, ["victim"])
        victim.expect("commit", others=(attacker,))
        for kind in ("ack_commit", "nack_commit", "ack_run", "succeeded", "failed"):
            attacker.send(kind, job_id=job_id)
            pause(0.2, (victim, attacker))  # the DEALER's SNDHWM is 3: no burst
        pause(0.5, (victim, attacker))
        job = admin.get(f"/organizations/{ORG}/pushy/jobs/{job_id}").json()
        assert job["status"] == "voting" and job["nodes"] == {"new": ["victim"]}, job
        victim.working(job_id, "committed")
        victim.send("ack_commit", job_id=job_id)
        victim.expect("run", others=(attacker,))
        victim.working(job_id, "running")
        victim.send("ack_run", job_id=job_id)
        victim.send("failed", job_id=job_id)
        victim.idle()
        done = wait_job(admin, ORG, job_id, "complete", (victim, attacker))
        assert done["nodes"] == {"failed": ["victim"]}
    finally:
        victim.close()
        attacker.close()


# --------------------------------------------------------------------------- the CURVE allow-list


def test_ccpk_of_a_refused_fetch_is_never_allowed(srv, world):
    """§10.1 #5: the original allows a ccpk before checking the signature; here a key from any
    refused fetch stays out of the allow-list, and does not displace the node's own key."""
    admin = world["admin"]
    keys = world["keys"]
    node = Chef(srv.url, "n_ccpk1", keys["n_ccpk1"])
    own_public, own_secret = zmq.curve_keypair()
    r = node.get(config_path("n_ccpk1", own_public))
    assert r.status_code == 200, r.text
    server_curve = r.json()["curve_public_key"]
    outsider = new_user(admin, "imp_outsider")
    member = new_user(admin, "imp_member", ORG)
    _, other_keys = setup_org(srv, "impother", ("n_ccpk1",))  # same name, another org
    stranger = private_pem(generate_rsa(2048))
    pivotal = srv.pivotal_key.read_bytes()

    def attempt(who: str, key: object, *, skew: float = 0, tamper: bool = False, signed=True):
        public, secret = zmq.curve_keypair()
        path = config_path("n_ccpk1", public)
        headers = {"Accept": "application/json"}
        body = b"{}" if tamper else b""
        if signed:
            headers.update(sign(key, who, "GET", path, b"", timestamp=time.time() + skew))
        r = httpx.request("GET", srv.url + path, headers=headers, content=body, timeout=10)
        return r, (public, secret)

    attempts = {
        "unsigned": attempt("n_ccpk1", None, signed=False),
        "wrong key": attempt("n_ccpk1", stranger),
        "timestamp beyond 900 s": attempt("n_ccpk1", keys["n_ccpk1"], skew=-1000),
        "tampered body": attempt("n_ccpk1", keys["n_ccpk1"], tamper=True),
        "another org's client of that name": attempt("n_ccpk1", other_keys["n_ccpk1"]),
        "unknown principal": attempt("nobody", stranger),
        "outsider": attempt("imp_outsider", outsider.key_pem),
        "member": attempt("imp_member", member.key_pem),
        "another node": attempt("n_ccpk2", keys["n_ccpk2"]),
    }
    expected = {
        "unsigned": 400,
        "wrong key": 401,
        "timestamp beyond 900 s": 401,
        "tampered body": 401,
        "another org's client of that name": 401,
        "unknown principal": 401,
        "outsider": 403,
        "member": 403,
        "another node": 403,
    }
    for name, (r, (public, secret)) in attempts.items():
        assert r.status_code == expected[name], (name, r.text)
        assert handshake(srv, server_curve, public, secret) == "denied", name
    # a key that was never sent at all, and the superuser's (it reads, it never registers)
    assert handshake(srv, server_curve, *zmq.curve_keypair()) == "denied"
    su_public, su_secret = zmq.curve_keypair()
    assert (
        Chef(srv.url, "pivotal", pivotal).get(config_path("n_ccpk1", su_public)).status_code == 200
    )
    assert handshake(srv, server_curve, su_public, su_secret) == "denied"
    # none of that displaced the node's own key
    assert handshake(srv, server_curve, own_public, own_secret) == "ok"


def test_another_nodes_ccpk_cannot_be_taken_over(srv, world):
    """Regression: a node could register another node's ccpk (seen in a URL or a proxy log) as
    its own; its next fetch then dropped that key from the allow-list, and the other node could
    no longer connect. Now such a fetch is refused: 401 "Bad ccpk"."""
    keys = world["keys"]
    victim = Chef(srv.url, "n_ccpk2", keys["n_ccpk2"])
    thief = Chef(srv.url, "n_other", keys["n_other"])
    v_public, v_secret = zmq.curve_keypair()
    r = victim.get(config_path("n_ccpk2", v_public))
    assert r.status_code == 200, r.text
    server_curve = r.json()["curve_public_key"]
    taken = thief.get(config_path("n_other", v_public))
    t_public, t_secret = zmq.curve_keypair()
    assert thief.get(config_path("n_other", t_public)).status_code == 200
    # the harm: the thief's next fetch used to drop the victim's key from the allow-list
    assert handshake(srv, server_curve, v_public, v_secret) == "ok"
    assert handshake(srv, server_curve, t_public, t_secret) == "ok"
    assert (taken.status_code, taken.json()) == (401, BAD_CCPK), taken.text
    # the victim may present its own current key again (a re-fetch), that is not a takeover
    assert victim.get(config_path("n_ccpk2", v_public)).status_code == 200
    assert handshake(srv, server_curve, v_public, v_secret) == "ok"


def test_a_deleted_client_is_cut_off_and_a_new_one_of_that_name_starts_clean(srv, world, zctx):
    """Extends test_wire's handshake check: once the client is deleted its ccpk is refused for
    new connections, its config fetch is a 401, and messages on its open connection are dropped;
    a client re-created under the same name inherits neither the ccpk nor the session key."""
    admin = world["admin"]
    node = joined(srv, world, "n_del", zctx)
    server_curve = node.config["curve_public_key"]
    try:
        r = admin.delete(f"/organizations/{ORG}/clients/n_del")
        assert r.status_code == 200, r.text
        assert handshake(srv, server_curve, node.curve_public, node.curve_secret) == "denied"
        r = node.fetch_config()
        assert r.status_code == 401, r.text
        before = dropped(srv, "bad_signature")
        node.send("heartbeat")
        node.send("heartbeat")
        deadline = time.monotonic() + 5
        while dropped(srv, "bad_signature") < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dropped(srv, "bad_signature") >= before + 2
        assert node.recv(0.5) is None
        assert state_of(admin, "n_del")["status"] == "offline"

        r = admin.post(f"/organizations/{ORG}/clients", {"name": "n_del", "create_key": True})
        assert r.status_code == 201, r.text
        assert handshake(srv, server_curve, node.curve_public, node.curve_secret) == "denied"
        node.send("heartbeat")  # the old session key means nothing to the new client
        assert node.recv(0.5) is None
        assert state_of(admin, "n_del")["status"] == "offline"
    finally:
        node.close()


def own_fetch(srv: Server, node: Node, ccpk: bytes, *, timestamp: float | None = None):
    """The node's own signed fetch: (headers as sent, the reply, the session key it carries)."""
    path = config_path(node.name, ccpk)
    headers = {
        "Accept": "application/json",
        **node.chef.headers("GET", path, b"", timestamp=timestamp),
    }
    r = httpx.get(srv.url + path, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return headers, decrypt_session_key(node.private_key, r.json()["encoded_session_key"]["key"])


def test_a_replayed_own_config_fetch_does_not_cut_the_node_off(srv, world, zctx):
    """Chef signing has no nonce and does not sign the query: the identical signed request,
    sent again within the signing window, is answered with the key the first answer gave (it
    was rotating the key and cutting the node off, grace 0); sent with another ccpk it is
    refused and registers nothing."""
    node = joined(srv, world, "n_replay", zctx)
    try:
        path = config_path("n_replay", node.curve_public)
        headers, node.session_key = own_fetch(srv, node, node.curve_public)  # the node's own
        for _ in range(2):  # an eavesdropper
            replayed = httpx.get(srv.url + path, headers=headers, timeout=10)
            assert replayed.status_code == 200, replayed.text  # accepted, as by the original
            key = replayed.json()["encoded_session_key"]["key"]
            assert decrypt_session_key(node.private_key, key) == node.session_key
        public, secret = zmq.curve_keypair()
        other = config_path("n_replay", public)
        r = httpx.get(srv.url + other, headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert r.json() == {"error": ["This signed request was already answered; sign a new one"]}
        assert handshake(srv, node.config["curve_public_key"], public, secret) == "denied"
        assert_runs_a_new_job(world["admin"], ORG, node)
    finally:
        node.close()


def test_a_freshly_signed_own_fetch_still_rotates_the_key(srv, world, zctx):
    node = joined(srv, world, "n_fresh", zctx)
    try:
        seen = [node.session_key]
        for ago in (30, 20):  # signed at other seconds than the join's fetch: new signatures
            _, node.session_key = own_fetch(
                srv, node, node.curve_public, timestamp=time.time() - ago
            )
            seen.append(node.session_key)
        assert len(set(seen)) == 3
        assert_runs_a_new_job(world["admin"], ORG, node)
    finally:
        node.close()
