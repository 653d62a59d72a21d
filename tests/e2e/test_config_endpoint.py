"""GET /organizations/ORG/pushy/config/NODE (and its alias connect/NODE), over real HTTP.

Covers server-protocol.md §6.3 (checks, shape, constants), §10.2 "The config endpoint" and
DESIGN.md's fixes: only the node's own client or the superuser gets the session key (never
a user), a node's own fetch rotates its key, the previous key keeps working on the command
channel for ``session_key_grace`` seconds, and 40 characters of bad Z85 are a 401, not a 500.
"""

from __future__ import annotations

import os
import time
import urllib.parse

import httpx
import pytest
import zmq
import zmq.utils.z85

from appliance.core import wire
from appliance.core.keys import decrypt_session_key, load_private_pem, load_public_pem
from appliance.signedhttp import Presigner, SignedClient
from tests.support import Chef, Server, WireNode, error_of, new_user, server_fixture, setup_org

ORG = "cfgorg"
NODES = (
    "n_shape",
    "n_alias",
    "n_rotate",
    "n_super",
    "n_grace",
    "n_random",
    "n_checks",
    "n_presigned",
)
CONFIG_KEYS = [
    "type",
    "host",
    "push_jobs",
    "node",
    "organization",
    "public_key",
    "curve_public_key",
    "encoded_session_key",
    "lifetime",
    "max_message_skew",
    "max_body_size",
    "incarnation_id",
    "max_output_bytes",  # beyond the original, last: an original client reads none of it
]
FORBIDDEN = "does not have access to that action on this server."


def config_path(node: str, ccpk: str | None = None, *, org: str = ORG, alias: str = "config"):
    path = f"/organizations/{org}/pushy/{alias}/{node}"
    if ccpk is None:
        ccpk = zmq.curve_keypair()[0].decode()
    return f"{path}?ccpk={urllib.parse.quote_plus(ccpk)}&version=2.0" if ccpk else path


def heartbeat_until_abort(node: WireNode, session_key: bytes, tries: int = 6) -> dict | None:
    """Heartbeats HMAC-signed with ``session_key``; the server's first ``abort``, or None."""
    for _ in range(tries):  # bounded
        node.send_frames(wire.hmac_frames(session_key, node.body("heartbeat")))
        msg = node.recv(0.5, types=("abort",))
        if msg is not None:
            return msg
    return None


# 1000 ms makes ``interval`` a whole number, so the test can see that it is still a float
srv = server_fixture("config", heartbeat_interval=1000)


@pytest.fixture(scope="module")
def world(srv):
    admin, keys = setup_org(srv, ORG, NODES)
    nodes = {n: Chef(srv.url, n, keys[n], distinct_seconds=True) for n in NODES}
    return {"admin": admin, "keys": keys, **nodes}


# --------------------------------------------------------------------------- shape


def test_config_shape_and_constants(srv, world):
    ccpk = zmq.curve_keypair()[0].decode()
    r = world["n_shape"].get(config_path("n_shape", ccpk))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == CONFIG_KEYS
    assert body["type"] == "config"
    assert body["host"] == "127.0.0.1"
    hb = body["push_jobs"]["heartbeat"]
    assert list(body["push_jobs"]) == ["heartbeat"]
    assert list(hb) == [
        "out_addr",
        "command_addr",
        "interval",
        "offline_threshold",
        "online_threshold",
    ]
    assert hb["out_addr"] == f"tcp://127.0.0.1:{srv.ports['server_heartbeat_port']}"
    assert hb["command_addr"] == f"tcp://127.0.0.1:{srv.ports['command_port']}"
    assert hb["interval"] == 1.0 and isinstance(hb["interval"], float)
    assert '"interval":1.0' in r.text.replace(" ", "")  # a JSON float, as the original sends
    assert hb["offline_threshold"] == 3 and hb["online_threshold"] == 2
    assert body["node"] == "n_shape" and body["organization"] == ORG
    assert body["public_key"].startswith("-----BEGIN PUBLIC KEY-----\n")
    assert body["public_key"].endswith("-----END PUBLIC KEY-----\n\n")
    load_public_pem(body["public_key"])
    assert len(body["curve_public_key"]) == 40
    assert len(zmq.utils.z85.decode(body["curve_public_key"].encode())) == 32
    assert body["encoded_session_key"]["method"] == "hmac_sha256"
    assert list(body["encoded_session_key"]) == ["method", "key"]
    key = decrypt_session_key(
        load_private_pem(world["keys"]["n_shape"]), body["encoded_session_key"]["key"], length=None
    )
    assert len(key) == 32
    assert body["lifetime"] == 3600
    assert body["max_message_skew"] == 300
    assert body["max_body_size"] == 65536
    assert body["incarnation_id"] == srv.status()["incarnation_id"]


