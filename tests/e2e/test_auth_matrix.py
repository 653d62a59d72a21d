"""The authorization matrix: every route the app serves × every kind of caller, exact statuses.

Issue 7 ("Security"). The systematic version of test_rest_auth.py and test_identity_api.py: each
(method, path) of the app's url_map is a row, each identity a column, and every cell states
the exact status (and, for 4xx, the exact JSON error body where the spec or DESIGN.md fixes it).
A route added to the app without a row fails ``test_matrix_covers_every_served_route``.

Expected values come from server-protocol.md §6.1–6.9 and DESIGN.md ("never hand a node's
session key to anyone but that node (or the superuser)"; "authenticate before validating a
body"), and from the permission table of appliance/core/identity/__init__.py for the identity API; they
are written out per route class below, never derived from the server's answers.

Identities (org ``mx`` has the groups ``pushy_job_readers`` = {reader} and
``pushy_job_writers`` = {writer}, so the admin is neither a job reader nor a job writer, as
in the pedant matrix):

- superuser ``pivotal``; admin (in ``admins``); writer; reader; member (associated, no group);
  outsider (a user of another org); another org's client; the node itself (client ``n1``);
  another node (client ``n2``);
- failures, all signed as ``pivotal`` unless said: unsigned (no X-Ops headers); a timestamp
  1000 s old (beyond the 900 s window); the wrong private key; a tampered body (signed over
  other bytes than sent); the admin signing with a key that was deleted, and with a key whose
  expiration date has passed;
- the org's validator client (its key ships to every node that bootstraps): it may register
  clients, nothing else;
- replays: ``replay`` sends the superuser's exact signed request twice within the window.
  Chef signing (mixlib-authentication, as the original server verifies it) has no nonce and
  is deterministic per second, so a retry is indistinguishable from a replay and the second
  copy is served like the first (a repeated create is a 409, a repeated delete a 404, a
  repeated POST /jobs makes a second job). ``replay_stale`` sends a request signed just
  inside the window, then the identical bytes again once the window has passed: 401, the
  clock error. That time window is the only replay defence of Chef authentication (TLS is
  the real one).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from unittest import mock

import httpx
import pytest
import zmq

from appliance.core.keys import generate_rsa, load_private_pem, private_pem, public_pem
from appliance.core.settings import Settings
from appliance.server.app import create_app
from tests.e2e.helpers import Node, join_node, post_job, run_to_success, wait_job
from tests.support import Chef, Server, new_user, server_fixture, set_group, setup_org, sign

ORG = "mx"
OTHER_ORG = "mxother"
P = f"/organizations/{ORG}/pushy"
SKEW = 900
STALE_MARGIN = 8.0  # seconds left in the window when the stale replays are first sent

srv = server_fixture(
    "authmatrix",
    heartbeat_interval=1000,
    detect_offline_nodes_interval=600,  # joined test nodes stay online without heartbeating
    voting_timeout=600,  # the jobs to abort stay live for the whole module
    wait_complete_time=0.3,
    keep_alive_time=1,
)

# --------------------------------------------------------------------------- identities

SU, ADMIN, WRITER, READER, MEMBER = "superuser", "admin", "writer", "reader", "member"
OUTSIDER, OTHER_CLIENT, NODE, OTHER_NODE = "outsider", "other_org_client", "node", "other_node"
UNSIGNED, EXPIRED_TS, WRONG_KEY, TAMPERED = "unsigned", "expired_ts", "wrong_key", "tampered"
VALIDATOR = "validator"
REPLAY, REPLAY_STALE, DELETED_KEY, EXPIRED_KEY = (
    "replay",
    "replay_stale",
    "deleted_key",
    "expired_key",
)
IDENTITIES = (
    SU,
    ADMIN,
    WRITER,
    READER,
    MEMBER,
    OUTSIDER,
    OTHER_CLIENT,
    NODE,
    OTHER_NODE,
    UNSIGNED,
    EXPIRED_TS,
    WRONG_KEY,
    TAMPERED,
    REPLAY,
    REPLAY_STALE,
    DELETED_KEY,
    EXPIRED_KEY,
    VALIDATOR,
)
# X-Ops-UserId of each identity (the name error bodies quote)
USER_OF = {
    SU: "pivotal",
    ADMIN: "mx_ada",
    WRITER: "mx_wes",
    READER: "mx_rea",
    MEMBER: "mx_mem",
    OUTSIDER: "mx_out",
    OTHER_CLIENT: "oc1",
    NODE: "n1",
    OTHER_NODE: "n2",
    UNSIGNED: "pivotal",
    EXPIRED_TS: "pivotal",
    WRONG_KEY: "pivotal",
    TAMPERED: "pivotal",
    REPLAY: "pivotal",
    REPLAY_STALE: "pivotal",
    DELETED_KEY: "mx_ada",
    EXPIRED_KEY: "mx_ada",
    VALIDATOR: f"{ORG}-validator",
}

# --------------------------------------------------------------------------- error bodies

WWW_AUTH = 'X-Ops-Sign version="1.0" version="1.1"'
MISSING_ALL = (
    "missing required authentication header(s) "
    "'X-Ops-UserId', 'X-Ops-Timestamp', 'X-Ops-Sign', 'X-Ops-Content-Hash'"
)


def error_body(kind: str, user: str) -> Any:
    """The exact JSON error body of a kind of refusal, for the signing user."""
    bodies = {
        "missing": [MISSING_ALL],
        "clock": [f"Failed to authenticate as {user}. Synchronize the clock on your host."],
        "bad_sig": [f"Invalid signature for user or client '{user}'"],
        "unknown": [
            f"Failed to authenticate as '{user}'. "
            "Ensure that your node_name and client key are correct."
        ],
        "not_assoc": [f"'{user}' is not associated with organization '{ORG}'"],
        "forbidden": [
            f"User or client '{user}' does not have access to that action on this server."
        ],
        "name_match": ["Client and node name must match"],
        "perm_read": ["missing read permission"],
        "perm_create": ["missing create permission"],
        "perm_update": ["missing update permission"],
        "perm_delete": ["missing delete permission"],
    }
    return {"error": bodies[kind]}


# An expectation is (status, error kind or None). None: the status alone is asserted.
Expect = tuple[int, str | None]

# The failures that never reach a handler: identical on every signed route.
AUTH_FAILURES: dict[str, Expect] = {
    UNSIGNED: (400, "missing"),
    EXPIRED_TS: (401, "clock"),
    WRONG_KEY: (401, "bad_sig"),
    TAMPERED: (401, "bad_sig"),
    REPLAY_STALE: (401, "clock"),
    DELETED_KEY: (401, "bad_sig"),
    EXPIRED_KEY: (401, "bad_sig"),
}


def row(**cells: Expect) -> dict[str, Expect]:
    """A row: the given cells plus AUTH_FAILURES; every identity must be stated exactly once."""
    full = {**{k.lower(): v for k, v in cells.items()}, **AUTH_FAILURES}
    assert set(full) == set(IDENTITIES), set(IDENTITIES) ^ set(full)
    return full


# --------------------------------------------------------------------------- route classes

PUBLIC = {who: (200, None) for who in IDENTITIES}  # no authentication at all (§6.9)


def COOKIE_ONLY(status: int) -> dict[str, Expect]:  # noqa: N802 - a row, like PUBLIC
    """The dashboard's session routes: the same answer whatever is signed."""
    return {who: (status, None) for who in IDENTITIES}


