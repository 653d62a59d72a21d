"""The POST /jobs body as JSON Schema: one declaration for ``jobspec``'s checks and the API
document (``server/openapi``), so the two cannot drift apart.

The properties are listed in the order the original checked their types: ``jobspec`` walks
them in this order, so a body with several faults keeps the original's message.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COUNT", "JOB_REQUEST", "NODE_NAME", "PERCENT", "POSITIVE_PERCENT", "STRING_MAP"]

Schema = dict[str, Any]

#: run_timeout, quorum: a non-negative integer that fits every timer and an int32 column.
COUNT: Schema = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
#: Node names end up in URL paths and log records: no '/', no control character.
NODE_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": "^[^/\\u0000-\\u001f\\u007f]+$",
}
STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
#: A share of the job's nodes: "0%" to "100%"; POSITIVE_PERCENT from "1%".
PERCENT: Schema = {"type": "string", "pattern": "^(100|[1-9]?[0-9])%$"}
POSITIVE_PERCENT: Schema = {"type": "string", "pattern": "^(100|[1-9][0-9]?)%$"}

JOB_REQUEST: Schema = {
    "description": "POST /jobs body. Checked in this order (the first fault wins): "
    "JSON object without repeated keys, types, unknown keys, empty nodes, node names, "
    'counts, env duplicates, file. Every fault is a 400 {"error": "..."}.',
    "type": "object",
    "properties": {
        "command": {"type": "string", "description": "The whitelist job name; may be empty."},
        "nodes": {"type": "array", "items": NODE_NAME, "minItems": 1, "uniqueItems": True},
        "run_timeout": {
            **COUNT,
            "description": "Seconds; default: the server's default_running_timeout.",
        },
        "quorum": {
            **COUNT,
            "description": "Nodes that must accept; default: all. May exceed the node "
            "count (the job then ends quorum_failed).",
        },
        "capture_output": {"type": "boolean", "default": False},
        "user": {"type": "string"},
        "dir": {"type": "string"},
        "file": {
            "type": "string",
            "pattern": "^(raw:|base64:)",
            "description": "'raw:TEXT' or 'base64:DATA' (whitespace in DATA is skipped; "
            "anything else that is not base64: 400); at most 100000 bytes decoded.",
        },
        "env": {**STRING_MAP, "description": "No repeated names."},
        # beyond the original (rolling execution): absent, every committed node runs at once
        "max_concurrency": {
            "type": ["integer", "string"],
            "anyOf": [{**COUNT, "minimum": 1}, POSITIVE_PERCENT],
            "description": "At most this many of the job's nodes run at once: an integer >= 1, "
            "or 'N%' of the job's nodes (rounded up). When one finishes the next committed "
            "node gets run. Echoed in the job. Absent: all at once.",
        },
        "max_errors": {
            "type": ["integer", "string"],
            "anyOf": [COUNT, PERCENT],
            "description": "Once more nodes than this (an integer >= 0, or 'N%' of the job's "
            "nodes, rounded up) ended failed, crashed or timed_out, no further node gets run "
            "and the job ends aborted (stopped_by: max_errors). Echoed in the job.",
        },
    },
    "required": ["command", "nodes"],
    "additionalProperties": False,
}
