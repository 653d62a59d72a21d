"""POST /jobs validation and the Push Jobs routes' status codes, over real HTTP.

Covers server-protocol.md §6.2, §6.4, §6.7 and §10.2 "POST validation" (every pedant case),
the DESIGN.md fixes of §10.1 items 10, 12, 13 and 14 (400 instead of 500, authentication
before validation, jobs scoped to their org), 413/405/404/415 bodies and the 201 ``uri``.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.support import Chef, new_user, server_fixture, setup_org, sign

ORG = "joborg"
OTHER = "joborg2"
JOBS = f"/organizations/{ORG}/pushy/jobs"
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"
TOO_BIG = {"error": "JSON must be no more than 1000000 bytes."}

MSG_COMMAND = "invalid command supplied"
MSG_NODES = "at least one node must be supplied"
MSG_RUN_TIMEOUT = "invalid type supplied for run_timeout (expected a number)"
MSG_QUORUM = "invalid type supplied for quorum (expected a number)"
MSG_CAPTURE = "invalid type supplied for capture_output (expected a boolean)"
MSG_UNKNOWN = "an unknown validation error has occurred"
MSG_EXTRA = "invalid key supplied"
MSG_ENV_DUP = "invalid environment value (duplicate key)"
MSG_FILE_PREFIX = "invalid file contents (expected 'base64:...' or 'raw:...')"
MSG_FILE_B64 = "invalid file contents (couldn't decode base64 string)"
BAD_VALUES = ["", "1", [], {}, False, None]


def ok_body(**extra) -> dict:
    return {"command": "chef-client", "nodes": ["DONKEY"], **extra}


def without(key: str) -> dict:
    body = ok_body()
    del body[key]
    return body


srv = server_fixture("jobs")


@pytest.fixture(scope="module")
def world(srv):
    admin, keys = setup_org(srv, ORG, ("DONKEY", "reader_node"))
    other_admin, _ = setup_org(srv, OTHER, ("HORSE",))
    writer = new_user(admin, "jobwriter", ORG)
    r = admin.put(f"/organizations/{ORG}/groups/admins", {"users": ["jobwriter"]})
    assert r.status_code == 200, r.text
    stranger = new_user(admin, "jobstranger")
    return {
        "admin": admin,
        "writer": writer,
        "stranger": stranger,
        "reader_node": Chef(srv.url, "reader_node", keys["reader_node"]),
        "keys": keys,
    }


def post_raw(chef: Chef, raw: bytes, path: str = JOBS, **headers) -> httpx.Response:
    return chef.post(path, raw=raw, headers=headers or None)


def assert_400(r: httpx.Response, message: str | None = None) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    if message is not None:
        assert body["error"] == message


# --------------------------------------------------------------------------- 201


def test_created_job_uri_location_and_id(srv, world):
    r = world["writer"].post(JOBS, ok_body())
    assert r.status_code == 201, r.text
    body = r.json()
    assert list(body) == ["uri", "id"]
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["uri"] == f"{srv.url}{JOBS}/{body['id']}"
    assert r.headers["Location"] == body["uri"]
    assert r.headers["content-type"].startswith("application/json")
    # the job exists at once, with the fields of §6.5 and no quorum
    job = world["writer"].get(f"{JOBS}/{body['id']}").json()
    assert list(job)[:2] == ["nodes", "id"]
    assert job["id"] == body["id"] and job["command"] == "chef-client"
    assert job["run_timeout"] == 3600 and "quorum" not in job
    assert body["id"] in [j["id"] for j in world["writer"].get(JOBS).json()]


@pytest.mark.parametrize(
    "headers, prefix",
    [
        ({"X-Forwarded-Proto": "https"}, "https://127.0.0.1:{port}"),
        ({"X-Forwarded-Proto": "https", "Host": "push.example.com"}, "https://push.example.com"),
        ({"Host": "push.example.com:8443"}, "http://push.example.com:8443"),
        (
            {"X-Forwarded-Proto": "https", "Host": "push.example.com:443"},
            "https://push.example.com",
        ),
        ({"Host": "push.example.com:80"}, "http://push.example.com"),
    ],
)
def test_uri_honours_forwarded_proto_and_host(srv, world, headers, prefix):
    r = world["writer"].post(JOBS, ok_body(), headers=headers)
    assert r.status_code == 201, r.text
    uri = r.json()["uri"]
    expected = prefix.format(port=srv.ports["api_port"]) + f"{JOBS}/{r.json()['id']}"
    assert uri == expected
    assert r.headers["Location"] == uri
    if headers.get("X-Forwarded-Proto") == "https":
        assert re.fullmatch(r"https://.*/jobs/[0-9a-f]{32}", uri)  # pedant's regex


@pytest.mark.parametrize(
    "body",
    [
        ok_body(command=""),
        ok_body(quorum=1),
        ok_body(quorum=999),
        ok_body(run_timeout=0),
        ok_body(run_timeout=3600),
        ok_body(run_timeout=5.0, quorum=1.0),
        ok_body(capture_output=True, user="nobody", dir="/tmp", env={"A": "1"}),
        ok_body(file="raw:" + "X" * 100_000),
        ok_body(file="base64:aGVsbG8="),
        {"command": "x", "nodes": ["a", "b", "c"], "quorum": 2},
    ],
    ids=lambda b: json.dumps(b)[:60],
)
def test_pedant_accepted_bodies(srv, world, body):
    r = world["writer"].post(JOBS, body)
    assert r.status_code == 201, r.text


def test_submitted_options_show_up_in_the_job(srv, world):
    body = ok_body(user="nobody", dir="/tmp", env={"A": "1"}, file="raw:hi", capture_output=True)
    r = world["writer"].post(JOBS, {**body, "run_timeout": 7})
    job_url = f"{JOBS}/{r.json()['id']}"
    job = world["writer"].get(job_url).json()
    assert job["run_timeout"] == 7
    assert job["user"] == "nobody" and job["dir"] == "/tmp" and job["env"] == {"A": "1"}
    assert job["capture_output"] is True and job["file_specified"] is True
    full = world["writer"].get(job_url + "?include_file=true").json()
    assert full["file"] == "raw:hi" and "file_specified" not in full


# --------------------------------------------------------------------------- 400 (pedant)


PEDANT_400 = (
    [(without("command"), MSG_COMMAND)]
    + [(ok_body(command=v), MSG_COMMAND) for v in ([], {}, 0, False, None)]
    + [(without("nodes"), MSG_NODES)]
    + [
        (ok_body(nodes=v), MSG_NODES)
        for v in ("", "DONKEY", [], [False], [None], [{}], ["a", 1], {}, 0, False, None)
    ]
    + [(ok_body(quorum=v), MSG_QUORUM) for v in BAD_VALUES]
    + [(ok_body(run_timeout=v), MSG_RUN_TIMEOUT) for v in BAD_VALUES]
    + [(ok_body(capture_output=v), MSG_CAPTURE) for v in ("true", 1, None, [])]
    + [
        (ok_body(**{k: v}), MSG_UNKNOWN)
        for k, v in (
            ("user", 1),
            ("dir", []),
            ("env", []),
            ("env", {"A": 1}),
            ("env", "A=1"),
            ("file", 5),
        )
    ]
    + [(ok_body(foo="bar"), MSG_EXTRA)]
    + [(ok_body(file="hello"), MSG_FILE_PREFIX), (ok_body(file="base64:!!!"), MSG_FILE_B64)]
    # the original's order: types, then extra keys, then empty nodes
    + [
        ({"command": 1, "nodes": ["a"], "foo": 1}, MSG_COMMAND),
        ({"command": "x", "nodes": [], "foo": 1}, MSG_EXTRA),
        ({"command": "x", "nodes": [], "quorum": "1"}, MSG_QUORUM),
    ]
)


@pytest.mark.parametrize("body, message", PEDANT_400, ids=lambda v: json.dumps(v)[:50])
def test_pedant_rejected_bodies(srv, world, body, message):
    assert_400(world["writer"].post(JOBS, body), message)


def test_env_with_duplicate_keys(srv, world):
    raw = b'{"command": "x", "nodes": ["a"], "env": {"A": "1", "A": "2"}}'
    assert_400(post_raw(world["writer"], raw), MSG_ENV_DUP)


def test_file_over_100000_bytes(srv, world):
    r = world["writer"].post(JOBS, ok_body(file="raw:" + "X" * 100_001))
    assert_400(r, "invalid file size (must be <= 100000 bytes)")  # a string, not char codes


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b'{"command": "x", "nodes": ["a"]} trailing',
        b"\xff\xfe",
        b'{"command": "x", "nodes": ["a"], "run_timeout": NaN}',
        b'{"command": "x", "nodes": ["a"], "run_timeout": Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["empty", "brace", "words", "trailing", "not-utf8", "nan", "infinity", "deep"],
)
def test_invalid_json_is_400_not_500(srv, world, raw):
    r = post_raw(world["writer"], raw)
    assert_400(r)
    assert r.json()["error"].startswith("invalid JSON")


@pytest.mark.parametrize("raw", [b"[]", b'"job"', b"1", b"null", b"true", b'[{"command": "x"}]'])
def test_non_object_json_is_400(srv, world, raw):
    assert_400(post_raw(world["writer"], raw), "request body must be a JSON object")


@pytest.mark.parametrize(
    "body, message",
    [
        (ok_body(nodes=["a", "b", "a"]), "duplicate node name 'a'"),
        (ok_body(run_timeout=-1), "invalid run_timeout (expected a non-negative integer)"),
        (ok_body(run_timeout=1.5), "invalid run_timeout (expected a non-negative integer)"),
        (ok_body(quorum=-1), "invalid quorum (expected a non-negative integer)"),
        (ok_body(quorum=0.5), "invalid quorum (expected a non-negative integer)"),
        (ok_body(run_timeout=1e300), "invalid run_timeout (must be <= 2147483647)"),
        (ok_body(quorum=2**40), "invalid quorum (must be <= 2147483647)"),
        (ok_body(nodes=[""]), None),
        (ok_body(nodes=["a/b"]), None),
    ],
    ids=lambda v: json.dumps(v)[:40],
)
def test_original_500s_are_400s(srv, world, body, message):
    assert_400(world["writer"].post(JOBS, body), message)


def test_a_refused_body_creates_no_job(srv, world):
    before = len(world["admin"].get(JOBS).json())
    assert world["writer"].post(JOBS, ok_body(nodes=["a", "a"])).status_code == 400
    assert world["writer"].post(JOBS, ok_body(run_timeout=-5)).status_code == 400
    assert len(world["admin"].get(JOBS).json()) == before


# --------------------------------------------------------------------------- content types


def test_content_type(srv, world):
    writer = world["writer"]
    body = json.dumps(ok_body()).encode()
    r = writer.post(JOBS, raw=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    assert isinstance(r.json()["error"], str)
    r = writer.post(JOBS, raw=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    # without a Content-Type the body is still read as JSON
    h = sign(srv.pivotal_key.read_bytes(), "pivotal", "POST", JOBS, body)
    r = httpx.post(srv.url + JOBS, content=body, headers=h, timeout=30)
    assert r.status_code == 201, r.text
    r = writer.post(JOBS, ok_body(), headers={"Accept": "text/html"})
    assert r.status_code == 406


# --------------------------------------------------------------------------- authentication first


def test_authentication_before_validation(srv, world):
    bad = b'{"command": 1, "nodes": "x"}'
    invalid = Chef(srv.url, "invalid", world["keys"]["DONKEY"])
    r = post_raw(invalid, bad)
    assert r.status_code == 401
    assert r.json()["error"] == [
        "Failed to authenticate as 'invalid'. Ensure that your node_name and client key are correct."
    ]
    wrong_key = Chef(srv.url, "jobwriter", world["keys"]["DONKEY"])
    r = post_raw(wrong_key, bad)
    assert r.status_code == 401
    assert r.json()["error"] == ["Invalid signature for user or client 'jobwriter'"]
    r = httpx.post(srv.url + JOBS, content=bad, timeout=30)  # unsigned
    assert r.status_code == 400
    assert r.json()["error"][0].startswith("missing required authentication header(s)")
    r = post_raw(world["reader_node"], bad)  # a member who may not write
    assert r.status_code == 403
    assert r.json()["error"] == [
        "User or client 'reader_node' does not have access to that action on this server."
    ]
    r = post_raw(world["stranger"], bad)
    assert r.status_code == 403
    assert r.json()["error"] == [f"'jobstranger' is not associated with organization '{ORG}'"]
    # ... and a bogus org is found out after authentication, before validation
    r = post_raw(world["writer"], bad, path="/organizations/nosuch/pushy/jobs")
    assert r.status_code == 404


# --------------------------------------------------------------------------- 413


def test_body_over_1000000_bytes_is_413(srv, world):
    raw = json.dumps(ok_body()).encode()
    big = raw + b" " * (1_000_001 - len(raw))
    assert len(big) == 1_000_001
    r = post_raw(world["writer"], big)
    assert r.status_code == 413
    assert r.json() == TOO_BIG
    # even before authentication
    r = httpx.post(srv.url + JOBS, content=big, timeout=30)
    assert r.status_code == 413
    assert r.json() == TOO_BIG


def test_body_of_exactly_1000000_bytes_is_accepted(srv, world):
    raw = json.dumps(ok_body()).encode()
    body = raw + b" " * (1_000_000 - len(raw))
    r = post_raw(world["writer"], body)
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- 405


@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", JOBS),
        ("DELETE", JOBS),
        ("PUT", f"{JOBS}/{UNKNOWN_ID}"),
        ("POST", f"{JOBS}/{UNKNOWN_ID}"),
        ("DELETE", f"{JOBS}/{UNKNOWN_ID}"),
        ("PUT", f"/organizations/{ORG}/pushy/node_states"),
        ("DELETE", f"/organizations/{ORG}/pushy/node_states/DONKEY"),
        ("POST", f"/organizations/{ORG}/pushy/job_status_feed/{UNKNOWN_ID}"),
    ],
)
def test_method_not_allowed(srv, world, method, path):
    for chef in (world["writer"], world["admin"]):
        r = chef.request(method, path, ok_body())
        assert r.status_code == 405, (method, path, r.text)
        assert isinstance(r.json()["error"], str)
    r = httpx.request(method, srv.url + path, timeout=30)  # 405 comes before authentication
    assert r.status_code == 405


def test_method_not_allowed_on_an_existing_job(srv, world):
    job_id = world["writer"].post(JOBS, ok_body()).json()["id"]
    for method in ("PUT", "POST", "DELETE"):
        r = world["writer"].request(method, f"{JOBS}/{job_id}", ok_body())
        assert r.status_code == 405, (method, r.text)
    assert world["writer"].get(f"{JOBS}/{job_id}").status_code == 200  # still there


def test_connection_survives_an_early_error(srv, world):
    """A 405 sent before the body is read must not stall the next request on the connection."""
    writer = world["writer"]
    writer.http.timeout = httpx.Timeout(10)
    try:
        for _ in range(5):  # bounded
            r = writer.put(JOBS, ok_body(file="raw:" + "X" * 50_000))
            assert r.status_code == 405
            assert writer.get(JOBS).status_code == 200
    finally:
        writer.http.timeout = httpx.Timeout(30)


# --------------------------------------------------------------------------- 404


def test_unknown_job_is_404(srv, world):
    writer = world["writer"]
    for path in (
        f"{JOBS}/{UNKNOWN_ID}",
        f"{JOBS}/not-an-id",
        f"{JOBS}/{UNKNOWN_ID}/output/DONKEY/stdout",
    ):
        r = writer.get(path, headers={"Accept": "*/*"})
        assert r.status_code == 404, (path, r.text)
        assert isinstance(r.json()["error"], str)
    feed = f"/organizations/{ORG}/pushy/job_status_feed/{UNKNOWN_ID}"
    r = writer.get(feed, headers={"Accept": "text/event-stream"})
    assert r.status_code == 404


def test_another_orgs_job_is_404(srv, world):
    job_id = world["writer"].post(JOBS, ok_body()).json()["id"]
    admin = world["admin"]  # the superuser passes every authorization check
    other = f"/organizations/{OTHER}/pushy"
    for path, accept in (
        (f"{other}/jobs/{job_id}", "application/json"),
        (f"{other}/jobs/{job_id}/output/DONKEY/stdout", "application/octet-stream"),
        (f"{other}/job_status_feed/{job_id}", "text/event-stream"),
    ):
        r = admin.get(path, headers={"Accept": accept})
        assert r.status_code == 404, (path, r.text)
    assert job_id not in [j["id"] for j in admin.get(f"{other}/jobs").json()]
    assert admin.get(f"{JOBS}/{job_id}").status_code == 200


@pytest.mark.parametrize(
    "method, path, accept",
    [
        ("GET", "/config/DONKEY?ccpk=" + "a" * 40, "application/json"),
        ("GET", "/jobs", "application/json"),
        ("POST", "/jobs", "application/json"),
        ("GET", f"/jobs/{UNKNOWN_ID}", "application/json"),
        ("GET", f"/jobs/{UNKNOWN_ID}/output/DONKEY/stdout", "application/octet-stream"),
        ("GET", "/node_states", "application/json"),
        ("GET", "/node_states/DONKEY", "application/json"),
        ("GET", "/job_status_feed", "text/event-stream"),
        ("GET", f"/job_status_feed/{UNKNOWN_ID}", "text/event-stream"),
    ],
)
def test_bogus_org_is_404_on_every_route(srv, world, method, path, accept):
    body = ok_body() if method == "POST" else None
    for chef in (world["admin"], world["writer"]):
        r = chef.request(
            method, f"/organizations/bogus/pushy{path}", body, headers={"Accept": accept}
        )
        assert r.status_code == 404, (chef.user, r.text)
        assert r.json() == {"error": ["organization 'bogus' does not exist."]}


# --------------------------------------------------------------------------- node states


def test_unknown_node_state(srv, world):
    for who in ("writer", "reader_node"):
        r = world[who].get(f"/organizations/{ORG}/pushy/node_states/NOSUCHNODE")
        assert r.status_code == 200
        assert r.json() == {
            "node_name": "NOSUCHNODE",
            "status": "offline",
            "availability": "unavailable",
        }
        assert list(r.json()) == ["node_name", "status", "availability"]


def test_node_states_list_without_online_nodes(srv, world):
    r = world["writer"].get(f"/organizations/{OTHER}/pushy/node_states")
    assert r.status_code == 403  # not associated with the other org
    r = world["admin"].get(f"/organizations/{OTHER}/pushy/node_states")
    assert r.status_code == 200
    assert r.json() == []