def pushy_read(ok: int = 200) -> dict[str, Expect]:
    """§6.1 read access with ``pushy_job_readers`` existing: its members and the superuser."""
    return row(
        superuser=(ok, None),
        admin=(403, "forbidden"),
        writer=(403, "forbidden"),
        reader=(ok, None),
        member=(403, "forbidden"),
        outsider=(403, "not_assoc"),
        other_org_client=(401, "unknown"),
        node=(403, "forbidden"),
        other_node=(403, "forbidden"),
        validator=(403, "forbidden"),
        replay=(ok, None),
    )


def pushy_write(ok: int, replayed: Expect) -> dict[str, Expect]:
    """§6.1 write access with ``pushy_job_writers`` existing: admins do not count."""
    return row(
        superuser=(ok, None),
        admin=(403, "forbidden"),
        writer=(ok, None),
        reader=(403, "forbidden"),
        member=(403, "forbidden"),
        outsider=(403, "not_assoc"),
        other_org_client=(401, "unknown"),
        node=(403, "forbidden"),
        other_node=(403, "forbidden"),
        validator=(403, "forbidden"),
        replay=replayed,
    )


# §6.3 + DESIGN: the config carries the node's session key: the node itself and the superuser.
CONFIG = row(
    superuser=(200, None),
    admin=(403, "forbidden"),
    writer=(403, "forbidden"),
    reader=(403, "forbidden"),
    member=(403, "forbidden"),
    outsider=(403, "not_assoc"),
    other_org_client=(401, "unknown"),
    node=(200, None),
    other_node=(403, "name_match"),
    validator=(403, "name_match"),
    replay=(200, None),
)


def org_read() -> dict[str, Expect]:
    """Identity API reads of the org's objects (and search): every member of the org."""
    return row(
        superuser=(200, None),
        admin=(200, None),
        writer=(200, None),
        reader=(200, None),
        member=(200, None),
        outsider=(403, "not_assoc"),
        other_org_client=(401, "unknown"),
        node=(200, None),
        other_node=(200, None),
        validator=(403, "perm_read"),
        replay=(200, None),
    )


def org_admin(
    ok: int, perm: str, replayed: Expect, validator: Expect | None = None
) -> dict[str, Expect]:
    """Identity API writes reserved to the org's admins (the validator may create clients)."""
    validator = validator or (403, perm)
    return row(
        superuser=(ok, None),
        admin=(ok, None),
        writer=(403, perm),
        reader=(403, perm),
        member=(403, perm),
        outsider=(403, "not_assoc"),
        other_org_client=(401, "unknown"),
        node=(403, perm),
        other_node=(403, perm),
        validator=validator,
        replay=replayed,
    )


