"""The OpenAPI 3.1 document served at ``GET /pushy/openapi.json``, generated from the app.

Its paths are the app's routes with the operation each handler declares beside itself
(``apidoc``); its components are the shared schemas (``schemas``, ``identity_schemas``) and
the common responses below. ``tests/e2e/test_openapi.py`` checks the paths against the url_map
both ways and validates real responses against the schemas. Chef's signed headers cannot be
expressed as an OpenAPI security scheme type, so the scheme is an ``apiKey`` on
``X-Ops-Authorization-1`` whose description (and the ``x-chef-signing`` extension) gives the
whole protocol.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from quart import Quart

from appliance import __version__
from appliance.server import apidoc
from appliance.server.apidoc import json_reply, ref
from appliance.server.identity_schemas import IDENTITY_SCHEMAS
from appliance.server.schemas import SCHEMAS, STREAM_SCHEMAS, STRING

__all__ = ["RESPONSES", "document", "openapi_json"]

Schema = dict[str, Any]

# --------------------------------------------------------------------------- responses

# --------------------------------------------------------------------------- responses

_WWW_AUTH = {
    "WWW-Authenticate": {
        "description": 'Always X-Ops-Sign version="1.0" version="1.1" (as the original).',
        "schema": STRING,
    }
}

RESPONSES: dict[str, Schema] = {
    "BadRequest": json_reply(
        "Malformed request: missing X-Ops headers or unsupported X-Ops-Sign (error list), "
        "an invalid body (identity and search: error list; POST /jobs: error string).",
        ref("Error"),
    ),
    "Unauthorized": json_reply(
        "Not authenticated: clock skew over 900 s, unknown user or client, bad signature, "
        "bad X-Ops-Timestamp.",
        ref("ErrorList"),
        _WWW_AUTH,
    ),
    "Forbidden": json_reply(
        "Authenticated but not allowed (not an org member, not in the group the action needs).",
        ref("ErrorList"),
    ),
    "NotFound": json_reply(
        "The organization (error list), the object (identity: error list; jobs: error string) "
        "or the path (error string) does not exist.",
        ref("Error"),
    ),
    "Conflict": json_reply("The object already exists.", ref("ErrorList")),
    "NotAcceptable": json_reply(
        "The Accept header excludes the only type this route produces.", ref("ErrorString")
    ),
    "PayloadTooLarge": json_reply(
        "Body over 1000000 bytes (the connection is closed).", ref("ErrorString")
    ),
    "Unavailable": json_reply(
        "The server cannot write its state (e.g. disk full); nothing was changed.",
        ref("Error"),
    ),
    "InternalError": json_reply(
        "Unexpected server fault (see the server log).", ref("ErrorString")
    ),
}

_SIGNING_TEXT = """\
Every route except /pushy/_status, /pushy/openapi.json, /metrics (allowed by address:
metrics_allow) and the web dashboard's page and session routes needs a request signed the Chef
way (mixlib-authentication), with the requester's RSA private key (a user's or a client's):

- X-Ops-Userid: the user or client name.
- X-Ops-Timestamp: UTC, YYYY-MM-DDTHH:MM:SSZ; must be within 900 s of the server's clock.
- X-Ops-Sign: algorithm=sha1;version=1.0 | algorithm=sha1;version=1.1 |
  algorithm=sha256;version=1.3 (1.2, RSA-SHA1, is accepted too).
- X-Ops-Content-Hash: base64 of the body's digest (SHA-1; SHA-256 for 1.3).
- X-Ops-Server-API-Version: an integer (signed in 1.3; default 0); knife sends 1.
- X-Ops-Authorization-1..N: the base64 signature cut into 60-character pieces.

The signed text, for 1.0 and 1.1 (1.1 puts base64(SHA-1(user id)) on the last line):

    Method:GET
    Hashed Path:base64(SHA-1(path))
    X-Ops-Content-Hash:...
    X-Ops-Timestamp:...
    X-Ops-UserId:...

