"""The component schemas of the API document: what the push-jobs routes, the feeds and the
websocket send, as JSON Schema (key sets closed where the server builds the object itself).

The job request's schema is the core's (``core.jobschema``): the validator reads it too.
SSE event data and websocket messages are documentation (no HTTP tooling validates them);
tests/e2e/test_openapi.py checks real events against them.
"""

from __future__ import annotations

from typing import Any

from appliance.core import advertise, jobfsm, jobschema
from appliance.core.schemacheck import NAME_LIST, STRING, obj
from appliance.server.apidoc import path_param, ref

Schema = dict[str, Any]


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
COUNT = jobschema.COUNT
JOB_STATUSES = list(jobfsm.JOB_STATUSES)
NODE_JOB_STATUSES = list(jobfsm.NODE_STATUSES)
AVAILABILITY = {"type": "string", "enum": ["available", "unavailable"]}
STRING_MAP = jobschema.STRING_MAP

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
    # rolling execution (beyond the original): only on the jobs that asked for it
    "max_concurrency": {
        **jobschema.JOB_REQUEST["properties"]["max_concurrency"],
        "description": "As requested (a count or 'N%').",
    },
    "max_errors": {
        **jobschema.JOB_REQUEST["properties"]["max_errors"],
        "description": "As requested (a count or 'N%').",
    },
    "stopped_by": {
        "type": "string",
        "const": "max_errors",
        "description": "The rollout stopped early: more nodes than max_errors ended in error.",
    },
    "node_details": {
        "type": "object",
        "description": "GET jobs/ID only: how each node ended or why it refused, as our client "
        "reports it (original clients report nothing: the node is absent).",
        "additionalProperties": obj(
            {
                "exit_status": {"type": ["integer", "null"]},
                "signal": {"type": ["string", "null"], "example": "SIGKILL"},
                "reason": {"type": ["string", "null"], "maxLength": 1000},
            },
            ["exit_status", "signal", "reason"],
        ),
    },
}
_JOB_REQUIRED = ["id", "command", "status", "run_timeout", "created_at", "updated_at"]