def own_client_keys(ok: int, replayed: Expect) -> dict[str, Expect]:
    """Writes of client n1's keys: admins and n1 itself (key rotation)."""
    return row(
        superuser=(ok, None),
        admin=(ok, None),
        writer=(403, "perm_update"),
        reader=(403, "perm_update"),
        member=(403, "perm_update"),
        outsider=(403, "not_assoc"),
        other_org_client=(401, "unknown"),
        node=(ok, None),
        other_node=(403, "perm_update"),
        validator=(403, "perm_update"),
        replay=replayed,
    )


def global_superuser(ok: int, perm: str, replayed: Expect) -> dict[str, Expect]:
    """Routes outside any org reserved to the superuser; clients are principals only in their
    org's routes, so outside one they are unknown (401)."""
    return row(
        superuser=(ok, None),
        admin=(403, perm),
        writer=(403, perm),
        reader=(403, perm),
        member=(403, perm),
        outsider=(403, perm),
        other_org_client=(401, "unknown"),
        node=(401, "unknown"),
        other_node=(401, "unknown"),
        validator=(401, "unknown"),
        replay=replayed,
    )


def user_self(ok: int, perm: str, replayed: Expect) -> dict[str, Expect]:
    """/users/mx_mem[...]: the user itself and the superuser."""
    return row(
        superuser=(ok, None),
        admin=(403, perm),
        writer=(403, perm),
        reader=(403, perm),
        member=(ok, None),
        outsider=(403, perm),
        other_org_client=(401, "unknown"),
        node=(401, "unknown"),
        other_node=(401, "unknown"),
        validator=(401, "unknown"),
        replay=replayed,
    )


# --------------------------------------------------------------------------- the routes


@dataclass
class Route:
    """One row: how to address it for an identity, and the expected cells."""

    kind: str  # json | octets | sse | ws | public
    target: Callable[[str, dict], tuple[str, Any]]  # (identity, world) -> (path, JSON body)
    expect: dict[str, Expect]


def fixed(path: str, body: Any = None) -> Callable[[str, dict], tuple[str, Any]]:
    return lambda who, world: (path, body)


def per_identity(
    template: str, body: Callable[[str], Any] | None = None
) -> Callable[[str, dict], tuple[str, Any]]:
    """A path (and body) naming an object made for this identity alone (``{who}``)."""
    return lambda who, world: (template.format(who=who), body(who) if body else None)


def config_target(alias: str) -> Callable[[str, dict], tuple[str, Any]]:
    def target(who: str, world: dict) -> tuple[str, Any]:
        ccpk = urllib.parse.quote_plus(zmq.curve_keypair()[0].decode())
        return f"{P}/{alias}/n1?ccpk={ccpk}&version=2.0", None

    return target


def world_path(template: str) -> Callable[[str, dict], tuple[str, Any]]:
    """A path naming objects made in setup (``{job}``, ``{live[who]}``)."""
    return lambda who, world: (template.format(who=who, **world["paths"](who)), None)


def job_post_body(who: str) -> Any:
    return {"command": "chef-client", "nodes": ["nowhere"]}


def node_post_body(who: str) -> Any:
    # the node may create its own record (already there: 409 after the permission check);
    # any other name is refused to a client
    return {"name": "n1" if who == NODE else f"rec-{who}"}


def key_body(who: str) -> Any:
    return {"name": f"new-{who}", "public_key": THROWAWAY_PUBLIC}


THROWAWAY_PUBLIC = public_pem(generate_rsa(2048))