signed by raw RSA private encryption (PKCS#1 type 1) of that text; for 1.3:

    Method:GET
    Path:/organizations/acme/pushy/jobs
    X-Ops-Content-Hash:...
    X-Ops-Sign:version=1.3
    X-Ops-Timestamp:...
    X-Ops-UserId:...
    X-Ops-Server-API-Version:1

signed with RSA-SHA256 (PKCS#1 v1.5). The path has no query string, no repeated or trailing
slash. Errors are checked in this order: missing headers or unsupported version (400), clock
(401), unknown organization (404), unknown principal or bad signature (401), not a member of
the organization (403), group rules (403)."""

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pushy: Chef Push Jobs 2.1 server API",
        "version": __version__,
        "description": "The Push Jobs REST API and feeds, the Chef identity subset and node "
        "search, as served by pushy on its API port. Every route tolerates a trailing slash. "
        "Request bodies are at most 1000000 bytes (identity bodies: at most 100 levels of "
        "nesting). docs/api.md has examples.",
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    },
    "tags": [
        {"name": "push jobs", "description": "Jobs, node config and node states."},
        {"name": "feeds", "description": "Server-Sent Events and the websocket stream."},
        {
            "name": "identity",
            "description": "Chef Server API subset: orgs, users, clients, keys, groups, nodes.",
        },
        {"name": "search", "description": "Chef node search."},
        {"name": "status", "description": "Unauthenticated health, description and metrics."},
        {
            "name": "dashboard",
            "description": "The web dashboard: its pages, log-in links and sessions "
            "(docs/dashboard.md).",
        },
    ],
    "security": [{"chefSignedHeaders": []}],
    "paths": {},  # filled from the app's routes by ``document``
    "components": {
        "schemas": {**SCHEMAS, **IDENTITY_SCHEMAS, **STREAM_SCHEMAS},
        "responses": RESPONSES,
        "securitySchemes": {
            "chefSignedHeaders": {
                "type": "apiKey",
                "in": "header",
                "name": "X-Ops-Authorization-1",
                "description": _SIGNING_TEXT,
                "x-chef-signing": {
                    "headers": [
                        "X-Ops-Userid",
                        "X-Ops-Timestamp",
                        "X-Ops-Sign",
                        "X-Ops-Content-Hash",
                        "X-Ops-Server-API-Version",
                        "X-Ops-Authorization-N",
                    ],
                    "versions": {
                        "1.0": "SHA-1 hashes; raw RSA private encryption of the text",
                        "1.1": "as 1.0, user id hashed (SHA-1, base64) in the text",
                        "1.2": "as 1.1, RSA-SHA1 PKCS#1 v1.5 signature (verify only)",
                        "1.3": "SHA-256 hashes; RSA-SHA256 PKCS#1 v1.5; signs the API version",
                    },
                    "max_clock_skew_seconds": 900,
                },
            },
            "dashboardSession": {
                "type": "apiKey",
                "in": "cookie",
                "name": "pushy_session",
                "description": "The web dashboard's session (docs/dashboard.md), opened by "
                "POST /pushy/dashboard/session with a one-time log-in link's token. Accepted "
                "by the routes that list it, as the session's user, with the same permission "
                "checks as a signed request; only when the request has no "
                "X-Ops-Authorization-1. Writes (POST, PUT, DELETE) also need the session's "
                "X-CSRF-Token header and an Origin equal to the server's own (403 otherwise); "
                "a websocket handshake needs that Origin.",
            },
        },
    },
}


def document(app: Quart) -> dict[str, Any]:
    """The document for ``app``'s routes (a fresh copy: callers may change it)."""
    out = copy.deepcopy(_DOCUMENT)
    out["paths"] = copy.deepcopy(apidoc.paths(app))
    return out


def openapi_json(app: Quart) -> bytes:
    """The document as served: compact JSON, made once per app (its routes do not change)."""
    cached = app.extensions.get("pushy.openapi")
    if cached is None:
        cached = app.extensions["pushy.openapi"] = orjson.dumps(document(app))
    return cached
