"""Chef request signing and authorization on the Push Jobs REST routes, over real HTTP.

Covers server-protocol.md §6.1 (X-Ops versions, header joining, clock skew, every error status
and body, the decision order), the pedant authorization matrix of §10.2 (jobs, node_states),
``/pushy/_status`` (§6.9), and a bounded fuzz loop asserting that no bad request gets a 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections import Counter

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from appliance.core import chefauth
from appliance.core.keys import load_private_pem, private_pem
from tests import support
from tests.support import Chef, Server, error_of, server_fixture, set_group, setup_org, sign

ORG = "authorg"
JOBS = f"/organizations/{ORG}/pushy/jobs"
NODE_STATES = f"/organizations/{ORG}/pushy/node_states"
MISSING_ALL = (
    "missing required authentication header(s) "
    "'X-Ops-UserId', 'X-Ops-Timestamp', 'X-Ops-Sign', 'X-Ops-Content-Hash'"
)
WWW_AUTH = 'X-Ops-Sign version="1.0" version="1.1"'
STRANGER_KEY = private_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


# --------------------------------------------------------------------------- helpers


def raw(server: Server, method: str, path: str, headers=None, body: bytes = b"") -> httpx.Response:
    return httpx.request(method, server.url + path, headers=headers or {}, content=body, timeout=30)


_KEYS: dict[str, str] = {}


def new_user(admin: Chef, name: str, org: str | None = None) -> Chef:
    """``support.new_user``, keeping the private key in ``_KEYS``."""
    chef = support.new_user(admin, name, org)
    _KEYS[name] = chef.key_pem
    return chef


def job_body(node: str = "nowhere") -> dict:
    return {"command": "chef-client", "nodes": [node]}


# --------------------------------------------------------------------------- fixtures


srv = server_fixture("auth")


@pytest.fixture(scope="module")
def world(srv):
    """Org ``authorg``: admin user alice, member bob, outsider mallory, clients node1 and node2."""
    admin, keys = setup_org(srv, ORG, ("node1", "node2"))
    alice = new_user(admin, "alice", ORG)
    bob = new_user(admin, "bob", ORG)
    mallory = new_user(admin, "mallory")
    set_group(admin, ORG, "admins", users=["alice"])
    node1 = Chef(srv.url, "node1", keys["node1"])
    return {
        "admin": admin,
        "alice": alice,
        "bob": bob,
        "mallory": mallory,
        "node1": node1,
        "keys": keys,
    }


# --------------------------------------------------------------------------- signing versions


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.3"])
def test_every_protocol_version_signs_get_and_post(srv, world, version):
    bob = Chef(srv.url, "bob", _KEYS["bob"], version=version)
    r = bob.get(JOBS)
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), list)
    admin = Chef(srv.url, "pivotal", srv.pivotal_key.read_bytes(), version=version)
    r = admin.post(JOBS, job_body())
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "version, sign_value",
    [
        ("1.0", "version=1.0"),
        ("1.1", "version=1.1"),
        ("1.3", "version=1.3"),
        ("1.3", "version=1.3;algorithm=sha256"),
        ("1.1", "algorithm=sha1; version=1.1"),
    ],
)
def test_algorithm_is_optional_in_x_ops_sign(srv, world, version, sign_value):
    body = json.dumps(job_body()).encode()
    h = sign(srv.pivotal_key.read_bytes(), "pivotal", "POST", JOBS, body, version=version)
    h["X-Ops-Sign"] = sign_value
    h["Content-Type"] = "application/json"
    r = raw(srv, "POST", JOBS, h, body)
    assert r.status_code == 201, r.text


def test_version_1_2_rsa_sha1_is_verified(srv, world):
    """1.2 is verify-only (chef_authn knows it): standard RSA-SHA1 over the 1.1 text."""
    key = load_private_pem(_KEYS["bob"])
    ts = chefauth.format_timestamp(time.time())
    body_hash = base64.b64encode(hashlib.sha1(b"").digest()).decode()
    text = chefauth.canonical_request(
        version="1.2", method="GET", path=JOBS, body_hash=body_hash, timestamp=ts, user_id="bob"
    )
    sig = base64.b64encode(key.sign(text, padding.PKCS1v15(), hashes.SHA1())).decode()
    h = {
        "X-Ops-Sign": "version=1.2",
        "X-Ops-Userid": "bob",
        "X-Ops-Timestamp": ts,
        "X-Ops-Content-Hash": body_hash,
    }
    for i in range(0, len(sig), 60):
        h[f"X-Ops-Authorization-{i // 60 + 1}"] = sig[i : i + 60]
    assert raw(srv, "GET", JOBS, h).status_code == 200
    h["X-Ops-Userid"] = "alice"  # the same signature claimed by someone else
    assert raw(srv, "GET", JOBS, h).status_code == 401


@pytest.mark.parametrize(
    "sign_value", ["version=1.4", "version=2.0", "algorithm=sha256", "version=1.3;algorithm=sha1"]
)
def test_unsupported_sign_version_is_400(srv, world, sign_value):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS)
    h["X-Ops-Sign"] = sign_value
    r = raw(srv, "GET", JOBS, h)
    assert r.status_code == 400
    assert error_of(r) == ["Unsupported authentication protocol version"]


# --------------------------------------------------------------------------- authorization lines


def test_authorization_lines_join_in_numeric_order_not_header_order(srv, world):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS)
    auth = {k: v for k, v in h.items() if k.startswith("X-Ops-Authorization-")}
    assert len(auth) >= 3
    others = {k: v for k, v in h.items() if k not in auth}
    reversed_order = {**dict(reversed(list(auth.items()))), **others}
    assert raw(srv, "GET", JOBS, reversed_order).status_code == 200
    # a line after a gap is never read: stray extra lines do not break a good signature
    assert raw(srv, "GET", JOBS, {**h, "X-Ops-Authorization-40": "AAAA"}).status_code == 200


def test_authorization_lines_swapped_or_missing_fail(srv, world):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS)
    swapped = dict(h)
    swapped["X-Ops-Authorization-1"], swapped["X-Ops-Authorization-2"] = (
        h["X-Ops-Authorization-2"],
        h["X-Ops-Authorization-1"],
    )
    r = raw(srv, "GET", JOBS, swapped)
    assert r.status_code == 401
    assert error_of(r) == ["Invalid signature for user or client 'bob'"]
    gap = {k: v for k, v in h.items() if k != "X-Ops-Authorization-2"}
    assert raw(srv, "GET", JOBS, gap).status_code == 401
    none = {k: v for k, v in h.items() if not k.startswith("X-Ops-Authorization-")}
    r = raw(srv, "GET", JOBS, none)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == WWW_AUTH


# --------------------------------------------------------------------------- clock


@pytest.mark.parametrize("offset", [-850, 850])
def test_clock_skew_within_900_s_is_accepted(srv, world, offset):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS, timestamp=time.time() + offset)
    assert raw(srv, "GET", JOBS, h).status_code == 200


@pytest.mark.parametrize("offset", [-950, 950, -86400 * 365])
def test_clock_skew_beyond_900_s_is_401(srv, world, offset):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS, timestamp=time.time() + offset)
    r = raw(srv, "GET", JOBS, h)
    assert r.status_code == 401
    assert error_of(r) == ["Failed to authenticate as bob. Synchronize the clock on your host."]
    assert r.headers["WWW-Authenticate"] == WWW_AUTH


@pytest.mark.parametrize("stamp", ["yesterday", "2024-01-01 00:00:00", "2024-13-01T00:00:00Z", ""])
def test_unparsable_timestamp_is_401(srv, world, stamp):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS)
    h["X-Ops-Timestamp"] = stamp
    r = raw(srv, "GET", JOBS, h)
    assert r.status_code == 401
    assert error_of(r) == ["bad header(s) 'X-Ops-Timestamp'"]


# --------------------------------------------------------------------------- header errors


def test_unsigned_request_is_400_listing_every_header(srv, world):
    r = raw(srv, "GET", JOBS)
    assert r.status_code == 400
    assert r.json() == {"error": [MISSING_ALL]}


def test_missing_headers_are_named_in_order(srv, world):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS)
    del h["X-Ops-Content-Hash"], h["X-Ops-Timestamp"]
    r = raw(srv, "GET", JOBS, h)
    assert r.status_code == 400
    assert error_of(r) == [
        "missing required authentication header(s) 'X-Ops-Timestamp', 'X-Ops-Content-Hash'"
    ]


def test_header_names_are_case_insensitive(srv, world):
    h = {k.lower(): v for k, v in sign(_KEYS["bob"], "bob", "GET", JOBS).items()}
    assert raw(srv, "GET", JOBS, h).status_code == 200


# --------------------------------------------------------------------------- principals and keys


def test_unknown_user_is_401_with_exact_message(srv, world):
    h = sign(STRANGER_KEY, "invalid", "GET", JOBS)
    r = raw(srv, "GET", JOBS, h)
    assert r.status_code == 401
    assert r.json() == {
        "error": [
            "Failed to authenticate as 'invalid'. "
            "Ensure that your node_name and client key are correct."
        ]
    }
    assert r.headers["WWW-Authenticate"] == WWW_AUTH


@pytest.mark.parametrize("who", ["bob", "node1", "pivotal"])
def test_wrong_key_is_401_invalid_signature(srv, world, who):
    h = sign(STRANGER_KEY, who, "GET", NODE_STATES)
    r = raw(srv, "GET", NODE_STATES, h)
    assert r.status_code == 401
    assert r.json() == {"error": [f"Invalid signature for user or client '{who}'"]}


def test_tampered_body_is_401(srv, world):
    good = json.dumps(job_body()).encode()
    h = sign(srv.pivotal_key.read_bytes(), "pivotal", "POST", JOBS, good)
    h["Content-Type"] = "application/json"
    bad = json.dumps({"command": "rm -rf /", "nodes": ["nowhere"]}).encode()
    r = raw(srv, "POST", JOBS, h, bad)
    assert r.status_code == 401, r.text
    assert error_of(r) == ["Invalid signature for user or client 'pivotal'"]
    # a content hash that matches the new body but a signature over the old one: still 401
    h["X-Ops-Content-Hash"] = base64.b64encode(hashlib.sha256(bad).digest()).decode()
    assert raw(srv, "POST", JOBS, h, bad).status_code == 401


def test_signature_for_another_path_or_method_is_401(srv, world):
    h = sign(_KEYS["bob"], "bob", "GET", JOBS)
    r = raw(srv, "GET", NODE_STATES, h)
    assert r.status_code == 401
    assert error_of(r) == ["Invalid signature for user or client 'bob'"]
    # the query string and a trailing slash are not signed: the canonical path stays the same
    assert raw(srv, "GET", JOBS + "/?x=1", h).status_code == 200
    h = sign(_KEYS["bob"], "bob", "POST", NODE_STATES)
    assert raw(srv, "GET", NODE_STATES, h).status_code == 401


def test_outside_user_is_403_not_associated(srv, world):
    for path in (JOBS, NODE_STATES, NODE_STATES + "/node1"):
        r = world["mallory"].get(path)
        assert r.status_code == 403, (path, r.text)
        assert r.json() == {"error": [f"'mallory' is not associated with organization '{ORG}'"]}
    r = world["mallory"].post(JOBS, job_body())
    assert r.status_code == 403
    assert error_of(r) == [f"'mallory' is not associated with organization '{ORG}'"]


def test_client_of_another_org_is_not_a_principal_here(srv, world):
    admin = world["admin"]
    _, keys = setup_org(srv, "otherauthorg", ("elsewhere",))
    el = Chef(srv.url, "elsewhere", keys["elsewhere"])
    assert el.get("/organizations/otherauthorg/pushy/jobs").status_code == 200
    r = el.get(JOBS)
    assert r.status_code == 401
    assert error_of(r) == [
        "Failed to authenticate as 'elsewhere'. "
        "Ensure that your node_name and client key are correct."
    ]
    assert admin.get(JOBS).status_code == 200


def test_any_of_several_keys_signs_and_a_deleted_key_stops(srv, world):
    """Key rotation without downtime: add a key, both sign, delete the old one."""
    admin = world["admin"]
    keys_url = f"/organizations/{ORG}/clients/node2/keys"
    r = admin.post(keys_url, {"name": "second", "create_key": True})
    assert r.status_code == 201, r.text
    second = r.json()["private_key"]
    old = Chef(srv.url, "node2", world["keys"]["node2"])
    new = Chef(srv.url, "node2", second)
    assert old.get(NODE_STATES).status_code == 200
    assert new.get(NODE_STATES).status_code == 200
    assert new.delete(f"{keys_url}/default").status_code == 200
    r = old.get(NODE_STATES)
    assert r.status_code == 401
    assert error_of(r) == ["Invalid signature for user or client 'node2'"]
    assert new.get(NODE_STATES).status_code == 200


def test_expired_key_does_not_sign(srv, world):
    admin = world["admin"]
    user = new_user(admin, "expiring", ORG)
    r = admin.post(
        "/users/expiring/keys",
        {"name": "old", "create_key": True, "expiration_date": "2001-01-01T00:00:00Z"},
    )
    assert r.status_code == 201, r.text
    stale = Chef(srv.url, "expiring", r.json()["private_key"])
    listed = {k["name"]: k["expired"] for k in user.get("/users/expiring/keys").json()}
    assert listed == {"default": False, "old": True}
    r = stale.get(JOBS)
    assert r.status_code == 401, r.text
    assert user.get(JOBS).status_code == 200


# --------------------------------------------------------------------------- pedant matrix


def test_without_groups_members_read_and_only_admins_write(srv, world):
    for who in ("bob", "alice", "node1"):
        chef = world[who]
        for path in (JOBS, NODE_STATES, NODE_STATES + "/node1"):
            r = chef.get(path)
            assert r.status_code == 200, (who, path, r.text)
    for who in ("bob", "node1"):
        r = world[who].post(JOBS, job_body())
        assert r.status_code == 403, (who, r.text)
        assert r.json() == {
            "error": [f"User or client '{who}' does not have access to that action on this server."]
        }
    r = world["alice"].post(JOBS, job_body())
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    # a reader may read the job a writer made
    assert world["bob"].get(f"{JOBS}/{job_id}").status_code == 200


def test_admin_client_may_write(srv, world):
    admin, keys = setup_org(srv, "clientadmins", ("robot",))
    set_group(admin, "clientadmins", "admins", clients=["robot"])
    robot = Chef(srv.url, "robot", keys["robot"])
    r = robot.post("/organizations/clientadmins/pushy/jobs", job_body())
    assert r.status_code == 201, r.text


def test_reader_and_writer_groups_with_nested_subgroups(srv, world):
    org = "groupedorg"
    admin, keys = setup_org(srv, org, ("member_node", "other_node"))
    reader = new_user(admin, "g_reader", org)
    writer = new_user(admin, "g_writer", org)
    boss = new_user(admin, "g_admin", org)
    member_node = Chef(srv.url, "member_node", keys["member_node"])
    other_node = Chef(srv.url, "other_node", keys["other_node"])
    set_group(admin, org, "admins", users=["g_admin"])
    # readers: via a sub-group (users) and a sub-sub-group (clients)
    set_group(admin, org, "deep_readers", clients=["member_node"])
    set_group(admin, org, "sub_readers", users=["g_reader"], groups=["deep_readers"])
    set_group(admin, org, "pushy_job_readers", groups=["sub_readers"])
    set_group(admin, org, "sub_writers", users=["g_writer"])
    set_group(admin, org, "pushy_job_writers", groups=["sub_writers"])
    jobs = f"/organizations/{org}/pushy/jobs"
    states = f"/organizations/{org}/pushy/node_states"
    denied = "does not have access to that action on this server."

    for chef in (reader, member_node):
        assert chef.get(jobs).status_code == 200, chef.user
        assert chef.get(states).status_code == 200, chef.user
        assert chef.get(states + "/x").status_code == 200, chef.user
    for chef in (writer, boss, other_node):  # not readers, even the admin
        for path in (jobs, states, states + "/x"):
            r = chef.get(path)
            assert r.status_code == 403, (chef.user, path, r.text)
            assert r.json() == {"error": [f"User or client '{chef.user}' {denied}"]}

    r = writer.post(jobs, job_body())
    assert r.status_code == 201, r.text
    for chef in (boss, reader, member_node):  # not writers, even the admin
        r = chef.post(jobs, job_body())
        assert r.status_code == 403, (chef.user, r.text)
        assert r.json() == {"error": [f"User or client '{chef.user}' {denied}"]}
    # the superuser is not subject to groups
    assert admin.get(jobs).status_code == 200
    assert admin.post(jobs, job_body()).status_code == 201

    # membership changes take effect at once: drop the nested reader group
    set_group(admin, org, "pushy_job_readers", groups=[])
    assert reader.get(jobs).status_code == 403
    assert member_node.get(jobs).status_code == 403


def test_writers_group_replaces_admins(srv, world):
    org = "writersorg"
    admin, _ = setup_org(srv, org, ())
    boss = new_user(admin, "w_admin", org)
    set_group(admin, org, "admins", users=["w_admin"])
    jobs = f"/organizations/{org}/pushy/jobs"
    assert boss.post(jobs, job_body()).status_code == 201
    set_group(admin, org, "pushy_job_writers")  # exists, empty
    assert boss.post(jobs, job_body()).status_code == 403
    assert admin.delete(f"/organizations/{org}/groups/pushy_job_writers").status_code == 200
    assert boss.post(jobs, job_body()).status_code == 201


# --------------------------------------------------------------------------- decision order


def test_body_size_wins_over_missing_headers(srv, world):
    big = b"x" * 1_000_001
    r = raw(srv, "POST", JOBS, {"Content-Type": "application/json"}, big)
    assert r.status_code == 413
    assert r.json() == {"error": "JSON must be no more than 1000000 bytes."}


def test_body_size_is_enforced_on_chunked_bodies(srv, world):
    def chunks():
        for _ in range(11):
            yield b" " * 100_000

    r = httpx.post(srv.url + JOBS, content=chunks(), timeout=30)
    assert r.status_code == 413
    assert r.json() == {"error": "JSON must be no more than 1000000 bytes."}


def test_authentication_precedes_org_lookup_and_missing_resources(srv, world):
    bogus = "/organizations/nosuchorg/pushy/jobs/" + "0" * 32
    r = raw(srv, "GET", bogus)
    assert r.status_code == 400
    assert error_of(r) == [MISSING_ALL]
    h = sign(_KEYS["bob"], "bob", "GET", bogus, timestamp=time.time() - 3600)
    assert raw(srv, "GET", bogus, h).status_code == 401
    unknown_job = f"{JOBS}/{'0' * 32}"
    r = raw(srv, "GET", unknown_job, sign(STRANGER_KEY, "x", "GET", unknown_job))
    assert r.status_code == 401
    assert world["mallory"].get(unknown_job).status_code == 403
    assert world["bob"].get(unknown_job).status_code == 404
    r = world["bob"].get(bogus)
    assert r.status_code == 404
    assert r.json() == {"error": ["organization 'nosuchorg' does not exist."]}


def test_method_not_allowed_precedes_authentication(srv, world):
    for method, path in (("PUT", JOBS), ("DELETE", JOBS), ("POST", NODE_STATES)):
        r = raw(srv, method, path)
        assert r.status_code == 405, (method, path)
        assert isinstance(error_of(r), str)


def test_accept_header(srv, world):
    bob = world["bob"]
    h = sign(_KEYS["bob"], "bob", "GET", JOBS)
    assert raw(srv, "GET", JOBS, h).status_code == 200  # no Accept at all means */*
    for accept in ("*/*", "application/*", "text/html, application/json;q=0.5"):
        assert bob.get(JOBS, headers={"Accept": accept}).status_code == 200, accept
    for accept in ("text/html", "text/event-stream", "application/json;q=0"):
        r = bob.get(JOBS, headers={"Accept": accept})
        assert r.status_code == 406, accept
        assert isinstance(error_of(r), str)
    # 406 comes after authentication
    h = sign(STRANGER_KEY, "bob", "GET", JOBS)
    assert raw(srv, "GET", JOBS, {**h, "Accept": "text/html"}).status_code == 401


# --------------------------------------------------------------------------- _status


def test_status_is_unauthenticated_and_read_only(srv, world):
    r = httpx.get(srv.url + "/pushy/_status", timeout=10)
    assert r.status_code == 200
    body = r.json()
    # the original's fields first, in its order; ours after them (additive)
    assert list(body) == [
        "status",
        "incarnation_id",
        "node_fsm_count",
        "job_processes",
        "advertised",
        "role",  # with a PostgreSQL store a standby answers 503 "standby"
    ]
    assert body["advertised"]["status"] == "ok"  # server_name 127.0.0.1, explicitly
    assert body["status"] == "it's alive"
    assert len(body["incarnation_id"]) == 36 and body["incarnation_id"].count("-") == 4
    assert isinstance(body["node_fsm_count"], int) and isinstance(body["job_processes"], list)
    assert httpx.get(srv.url + "/pushy/_status/", timeout=10).status_code == 200
    for method in ("PUT", "POST", "DELETE"):
        r = raw(srv, method, "/pushy/_status", {"Content-Type": "application/json"}, b"{}")
        assert r.status_code == 405, method
        assert isinstance(error_of(r), str)


# --------------------------------------------------------------------------- fuzz


FUZZ_ROUTES = [
    ("GET", f"/organizations/{ORG}/pushy/config/node1"),
    ("GET", JOBS),
    ("POST", JOBS),
    ("GET", f"{JOBS}/{'a' * 32}"),
    ("GET", f"{JOBS}/{'a' * 32}/output/node1/stdout"),
    ("GET", NODE_STATES),
    ("GET", NODE_STATES + "/node1"),
    ("GET", f"/organizations/{ORG}/pushy/job_status_feed"),
    ("GET", f"/organizations/{ORG}/pushy/job_status_feed/{'a' * 32}"),
    ("POST", "/organizations"),
    ("POST", "/users"),
    ("POST", f"/organizations/{ORG}/users"),
    ("POST", f"/organizations/{ORG}/clients"),
    ("POST", f"/organizations/{ORG}/clients/node2/keys"),
    ("POST", f"/organizations/{ORG}/groups"),
    ("PUT", f"/organizations/{ORG}/groups/admins"),
    ("POST", f"/organizations/{ORG}/nodes"),
    ("PUT", f"/organizations/{ORG}/nodes/node1"),
    ("DELETE", f"/organizations/{ORG}/clients/nobody"),
]
GARBAGE_BODIES = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"text"',
    b"1e999",
    b"NaN",
    b'{"command": NaN, "nodes": ["a"]}',
    b"\xff\xfe\x00garbage",
    b'{"a": "\\ud800"}',
    b"[" * 50_000 + b"]" * 50_000,
    b'{"nodes": {"a": 1}, "command": 7}',
    b'{"name": "", "full_name": "", "username": 5, "public_key": "-----BEGIN"}',
    b'{"name": "x", "create_key": "yes"}',
    b'{"users": "a", "clients": [1], "groups": null, "actors": 3}',
    b'{"name": "k", "public_key": "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----"}',
    b'{"name": "k", "create_key": true, "expiration_date": "2020-02-30T00:00:00Z"}',
    b'{"run_list": [1, "recipe[", null], "normal": []}',
]
GARBAGE_HEADERS = [
    {"X-Ops-Sign": "version=1.3;;;===;algorithm"},
    {"X-Ops-Timestamp": "0000-00-00T00:00:00Z"},
    {"X-Ops-Timestamp": "9999-12-31T23:59:59Z"},
    {"X-Ops-Userid": ""},
    {"X-Ops-Userid": "../../etc/passwd"},
    {"X-Ops-Authorization-1": "!!!not base64!!!"},
    {"X-Ops-Server-API-Version": "one"},
    {"X-Ops-Server-API-Version": "99999999999999999999"},
    {"X-Ops-Content-Hash": ""},
    {"Accept": ";;;,,,q=abc"},
    {"Accept": "application/json;q=2"},
    {"Content-Type": "application/json; charset=klingon"},
    {"Content-Type": "multipart/form-data; boundary=x"},
    {"Content-Type": "application/x-www-form-urlencoded"},
    {"Last-Event-ID": "job-99999999999999999999999"},
    {"X-Forwarded-Proto": "gopher://"},
    {"Host": "[::1"},
]
GARBAGE_SUFFIXES = [
    "",
    "/",
    "//",
    "/%00",
    "/%ff%fe",
    "/..",
    "/x" * 40,
    "?ccpk=%zz&version=",
    "?include_file=1",
]


def _assert_sane(r: httpx.Response, what: object) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), (what, r.text)
        assert "error" in r.json(), what


def test_fuzz_bad_requests_never_get_a_5xx(srv, world):
    rng = random.Random(20240601)
    pivotal = srv.pivotal_key.read_bytes()
    signers = [(pivotal, "pivotal"), (_KEYS["bob"], "bob"), (world["keys"]["node1"], "node1")]
    seen: Counter[int] = Counter()
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        for i in range(240):  # bounded
            method, path = rng.choice(FUZZ_ROUTES)
            path += rng.choice(GARBAGE_SUFFIXES)
            body = rng.choice(GARBAGE_BODIES) if method != "GET" or rng.random() < 0.2 else b""
            key, user = rng.choice(signers)
            signed = rng.random() < 0.7
            h = sign(key, user, method, path.split("?")[0], body) if signed else {}
            for _ in range(rng.randrange(3)):
                h.update(rng.choice(GARBAGE_HEADERS))
            if "job_status_feed" in path:
                h["Accept"] = "application/json"  # never open an endless stream
            if rng.random() < 0.1:
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
            r = http.request(method, path, headers=h, content=body)
            _assert_sane(r, (i, method, path, h, body[:80]))
            seen[r.status_code] += 1
    print(sorted(seen.items()))
    assert {400, 401, 404, 405} <= set(seen), seen  # the loop reached every layer
    # the server is still up and answering
    assert world["bob"].get(JOBS).status_code == 200