ROUTES: dict[tuple[str, str], Route] = {
    # unauthenticated ---------------------------------------------------------------------
    ("GET", "/pushy/_status"): Route("public", fixed("/pushy/_status"), PUBLIC),
    ("GET", "/pushy/openapi.json"): Route("public", fixed("/pushy/openapi.json"), PUBLIC),
    # allowed by address, not by signature (metrics_allow: loopback by default, this client's
    # address); a signature changes nothing. tests/e2e/test_metrics.py has the refusals.
    ("GET", "/metrics"): Route("public", fixed("/metrics"), PUBLIC),
    # the web dashboard: its page and files are public; its session routes read the session
    # cookie only (signed headers are no credential there: without a cookie, 401; a log-in
    # without the server's own Origin, 403). tests/e2e/test_dashboard_auth.py has the rest.
    ("GET", "/"): Route("public", fixed("/"), PUBLIC),
    ("GET", "/dashboard/{name}"): Route("public", fixed("/dashboard/app.js"), PUBLIC),
    ("POST", "/pushy/dashboard/session"): Route(
        "json", fixed("/pushy/dashboard/session", {"token": "x"}), COOKIE_ONLY(403)
    ),
    ("GET", "/pushy/dashboard/session"): Route(
        "json", fixed("/pushy/dashboard/session"), COOKIE_ONLY(401)
    ),
    ("DELETE", "/pushy/dashboard/session"): Route(
        "json", fixed("/pushy/dashboard/session"), COOKIE_ONLY(401)
    ),
    ("POST", "/pushy/dashboard/login_links"): Route(
        "json",
        fixed("/pushy/dashboard/login_links", {"user": USER_OF[MEMBER], "org": ORG}),
        row(  # the superuser for anyone, a user for itself; clients are no users (401)
            superuser=(201, None),
            admin=(403, None),
            writer=(403, None),
            reader=(403, None),
            member=(201, None),
            outsider=(403, None),
            other_org_client=(401, "unknown"),
            node=(401, "unknown"),
            other_node=(401, "unknown"),
            validator=(401, "unknown"),
            replay=(201, None),  # a second link (each is one-time)
        ),
    ),
    # push jobs -----------------------------------------------------------------------------
    ("GET", "/organizations/{org}/pushy/config/{node}"): Route(
        "json", config_target("config"), CONFIG
    ),
    ("GET", "/organizations/{org}/pushy/connect/{node}"): Route(
        "json", config_target("connect"), CONFIG
    ),
    ("GET", "/organizations/{org}/pushy/jobs"): Route("json", fixed(f"{P}/jobs"), pushy_read()),
    ("POST", "/organizations/{org}/pushy/jobs"): Route(
        "json",
        per_identity(f"{P}/jobs", job_post_body),
        pushy_write(201, (201, None)),  # a replayed POST makes a second job
    ),
    ("GET", "/organizations/{org}/pushy/jobs/{job_id}"): Route(
        "json", world_path(P + "/jobs/{job}"), pushy_read()
    ),
    ("POST", "/organizations/{org}/pushy/jobs/{job_id}/abort"): Route(
        "json",
        world_path(P + "/jobs/{live}/abort"),
        pushy_write(200, (409, None)),  # the replay finds the job already aborted
    ),
    ("GET", "/organizations/{org}/pushy/jobs/{job_id}/output/{node}/{channel}"): Route(
        "octets", world_path(P + "/jobs/{job}/output/runner/stdout"), pushy_read()
    ),
    ("GET", "/organizations/{org}/pushy/node_states"): Route(
        "json", fixed(f"{P}/node_states"), pushy_read()
    ),
    ("GET", "/organizations/{org}/pushy/node_states/{node}"): Route(
        "json", fixed(f"{P}/node_states/n1"), pushy_read()
    ),
    ("GET", "/organizations/{org}/pushy/job_status_feed/{job_id}"): Route(
        "sse", world_path(P + "/job_status_feed/{job}"), pushy_read()
    ),
    ("GET", "/organizations/{org}/pushy/jobs_status_feed/{job_id}"): Route(
        "sse", world_path(P + "/jobs_status_feed/{job}"), pushy_read()
    ),
    ("GET", "/organizations/{org}/pushy/job_status_feed"): Route(
        "sse", fixed(f"{P}/job_status_feed"), pushy_read()
    ),
    ("GET", "/organizations/{org}/pushy/jobs_status_feed"): Route(
        "sse", fixed(f"{P}/jobs_status_feed"), pushy_read()
    ),
    ("GET", "/organizations/{org}/pushy/ws"): Route("ws", fixed(f"{P}/ws"), pushy_read(101)),
    # organizations and users -------------------------------------------------------------
    ("GET", "/organizations"): Route(
        "json", fixed("/organizations"), global_superuser(200, "perm_read", (200, None))
    ),
    ("POST", "/organizations"): Route(
        "json",
        per_identity("/organizations", lambda w: {"name": f"o-{w}", "full_name": w}),
        global_superuser(201, "perm_create", (409, None)),
    ),
    ("GET", "/organizations/{org}"): Route("json", fixed(f"/organizations/{ORG}"), org_read()),
    ("GET", "/users"): Route(
        "json", fixed("/users"), global_superuser(200, "perm_read", (200, None))
    ),
    ("POST", "/users"): Route(
        "json",
        per_identity("/users", lambda w: {"username": f"u-{w}"}),
        global_superuser(201, "perm_create", (409, None)),
    ),
    ("GET", "/users/{name}"): Route(
        "json", fixed("/users/mx_mem"), user_self(200, "perm_read", (200, None))
    ),
    ("GET", "/users/{name}/keys"): Route(
        "json", fixed("/users/mx_mem/keys"), user_self(200, "perm_read", (200, None))
    ),
    ("POST", "/users/{name}/keys"): Route(
        "json",
        per_identity("/users/mx_mem/keys", key_body),
        user_self(201, "perm_update", (409, None)),
    ),
    ("GET", "/users/{name}/keys/{key}"): Route(
        "json", fixed("/users/mx_mem/keys/default"), user_self(200, "perm_read", (200, None))
    ),
    ("DELETE", "/users/{name}/keys/{key}"): Route(
        "json",
        per_identity("/users/mx_mem/keys/k-{who}"),
        user_self(200, "perm_update", (404, None)),
    ),
    ("GET", "/organizations/{org}/users"): Route(
        "json", fixed(f"/organizations/{ORG}/users"), org_read()
    ),
    ("POST", "/organizations/{org}/users"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/users", lambda w: {"username": f"assoc-{w}"}),
        row(  # the superuser only; the org gate (not associated, unknown) comes first
            superuser=(201, None),
            admin=(403, "perm_create"),
            writer=(403, "perm_create"),
            reader=(403, "perm_create"),
            member=(403, "perm_create"),
            outsider=(403, "not_assoc"),
            other_org_client=(401, "unknown"),
            node=(403, "perm_create"),
            other_node=(403, "perm_create"),
            validator=(403, "perm_create"),
            replay=(409, None),
        ),
    ),
    # clients and their keys --------------------------------------------------------------
    ("GET", "/organizations/{org}/clients"): Route(
        "json", fixed(f"/organizations/{ORG}/clients"), org_read()
    ),
    ("POST", "/organizations/{org}/clients"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/clients", lambda w: {"name": f"c-{w}"}),
        org_admin(201, "perm_create", (409, None), validator=(201, None)),  # bootstrap
    ),
    ("GET", "/organizations/{org}/clients/{name}"): Route(
        "json", fixed(f"/organizations/{ORG}/clients/n1"), org_read()
    ),
    ("DELETE", "/organizations/{org}/clients/{name}"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/clients/victim-{{who}}"),
        org_admin(200, "perm_delete", (404, None)),
    ),
    ("GET", "/organizations/{org}/clients/{name}/keys"): Route(
        "json", fixed(f"/organizations/{ORG}/clients/n1/keys"), org_read()
    ),
    ("POST", "/organizations/{org}/clients/{name}/keys"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/clients/n1/keys", key_body),
        own_client_keys(201, (409, None)),
    ),
    ("GET", "/organizations/{org}/clients/{name}/keys/{key}"): Route(
        "json", fixed(f"/organizations/{ORG}/clients/n1/keys/default"), org_read()
    ),
    ("DELETE", "/organizations/{org}/clients/{name}/keys/{key}"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/clients/n1/keys/k-{{who}}"),
        own_client_keys(200, (404, None)),
    ),
    # groups --------------------------------------------------------------------------------
    ("GET", "/organizations/{org}/groups"): Route(
        "json", fixed(f"/organizations/{ORG}/groups"), org_read()
    ),
    ("POST", "/organizations/{org}/groups"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/groups", lambda w: {"groupname": f"new-{w}"}),
        org_admin(201, "perm_create", (409, None)),
    ),
    ("GET", "/organizations/{org}/groups/{name}"): Route(
        "json", fixed(f"/organizations/{ORG}/groups/admins"), org_read()
    ),
    ("PUT", "/organizations/{org}/groups/{name}"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/groups/g-{{who}}", lambda w: {"users": []}),
        org_admin(200, "perm_update", (200, None)),
    ),
    ("DELETE", "/organizations/{org}/groups/{name}"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/groups/d-{{who}}"),
        org_admin(200, "perm_delete", (404, None)),
    ),
    # node records ----------------------------------------------------------------------------
    ("GET", "/organizations/{org}/nodes"): Route(
        "json", fixed(f"/organizations/{ORG}/nodes"), org_read()
    ),
    ("POST", "/organizations/{org}/nodes"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/nodes", node_post_body),
        row(
            superuser=(201, None),
            admin=(201, None),
            writer=(403, "perm_create"),
            reader=(403, "perm_create"),
            member=(403, "perm_create"),
            outsider=(403, "not_assoc"),
            other_org_client=(401, "unknown"),
            node=(409, None),  # allowed for its own name, which exists
            other_node=(403, "perm_create"),  # a record named for someone else
            validator=(403, "perm_create"),
            replay=(409, None),
        ),
    ),
    ("GET", "/organizations/{org}/nodes/{name}"): Route(
        "json", fixed(f"/organizations/{ORG}/nodes/n1"), org_read()
    ),
    ("PUT", "/organizations/{org}/nodes/{name}"): Route(
        "json",
        fixed(f"/organizations/{ORG}/nodes/n1", {"name": "n1"}),
        row(
            superuser=(200, None),
            admin=(200, None),
            writer=(403, "perm_update"),
            reader=(403, "perm_update"),
            member=(403, "perm_update"),
            outsider=(403, "not_assoc"),
            other_org_client=(401, "unknown"),
            node=(200, None),  # its own record
            other_node=(403, "perm_update"),
            validator=(403, "perm_update"),
            replay=(200, None),
        ),
    ),
    ("DELETE", "/organizations/{org}/nodes/{name}"): Route(
        "json",
        per_identity(f"/organizations/{ORG}/nodes/del-{{who}}"),
        org_admin(200, "perm_delete", (404, None)),
    ),
    # search --------------------------------------------------------------------------------
    ("GET", "/organizations/{org}/search"): Route(
        "json", fixed(f"/organizations/{ORG}/search"), org_read()
    ),
    ("GET", "/organizations/{org}/search/{index}"): Route(
        "json", fixed(f"/organizations/{ORG}/search/node?q=name:n1"), org_read()
    ),
    ("POST", "/organizations/{org}/search/{index}"): Route(
        "json", fixed(f"/organizations/{ORG}/search/node", {"n": ["name"]}), org_read()
    ),
}

