"""The Server-Sent Events feeds of a job and of an org (server-protocol.md §6.8).

Each handler is a module-level function taking the server context first, with its OpenAPI
operation declared above it (``apidoc``); the ``jobs_status_feed`` paths are aliases. A
reader that stops reading is cut off by the blueprint's ``StallWatch``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from typing import Any

import trio
from quart import Blueprint, Response, current_app, request

from appliance.core import jobfsm, render
from appliance.server.apidoc import alias, operation, ref, register
from appliance.server.auth import require_accept
from appliance.server.context import ServerContext
from appliance.server.feeds import END, Output, Subscriber
from appliance.server.pushy_routes import PREFIX, job_in_org, reader
from appliance.server.schemas import JOB, LAST_EVENT_ID, ORG, STRING
from appliance.server.stalls import StallWatch, peer
from appliance.server.store import Store

EVENT_STREAM = "text/event-stream"
SHUTDOWN_POLL_SECONDS = 0.5
TAG = "feeds"

Schema = dict[str, Any]

# the document's description of the streams ---------------------------------------------------

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
        "content": {EVENT_STREAM: {"schema": _sse_event(events)}},
        "x-sse-events": {name: ref(f"SseEvent_{name}") for name in events},
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
        "required": ["event", "data"],
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
    "output",
]
_ORG_EVENTS = ["start", "job_complete", "start_of_history"]

_FEED_JOB_DESC = (
    "The job's events from the start (or after Last-Event-ID = job-N), then live ones; the "
    "stream ends after job_complete. A job that finished more than wait_complete_time seconds "
    "ago gets one summary event (id job-1) and the stream ends. Live output (jobs with "
    "capture_output, nodes running pushy client; an original client's at its end) comes as "
    "output events without an id: not replayed after Last-Event-ID, and skipped for a reader "
    "that falls behind (GET the output for all of it). " + _SSE_EVENTS_TEXT
)
_FEED_ORG_DESC = (
    "start and job_complete events of every job of the org (data.job names it). Without "
    "Last-Event-ID only new events; with a known id (org-N) the buffered events after it; "
    "with an unknown one a start_of_history event, then every event of the last "
    "org_feed_expiration seconds. Never ends. " + _SSE_EVENTS_TEXT
)

NOTE = "documented alias"


# the feeds ---------------------------------------------------------------------------------


@operation(
    "GET",
    "jobFeed",
    TAG,
    "Server-Sent Events of one job",
    {"200": _sse("The event stream.", _JOB_EVENTS)},
    description=_FEED_JOB_DESC,
    parameters=[ORG, JOB, LAST_EVENT_ID],
    session=True,
)
async def job_feed(ctx: ServerContext, org: str, job_id: str, *, stalls: StallWatch) -> Response:
    await reader(ctx, org)
    require_accept(EVENT_STREAM)
    job = job_in_org(ctx, org, job_id)
    if job_id not in ctx.live:
        data = {"timestamp": render.sse_timestamp(ctx.clock.now()), **render.job_detail(job)}
        return _stream_response(render.sse_event("summary", "job-1", data))
    sub = ctx.hub.subscribe(("job", job_id), "sse")
    start = _after_id(request.headers.get("Last-Event-ID"), "job-", len(job.events))
    backlog = list(job.events[start:])

    async def events() -> AsyncIterator[bytes]:
        try:
            last = start
            chunk = b"".join(render.sse_event(name, f"job-{n}", data) for n, name, data in backlog)
            if backlog:
                last = backlog[-1][0]
                yield chunk
            if jobfsm.job_finished(job) and last >= len(job.events):
                return
            async for item in _with_keepalive(sub.receive, ctx):
                if item is None:
                    yield render.sse_comment_keepalive()
                    continue
                if item is END:
                    return
                if isinstance(item, Output):
                    yield render.sse_event("output", None, item.data)
                    continue
                n, name, data = item
                if n <= last:
                    continue
                last = n
                yield render.sse_event(name, f"job-{n}", data)
                if name == "job_complete":
                    return
        finally:
            ctx.hub.unsubscribe(("job", job_id), sub)

    what = f"SSE reader {peer(request.scope)} of job {job_id}'s feed (org {org})"
    return _stream_response(_watched(events(), ctx.store, stalls, request.scope, what, sub))


@operation(
    "GET",
    "orgFeed",
    TAG,
    "Server-Sent Events of the org's jobs",
    {"200": _sse("The event stream.", _ORG_EVENTS)},
    description=_FEED_ORG_DESC,
    parameters=[ORG, LAST_EVENT_ID],
    session=True,
)
async def org_feed(ctx: ServerContext, org: str, *, stalls: StallWatch) -> Response:
    s = ctx.settings
    await reader(ctx, org)
    require_accept(EVENT_STREAM)
    sub = ctx.hub.subscribe(("org", org), "sse")
    now = ctx.clock.now()
    horizon = now - s.org_feed_expiration
    buffered = [e for e in ctx.state.org_events if e.org == org and e.t >= horizon]
    last_id = request.headers.get("Last-Event-ID")
    backlog: list[bytes] = []
    last = ctx.state.org_event_count
    if last_id is not None:
        position = next((i for i, e in enumerate(buffered) if e.id == last_id), None)
        if position is None:
            data = {"timestamp": render.sse_timestamp(horizon)}
            backlog.append(render.sse_event("start_of_history", "start_id", data))
            position = -1
        backlog.extend(render.sse_event(e.name, e.id, e.data) for e in buffered[position + 1 :])

    async def events() -> AsyncIterator[bytes]:
        try:
            if backlog:
                yield b"".join(backlog)
            async for item in _with_keepalive(sub.receive, ctx):
                if item is None:
                    yield render.sse_comment_keepalive()
                elif item is not END and item.n > last:
                    yield render.sse_event(item.name, item.id, item.data)
        finally:
            ctx.hub.unsubscribe(("org", org), sub)

    what = f"SSE reader {peer(request.scope)} of org {org}'s feed"
    return _stream_response(_watched(events(), ctx.store, stalls, request.scope, what, sub))


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("feeds", __name__)
    stalls = StallWatch(ctx.shutdown)  # SSE readers that stop reading are cut off

    @bp.before_app_serving
    async def start_stall_watch() -> None:
        current_app.nursery.start_soon(stalls.run)  # the app nursery outlives hypercorn's

    job, org = partial(job_feed, stalls=stalls), partial(org_feed, stalls=stalls)
    register(
        bp,
        [
            (PREFIX + "/job_status_feed/<job_id>", job),
            (PREFIX + "/jobs_status_feed/<job_id>", alias(job, "jobFeedAlias", NOTE)),
            (PREFIX + "/job_status_feed", org),
            (PREFIX + "/jobs_status_feed", alias(org, "orgFeedAlias", NOTE)),
        ],
        ctx,
    )
    return bp


def _stream_response(body: bytes | AsyncIterator[bytes]) -> Response:
    response = Response(
        body,
        content_type=EVENT_STREAM,
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )
    response.timeout = None  # Quart's RESPONSE_TIMEOUT would cut streams after 60 s
    return response


async def _watched(
    body: AsyncIterator[bytes],
    store: Store,
    stalls: StallWatch,
    scope: dict[str, Any],
    what: str,
    sub: Subscriber,
) -> AsyncIterator[bytes]:
    """``body``, durable before it is sent, with each send watched: a reader that stops
    reading is cut off (``stalls``), one that fell a whole buffer behind is ended (it resumes
    with ``Last-Event-ID``). Every SSE stream goes out through here, so no handler has to
    remember that a chunk may show a change not yet on disk."""
    stream = stalls.open(scope, what, sub)
    try:
        async with aclosing(body) as chunks:
            async for chunk in chunks:
                await store.barrier()  # never show an event a crash could take back
                if sub.dropped:
                    return
                stream.sending_since = trio.current_time()
                yield chunk
                stream.sending_since = None
    finally:
        stalls.close(stream)


async def _with_keepalive(
    receive: trio.MemoryReceiveChannel, ctx: ServerContext
) -> AsyncIterator[Any]:
    """Items from the channel; None after each ``keep_alive_time`` of silence.

    Ends promptly when the server shuts down, so that streams close cleanly instead of being
    cut at the graceful-shutdown deadline.
    """
    keep_alive = ctx.settings.keep_alive_time
    quiet_until = trio.current_time() + keep_alive
    while not ctx.shutdown.is_set():
        wait = min(SHUTDOWN_POLL_SECONDS, max(0.0, quiet_until - trio.current_time()))
        with trio.move_on_after(wait) as scope:
            try:
                item = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
        if scope.cancelled_caught:
            if trio.current_time() >= quiet_until:
                quiet_until = trio.current_time() + keep_alive
                yield None
            continue
        quiet_until = trio.current_time() + keep_alive
        yield item


def _after_id(last_id: str | None, prefix: str, count: int) -> int:
    """Index of the first event after ``Last-Event-ID``; 0 (replay all) if absent or unknown."""
    if last_id and last_id.startswith(prefix):
        try:
            n = int(last_id[len(prefix) :])
        except ValueError:
            return 0
        if 1 <= n <= count:
            return n
    return 0
