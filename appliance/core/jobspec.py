"""POST /jobs body validation: the original's messages, with its 500s turned into 400s.

The checks run in the original's order (types, then extra keys, then empty nodes, then env
duplicates, then the file), so a body with several faults gets the same message as from
the original. The checks the original lacked (see DESIGN.md, "fix") slot in where they do
not change its answer to any body it refused with a 400. One is new outright: a repeated
top-level key (which the original resolved silently) is refused up front.

1. the body must be UTF-8 JSON (no NaN/Infinity, no lone surrogates) and an object with
   no repeated key -> ``invalid JSON: ...`` / ``request body must be a JSON object`` /
   ``duplicate key 'K'``;
2. types (the original's table) -> its messages;
3. extra keys -> ``invalid key supplied``;
4. empty nodes -> ``at least one node must be supplied``;
5. node names: ``''``, longer than 255 characters, holding ``/`` or a control character ->
   ``invalid node name 'N'``; a repeated name -> ``duplicate node name 'N'``;
6. run_timeout, quorum: negative, fractional or non-finite ->
   ``invalid run_timeout (expected a non-negative integer)`` (same for quorum); above
   2**31 - 1 -> ``invalid run_timeout (must be <= 2147483647)``;
7. env duplicates, 8. the file (prefix, base64, decoded size).

A quorum larger than the node count is accepted, as in the original: the job simply ends
``quorum_failed``.

The field list, the JSON types, the limits and the order of the type checks come from
``core.jobschema.JOB_REQUEST``, the schema the API document shows; the messages are here.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from appliance.core.jobschema import COUNT, JOB_REQUEST, NODE_NAME, PERCENT, POSITIVE_PERCENT
from appliance.core.schemacheck import first_problem, has_types

__all__ = [
    "MAX_COUNT",
    "MAX_NODE_NAME_CHARS",
    "JobRequestError",
    "JobSpec",
    "decode_job_file",
    "parse_job_request",
    "share_of",
]

#: Largest run_timeout / quorum accepted: fits every timer and an int32 column.
MAX_COUNT: int = COUNT["maximum"]
#: Node names end up in URL paths and log records.
MAX_NODE_NAME_CHARS: int = NODE_NAME["maxLength"]

_ALLOWED_KEYS = frozenset(JOB_REQUEST["properties"])
_NODE_NAME = re.compile(NODE_NAME["pattern"])  # fullmatch: '$' alone would allow a final \n

MSG_COMMAND = "invalid command supplied"
MSG_NODES = "at least one node must be supplied"
MSG_RUN_TIMEOUT_TYPE = "invalid type supplied for run_timeout (expected a number)"
MSG_QUORUM_TYPE = "invalid type supplied for quorum (expected a number)"
MSG_CAPTURE_TYPE = "invalid type supplied for capture_output (expected a boolean)"
MSG_UNKNOWN = "an unknown validation error has occurred"
MSG_EXTRA_KEY = "invalid key supplied"
MSG_ENV_DUP = "invalid environment value (duplicate key)"
MSG_FILE_PREFIX = "invalid file contents (expected 'base64:...' or 'raw:...')"
MSG_FILE_BASE64 = "invalid file contents (couldn't decode base64 string)"
MSG_NOT_OBJECT = "request body must be a JSON object"
MSG_MAX_CONCURRENCY = (
    'invalid max_concurrency (expected an integer >= 1 or a percentage from "1%" to "100%")'
)
MSG_MAX_ERRORS = 'invalid max_errors (expected an integer >= 0 or a percentage from "0%" to "100%")'


class JobRequestError(ValueError):
    """A rejected job request; the HTTP layer answers 400 ``{"error": message}``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class JobSpec:
    """A validated job request. ``file`` is kept as submitted, prefix included."""

    command: str
    nodes: tuple[str, ...]
    quorum: int
    run_timeout: int
    user: str | None = None
    dir: str | None = None
    env: dict[str, str] | None = None
    file: str | None = None
    capture: bool = False
    max_concurrency: int | str | None = None  # as requested: a count or "N%" (rolling)
    max_errors: int | str | None = None