ACCEPT = {
    "json": "application/json",
    "public": "application/json",
    "octets": "application/octet-stream",
    "sse": "text/event-stream",
}


# --------------------------------------------------------------------------- requests


@dataclass
class Prepared:
    """One signed request, kept so that it can be sent again byte for byte (a replay)."""

    kind: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def prepare(route: Route, method: str, who: str, world: dict, *, now: float) -> Prepared:
    path, body_obj = route.target(who, world)
    body = b"" if body_obj is None else json.dumps(body_obj).encode()
    headers: dict[str, str] = {}
    if route.kind in ACCEPT:
        headers["Accept"] = ACCEPT[route.kind]
    if body:
        headers["Content-Type"] = "application/json"
    if route.kind == "ws":
        headers["Sec-WebSocket-Key"] = base64.b64encode(os.urandom(16)).decode()
    if who != UNSIGNED:
        key = world["keys"][who]
        signed_body = body + b"#" if who == TAMPERED else body
        stamp = {EXPIRED_TS: now - 1000, REPLAY_STALE: world["stale_t0"]}.get(who, now)
        headers.update(sign(key, USER_OF[who], method, path, signed_body, timestamp=stamp))
    return Prepared(route.kind, method, path, headers, body)


def send(http: httpx.Client, base: str, req: Prepared) -> tuple[int, Any, str | None]:
    """(status, JSON body or None, WWW-Authenticate); streams are not read past their headers."""
    if req.kind == "ws":
        return ws_handshake(base, req)
    if req.kind == "sse":
        with http.stream(req.method, req.path, headers=req.headers, content=req.body) as r:
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/event-stream")
                return 200, None, None
            r.read()
    else:
        r = http.request(req.method, req.path, headers=req.headers, content=req.body)
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), r.text
        return r.status_code, r.json(), r.headers.get("www-authenticate")
    return r.status_code, None, None