def test_config_public_key_verifies_the_server_heartbeat(srv, world, zctx):
    node = WireNode(srv, ORG, "n_shape", world["keys"]["n_shape"], ctx=zctx)
    assert node.fetch_config().status_code == 200
    node.connect()
    try:
        got = node.recv_heartbeat(10)  # verifies the RSA signature with the config's key
        assert got is not None, srv.log()
        assert got[1]["incarnation_id"] == node.config["incarnation_id"]
    finally:
        node.close()


def test_connect_alias_serves_the_same_config(srv, world):
    chef = world["n_alias"]
    a = chef.get(config_path("n_alias")).json()
    b = chef.get(config_path("n_alias", alias="connect"))
    assert b.status_code == 200, b.text
    b = b.json()
    assert list(b) == CONFIG_KEYS
    for k in ("host", "push_jobs", "node", "public_key", "curve_public_key", "incarnation_id"):
        assert a[k] == b[k], k
    # trailing slash tolerated
    assert chef.get(f"/organizations/{ORG}/pushy/config/n_alias/?ccpk=" + "x").status_code == 401


# --------------------------------------------------------------------------- ccpk


def test_ccpk_missing_is_400(srv, world):
    r = world["n_checks"].get(config_path("n_checks", ccpk=""))
    assert r.status_code == 400
    assert r.json() == {"error": ["Missing ccpk"]}


@pytest.mark.parametrize(
    "ccpk",
    [
        "a" * 39,
        "a" * 41,
        "x",
        "~" * 40,  # not in the Z85 alphabet
        "#" * 40,  # Z85 alphabet, but each 5-char group overflows 32 bits
        "é" * 40,  # not ASCII
        "0000000000000000000000000000000000000 \t\n",
    ],
)
def test_bad_ccpk_is_401_never_500(srv, world, ccpk):
    r = world["n_checks"].get(config_path("n_checks", ccpk=ccpk))
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.json() == {"error": ["Bad ccpk"]}


def test_authentication_and_authorization_precede_ccpk(srv, world):
    stranger = Chef(srv.url, "n_checks", world["keys"]["n_shape"])  # wrong key
    r = stranger.get(config_path("n_checks", ccpk=""))
    assert r.status_code == 401
    assert error_of(r) == ["Invalid signature for user or client 'n_checks'"]
    r = world["n_shape"].get(config_path("n_checks", ccpk="x"))
    assert r.status_code == 403
    r = httpx.get(srv.url + config_path("n_checks", ccpk=""), timeout=10)
    assert r.status_code == 400
    assert error_of(r)[0].startswith("missing required authentication header(s)")


# --------------------------------------------------------------------------- who may fetch


def test_client_name_must_match_node(srv, world):
    r = world["n_shape"].get(config_path("n_checks"))
    assert r.status_code == 403
    assert r.json() == {"error": ["Client and node name must match"]}


def test_users_never_get_a_session_key(srv, world):
    """Even an admin or a pushy_job_readers member: the key would let them impersonate the node."""
    admin = world["admin"]
    member = new_user(admin, "cfg_member", ORG)
    boss = new_user(admin, "cfg_admin", ORG)
    reader = new_user(admin, "cfg_reader", ORG)
    r = admin.put(f"/organizations/{ORG}/groups/admins", {"users": ["cfg_admin"]})
    assert r.status_code == 200
    for chef in (member, boss):
        r = chef.get(config_path("n_checks"))
        assert r.status_code == 403, (chef.user, r.text)
        assert r.json() == {"error": [f"User or client '{chef.user}' {FORBIDDEN}"]}
    r = admin.post(f"/organizations/{ORG}/groups", {"groupname": "pushy_job_readers"})
    assert r.status_code == 201
    group = f"/organizations/{ORG}/groups/pushy_job_readers"
    assert admin.put(group, {"users": ["cfg_reader"], "clients": ["n_checks"]}).status_code == 200
    try:
        r = reader.get(config_path("n_checks"))
        assert r.status_code == 403, r.text
        assert "encoded_session_key" not in r.text
        assert boss.get(config_path("n_checks")).status_code == 403
        # the node itself still gets its config
        assert world["n_checks"].get(config_path("n_checks")).status_code == 200
        # and a client outside the readers group still gets its own: groups are not consulted
        assert world["n_alias"].get(config_path("n_alias")).status_code == 200
    finally:
        assert admin.delete(group).status_code == 200


def test_outsiders_and_bad_credentials(srv, world):
    admin = world["admin"]
    outsider = new_user(admin, "cfg_outsider")
    r = outsider.get(config_path("n_checks"))
    assert r.status_code == 403
    assert r.json() == {"error": [f"'cfg_outsider' is not associated with organization '{ORG}'"]}
    invalid = Chef(srv.url, "invalid", world["keys"]["n_checks"])
    r = invalid.get(config_path("n_checks"))
    assert r.status_code == 401
    assert r.json() == {
        "error": [
            "Failed to authenticate as 'invalid'. "
            "Ensure that your node_name and client key are correct."
        ]
    }
    bad_key = Chef(srv.url, "n_checks", world["keys"]["n_alias"])
    r = bad_key.get(config_path("n_checks"))
    assert r.status_code == 401
    assert r.json() == {"error": ["Invalid signature for user or client 'n_checks'"]}