#: Components of the status and push-jobs routes.
SCHEMAS: dict[str, Schema] = {
    "ErrorList": {
        "description": "Chef's error form (authentication, authorization, identity API).",
        **obj({"error": {"type": "array", "items": STRING, "minItems": 1}}, ["error"]),
    },
    "ErrorString": {
        "description": "The push-jobs error form (job validation, Accept, unknown path).",
        **obj({"error": STRING}, ["error"]),
    },
    "Error": {"anyOf": [ref("ErrorList"), ref("ErrorString")]},
    "Status": obj(
        {
            "status": {"type": "string", "const": "it's alive"},
            "role": {
                "description": "`active`; a standby of a PostgreSQL store answers 503 and "
                "`standby` (what a load balancer's health check reads).",
                "type": "string",
                "const": "active",
            },
            "incarnation_id": {"type": ["string", "null"], "format": "uuid"},
            "node_fsm_count": {"type": "integer", "minimum": 0},
            "job_processes": {"type": "array", "items": JOB_ID},
            "advertised": ref("Advertised"),
        },
        ["status", "incarnation_id", "node_fsm_count", "job_processes", "advertised"],
    ),
    "StandbyStatus": {
        "description": "A standby of a PostgreSQL store (503), or an active stepping down.",
        **obj(
            {
                "status": {"type": "string", "enum": ["standby", "stepping down"]},
                "role": {"type": "string", "const": "standby"},
                "incarnation_id": {"type": ["string", "null"], "format": "uuid"},
                "seq": {"type": "integer", "minimum": 0},
                "active": {"type": ["string", "null"]},
            },
            ["status", "role", "incarnation_id"],
        ),
    },
    "Advertised": {
        "description": "The last check (at start, at each reload) of the name nodes are told to "
        "connect to: `ok`, or why nodes cannot connect (`problem` says it and the fix).",
        **obj(
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
    "NodeConfig": obj(
        {
            "type": {"type": "string", "const": "config"},
            "host": STRING,
            "push_jobs": obj(
                {
                    "heartbeat": obj(
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
            "encoded_session_key": obj(
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
            "max_output_bytes": {
                "type": "integer",
                "minimum": 0,
                "description": "Beyond the original: this server takes live output (output "
                "messages) and keeps this many bytes of each stream.",
            },
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
    "JobRequest": jobschema.JOB_REQUEST,  # the validator reads it too
    "JobCreated": obj({"uri": URI, "id": JOB_ID}, ["uri", "id"]),
    "JobSummary": obj(dict(_JOB_FIELDS), list(_JOB_REQUIRED)),
    "Job": obj(
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
    "NodeStateItem": obj(
        {"node_name": STRING, "availability": AVAILABILITY}, ["node_name", "availability"]
    ),
    "NodeState": obj(
        {
            "node_name": STRING,
            "status": {"type": "string", "enum": ["online", "offline"]},
            "availability": AVAILABILITY,
        },
        ["node_name", "status", "availability"],
    ),
    # the web dashboard's log-in (dashboard_routes)
    "LoginLinkRequest": obj(
        {
            "user": {**NAME, "description": "Who the link logs in."},
            "org": {
                **NAME,
                "description": "The organization the dashboard shows (default: the user's "
                "only one).",
            },
            "ttl": {
                "type": "number",
                "minimum": 1,
                "maximum": 3600,
                "description": "Seconds the link stays valid (default 300).",
            },
        },
        ["user"],
    ),
    "LoginLink": obj(
        {
            "url": {**URI, "description": "Open it once, within ttl seconds."},
            "user": STRING,
            "org": STRING,
            "expires_at": {**STRING, "description": "UTC, YYYY-MM-DDTHH:MM:SSZ."},
        },
        ["url", "user", "org", "expires_at"],
    ),
    "SessionOpen": obj({"token": {**NAME, "description": "The link's token."}}, ["token"]),
    "DashboardSession": obj(
        {
            "user": STRING,
            "org": STRING,
            "superuser": {"type": "boolean"},
            "can_read": {"type": "boolean", "description": "May see jobs and nodes."},
            "can_write": {"type": "boolean", "description": "May start and abort jobs."},
            "expires_at": {**STRING, "description": "UTC, YYYY-MM-DDTHH:MM:SSZ."},
            "csrf_token": {**STRING, "description": "Send it as X-CSRF-Token on writes."},
        },
        ["user", "org", "superuser", "can_read", "can_write", "expires_at", "csrf_token"],
    ),
}

# SSE event data and websocket messages: documentation (not validated by HTTP tooling).
_EVENTS: dict[str, Schema] = {
    "start": obj(
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
            "max_concurrency": jobschema.JOB_REQUEST["properties"]["max_concurrency"],
            "max_errors": jobschema.JOB_REQUEST["properties"]["max_errors"],
        },
        ["timestamp", "command", "run_timeout", "quorum", "node_count", "user"],
    ),
    "quorum_vote": obj(
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
    "quorum_succeeded": obj({"timestamp": SSE_TIME}, ["timestamp"]),
    "run_start": obj({"timestamp": SSE_TIME, "node": STRING}, ["timestamp", "node"]),
    "run_complete": obj(
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
                    "timed_out",
                ],
                "description": "timed_out: a node's own run_timeout in a rolling job.",
            },
        },
        ["timestamp", "node", "status"],
    ),
    "rollout_stopped": obj(
        {
            "timestamp": SSE_TIME,
            "reason": {"type": "string", "const": "max_errors"},
        },
        ["timestamp", "reason"],
    ),
    "rehab": obj({"timestamp": SSE_TIME, "node": STRING}, ["timestamp", "node"]),
    "job_complete": obj(
        {
            "timestamp": SSE_TIME,
            "job": {**JOB_ID, "description": "Org feed only."},
            "status": {
                "type": "string",
                "enum": ["complete", "quorum_failed", "timed_out", "aborted", "crashed"],
            },
            "reason": {
                "type": "string",
                "const": "max_errors",
                "description": "Only when a rolling job stopped early.",
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
    "start_of_history": obj({"timestamp": SSE_TIME}, ["timestamp"]),
    "output": obj(
        {
            "timestamp": SSE_TIME,
            "node": STRING,
            "stream": {"type": "string", "enum": ["stdout", "stderr"]},
            "offset": {
                "type": "integer",
                "minimum": 0,
                "description": "Bytes of the stream before this data (original bytes).",
            },
            "data": {
                "type": "string",
                "description": "The bytes as UTF-8, invalid bytes replaced; a stream cut at "
                "max_output_bytes ends with a truncation marker.",
            },
        },
        ["timestamp", "node", "stream", "offset", "data"],
    ),
}
#: Components of the SSE feeds' event data and of the websocket's messages.
STREAM_SCHEMAS: dict[str, Schema] = {}
for _name, _schema in _EVENTS.items():
    STREAM_SCHEMAS[f"SseEvent_{_name}"] = _schema

_WS: dict[str, Schema] = {
    "hello": obj(
        {
            "type": {"const": "hello"},
            "org": STRING,
            "timestamp": SSE_TIME,
            "keep_alive_time": {"type": "number"},
            "subscription": ref("WsSubscription"),
            "nodes": {"type": "object", "additionalProperties": AVAILABILITY},
            "jobs": {"type": "array", "items": ref("Job")},
        },
        ["type", "org", "timestamp", "keep_alive_time", "subscription", "nodes", "jobs"],
    ),
    "job_event": obj(
        {
            "type": {"const": "job_event"},
            "job": JOB_ID,
            "event": STRING,
            "id": {
                "type": "string",
                "pattern": "^job-[0-9]+$",
                "description": "Every event but output (live output is not replayed).",
            },
            "data": {"type": "object"},
        },
        ["type", "job", "event", "data"],
    ),
    "org_event": obj(
        {
            "type": {"const": "org_event"},
            "event": {"type": "string", "enum": ["start", "job_complete"]},
            "id": {"type": "string", "pattern": "^org-[0-9]+$"},
            "data": {"type": "object"},
        },
        ["type", "event", "id", "data"],
    ),
    "node": obj(
        {
            "type": {"const": "node"},
            "node": STRING,
            "availability": AVAILABILITY,
            "status": {"type": "string", "enum": ["online", "offline"]},
            "timestamp": SSE_TIME,
        },
        ["type", "node", "availability", "status", "timestamp"],
    ),
    "subscribed": obj(
        {"type": {"const": "subscribed"}, "subscription": ref("WsSubscription")},
        ["type", "subscription"],
    ),
    "error": obj({"type": {"const": "error"}, "error": STRING}, ["type", "error"]),
    "keepalive": obj(
        {"type": {"const": "keepalive"}, "timestamp": SSE_TIME}, ["type", "timestamp"]
    ),
}
STREAM_SCHEMAS["WsSubscription"] = obj(
    {
        "jobs": {"anyOf": [{"const": "*"}, {"type": "array", "items": JOB_ID}]},
        "nodes": {"type": "boolean"},
    },
    ["jobs", "nodes"],
)
WS_SERVER_MESSAGES = tuple(_WS)
for _name, _schema in _WS.items():
    STREAM_SCHEMAS[f"WsServer_{_name}"] = _schema
STREAM_SCHEMAS["WsClientSubscribe"] = obj(
    {
        "subscribe": obj(
            {
                "jobs": {"anyOf": [{"const": "*"}, {"type": "array", "items": STRING}]},
                "nodes": {"type": "boolean"},
            }
        )
    },
    ["subscribe"],
)


# parameters -----------------------------------------------------------------------------

ORG = path_param("org", "Organization name.")
NODE = path_param("node", "Node (client) name.")
JOB = path_param("job_id", "Job id (32 lowercase hex digits).", JOB_ID)
NAME_P = path_param("name", "Object name.")
KEY_P = path_param("key", "Key name.")
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this event id (standard SSE).",
    "schema": STRING,
}
