"""The websocket status stream, ``GET /organizations/ORG/pushy/ws``, on the API port.

One connection carries, in order, what the two SSE feeds carry for the org plus node
availability changes, so that a live view needs no polling. The handshake is authenticated
like any REST request (Chef signed headers for GET of the path, empty body) and allowed to the
org's job readers; a refused handshake gets the REST routes' status and JSON error body and is
never upgraded.

Server → client, JSON text messages (one object each):

- ``{"type": "hello", "org": ORG, "timestamp": T, "keep_alive_time": S,
  "subscription": {"jobs": "*", "nodes": true}, "nodes": {NAME: "available"|"unavailable"},
  "jobs": [GET /jobs/ID body of each live job]}`` first: the online nodes and live jobs.
- ``{"type": "job_event", "job": ID, "event": NAME, "id": "job-N", "data": {...}}``: every event
  of a job's feed (``start``, ``quorum_vote``, ``rehab``, ..., ``job_complete``).
- ``{"type": "job_event", "job": ID, "event": "output", "data": {...}}``: live output, as the
  job feed's ``output`` event (no ``id``: not replayed; skipped for a reader that is behind).
- ``{"type": "org_event", "event": "start"|"job_complete", "id": "org-N", "data": {...}}``: the
  org feed (``data.job`` names the job).
- ``{"type": "node", "node": NAME, "availability": "available"|"unavailable",
  "status": "online"|"offline", "timestamp": T}``: a node's availability changed.
- ``{"type": "subscribed", "subscription": {...}}``: a subscription was applied.
- ``{"type": "error", "error": TEXT}``: a client message was not understood; the stream goes on.
- ``{"type": "keepalive", "timestamp": T}`` after each ``keep_alive_time`` of silence.

Client → server: ``{"subscribe": {"jobs": ["ID", ...] | "*", "nodes": true|false}}`` at any
time (a key left out keeps its value; the default is everything). Naming live jobs replays
their events so far, then their new events follow; other jobs' events are not sent.

Close codes: 1001 when the server shuts down, 1008 when the reader fell more than
``BUFFER`` messages behind (it is dropped rather than buffered without bound; reconnect).
hypercorn's sends cannot be cancelled, so a reader whose socket stays full is cut off at the
TCP level (``stalls.abort_connection``) after ``stalls.SEND_STALL_SECONDS`` (10 s once dropped,
1 s once the server is stopping): it cannot hold a handler, or the server's shutdown, forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
import trio
from quart import Blueprint, websocket

from appliance.core import identity, render
from appliance.core.schemacheck import first_problem
from appliance.core.state import OrgEvent
from appliance.server.apidoc import json_reply, operation, ref, register
from appliance.server.auth import by_session, forbidden, verify, verify_session
from appliance.server.context import ServerContext
from appliance.server.feeds import Output, Subscriber
from appliance.server.pushy_routes import PREFIX
from appliance.server.schemas import ORG, STREAM_SCHEMAS, WS_SERVER_MESSAGES
from appliance.server.stalls import WATCH_SECONDS, abort_connection, peer, stall_limit

log = logging.getLogger("pushy.ws")
BUFFER = 1024  # messages a reader may fall behind before it is dropped
CLOSE_GOING_AWAY, CLOSE_POLICY = 1001, 1008
ALL = "*"


@dataclass
class Subscription:
    jobs: str | frozenset[str] = ALL
    nodes: bool = True

    def wants_job(self, job_id: str) -> bool:
        return self.jobs == ALL or job_id in self.jobs

    def as_json(self) -> dict[str, Any]:
        jobs = self.jobs if self.jobs == ALL else sorted(self.jobs)
        return {"jobs": jobs, "nodes": self.nodes}


@dataclass(frozen=True)
class _Control:
    """A client message's outcome, queued with the events so that one task sends everything."""

    subscription: Subscription | None = None
    error: str | None = None


#: The client's message as the document shows it; its field names and types are checked here.
_SUBSCRIBE = STREAM_SCHEMAS["WsClientSubscribe"]
_SPEC = _SUBSCRIBE["properties"]["subscribe"]
_FIELD_ERRORS = {
    "jobs": '"jobs" must be "*" or a list of job ids',
    "nodes": '"nodes" must be true or false',
}