def test_routing_statuses(srv, world):
    admin = world["admin"]
    r = admin.get(config_path("n_checks", org="nosuchorg"))
    assert r.status_code == 404
    assert r.json() == {"error": ["organization 'nosuchorg' does not exist."]}
    r = admin.get(f"/organizations/{ORG}/pushy/config/")
    assert r.status_code == 404
    assert isinstance(error_of(r), str)
    for method in ("POST", "PUT", "DELETE"):
        r = admin.request(method, config_path("n_checks"), {})
        assert r.status_code == 405, method
    r = world["n_checks"].get(config_path("n_checks"), headers={"Accept": "text/html"})
    assert r.status_code == 406


# --------------------------------------------------------------------------- session keys


def test_own_fetch_rotates_the_session_key(srv, world):
    private = load_private_pem(world["keys"]["n_rotate"])
    seen = []
    for ago in range(3):  # each signed at another second: a new signature each
        r = world["n_rotate"].get(config_path("n_rotate"), timestamp=time.time() - 10 - ago)
        assert r.status_code == 200, r.text
        seen.append(decrypt_session_key(private, r.json()["encoded_session_key"]["key"]))
    assert all(len(k) == 32 for k in seen)
    assert len(set(seen)) == 3


def test_a_signed_request_sent_again_gets_the_same_key(srv, world):
    """What the benchmarks' fleet does (a signature is valid for the server's clock skew),
    and what a replay does: the same signed bytes fetch the config again, with the session key
    the first answer gave (core.servedfetches); a newly signed fetch rotates it."""
    private = load_private_pem(world["keys"]["n_presigned"])
    api = SignedClient(srv.url)
    presigned = Presigner(api)
    path = config_path("n_presigned")
    seen = []
    try:
        for _ in range(3):
            reply = presigned.send("GET", path, "n_presigned", private)
            assert reply.status == 200, reply.data
            seen.append(decrypt_session_key(private, reply.body()["encoded_session_key"]["key"]))
        r = world["n_presigned"].get(path, timestamp=time.time() - 30)
        assert r.status_code == 200, r.text
        fresh = decrypt_session_key(private, r.json()["encoded_session_key"]["key"])
    finally:
        api.close()
    assert presigned.signatures == 1
    assert len(set(seen)) == 1
    assert fresh != seen[0]


def test_superuser_fetch_reads_the_key_without_rotating_it(srv, world, zctx):
    node = WireNode(srv, ORG, "n_super", world["keys"]["n_super"], ctx=zctx)
    assert node.fetch_config().status_code == 200
    own = node.session_key
    pivotal = load_private_pem(srv.pivotal_key.read_bytes())
    for _ in range(2):
        r = world["admin"].get(config_path("n_super"))
        assert r.status_code == 200, r.text
        assert r.json()["node"] == "n_super"
        # encrypted to the superuser's key, and it is the node's current key
        assert decrypt_session_key(pivotal, r.json()["encoded_session_key"]["key"]) == own
    node.connect()
    try:
        assert heartbeat_until_abort(node, own) is not None, srv.log()
    finally:
        node.close()


def test_previous_key_is_accepted_within_the_grace(srv, world, zctx):
    node = WireNode(srv, ORG, "n_grace", world["keys"]["n_grace"], ctx=zctx)
    assert node.fetch_config().status_code == 200
    first = node.session_key
    assert node.fetch_config().status_code == 200  # same ccpk, a new key
    assert node.session_key != first
    node.connect()
    try:
        # signed with the previous key; the server answers with the current one (node.recv)
        msg = heartbeat_until_abort(node, first)
        assert msg is not None, srv.log()
        assert msg["type"] == "abort"
    finally:
        node.close()


def test_a_random_key_is_dropped(srv, world, zctx):
    node = WireNode(srv, ORG, "n_random", world["keys"]["n_random"], ctx=zctx)
    node.connect()
    try:
        assert heartbeat_until_abort(node, os.urandom(32), tries=3) is None
        # the channel itself works: the right key gets the opening abort at once
        assert heartbeat_until_abort(node, node.session_key) is not None, srv.log()
    finally:
        node.close()


def test_previous_key_is_dropped_without_a_grace(tmp_path, zctx):
    with Server(tmp_path / "state", session_key_grace=0) as server:
        _, keys = setup_org(server, "graceless", ("gnode",))
        node = WireNode(server, "graceless", "gnode", keys["gnode"], ctx=zctx)
        assert node.fetch_config().status_code == 200
        first = node.session_key
        assert node.fetch_config().status_code == 200
        node.connect()
        try:
            assert heartbeat_until_abort(node, first, tries=3) is None
            assert heartbeat_until_abort(node, node.session_key) is not None, server.log()
        finally:
            node.close()