def ws_handshake(base: str, req: Prepared) -> tuple[int, Any, str | None]:
    """An HTTP/1.1 upgrade request by hand (the same bytes every time): 101, or the refusal."""
    parts = urllib.parse.urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"GET {req.path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in req.headers.items()),
    ]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:  # bounded
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return 101, None, None
        fields = dict(
            line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
        )
        fields = {k.lower(): v for k, v in fields.items()}
        length = int(fields.get("content-length", "0"))
        while len(rest) < length:  # bounded by the length
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        assert fields.get("content-type", "").startswith("application/json"), head
        return status, json.loads(rest[:length]), fields.get("www-authenticate")


# --------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world(srv: Server):
    """Org mx with every identity, its groups, and the objects the per-identity rows address."""
    admin, node_keys = setup_org(srv, ORG, ("n1", "n2", "runner", "v1", "v2", "v3", "v4"))
    _, other_keys = setup_org(srv, OTHER_ORG, ("oc1",))
    users = {who: new_user(admin, USER_OF[who], ORG) for who in (ADMIN, WRITER, READER, MEMBER)}
    outsider = new_user(admin, USER_OF[OUTSIDER], OTHER_ORG)
    set_group(admin, ORG, "admins", users=[USER_OF[ADMIN]])

    pivotal = srv.pivotal_key.read_bytes()
    keys: dict[str, Any] = {who: pivotal for who in IDENTITIES}
    keys.update({who: chef.key_pem for who, chef in users.items()})
    keys[OUTSIDER] = outsider.key_pem
    keys[OTHER_CLIENT] = other_keys["oc1"]
    keys[NODE] = node_keys["n1"]
    keys[OTHER_NODE] = node_keys["n2"]
    keys[WRONG_KEY] = private_pem(generate_rsa(2048))
    # the admin's deleted key and expired key
    gone, old = generate_rsa(2048), generate_rsa(2048)
    ada_keys = f"/users/{USER_OF[ADMIN]}/keys"
    r = admin.post(ada_keys, {"name": "gone", "public_key": public_pem(gone)})
    assert r.status_code == 201, r.text
    assert admin.delete(f"{ada_keys}/gone").status_code == 200
    r = admin.post(
        ada_keys,
        {"name": "old", "public_key": public_pem(old), "expiration_date": "2001-01-01T00:00:00Z"},
    )
    assert r.status_code == 201, r.text
    keys[DELETED_KEY], keys[EXPIRED_KEY] = private_pem(gone), private_pem(old)
    # the org's validator (its key is on every bootstrapping node): a key of our own for it
    validator = generate_rsa(2048)
    r = admin.post(
        f"/organizations/{ORG}/clients/{ORG}-validator/keys",
        {"name": "matrix", "public_key": public_pem(validator)},
    )
    assert r.status_code == 201, r.text
    keys[VALIDATOR] = private_pem(validator)

    # objects addressed per identity (a success must not change another cell's target)
    o = f"/organizations/{ORG}"
    for who in IDENTITIES:
        for path, body in (
            (f"{o}/clients", {"name": f"victim-{who}"}),
            (f"{o}/groups", {"groupname": f"g-{who}"}),
            (f"{o}/groups", {"groupname": f"d-{who}"}),
            (f"{o}/nodes", {"name": f"del-{who}"}),
            (f"{o}/clients/n1/keys", {"name": f"k-{who}", "public_key": THROWAWAY_PUBLIC}),
            (
                f"/users/{USER_OF[MEMBER]}/keys",
                {"name": f"k-{who}", "public_key": THROWAWAY_PUBLIC},
            ),
            ("/users", {"username": f"assoc-{who}"}),
        ):
            r = admin.post(path, body)
            assert r.status_code == 201, (path, r.text)
    assert admin.post(f"{o}/nodes", {"name": "n1"}).status_code == 201

    # a finished job with captured output, and a live (voting) job per identity that may abort
    ctx = zmq.Context()
    nodes = []
    try:
        runner = Node(srv, ORG, "runner", node_keys["runner"], ctx=ctx).connect()
        nodes.append(runner)
        join_node(runner)
        done = post_job(admin, ORG, ["runner"], capture_output=True)
        run_to_success(runner, done, stdout="out", stderr="")
        wait_job(admin, ORG, done, "complete", (runner,))
        live: dict[str, str] = {}
        for who, voter in zip(
            (SU, WRITER, REPLAY, REPLAY_STALE), ("v1", "v2", "v3", "v4"), strict=True
        ):
            node = Node(srv, ORG, voter, node_keys[voter], ctx=ctx).connect()
            nodes.append(node)
            join_node(node)
            live[who] = post_job(admin, ORG, [voter])
            node.expect("commit")  # never answered: the job stays voting (voting_timeout 600 s)
        spare = live[SU]  # refused identities never reach the job
        # the groups last: join_node polls node_states as the node itself
        set_group(admin, ORG, "pushy_job_writers", users=[USER_OF[WRITER]])
        set_group(admin, ORG, "pushy_job_readers", users=[USER_OF[READER]])
        # the finished job's process is gone: its feed is a single summary event
        deadline = time.monotonic() + 10
        while done in srv.status()["job_processes"] and time.monotonic() < deadline:
            time.sleep(0.05)
        yield {
            "admin": admin,
            "keys": {who: load_private_pem(pem) for who, pem in keys.items()},  # parsed once
            "pems": keys,
            "paths": lambda who: {"job": done, "live": live.get(who, spare)},
            "stale_t0": 0.0,
            "live": live,
        }
    finally:
        for node in nodes:
            node.close()
        ctx.destroy(linger=0)


