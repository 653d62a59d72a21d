"""The exact JSON and SSE bytes the REST front end sends, shaped as the original's.

Key order matters (knife and pedant compare bodies; people diff them), so every shape is
built here, in one place, as an ordered dict. Timestamps are true UTC: the original shifted
them by the server's time zone (server-protocol.md §10.1 item 15).

SSE framing: every event ends with a blank line, including the last one of a finished job
(the original left it off, §10.1 item 23, and browsers then drop that event). The
keepalive is the comment ``:keepalive`` followed by a blank line: an SSE parser ignores a
comment line, and the blank line after it dispatches nothing because the previous event
already ended with one, so it can never be taken for (or glued onto) an event.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import orjson

from appliance.core.wire import http_date

__all__ = [
    "error_body",
    "error_list",
    "job_detail",
    "job_summary",
    "make_job_id",
    "node_state",
    "node_state_item",
    "org_event_data",
    "rfc1123",
    "sse_comment_keepalive",
    "sse_event",
    "sse_timestamp",
    "sse_timestamp_us",
]

_KEEPALIVE = b":keepalive\n\n"


def rfc1123(t: float) -> str:
    """``Tue, 04 Sep 2012 23:01:02 GMT`` for epoch seconds ``t`` (floored to the second)."""
    return http_date(t)


def sse_timestamp(t: float) -> str:
    """``2014-07-10 05:17:44.995958Z``: UTC, microseconds rounded (a float epoch holds
    them to about 0.3 µs, so flooring would turn .995958 into .995957)."""
    return sse_timestamp_us(round(t * 1_000_000))


# Every job event gets a timestamp, at replay too, and a job's events mostly fall within the
# same few seconds: the "date time" part is remembered per second (a bounded memo).
_SECONDS: dict[int, str] = {}
_SECONDS_KEPT = 4096


def sse_timestamp_us(us: int) -> str:
    """`sse_timestamp` of ``us`` integer microseconds since the epoch."""
    if us < 1_000_000:  # the digit trick below wants at least 7 digits and no sign
        seconds, micros = divmod(us, 1_000_000)
        return f"{_date_time(seconds)}.{micros:06d}Z"
    seconds = us // 1_000_000
    prefix = _SECONDS.get(seconds)
    if prefix is None:
        prefix = _date_time(seconds)
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        _SECONDS[seconds] = prefix
    return f"{prefix}.{str(us)[-6:]}Z"  # the last 6 digits are the zero-padded micros


def _date_time(seconds: int) -> str:
    tm = time.gmtime(seconds)
    return (
        f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    )


def _text(value: Any) -> str:
    """A status as a plain str, whether the model holds a str or an Enum."""
    return str(getattr(value, "value", value))


def job_summary(job: Any, *, include_file: bool = False) -> dict[str, Any]:
    """One element of GET /jobs (server-protocol.md §6.5); ``quorum`` is never shown."""
    out: dict[str, Any] = {
        "id": job.id,
        "command": job.command,
        "status": _text(job.status),
        "run_timeout": job.run_timeout,
        "created_at": rfc1123(job.created_at),
        "updated_at": rfc1123(job.updated_at),
    }
    if job.user is not None:
        out["user"] = job.user
    if job.dir is not None:
        out["dir"] = job.dir
    if job.env is not None:
        out["env"] = dict(job.env)
    if job.capture:
        out["capture_output"] = True
    if job.file is not None:
        if include_file:
            out["file"] = job.file
        else:
            out["file_specified"] = True
    # rolling execution (beyond the original): only on the jobs that asked for it
    for key in ("max_concurrency", "max_errors", "stopped_by"):
        value = getattr(job, key, None)
        if value is not None:
            out[key] = value
    return out


def _nodes_by_status(nodes: Mapping[str, Any]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, status in nodes.items():
        grouped.setdefault(_text(status), []).append(name)
    return {status: sorted(grouped[status]) for status in sorted(grouped)}


def job_detail(job: Any, include_file: bool = False) -> dict[str, Any]:
    """GET /jobs/ID: the summary with ``nodes`` (status -> sorted names) as first key.
    Statuses are listed in name order, and only those that occur. ``node_details`` (last):
    what our client said of a node's end or refusal; none from original clients."""
    out = {"nodes": _nodes_by_status(job.nodes), **job_summary(job, include_file=include_file)}
    details = getattr(job, "details", None)
    if details:  # our client's exit statuses, signals and reasons: every field, null if unsaid
        out["node_details"] = {
            node: {key: d.get(key) for key in ("exit_status", "signal", "reason")}
            for node, d in sorted(details.items())
        }
    return out


def sse_event(name: str, event_id: str | None, data: Mapping[str, Any]) -> bytes:
    """One SSE event, blank line included. ``data`` is one compact JSON line. Without an id
    (live output) a reader's Last-Event-ID stays that of the event before."""
    if any(c in s for s in (name, event_id or "") for c in "\r\n"):
        raise ValueError("SSE event name and id must be single-line")
    if event_id is None:
        return b"event: %s\ndata: %s\n\n" % (name.encode("utf-8"), orjson.dumps(data))
    return b"event: %s\nid: %s\ndata: %s\n\n" % (
        name.encode("utf-8"),
        event_id.encode("utf-8"),
        orjson.dumps(data),
    )


def sse_comment_keepalive() -> bytes:
    """The idle-stream keepalive: a comment plus a blank line (see the module note)."""
    return _KEEPALIVE


def org_event_data(job_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """An org-feed event's data: the job event's, with ``"job"`` right after ``timestamp``
    (first when there is no timestamp)."""
    out: dict[str, Any] = {}
    if "timestamp" in data:
        out["timestamp"] = data["timestamp"]
    out["job"] = job_id
    for key, value in data.items():
        if key not in ("timestamp", "job"):
            out[key] = value
    return out


def node_state_item(name: str, availability: str) -> dict[str, str]:
    """One element of GET /node_states."""
    return {"node_name": name, "availability": availability}


def node_state(name: str, status: str, availability: str) -> dict[str, str]:
    """GET /node_states/NODE."""
    return {"node_name": name, "status": status, "availability": availability}


def error_body(message: str) -> dict[str, str]:
    """The push-jobs error form, ``{"error": "..."}`` (job validation and the like)."""
    return {"error": message}


def error_list(message: str) -> dict[str, list[str]]:
    """The Chef error form, ``{"error": ["..."]}`` (authentication, authorization, ccpk)."""
    return {"error": [message]}


def make_job_id(org_guid: str, random_bytes: bytes) -> str:
    """A job id as the original makes it (chef_object:make_org_prefix_id): the last 12
    hex digits of the org GUID, then the top 80 bits of MD5(guid ‖ random) in hex. The
    original draws 38 random bytes; the caller supplies them."""
    guid = org_guid.lower()
    if len(guid) < 12 or any(c not in "0123456789abcdef" for c in guid):
        raise ValueError(f"org GUID must be hex, at least 12 digits: {org_guid!r}")
    digest = hashlib.md5(org_guid.encode("ascii") + random_bytes, usedforsecurity=False).digest()
    return guid[-12:] + digest[:10].hex()
