"""The OpenAPI 3.1 description of every HTTP route, served at ``GET /pushy/openapi.json``.

Kept as Python data next to the routes it describes: ``tests/e2e/test_openapi.py`` checks that
its paths and methods are exactly the app's url_map and validates real responses against its
schemas, so a route or a body shape cannot change without this document changing too. The
schemas follow what ``core.render``, ``core.identity`` and the routes really send (key sets are
closed where the server builds the object itself, open where the client supplies it, e.g. node
attributes). Chef's signed headers cannot be expressed as an OpenAPI security scheme type, so
the scheme is an ``apiKey`` on ``X-Ops-Authorization-1`` whose description (and the
``x-chef-signing`` extension) gives the whole protocol.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from appliance import __version__
from appliance.core import advertise, jobfsm

__all__ = ["OPENAPI", "document", "openapi_json"]

JSON = "application/json"
SSE = "text/event-stream"
OCTETS = "application/octet-stream"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json(description: str, schema: Schema, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _obj(
    props: dict[str, Schema], required: list[str] | None = None, *, closed: bool = True
) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def _path_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
    }


def _query(name: str, description: str, schema: Schema, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _body(schema: Schema, description: str, example: Any = None) -> Schema:
    media: Schema = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "description": description, "content": {JSON: media}}


# --------------------------------------------------------------------------- schemas

STRING = {"type": "string"}
NAME = {"type": "string", "minLength": 1}
URI = {"type": "string", "format": "uri"}
JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
RFC1123 = {
    "type": "string",
    "pattern": r"^[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT$",
    "example": "Tue, 04 Sep 2012 23:01:02 GMT",
}
SSE_TIME = {
    "type": "string",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$",
    "example": "2014-07-10 05:17:44.995958Z",
}
COUNT = {"type": "integer", "minimum": 0, "maximum": 2147483647}
JOB_STATUSES = list(jobfsm.JOB_STATUSES)
NODE_JOB_STATUSES = list(jobfsm.NODE_STATUSES)
AVAILABILITY = {"type": "string", "enum": ["available", "unavailable"]}
NODE_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": "^[^/\\u0000-\\u001f\\u007f]+$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
ACTOR_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"}  # users, clients, nodes
GROUP_NAME = {"type": "string", "pattern": "^[a-z0-9_-]{1,255}$"}
RUN_LIST_ITEM = {
    "type": "string",
    # x1c-x1f and x85 are whitespace to the server (Python's \s) but not to ECMA's
    "pattern": "^((recipe|role)\\[[^\\[\\]\\s\\x1c-\\x1f\\x85]+\\]|[A-Za-z0-9_.:@-]+)$",
    "description": "recipe[NAME], role[NAME], or a bare recipe name.",
}
NAME_LIST = {"type": "array", "items": {"type": "string"}}

_JOB_FIELDS: dict[str, Schema] = {
    "id": JOB_ID,
    "command": STRING,
    "status": {"type": "string", "enum": JOB_STATUSES},
    "run_timeout": COUNT,
    "created_at": RFC1123,
    "updated_at": RFC1123,
    "user": {"type": "string", "description": "The user the command runs as on the nodes."},
    "dir": {"type": "string", "description": "The working directory on the nodes."},
    "env": STRING_MAP,
    "capture_output": {"type": "boolean", "const": True, "description": "Only when true."},
    "file_specified": {
        "type": "boolean",
        "const": True,
        "description": "A file was given (left out with ?include_file=true).",
    },
    "file": {
        "type": "string",
        "pattern": "^(raw|base64):",
        "description": "The file as submitted; only with ?include_file=true.",
    },
}
_JOB_REQUIRED = ["id", "command", "status", "run_timeout", "created_at", "updated_at"]

SCHEMAS: dict[str, Schema] = {
    "ErrorList": {
        "description": "Chef's error form (authentication, authorization, identity API).",
        **_obj({"error": {"type": "array", "items": STRING, "minItems": 1}}, ["error"]),
    },
    "ErrorString": {
        "description": "The push-jobs error form (job validation, Accept, unknown path).",
        **_obj({"error": STRING}, ["error"]),
    },
    "Error": {"anyOf": [_ref("ErrorList"), _ref("ErrorString")]},
    "Status": _obj(
        {
            "status": {"type": "string", "const": "it's alive"},
            "incarnation_id": {"type": ["string", "null"], "format": "uuid"},
            "node_fsm_count": {"type": "integer", "minimum": 0},
            "job_processes": {"type": "array", "items": JOB_ID},
            "advertised": _ref("Advertised"),
        },
        ["status", "incarnation_id", "node_fsm_count", "job_processes", "advertised"],
    ),
    "Advertised": {
        "description": "The last check (at start, at each reload) of the name nodes are told to "
        "connect to: `ok`, or why nodes cannot connect (`problem` says it and the fix).",
        **_obj(
            {
                "server_name": NAME,
                "addresses": {
                    "type": "array",
                    "items": STRING,
                    "description": "What server_name resolves to on the server.",
                },
                "status": {"type": "string", "enum": list(advertise.STATUSES)},
                "problem": {"type": ["string", "null"]},
                "command_addr": {"type": "string", "pattern": "^tcp://"},
                "heartbeat_addr": {"type": "string", "pattern": "^tcp://"},
            },
            ["server_name", "addresses", "status", "problem", "command_addr", "heartbeat_addr"],
        ),
    },
    "OpenApiDocument": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\."}},
    },
    "NodeConfig": _obj(
        {
            "type": {"type": "string", "const": "config"},
            "host": STRING,
            "push_jobs": _obj(
                {
                    "heartbeat": _obj(
                        {
                            "out_addr": {"type": "string", "pattern": "^tcp://"},
                            "command_addr": {"type": "string", "pattern": "^tcp://"},
                            "interval": {"type": "number", "exclusiveMinimum": 0},
                            "offline_threshold": {"type": "integer", "const": 3},
                            "online_threshold": {"type": "integer", "const": 2},
                        },
                        [
                            "out_addr",
                            "command_addr",
                            "interval",
                            "offline_threshold",
                            "online_threshold",
                        ],
                    )
                },
                ["heartbeat"],
            ),
            "node": STRING,
            "organization": STRING,
            "public_key": {"type": "string", "pattern": "^-----BEGIN PUBLIC KEY-----"},
            "curve_public_key": {
                "type": "string",
                "minLength": 40,
                "maxLength": 40,
                "description": "Z85 CURVE key; absent when disable_curve_encryption is set.",
            },
            "encoded_session_key": _obj(
                {
                    "method": {"type": "string", "const": "hmac_sha256"},
                    "key": {
                        "type": "string",
                        "description": "base64 of the 32-byte session key, RSA-encrypted "
                        "(PKCS#1 v1.5) to the requester's public key.",
                    },
                },
                ["method", "key"],
            ),
            "lifetime": {"type": "number", "exclusiveMinimum": 0},
            "max_message_skew": {"type": "number", "exclusiveMinimum": 0},
            "max_body_size": {"type": "integer", "minimum": 1},
            "incarnation_id": {"type": "string", "format": "uuid"},
        },
        [
            "type",
            "host",
            "push_jobs",
            "node",
            "organization",
            "public_key",
            "encoded_session_key",
            "lifetime",
            "max_message_skew",
            "max_body_size",
            "incarnation_id",
        ],
    ),
    "JobRequest": {
        "description": "POST /jobs body. Checked in this order (the first fault wins): "
        "JSON object without repeated keys, types, unknown keys, empty nodes, node names, "
        'counts, env duplicates, file. Every fault is a 400 {"error": "..."}.',
        **_obj(
            {
                "command": {
                    "type": "string",
                    "description": "The whitelist job name; may be empty.",
                },
                "nodes": {
                    "type": "array",
                    "items": NODE_NAME,
                    "minItems": 1,
                    "uniqueItems": True,
                },
                "run_timeout": {
                    **COUNT,
                    "description": "Seconds; default: the server's default_running_timeout.",
                },
                "quorum": {
                    **COUNT,
                    "description": "Nodes that must accept; default: all. May exceed the node "
                    "count (the job then ends quorum_failed).",
                },
                "user": STRING,
                "dir": STRING,
                "env": {**STRING_MAP, "description": "No repeated names."},
                "file": {
                    "type": "string",
                    "pattern": "^(raw:|base64:)",
                    "description": "'raw:TEXT' or 'base64:DATA' (whitespace in DATA is skipped; "
                    "anything else that is not base64: 400); at most 100000 bytes decoded.",
                },
                "capture_output": {"type": "boolean", "default": False},
            },
            ["command", "nodes"],
        ),
    },
    "JobCreated": _obj({"uri": URI, "id": JOB_ID}, ["uri", "id"]),
    "JobSummary": _obj(dict(_JOB_FIELDS), list(_JOB_REQUIRED)),
    "Job": _obj(
        {
            "nodes": {
                "type": "object",
                "description": "Node status -> sorted node names; only statuses that occur.",
                "properties": {status: NAME_LIST for status in NODE_JOB_STATUSES},
                "additionalProperties": False,
            },
            **_JOB_FIELDS,
        },
        ["nodes", *_JOB_REQUIRED],
    ),
    "NodeStateItem": _obj(
        {"node_name": STRING, "availability": AVAILABILITY}, ["node_name", "availability"]
    ),
    "NodeState": _obj(
        {
            "node_name": STRING,
            "status": {"type": "string", "enum": ["online", "offline"]},
            "availability": AVAILABILITY,
        },
        ["node_name", "status", "availability"],
    ),
    # identity -------------------------------------------------------------------------------
    "NameMap": {
        "type": "object",
        "description": "name -> URL of the object.",
        "additionalProperties": URI,
    },
    "Created": _obj({"uri": URI}, ["uri"]),
    "OrgRequest": _obj(
        {
            "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,255}$"},
            "full_name": {"type": "string", "minLength": 1, "maxLength": 1023},
        },
        ["name", "full_name"],
        closed=False,
    ),
    "OrgCreated": _obj(
        {
            "uri": URI,
            "clientname": {"type": "string", "description": "ORG-validator"},
            "private_key": {"type": "string", "description": "The validator's private key."},
        },
        ["uri", "clientname", "private_key"],
    ),
    "Org": _obj(
        {
            "name": STRING,
            "full_name": STRING,
            "guid": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        },
        ["name", "full_name", "guid"],
    ),
    "ChefKey": _obj(
        {
            "name": STRING,
            "public_key": STRING,
            "expiration_date": STRING,
            "private_key": {"type": "string", "description": "Only when create_key was true."},
        },
        ["name", "public_key", "expiration_date"],
    ),
    "CreatedWithKey": _obj({"uri": URI, "chef_key": _ref("ChefKey")}, ["uri"]),
    "UserRequest": _obj(
        {
            "username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"},
            "display_name": STRING,
            "email": STRING,
            "first_name": STRING,
            "last_name": STRING,
            "create_key": {"type": "boolean"},
            "public_key": {"type": "string", "description": "PEM; not with create_key."},
        },
        ["username"],
        closed=False,
    ),
    "User": _obj(
        {
            "username": STRING,
            "display_name": STRING,
            "email": STRING,
            "first_name": STRING,
            "last_name": STRING,
        },
        ["username", "display_name", "email", "first_name", "last_name"],
    ),
    "Association": _obj(
        {"username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"}},
        ["username"],
        closed=False,
    ),
    "OrgUsers": {
        "type": "array",
        "items": _obj({"user": _obj({"username": STRING}, ["username"])}, ["user"]),
    },
    "ClientRequest": {
        **_obj(
            {
                "name": ACTOR_NAME,
                "clientname": {"description": "Used (and must be a name) when name is absent."},
                "validator": {"type": "boolean"},
                "create_key": {"type": "boolean"},
                "public_key": {"type": "string", "description": "PEM; not with create_key."},
            },
            closed=False,
        ),
        "anyOf": [
            {"required": ["name"]},
            {"required": ["clientname"], "properties": {"clientname": ACTOR_NAME}},
        ],
    },
    "Client": _obj(
        {
            "name": STRING,
            "clientname": STRING,
            "orgname": STRING,
            "validator": {"type": "boolean"},
            "json_class": {"type": "string", "const": "Chef::ApiClient"},
            "chef_type": {"type": "string", "const": "client"},
        },
        ["name", "clientname", "orgname", "validator", "json_class", "chef_type"],
    ),
    "KeyList": {
        "type": "array",
        "items": _obj(
            {"name": STRING, "uri": URI, "expired": {"type": "boolean"}},
            ["name", "uri", "expired"],
        ),
    },
    "Key": _obj(
        {"name": STRING, "public_key": STRING, "expiration_date": STRING},
        ["name", "public_key", "expiration_date"],
    ),
    "KeyRequest": {
        **_obj(
            {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"},
                "expiration_date": {
                    "type": "string",
                    "pattern": "^(infinity|"
                    "([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])-"
                    "(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|6[01])Z)$",
                    "default": "infinity",
                    "description": "UTC; a day the month does not have (e.g. 02-30): 400.",
                },
                "create_key": {"type": "boolean"},
                "public_key": {"type": "string", "description": "PEM; not with create_key."},
            },
            ["name"],
            closed=False,
        ),
        "description": "A new key: create_key true (the server makes the pair) or public_key.",
        "anyOf": [
            {"required": ["create_key"], "properties": {"create_key": {"const": True}}},
            {"required": ["public_key"]},
        ],
    },
    "KeyCreated": _obj(
        {"uri": URI, "private_key": {"type": "string", "description": "With create_key."}},
        ["uri"],
    ),
    "GroupRequest": _obj(
        {
            "groupname": GROUP_NAME,
            "name": {"description": "Used (and must be a name) when groupname is absent."},
        },
        closed=False,
    )
    | {
        "anyOf": [
            {"required": ["groupname"]},
            {"required": ["name"], "properties": {"name": GROUP_NAME}},
        ]
    },
    "GroupUpdate": {
        "type": "object",
        "description": "The members (each list replaces the old one; missing = empty), flat or "
        'under "actors". Renaming is refused.',
        "properties": {
            "users": NAME_LIST,
            "clients": NAME_LIST,
            "groups": NAME_LIST,
            "actors": {
                "anyOf": [
                    _obj(
                        {"users": NAME_LIST, "clients": NAME_LIST, "groups": NAME_LIST},
                        closed=False,
                    ),
                    NAME_LIST,
                ]
            },
            "groupname": STRING,
        },
    },
    "Group": _obj(
        {
            "actors": NAME_LIST,
            "users": NAME_LIST,
            "clients": NAME_LIST,
            "groups": NAME_LIST,
            "orgname": STRING,
            "name": STRING,
            "groupname": STRING,
        },
        ["actors", "users", "clients", "groups", "orgname", "name", "groupname"],
    ),
    "Node": _obj(
        {
            "name": STRING,
            "chef_environment": STRING,
            "json_class": {"type": "string", "const": "Chef::Node"},
            "chef_type": {"type": "string", "const": "node"},
            "run_list": NAME_LIST,
            "automatic": {"type": "object"},
            "normal": {"type": "object"},
            "default": {"type": "object"},
            "override": {"type": "object"},
        },
        [
            "name",
            "chef_environment",
            "json_class",
            "chef_type",
            "run_list",
            "automatic",
            "normal",
            "default",
            "override",
        ],
    ),
    "NodeRequest": {
        "type": "object",
        "description": "Chef node JSON; missing parts get defaults (environment _default, "
        "empty run list and attributes); bare run-list names become recipe[NAME]. On PUT, "
        "name may be left out but must otherwise be the URL's (400 Node name mismatch).",
        "properties": {
            "name": ACTOR_NAME,
            "chef_environment": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,255}$"},
            "json_class": {"type": "string", "const": "Chef::Node"},
            "chef_type": {"type": "string", "const": "node"},
            "run_list": {"type": "array", "items": RUN_LIST_ITEM},
            "automatic": {"type": "object"},
            "normal": {"type": "object"},
            "default": {"type": "object"},
            "override": {"type": "object"},
        },
    },
    "SearchIndexes": {
        "type": "object",
        "description": "index name -> its search URL (only node).",
        "additionalProperties": URI,
    },
    "SearchResult": _obj(
        {
            "total": {"type": "integer", "minimum": 0},
            "start": {"type": "integer", "minimum": 0},
            "rows": {
                "type": "array",
                "description": "Node records (GET) or partial-search rows (POST).",
                "items": {"anyOf": [_ref("Node"), _ref("PartialRow")]},
            },
        },
        ["total", "start", "rows"],
    ),
    "PartialRow": _obj({"url": URI, "data": {"type": "object"}}, ["url", "data"]),
    "PartialSearchRequest": {
        "description": 'alias -> attribute path, bare or as the only member "filter_result", '
        'e.g. {"name": ["name"], "ip": ["ipaddress"]}.',
        "anyOf": [
            {"type": "object", "additionalProperties": NAME_LIST},
            _obj(
                {"filter_result": {"type": "object", "additionalProperties": NAME_LIST}},
                ["filter_result"],
            ),
        ],
    },
}

SCHEMAS["NodeCreateRequest"] = {**SCHEMAS["NodeRequest"], "required": ["name"]}

# SSE event data and websocket messages: documentation (not validated by HTTP tooling).
_EVENTS: dict[str, Schema] = {
    "start": _obj(
        {
            "timestamp": SSE_TIME,
            "job": {**JOB_ID, "description": "Org feed only."},
            "command": STRING,
            "run_timeout": COUNT,
            "quorum": COUNT,
            "node_count": COUNT,
            "user": {"type": "string", "description": "The Chef identity that started the job."},
            "job_user": {"type": "string", "description": "The job's user option."},
            "dir": STRING,
            "env": STRING_MAP,
            "file_specified": {"type": "boolean", "const": True},
            "capture": {"type": "boolean"},
        },
        ["timestamp", "command", "run_timeout", "quorum", "node_count", "user"],
    ),
    "quorum_vote": _obj(
        {
            "timestamp": SSE_TIME,
            "node": STRING,
            "status": {
                "type": "string",
                "enum": [
                    "success",
                    "failure",
                    "voting_timeout",
                    "client_died_while_voting",
                    "lost_availibility",
                    "unexpected_commit",
                    "down",
                ],
            },
        },
        ["timestamp", "node", "status"],
    ),
    "quorum_succeeded": _obj({"timestamp": SSE_TIME}, ["timestamp"]),
    "run_start": _obj({"timestamp": SSE_TIME, "node": STRING}, ["timestamp", "node"]),
    "run_complete": _obj(
        {
            "timestamp": SSE_TIME,
            "node": STRING,
            "status": {
                "type": "string",
                "enum": [
                    "success",
                    "failure",
                    "crashed",
                    "run_nacked",
                    "run_nacked_while_running",
                    "client_died_while_running",
                ],
            },
        },
        ["timestamp", "node", "status"],
    ),
    "rehab": _obj({"timestamp": SSE_TIME, "node": STRING}, ["timestamp", "node"]),
    "job_complete": _obj(
        {
            "timestamp": SSE_TIME,
            "job": {**JOB_ID, "description": "Org feed only."},
            "status": {
                "type": "string",
                "enum": ["complete", "quorum_failed", "timed_out", "aborted", "crashed"],
            },
        },
        ["timestamp", "status"],
    ),
    "summary": {
        "description": "GET /jobs/ID's body with a leading timestamp.",
        "type": "object",
        "required": ["timestamp", "nodes", "id", "status"],
        "properties": {"timestamp": SSE_TIME},
    },
    "start_of_history": _obj({"timestamp": SSE_TIME}, ["timestamp"]),
}
for _name, _schema in _EVENTS.items():
    SCHEMAS[f"SseEvent_{_name}"] = _schema

_WS: dict[str, Schema] = {
    "hello": _obj(
        {
            "type": {"const": "hello"},
            "org": STRING,
            "timestamp": SSE_TIME,
            "keep_alive_time": {"type": "number"},
            "subscription": _ref("WsSubscription"),
            "nodes": {"type": "object", "additionalProperties": AVAILABILITY},
            "jobs": {"type": "array", "items": _ref("Job")},
        },
        ["type", "org", "timestamp", "keep_alive_time", "subscription", "nodes", "jobs"],
    ),
    "job_event": _obj(
        {
            "type": {"const": "job_event"},
            "job": JOB_ID,
            "event": STRING,
            "id": {"type": "string", "pattern": "^job-[0-9]+$"},
            "data": {"type": "object"},
        },
        ["type", "job", "event", "id", "data"],
    ),
    "org_event": _obj(
        {
            "type": {"const": "org_event"},
            "event": {"type": "string", "enum": ["start", "job_complete"]},
            "id": {"type": "string", "pattern": "^org-[0-9]+$"},
            "data": {"type": "object"},
        },
        ["type", "event", "id", "data"],
    ),
    "node": _obj(
        {
            "type": {"const": "node"},
            "node": STRING,
            "availability": AVAILABILITY,
            "status": {"type": "string", "enum": ["online", "offline"]},
            "timestamp": SSE_TIME,
        },
        ["type", "node", "availability", "status", "timestamp"],
    ),
    "subscribed": _obj(
        {"type": {"const": "subscribed"}, "subscription": _ref("WsSubscription")},
        ["type", "subscription"],
    ),
    "error": _obj({"type": {"const": "error"}, "error": STRING}, ["type", "error"]),
    "keepalive": _obj(
        {"type": {"const": "keepalive"}, "timestamp": SSE_TIME}, ["type", "timestamp"]
    ),
}
SCHEMAS["WsSubscription"] = _obj(
    {
        "jobs": {"anyOf": [{"const": "*"}, {"type": "array", "items": JOB_ID}]},
        "nodes": {"type": "boolean"},
    },
    ["jobs", "nodes"],
)
for _name, _schema in _WS.items():
    SCHEMAS[f"WsServer_{_name}"] = _schema
SCHEMAS["WsClientSubscribe"] = _obj(
    {
        "subscribe": _obj(
            {
                "jobs": {"anyOf": [{"const": "*"}, {"type": "array", "items": STRING}]},
                "nodes": {"type": "boolean"},
            }
        )
    },
    ["subscribe"],
)


# --------------------------------------------------------------------------- responses

_WWW_AUTH = {
    "WWW-Authenticate": {
        "description": 'Always X-Ops-Sign version="1.0" version="1.1" (as the original).',
        "schema": STRING,
    }
}

RESPONSES: dict[str, Schema] = {
    "BadRequest": _json(
        "Malformed request: missing X-Ops headers or unsupported X-Ops-Sign (error list), "
        "an invalid body (identity and search: error list; POST /jobs: error string).",
        _ref("Error"),
    ),
    "Unauthorized": _json(
        "Not authenticated: clock skew over 900 s, unknown user or client, bad signature, "
        "bad X-Ops-Timestamp.",
        _ref("ErrorList"),
        _WWW_AUTH,
    ),
    "Forbidden": _json(
        "Authenticated but not allowed (not an org member, not in the group the action needs).",
        _ref("ErrorList"),
    ),
    "NotFound": _json(
        "The organization (error list), the object (identity: error list; jobs: error string) "
        "or the path (error string) does not exist.",
        _ref("Error"),
    ),
    "Conflict": _json("The object already exists.", _ref("ErrorList")),
    "NotAcceptable": _json(
        "The Accept header excludes the only type this route produces.", _ref("ErrorString")
    ),
    "PayloadTooLarge": _json(
        "Body over 1000000 bytes (the connection is closed).", _ref("ErrorString")
    ),
    "Unavailable": _json(
        "The server cannot write its state (e.g. disk full); nothing was changed.",
        _ref("Error"),
    ),
    "InternalError": _json("Unexpected server fault (see the server log).", _ref("ErrorString")),
}

_SIGNED = {
    "400": _resp("BadRequest"),
    "401": _resp("Unauthorized"),
    "403": _resp("Forbidden"),
    "404": _resp("NotFound"),
    "406": _resp("NotAcceptable"),
    "500": _resp("InternalError"),
}
_WRITES = {"413": _resp("PayloadTooLarge"), "503": _resp("Unavailable")}


def _op(
    op_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    *,
    description: str | None = None,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    signed: bool = True,
    writes: bool = False,
    extra: dict[str, Any] | None = None,
) -> Schema:
    out: Schema = {"operationId": op_id, "tags": [tag], "summary": summary}
    if description:
        out["description"] = description
    if parameters:
        out["parameters"] = parameters
    if body is not None:
        out["requestBody"] = body
    merged = {**(_SIGNED if signed else {}), **(_WRITES if writes else {}), **responses}
    if body is not None:
        merged.setdefault("413", _resp("PayloadTooLarge"))
    out["responses"] = dict(sorted(merged.items()))
    if not signed:
        out["security"] = []
    if extra:
        out.update(extra)
    return out


# --------------------------------------------------------------------------- parameters

ORG = _path_param("org", "Organization name.")
NODE = _path_param("node", "Node (client) name.")
JOB = _path_param("job_id", "Job id (32 lowercase hex digits).", JOB_ID)
NAME_P = _path_param("name", "Object name.")
KEY_P = _path_param("key", "Key name.")
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this event id (standard SSE).",
    "schema": STRING,
}
SEARCH_PARAMS = [
    _query(
        "q",
        "Chef query (Lucene syntax: field:value, AND/OR/NOT, wildcards, phrases, ranges); "
        "default *:*. Clients that encode it twice are understood. A query that does not "
        "parse: 400.",
        {"type": "string", "minLength": 1},
    ),
    _query(
        "start",
        "Index of the first row (default 0).",
        {"type": "string", "pattern": "^[0-9]{1,18}$"},
    ),
    _query("rows", "Rows per page (default 1000).", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
    _query(
        "sort", "Sort order: FIELD [asc|desc], comma-separated, e.g. 'name asc' (else 400).", STRING
    ),
]

_SSE_EVENTS_TEXT = (
    "Each event is 'event: NAME', 'id: ID', 'data: {compact JSON}' lines and a blank line; "
    "data always starts with timestamp (YYYY-MM-DD HH:MM:SS.uuuuuuZ, UTC). After "
    "keep_alive_time seconds without an event the comment ':keepalive' and a blank line are "
    "sent. The x-sse-events extension maps each event name to its data schema."
)


def _sse(description: str, events: list[str]) -> Schema:
    return {
        "description": description,
        "headers": {
            "X-Accel-Buffering": {"description": "no", "schema": STRING},
            "Cache-Control": {"description": "no-cache", "schema": STRING},
        },
        # for text/event-stream, ``schema`` describes one event (the convention OpenAPI 3.2
        # names itemSchema, which tools such as schemathesis apply to 3.1 documents too)
        "content": {SSE: {"schema": _sse_event(events)}},
        "x-sse-events": {name: _ref(f"SseEvent_{name}") for name in events},
    }


def _sse_event(events: list[str]) -> Schema:
    return {
        "type": "object",
        "description": "One event of the stream (comments such as :keepalive are not events).",
        "properties": {
            "event": {"type": "string", "enum": events},
            "id": {"type": "string", "pattern": "^(job-[0-9]+|org-[0-9]+|start_id)$"},
            "data": {
                "type": "string",
                "pattern": '^\\{"timestamp":',
                "description": "Compact JSON; x-sse-events gives its schema for each event name.",
            },
        },
        "required": ["event", "id", "data"],
    }


_JOB_EVENTS = [
    "start",
    "quorum_vote",
    "quorum_succeeded",
    "run_start",
    "run_complete",
    "rehab",
    "job_complete",
    "summary",
]
_ORG_EVENTS = ["start", "job_complete", "start_of_history"]


def _config_op(op_id: str, alias: bool) -> Schema:
    return _op(
        op_id,
        "push jobs",
        "A node's connection settings and session key" + (" (alias of config)" if alias else ""),
        {
            "200": _json("The node config; keys in this order.", _ref("NodeConfig")),
            "401": _json(
                "Not authenticated (with WWW-Authenticate), or a ccpk that is not a "
                '40-character Z85 key ({"error": ["Bad ccpk"]}, without).',
                _ref("ErrorList"),
            ),
            "503": _resp("Unavailable"),
        },
        description="Given to the node's own client (any client of the org when "
        "validate_client_node_name is false) and to the superuser; other users get 403 (the "
        "session key goes to no one else). A node's own fetch registers its CURVE key (ccpk) "
        "and rotates its session key (the previous one stays valid for session_key_grace "
        "seconds).",
        parameters=[
            ORG,
            NODE,
            _query(
                "ccpk",
                "The node's CURVE public key, Z85 (40 characters; one that is not a key: 401 "
                '{"error": ["Bad ccpk"]}). Missing: 400 {"error": ["Missing ccpk"]}, unless the '
                "server runs with disable_curve_encryption (it is then ignored).",
                {"type": "string", "pattern": "^[0-9a-zA-Z.:+=^!/*?&<>()\\[\\]{}@%$#-]{40}$"},
                required=True,
            ),
            _query("version", "Client protocol version (sent by clients, ignored).", STRING),
        ],
    )


_FEED_JOB_DESC = (
    "The job's events from the start (or after Last-Event-ID = job-N), then live ones; the "
    "stream ends after job_complete. A job that finished more than wait_complete_time seconds "
    "ago gets one summary event (id job-1) and the stream ends. " + _SSE_EVENTS_TEXT
)
_FEED_ORG_DESC = (
    "start and job_complete events of every job of the org (data.job names it). Without "
    "Last-Event-ID only new events; with a known id (org-N) the buffered events after it; "
    "with an unknown one a start_of_history event, then every event of the last "
    "org_feed_expiration seconds. Never ends. " + _SSE_EVENTS_TEXT
)


def _job_feed(op_id: str, alias: bool) -> Schema:
    return _op(
        op_id,
        "feeds",
        "Server-Sent Events of one job" + (" (documented alias)" if alias else ""),
        {"200": _sse("The event stream.", _JOB_EVENTS)},
        description=_FEED_JOB_DESC,
        parameters=[ORG, JOB, LAST_EVENT_ID],
    )


def _org_feed(op_id: str, alias: bool) -> Schema:
    return _op(
        op_id,
        "feeds",
        "Server-Sent Events of the org's jobs" + (" (documented alias)" if alias else ""),
        {"200": _sse("The event stream.", _ORG_EVENTS)},
        description=_FEED_ORG_DESC,
        parameters=[ORG, LAST_EVENT_ID],
    )


P = "/organizations/{org}/pushy"
PATHS: dict[str, dict[str, Schema]] = {
    # status ---------------------------------------------------------------------------------
    "/pushy/_status": {
        "get": _op(
            "getStatus",
            "status",
            "Health check (no authentication)",
            {
                "200": _json("The server is up.", _ref("Status")),
                "500": _resp("InternalError"),
            },
            signed=False,
        )
    },
    "/pushy/openapi.json": {
        "get": _op(
            "getOpenApi",
            "status",
            "The OpenAPI document (no authentication)",
            {"200": _json("The OpenAPI 3.1 document.", _ref("OpenApiDocument"))},
            signed=False,
        )
    },
    # push jobs ------------------------------------------------------------------------------
    P + "/config/{node}": {"get": _config_op("getNodeConfig", False)},
    P + "/connect/{node}": {"get": _config_op("getNodeConnect", True)},
    P + "/jobs": {
        "get": _op(
            "listJobs",
            "push jobs",
            "Every job of the org, newest first",
            {"200": _json("Job summaries.", {"type": "array", "items": _ref("JobSummary")})},
            description="Needs read access (pushy_job_readers when that group exists).",
            parameters=[ORG],
        ),
        "post": _op(
            "createJob",
            "push jobs",
            "Start a job",
            {
                "201": _json(
                    "The job was started (stored, commits sent).",
                    _ref("JobCreated"),
                    {"Location": {"description": "The job's URL.", "schema": URI}},
                ),
                "415": _json("Content-Type is not application/json.", _ref("ErrorString")),
            },
            description="Needs write access (pushy_job_writers when that group exists, else "
            "admins).",
            parameters=[ORG],
            body=_body(
                _ref("JobRequest"),
                "The job.",
                {"command": "chef-client", "nodes": ["web1", "web2"], "quorum": 1},
            ),
            writes=True,
        ),
    },
    P + "/jobs/{job_id}": {
        "get": _op(
            "getJob",
            "push jobs",
            "One job with its nodes by status",
            {"200": _json("The job.", _ref("Job"))},
            parameters=[
                ORG,
                JOB,
                _query(
                    "include_file",
                    "Exactly 'true': include file (as submitted) instead of file_specified.",
                    STRING,
                ),
            ],
        )
    },
    P + "/jobs/{job_id}/abort": {
        "post": _op(
            "abortJob",
            "push jobs",
            "Abort a live job",
            {
                "200": _json("The job, now aborted.", _ref("Job")),
                "409": _json("The job has already finished.", _ref("ErrorString")),
            },
            description="Needs write access. Live nodes are told to abort (aborted, rehab). "
            "No request body.",
            parameters=[ORG, JOB],
            writes=True,
        )
    },
    P + "/jobs/{job_id}/output/{node}/{channel}": {
        "get": _op(
            "getJobOutput",
            "push jobs",
            "A node's captured stdout or stderr",
            {
                "200": {
                    "description": "The raw bytes (may be empty).",
                    "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
                },
                "406": _json("Accept excludes application/octet-stream.", _ref("ErrorString")),
            },
            description="Only for jobs started with capture_output, once the node has "
            "finished. 404 when nothing was captured for the node or the channel is not "
            "stdout/stderr.",
            parameters=[
                ORG,
                JOB,
                NODE,
                _path_param(
                    "channel", "stdout or stderr.", {"type": "string", "enum": ["stdout", "stderr"]}
                ),
            ],
        )
    },
    P + "/node_states": {
        "get": _op(
            "listNodeStates",
            "push jobs",
            "Online nodes of the org and their availability",
            {
                "200": _json(
                    "Online nodes, by name.", {"type": "array", "items": _ref("NodeStateItem")}
                )
            },
            parameters=[ORG],
        )
    },
    P + "/node_states/{node}": {
        "get": _op(
            "getNodeState",
            "push jobs",
            "One node's state (never 404: an unknown node is offline)",
            {"200": _json("The node's state.", _ref("NodeState"))},
            parameters=[ORG, NODE],
        )
    },
    P + "/job_status_feed/{job_id}": {"get": _job_feed("jobFeed", False)},
    P + "/jobs_status_feed/{job_id}": {"get": _job_feed("jobFeedAlias", True)},
    P + "/job_status_feed": {"get": _org_feed("orgFeed", False)},
    P + "/jobs_status_feed": {"get": _org_feed("orgFeedAlias", True)},
    P + "/ws": {
        "get": _op(
            "statusWebsocket",
            "feeds",
            "Websocket status stream (GET with Upgrade: websocket)",
            {
                "101": {
                    "description": "Switched to the websocket protocol; messages are JSON text "
                    "(x-websocket lists them). Close codes: 1001 server shutting down, 1008 "
                    "reader too slow (more than 1024 messages behind)."
                },
                "400": _json("Not a websocket handshake, or bad X-Ops headers.", _ref("Error")),
            },
            description="The handshake is signed like any request (GET of the path, empty "
            "body) and needs read access; a refused handshake gets the usual status and JSON "
            "error and is not upgraded. The server sends hello first (online nodes, live "
            "jobs), then job_event, org_event and node messages, keepalive after "
            "keep_alive_time seconds of silence. The client may send a subscribe message at "
            "any time.",
            parameters=[ORG],
            extra={
                "x-websocket": {
                    "server-messages": {name: _ref(f"WsServer_{name}") for name in _WS},
                    "client-messages": {"subscribe": _ref("WsClientSubscribe")},
                }
            },
        )
    },
}

# identity ------------------------------------------------------------------------------------
_ID = "identity"
_O = "/organizations/{org}"


def _get(op_id: str, summary: str, schema: Schema, params: list[Schema]) -> Schema:
    return _op(op_id, _ID, summary, {"200": _json("OK.", schema)}, parameters=params)


def _post(
    op_id: str, summary: str, request: str, reply: Schema, params: list[Schema], **kw: Any
) -> Schema:
    return _op(
        op_id,
        _ID,
        summary,
        {
            "201": _json("Created.", reply),
            "409": _resp("Conflict"),
        },
        parameters=params,
        body=_body(_ref(request), "The object."),
        writes=True,
        **kw,
    )


def _delete(op_id: str, summary: str, schema: Schema, params: list[Schema]) -> Schema:
    return _op(
        op_id,
        _ID,
        summary,
        {"200": _json("Deleted; the object as it was.", schema)},
        parameters=params,
        writes=True,
    )


PATHS.update(
    {
        "/organizations": {
            "get": _get("listOrgs", "Organizations (superuser)", _ref("NameMap"), []),
            "post": _post(
                "createOrg",
                "Create an organization (superuser)",
                "OrgRequest",
                _ref("OrgCreated"),
                [],
                description="Also creates the groups admins, users, clients and the client "
                "ORG-validator, whose private key is in the answer.",
            ),
        },
        _O: {"get": _get("getOrg", "An organization", _ref("Org"), [ORG])},
        "/users": {
            "get": _get("listUsers", "Users (superuser)", _ref("NameMap"), []),
            "post": _post(
                "createUser",
                "Create a user (superuser)",
                "UserRequest",
                _ref("CreatedWithKey"),
                [],
            ),
        },
        "/users/{name}": {"get": _get("getUser", "A user", _ref("User"), [NAME_P])},
        "/users/{name}/keys": {
            "get": _get("listUserKeys", "A user's keys", _ref("KeyList"), [NAME_P]),
            "post": _post(
                "addUserKey", "Add a key to a user", "KeyRequest", _ref("KeyCreated"), [NAME_P]
            ),
        },
        "/users/{name}/keys/{key}": {
            "get": _get("getUserKey", "One key of a user", _ref("Key"), [NAME_P, KEY_P]),
            "delete": _delete("deleteUserKey", "Delete a user's key", _ref("Key"), [NAME_P, KEY_P]),
        },
        _O + "/users": {
            "get": _get("listOrgUsers", "Users of an organization", _ref("OrgUsers"), [ORG]),
            "post": _post(
                "associateUser",
                "Add a user to an organization (superuser)",
                "Association",
                _ref("Created"),
                [ORG],
            ),
        },
        _O + "/clients": {
            "get": _get("listClients", "Clients (nodes' API identities)", _ref("NameMap"), [ORG]),
            "post": _post(
                "createClient",
                "Create a client (admins, or the validator)",
                "ClientRequest",
                _ref("CreatedWithKey"),
                [ORG],
            ),
        },
        _O + "/clients/{name}": {
            "get": _get("getClient", "A client", _ref("Client"), [ORG, NAME_P]),
            "delete": _delete(
                "deleteClient",
                "Delete a client (its node is disconnected)",
                _ref("Client"),
                [ORG, NAME_P],
            ),
        },
        _O + "/clients/{name}/keys": {
            "get": _get("listClientKeys", "A client's keys", _ref("KeyList"), [ORG, NAME_P]),
            "post": _post(
                "addClientKey",
                "Add a key to a client",
                "KeyRequest",
                _ref("KeyCreated"),
                [ORG, NAME_P],
            ),
        },
        _O + "/clients/{name}/keys/{key}": {
            "get": _get("getClientKey", "One key of a client", _ref("Key"), [ORG, NAME_P, KEY_P]),
            "delete": _delete(
                "deleteClientKey", "Delete a client's key", _ref("Key"), [ORG, NAME_P, KEY_P]
            ),
        },
        _O + "/groups": {
            "get": _get("listGroups", "Groups", _ref("NameMap"), [ORG]),
            "post": _post(
                "createGroup", "Create a group (admins)", "GroupRequest", _ref("Created"), [ORG]
            ),
        },
        _O + "/groups/{name}": {
            "get": _get("getGroup", "A group", _ref("Group"), [ORG, NAME_P]),
            "put": _op(
                "updateGroup",
                _ID,
                "Set a group's members (admins)",
                {"200": _json("The group as updated.", _ref("Group"))},
                parameters=[ORG, NAME_P],
                body=_body(_ref("GroupUpdate"), "The members."),
                writes=True,
            ),
            "delete": _delete(
                "deleteGroup",
                "Delete a group (admins; not admins, users, clients)",
                _ref("Group"),
                [ORG, NAME_P],
            ),
        },
        _O + "/nodes": {
            "get": _get("listNodes", "Node records", _ref("NameMap"), [ORG]),
            "post": _post(
                "createNode",
                "Create a node record (admins, or the node's own client)",
                "NodeCreateRequest",
                _ref("Created"),
                [ORG],
            ),
        },
        _O + "/nodes/{name}": {
            "get": _get("getNode", "A node record", _ref("Node"), [ORG, NAME_P]),
            "put": _op(
                "updateNode",
                _ID,
                "Replace a node record (admins, or the node's own client)",
                {"200": _json("The node as stored.", _ref("Node"))},
                parameters=[ORG, NAME_P],
                body=_body(_ref("NodeRequest"), "The node."),
                writes=True,
            ),
            "delete": _delete("deleteNode", "Delete a node record", _ref("Node"), [ORG, NAME_P]),
        },
        # search -------------------------------------------------------------------------------
        _O + "/search": {
            "get": _op(
                "listSearchIndexes",
                "search",
                "Search indexes",
                {"200": _json("The indexes.", _ref("SearchIndexes"))},
                parameters=[ORG],
            )
        },
        _O + "/search/{index}": {
            "get": _op(
                "searchNodes",
                "search",
                "Search node records",
                {"200": _json("One page of matching nodes.", _ref("SearchResult"))},
                description="Only the node index exists (another index: 404).",
                parameters=[ORG, _path_param("index", "node"), *SEARCH_PARAMS],
            ),
            "post": _op(
                "partialSearchNodes",
                "search",
                "Partial search: selected attributes of matching nodes",
                {"200": _json("One page of {url, data} rows.", _ref("SearchResult"))},
                parameters=[ORG, _path_param("index", "node"), *SEARCH_PARAMS],
                body=_body(
                    _ref("PartialSearchRequest"),
                    "What to return for each node.",
                    {"name": ["name"], "ip": ["ipaddress"]},
                ),
                writes=False,
            ),
        },
    }
)

_SIGNING_TEXT = """\
Every route except /pushy/_status and /pushy/openapi.json needs a request signed the Chef
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

OPENAPI: dict[str, Any] = {
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
        {"name": "status", "description": "Unauthenticated health and description."},
    ],
    "security": [{"chefSignedHeaders": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
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
            }
        },
    },
}

_SERIALIZED = orjson.dumps(OPENAPI)


def document() -> dict[str, Any]:
    """A copy of the document (callers may change it)."""
    return copy.deepcopy(OPENAPI)


def openapi_json() -> bytes:
    """The document as served: compact JSON."""
    return _SERIALIZED