# --------------------------------------------------------------------------- tests


class _StubContext:
    """Enough of a ServerContext to build the app and read its url_map."""

    settings = Settings()

    def __getattr__(self, name: str) -> Any:
        return mock.MagicMock(name=name)


def served_routes() -> set[tuple[str, str]]:
    app = create_app(_StubContext())
    out = set()
    for rule in app.url_map.iter_rules():
        template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in set(rule.methods or ()) - {"HEAD", "OPTIONS"}:
            out.add((method, template))
    return out


def test_matrix_covers_every_served_route():
    """A route added to the app without a row here fails; so does a row for a gone route."""
    served = served_routes()
    assert served == set(ROUTES), (
        f"routes without a matrix row: {sorted(served - set(ROUTES))}\n"
        f"rows for routes not served: {sorted(set(ROUTES) - served)}"
    )
    for key, route in ROUTES.items():
        assert set(route.expect) == set(IDENTITIES), key


def check(failures: list[str], key: tuple[str, str], who: str, got: tuple) -> None:
    """One cell: the status, the error body where fixed, and §6.1's challenge on every 401."""
    status, kind = ROUTES[key].expect[who]
    expected_body = None if kind is None else error_body(kind, USER_OF[who])
    if got[0] != status or (expected_body is not None and got[1] != expected_body):
        failures.append(
            f"{key[0]} {key[1]} as {who}: expected {status} {expected_body}, got {got[0]} {got[1]}"
        )
    elif status == 401 and got[2] != WWW_AUTH:
        failures.append(f"{key[0]} {key[1]} as {who}: 401 with WWW-Authenticate {got[2]!r}")