class _Obj(dict):
    """A JSON object that remembers the first key it saw twice (the original forbids
    duplicates in ``env``; json.loads would silently keep the last one)."""

    duplicate: str | None = None


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _has_surrogates(value: Any) -> bool:
    """True when any string (key or value) holds a lone surrogate, which no UTF-8 encoder
    downstream (orjson, the log, the wire) would accept. Iterative: no recursion limit."""
    stack = [value]
    for _ in range(10_000_000):  # bounded: a 1 MB body has far fewer nodes
        if not stack:
            return False
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _load(body: bytes | str) -> Any:
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise JobRequestError("invalid JSON: body is not UTF-8") from None
    else:
        text = body
    try:
        doc = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JobRequestError(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # from _reject_constant
        raise JobRequestError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise JobRequestError("invalid JSON: nested too deeply") from None
    if _has_surrogates(doc):
        raise JobRequestError("invalid JSON: string holds a lone surrogate")
    return doc


def _as_count(value: int | float, name: str) -> int:
    """A JSON number that must be a non-negative integer; 2.0 counts as 2."""
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise JobRequestError(f"invalid {name} (expected a non-negative integer)")
    if value < 0:
        raise JobRequestError(f"invalid {name} (expected a non-negative integer)")
    if value > MAX_COUNT:  # compared before int(): 1e300 stays cheap
        raise JobRequestError(f"invalid {name} (must be <= {MAX_COUNT})")
    return int(value)


#: The original's message for a field of the wrong type; any other field: MSG_UNKNOWN.
_TYPE_MESSAGES = {
    "command": MSG_COMMAND,
    "nodes": MSG_NODES,
    "run_timeout": MSG_RUN_TIMEOUT_TYPE,
    "quorum": MSG_QUORUM_TYPE,
    "capture_output": MSG_CAPTURE_TYPE,
    "max_concurrency": MSG_MAX_CONCURRENCY,
    "max_errors": MSG_MAX_ERRORS,
}
_SHARE = {
    "max_concurrency": (1, re.compile(POSITIVE_PERCENT["pattern"]), MSG_MAX_CONCURRENCY),
    "max_errors": (0, re.compile(PERCENT["pattern"]), MSG_MAX_ERRORS),
}


def _as_share(value: int | float | str, name: str) -> int | str:
    """max_concurrency / max_errors: a count (at least 1 / 0) or a percentage, as given."""
    least, pattern, message = _SHARE[name]
    if isinstance(value, str):
        if not pattern.fullmatch(value):
            raise JobRequestError(message)
        return value
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise JobRequestError(message)
    if not least <= value <= MAX_COUNT:
        raise JobRequestError(message)
    return int(value)


def share_of(value: int | str, nodes: int) -> int:
    """A count or "N%" of ``nodes``, rounded up (``"10%"`` of 15 nodes is 2)."""
    if isinstance(value, str):
        return -(-nodes * int(value[:-1]) // 100)
    return value


def _types_fit(schema: dict[str, Any], value: Any) -> bool:
    """The type check only (the rest comes later, in the original's order, with its messages).
    An integer field takes any number here: fractions are refused later, with their own
    message."""
    return has_types(schema, value, number_for_integer=True)


def _check_types(doc: dict[str, Any]) -> None:
    problem = first_problem(JOB_REQUEST, doc, fit=_types_fit)
    if problem is not None:
        raise JobRequestError(_TYPE_MESSAGES.get(problem.field, MSG_UNKNOWN))


def _check_node_names(nodes: list[str]) -> None:
    seen: set[str] = set()
    for name in nodes:
        if len(name) > MAX_NODE_NAME_CHARS or not _NODE_NAME.fullmatch(name):
            raise JobRequestError(f"invalid node name {name!r}")
        if name in seen:
            raise JobRequestError(f"duplicate node name {name!r}")
        seen.add(name)


def decode_job_file(file: str) -> bytes:
    """The bytes a job's ``file`` stands for: ``raw:TEXT`` is TEXT as UTF-8, ``base64:B64``
    is B64 decoded (whitespace such as Ruby's line breaks is skipped; any other stray
    character or bad padding is an error). Raises JobRequestError with the original's
    messages."""
    if file.startswith("raw:"):
        try:
            return file[4:].encode("utf-8")
        except UnicodeEncodeError:
            raise JobRequestError(MSG_FILE_PREFIX) from None
    if file.startswith("base64:"):
        compact = "".join(file[7:].split())
        try:
            return base64.b64decode(compact.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise JobRequestError(MSG_FILE_BASE64) from None
    raise JobRequestError(MSG_FILE_PREFIX)


def parse_job_request(
    body: bytes | str, *, default_run_timeout: int = 3600, max_file_bytes: int = 100000
) -> JobSpec:
    """Validate a POST /jobs body. Raises JobRequestError (and nothing else) on any fault."""
    doc = _load(body)
    if not isinstance(doc, dict):
        raise JobRequestError(MSG_NOT_OBJECT)
    if doc.duplicate is not None:
        raise JobRequestError(f"duplicate key {doc.duplicate!r}")
    _check_types(doc)
    if not doc.keys() <= _ALLOWED_KEYS:
        raise JobRequestError(MSG_EXTRA_KEY)
    nodes: list[str] = doc["nodes"]
    if not nodes:
        raise JobRequestError(MSG_NODES)
    _check_node_names(nodes)
    run_timeout = (
        _as_count(doc["run_timeout"], "run_timeout")
        if "run_timeout" in doc
        else default_run_timeout
    )
    quorum = _as_count(doc["quorum"], "quorum") if "quorum" in doc else len(nodes)
    env = doc.get("env")
    if env is not None and env.duplicate is not None:
        raise JobRequestError(MSG_ENV_DUP)
    file = doc.get("file")
    if file is not None and len(decode_job_file(file)) > max_file_bytes:
        raise JobRequestError(f"invalid file size (must be <= {max_file_bytes} bytes)")
    shares = {name: _as_share(doc[name], name) for name in _SHARE if name in doc}
    return JobSpec(
        command=doc["command"],
        nodes=tuple(nodes),
        quorum=quorum,
        run_timeout=run_timeout,
        user=doc.get("user"),
        dir=doc.get("dir"),
        env=dict(env) if env is not None else None,
        file=file,
        capture=doc.get("capture_output", False),
        max_concurrency=shares.get("max_concurrency"),
        max_errors=shares.get("max_errors"),
    )