def parse_subscription(text: str | bytes, current: Subscription) -> Subscription:
    """The subscription a client message asks for; ValueError with a message if malformed."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("messages must be JSON objects") from None
    if not isinstance(message, dict) or message.keys() != _SUBSCRIBE["properties"].keys():
        raise ValueError('expected {"subscribe": {"jobs": [...] | "*", "nodes": true|false}}')
    spec = message["subscribe"]
    if not isinstance(spec, dict) or not spec.keys() <= _SPEC["properties"].keys():
        raise ValueError('"subscribe" takes an object with "jobs" and/or "nodes"')
    problem = first_problem(_SPEC, spec)
    if problem is not None:
        raise ValueError(_FIELD_ERRORS[problem.field])
    jobs = spec.get("jobs", current.jobs)
    nodes = spec.get("nodes", current.nodes)
    return Subscription(frozenset(jobs) if isinstance(jobs, list) else jobs, nodes)


@operation(
    "GET",
    "statusWebsocket",
    "feeds",
    "Websocket status stream (GET with Upgrade: websocket)",
    {
        "101": {
            "description": "Switched to the websocket protocol; messages are JSON text "
            "(x-websocket lists them). Close codes: 1001 server shutting down, 1008 "
            "reader too slow (more than 1024 messages behind)."
        },
        "400": json_reply("Not a websocket handshake, or bad X-Ops headers.", ref("Error")),
    },
    description="The handshake is signed like any request (GET of the path, empty "
    "body) and needs read access; a refused handshake gets the usual status and JSON "
    "error and is not upgraded. The server sends hello first (online nodes, live "
    "jobs), then job_event, org_event and node messages, keepalive after "
    "keep_alive_time seconds of silence. The client may send a subscribe message at "
    "any time.",
    parameters=[ORG],
    websocket=True,
    extra={
        "x-websocket": {
            "server-messages": {name: ref(f"WsServer_{name}") for name in WS_SERVER_MESSAGES},
            "client-messages": {"subscribe": ref("WsClientSubscribe")},
        }
    },
    session=True,
)
async def status_stream(ctx: ServerContext, org: str) -> None:
    headers, cookies = websocket.headers, websocket.cookies
    if by_session(headers, cookies):  # the web dashboard (its Origin is checked)
        auth = verify_session(ctx, org, headers, cookies, "WEBSOCKET", websocket.scheme)
    else:
        auth = verify(ctx, org, headers, "GET", websocket.path, b"")
    if not identity.can_read_jobs(ctx.state.identity, org, auth.principal):
        forbidden(auth.principal.name)
    await websocket.accept()
    await _Stream(ctx, org).run()


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("pushy_ws", __name__)
    register(bp, [(PREFIX + "/ws", status_stream)], ctx)
    return bp


class _Stream:
    def __init__(self, ctx: ServerContext, org: str) -> None:
        self.ctx = ctx
        self.org = org
        self.topics = [("jobs", org), ("org", org), ("nodes", org)]
        self.subscription = Subscription()
        self.requested = Subscription()  # as of the last client message (may still be queued)
        self.last_sent: dict[str, int] = {}  # job id -> last event n sent (no duplicate replays)
        self.last_send_at = trio.current_time()
        self.sending_since: float | None = None  # a send in progress (hypercorn's cannot be cut)
        self.pump_scope = trio.CancelScope()

    async def run(self) -> None:
        hub = self.ctx.hub
        sub = hub.subscribe_many(self.topics, BUFFER, "websocket")
        hello = self._hello()  # no checkpoint since subscribing: nothing missed, nothing twice
        close = (CLOSE_GOING_AWAY, "server shutting down")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._client_messages, sub)
                nursery.start_soon(self._watch, sub)
                with self.pump_scope:
                    await self._send_now(hello)
                    await self._pump(sub)
                if sub.dropped:
                    close = (CLOSE_POLICY, f"too slow: more than {BUFFER} messages behind")
                self.sending_since = trio.current_time()
                await websocket.close(*close)  # watched too: a reader that never reads
                nursery.cancel_scope.cancel()
        finally:
            for topic in self.topics:
                hub.unsubscribe(topic, sub)

    def _hello(self) -> dict[str, Any]:
        org = self.org
        nodes = {
            key[1]: "available" if node.available else "unavailable"
            for key, node in sorted(self.ctx.dispatcher.table.nodes.items())
            if key[0] == org and not node.ghost
        }
        jobs = [
            render.job_detail(job)
            for job_id in sorted(self.ctx.live)
            if (job := self.ctx.state.jobs.get(job_id)) is not None and job.org == org
        ]
        return {
            "type": "hello",
            "org": org,
            "timestamp": render.sse_timestamp(self.ctx.clock.now()),
            "keep_alive_time": self.ctx.settings.keep_alive_time,
            "subscription": self.subscription.as_json(),
            "nodes": nodes,
            "jobs": jobs,
        }

    async def _pump(self, sub: Subscriber) -> None:
        """Send every item the subscription wants, a keepalive after each quiet period; returns
        when the server shuts down or the subscriber was dropped."""
        keep_alive = self.ctx.settings.keep_alive_time
        shutdown = self.ctx.shutdown
        while not shutdown.is_set():
            with trio.move_on_after(min(keep_alive, WATCH_SECONDS)) as scope:
                try:
                    item = await sub.receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            if scope.cancelled_caught:
                if trio.current_time() - self.last_send_at >= keep_alive:
                    await self._send_now(
                        {
                            "type": "keepalive",
                            "timestamp": render.sse_timestamp(self.ctx.clock.now()),
                        }
                    )
                continue
            if sub.dropped:
                return
            for message in self._messages(item):
                await self._send_now(message)

    async def _send_now(self, message: dict[str, Any]) -> None:
        await self.ctx.store.barrier()  # never show a state or event a crash could take back
        self.sending_since = trio.current_time()
        await _send(message)
        self.sending_since = None
        self.last_send_at = trio.current_time()

    def _messages(self, item: Any) -> list[dict[str, Any]]:
        """What one hub item (or client request) becomes on this connection."""
        want = self.subscription
        if isinstance(item, tuple):
            job_id, (n, name, data) = item
            if not want.wants_job(job_id) or n <= self.last_sent.get(job_id, 0):
                return []
            if name == "job_complete":
                self.last_sent.pop(job_id, None)
            else:
                self.last_sent[job_id] = n
            return [_job_event(job_id, n, name, data)]
        if isinstance(item, Output):
            if not want.wants_job(item.job):
                return []
            return [{"type": "job_event", "job": item.job, "event": "output", "data": item.data}]
        if isinstance(item, dict):  # a node change
            return [item] if want.nodes else []
        if isinstance(item, OrgEvent):
            if not want.wants_job(item.data.get("job")):
                return []
            return [{"type": "org_event", "event": item.name, "id": item.id, "data": item.data}]
        if isinstance(item, _Control):
            if item.error is not None:
                return [{"type": "error", "error": item.error}]
            if item.subscription is not None:
                return self._resubscribe(item.subscription)
        return []

    def _resubscribe(self, new: Subscription) -> list[dict[str, Any]]:
        old = self.subscription
        self.subscription = new
        out: list[dict[str, Any]] = [{"type": "subscribed", "subscription": new.as_json()}]
        if new.jobs == ALL:
            return out
        added = new.jobs if old.jobs == ALL else new.jobs - old.jobs
        for job_id in sorted(added):
            job = self.ctx.state.jobs.get(job_id)
            if job is None or job.org != self.org or job_id not in self.ctx.live:
                continue
            for n, name, data in list(job.events):
                out.extend(self._messages((job_id, (n, name, data))))
        return out

    async def _client_messages(self, sub: Subscriber) -> None:
        """Subscriptions and mistakes from the client, queued in order with the events."""
        while True:
            text = await websocket.receive()
            try:
                self.requested = parse_subscription(text, self.requested)
                control = _Control(subscription=self.requested)
            except ValueError as exc:
                control = _Control(error=str(exc))
            try:
                sub.send.send_nowait(control)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader is behind and is being dropped

    async def _watch(self, sub: Subscriber) -> None:
        """Stop the pump once the hub dropped this reader; cut the TCP connection of a reader
        whose socket stays full (a send hypercorn cannot cancel would otherwise hang the handler
        and the server's shutdown)."""
        noted = False
        while True:
            await trio.sleep(WATCH_SECONDS)
            if sub.dropped and not noted:
                noted = True
                log.warning(
                    "websocket reader %s of org %s fell more than %d messages behind: dropped",
                    _peer(),
                    self.org,
                    BUFFER,
                )
                self.pump_scope.cancel()
            since = self.sending_since
            if since is None:
                continue
            limit = stall_limit(stopping=self.ctx.shutdown.is_set(), dropped=sub.dropped)
            stalled = trio.current_time() - since
            if stalled > limit:
                log.warning(
                    "websocket reader %s of org %s has read nothing for %.0f s: disconnected",
                    _peer(),
                    self.org,
                    stalled,
                )
                abort_connection(websocket.scope)
                return


def _job_event(job_id: str, n: int, name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "job_event", "job": job_id, "event": name, "id": f"job-{n}", "data": data}


def _peer() -> str:
    return peer(websocket.scope)


async def _send(message: dict[str, Any]) -> None:
    await websocket.send(orjson.dumps(message).decode("utf-8"))