def test_authorization_matrix(srv, world):
    """Every route × every identity: the exact status, and the exact error body where fixed."""
    failures: list[str] = []
    cells = 0
    stale: list[tuple[tuple[str, str], Prepared]] = []
    world["stale_t0"] = float(int(time.time()) - SKEW + STALE_MARGIN)
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        # the stale replays first: sent once inside the window, again after it (below)
        for key, route in ROUTES.items():
            req = prepare(route, key[0], REPLAY_STALE, world, now=time.time())
            first = send(http, srv.url, req)
            if time.time() < world["stale_t0"] + SKEW - 1:  # still inside the window
                su_status = route.expect[SU][0]
                assert first[0] == su_status, (key, "stale replay's first send", first)
            stale.append((key, req))
        for key, route in ROUTES.items():
            for who in IDENTITIES:
                if who == REPLAY_STALE:
                    continue
                req = prepare(route, key[0], who, world, now=time.time())
                got = send(http, srv.url, req)
                if who == REPLAY:
                    # the original send: served like the superuser's own request
                    assert got[0] == route.expect[SU][0], (key, "replay's first send", got)
                    got = send(http, srv.url, req)
                check(failures, key, who, got)
                cells += 1
        deadline = world["stale_t0"] + SKEW + 1.5
        while time.time() < deadline:  # bounded: at most STALE_MARGIN + 1.5 s
            time.sleep(0.1)
        for key, req in stale:
            check(failures, key, REPLAY_STALE, send(http, srv.url, req))
            cells += 1
    assert cells == len(ROUTES) * len(IDENTITIES)
    print(f"authorization matrix: {len(ROUTES)} routes x {len(IDENTITIES)} identities = {cells}")
    assert not failures, f"{len(failures)} of {cells} cells differ:\n" + "\n".join(failures)
    assert_refused_callers_changed_nothing(world)


def assert_refused_callers_changed_nothing(world: dict) -> None:
    """The refused cells of mutating rows left their objects alone; the allowed ones acted."""
    admin = world["admin"]
    o = f"/organizations/{ORG}"
    refused = (WRITER, READER, MEMBER, OUTSIDER, OTHER_CLIENT, NODE, OTHER_NODE, UNSIGNED)
    refused += (EXPIRED_TS, WRONG_KEY, TAMPERED, DELETED_KEY, EXPIRED_KEY, VALIDATOR)
    for who in refused:
        assert admin.get(f"{o}/clients/victim-{who}").status_code == 200, who
        assert admin.get(f"{o}/groups/d-{who}").status_code == 200, who
        assert admin.get(f"{o}/nodes/del-{who}").status_code == 200, who
        assert admin.get(f"{o}/groups/new-{who}").status_code == 404, who
        assert admin.get(f"/organizations/o-{who}").status_code == 404, who
    for who in (SU, ADMIN, REPLAY, REPLAY_STALE):
        assert admin.get(f"{o}/clients/victim-{who}").status_code == 404, who
        assert admin.get(f"{o}/groups/new-{who}").status_code == 200, who
    # the validator registers clients (chef-client bootstrap), nothing else
    assert admin.get(f"{o}/clients/c-{VALIDATOR}").json()["validator"] is False
    # the live jobs the writers aborted, and only those
    for who, job_id in world["live"].items():
        r = admin.get(f"{o}/pushy/jobs/{job_id}")
        assert r.json()["status"] == "aborted", (who, r.text)
    # jobs started: the superuser, the writer, the replay twice, the stale replay once
    commands = [j for j in admin.get(f"{o}/pushy/jobs").json() if j["command"] == "chef-client"]
    # 1 finished job with output + 4 live ones (aborted) + 5 started in the matrix
    assert len(commands) == 10, commands


def test_a_job_is_reached_only_through_its_own_org(srv, world):
    """DESIGN fixes §10.1 #14: the original looked jobs up by id alone, so any org's URL
    reached any job. Here the superuser and a reader of the other org both get 404."""
    job = world["paths"](SU)["job"]
    other = f"/organizations/{OTHER_ORG}/pushy"
    readers = {
        "superuser": world["admin"],
        "member of the other org": Chef(srv.url, USER_OF[OUTSIDER], world["pems"][OUTSIDER]),
    }
    for who, chef in readers.items():
        for method, path, accept in (
            ("GET", f"{other}/jobs/{job}", "application/json"),
            ("GET", f"{other}/jobs/{job}/output/runner/stdout", "application/octet-stream"),
            ("GET", f"{other}/job_status_feed/{job}", "text/event-stream"),
            ("POST", f"{other}/jobs/{job}/abort", "application/json"),
        ):
            if method == "POST" and who != "superuser":
                continue  # not a writer there: 403 first (checked in the matrix)
            r = chef.request(method, path, headers={"Accept": accept})
            assert r.status_code == 404, (who, path, r.text)
            assert r.json() == {"error": f"job '{job}' not found"}, (who, path)
        r = chef.get(f"{other}/jobs")
        assert r.status_code == 200 and job not in r.text, (who, r.text)
