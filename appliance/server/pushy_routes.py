"""The Push Jobs REST API and SSE feeds (server-protocol.md §6.2–6.9), with DESIGN.md's fixes."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson
import trio
import zmq
import zmq.utils.z85
from quart import Blueprint, Response, current_app, request

from appliance.core import configfetch, identity, jobfsm, render
from appliance.core.jobspec import JobRequestError, parse_job_request
from appliance.core.keys import encrypt_session_key, public_pem
from appliance.server.auth import JSON, authenticate, fail, forbidden, require_accept
from appliance.server.context import ServerContext
from appliance.server.feeds import END, Subscriber
from appliance.server.stalls import StallWatch, peer
from appliance.server.store import Store
from appliance.store.errors import StorageError

EVENT_STREAM = "text/event-stream"
OCTETS = "application/octet-stream"
PREFIX = "/organizations/<org>/pushy"
SHUTDOWN_POLL_SECONDS = 0.5
ABORT_SYNC_WAIT_SECONDS = 5.0


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, content_type=JSON, headers=headers or {})


def base_url() -> str:
    scheme = request.headers.get("X-Forwarded-Proto") or request.scheme
    host = request.headers.get("Host", request.host)
    name, colon, port = host.rpartition(":")
    if colon and name and port in ("80", "443"):  # §6.4: the port is left out when 80 or 443
        host = name
    return f"{scheme}://{host}"


async def durable(ctx: ServerContext, records: list[dict[str, Any]]) -> None:
    """Write records, wait until synced and applied; a storage failure is a 503 and changes nothing."""
    try:
        await ctx.store.durable(records)
    except StorageError as exc:
        fail(503, {"error": f"the server cannot write its state: {exc.strerror or exc}"})


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("pushy", __name__)
    stalls = StallWatch(ctx.shutdown)  # SSE readers that stop reading are cut off

    @bp.before_app_serving
    async def start_stall_watch() -> None:
        current_app.nursery.start_soon(stalls.run)  # the app nursery outlives hypercorn's

    # handlers read ``ctx.settings`` per request: a reload (SIGHUP) replaces it

    async def reader(org: str) -> identity.Principal:
        auth = await authenticate(ctx, org)
        if not identity.can_read_jobs(ctx.state.identity, org, auth.principal):
            forbidden(auth.principal.name)
        return auth.principal

    async def writer(org: str) -> identity.Principal:
        auth = await authenticate(ctx, org)
        if not identity.can_write_jobs(ctx.state.identity, org, auth.principal):
            forbidden(auth.principal.name)
        return auth.principal

    def job_in_org(org: str, job_id: str) -> jobfsm.Job:
        job = ctx.state.jobs.get(job_id)
        if job is None or job.org != org:
            fail(404, render.error_body(f"job '{job_id}' not found"))
        return job

    # config ----------------------------------------------------------------------------------
    @bp.route(PREFIX + "/config/<node>", methods=["GET"], strict_slashes=False)
    @bp.route(PREFIX + "/connect/<node>", methods=["GET"], strict_slashes=False)
    async def config(org: str, node: str) -> Response:
        s = ctx.settings
        auth = await authenticate(ctx, org)
        ids = ctx.state.identity
        p = auth.principal
        if not identity.can_fetch_config(
            ids, org, node, p, validate_client_node_name=s.validate_client_node_name
        ):
            if p.kind == "client":
                fail(403, render.error_list("Client and node name must match"))
            forbidden(p.name)
        require_accept(JSON)
        ccpk = request.args.get("ccpk")
        curve = not s.disable_curve_encryption
        if curve and ccpk is not None and (len(ccpk) != 40 or not _z85_ok(ccpk)):
            fail(401, render.error_list("Bad ccpk"))
        decision = configfetch.decide(
            ctx.state,
            org,
            node,
            principal=(p.kind, p.name),
            ccpk=ccpk,
            curve=curve,
            fresh_key=os.urandom(32),
            now=ctx.clock.now(),
            grace=s.session_key_grace,
        )
        if isinstance(decision, configfetch.Refused):
            fail(decision.status, render.error_list(decision.message))
        if decision.records:
            await durable(ctx, decision.records)
        session = decision.session_key
        server = ctx.state.server
        assert server is not None
        advertiser = ctx.advertiser  # the running server_name: a reload may change it
        body: dict[str, Any] = {
            "type": "config",
            "host": advertiser.server_name,
            "push_jobs": {
                "heartbeat": {
                    "out_addr": advertiser.endpoint(ctx.ports["server_heartbeat_port"]),
                    "command_addr": advertiser.endpoint(ctx.ports["command_port"]),
                    "interval": s.heartbeat_interval / 1000.0,
                    "offline_threshold": 3,
                    "online_threshold": 2,
                }
            },
            "node": node,
            "organization": org,
            "public_key": public_pem(ctx.server_key) + "\n",
        }
        if not s.disable_curve_encryption:
            body["curve_public_key"] = server.curve_public
        body["encoded_session_key"] = {
            "method": "hmac_sha256",
            "key": await trio.to_thread.run_sync(encrypt_session_key, auth.key, session),
        }
        body["lifetime"] = _number(s.config_lifetime)
        body["max_message_skew"] = _number(s.max_time_skew)
        body["max_body_size"] = s.max_body_size
        body["incarnation_id"] = server.incarnation
        return json_response(body)

    # jobs ------------------------------------------------------------------------------------
    @bp.route(PREFIX + "/jobs", methods=["GET"], strict_slashes=False)
    async def list_jobs(org: str) -> Response:
        await reader(org)
        require_accept(JSON)
        jobs = [j for j in ctx.state.jobs.values() if j.org == org]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        body = [render.job_summary(j) for j in jobs]
        return json_response(body)

    @bp.route(PREFIX + "/jobs", methods=["POST"], strict_slashes=False)
    async def create_job(org: str) -> Response:
        s = ctx.settings
        principal = await writer(org)
        require_accept(JSON)
        ctype = request.headers.get("Content-Type")
        if ctype is not None and request.mimetype != JSON:
            fail(415, render.error_body("Content-Type must be application/json"))
        body = await request.get_data(cache=True)
        try:
            spec = parse_job_request(body, default_run_timeout=s.default_running_timeout)
        except JobRequestError as exc:
            fail(400, render.error_body(exc.message))
        org_guid = ctx.state.identity.orgs[org].guid
        try:
            job = await ctx.dispatcher.create_job(org, org_guid, spec, principal.name)
        except StorageError as exc:
            fail(
                503, render.error_body(f"the server cannot write its state: {exc.strerror or exc}")
            )
        uri = f"{base_url()}/organizations/{org}/pushy/jobs/{job.id}"
        return json_response({"uri": uri, "id": job.id}, 201, {"Location": uri})

    @bp.route(PREFIX + "/jobs/<job_id>", methods=["GET"], strict_slashes=False)
    async def get_job(org: str, job_id: str) -> Response:
        await reader(org)
        require_accept(JSON)
        job = job_in_org(org, job_id)
        include = request.args.get("include_file") == "true"
        body = render.job_detail(job, include_file=include)
        return json_response(body)

    @bp.route(PREFIX + "/jobs/<job_id>/abort", methods=["POST"], strict_slashes=False)
    async def abort_job(org: str, job_id: str) -> Response:
        await writer(org)
        require_accept(JSON)
        job = job_in_org(org, job_id)
        if jobfsm.job_finished(job):
            fail(409, render.error_body(f"job '{job_id}' has already finished ({job.status})"))
        seq = ctx.dispatcher.abort(job)
        body = render.job_detail(job)  # before any checkpoint: all of it is logged up to seq
        # The abort is in effect (nodes told, state changed); answer once it is on disk, or after
        # a bound when the disk is full (the committer keeps retrying the write).
        with trio.move_on_after(ABORT_SYNC_WAIT_SECONDS):
            await ctx.store.wait_synced(seq)
        return json_response(body)

    @bp.route(
        PREFIX + "/jobs/<job_id>/output/<node>/<channel>", methods=["GET"], strict_slashes=False
    )
    async def job_output(org: str, job_id: str, node: str, channel: str) -> Response:
        await reader(org)
        require_accept(OCTETS)
        if channel not in ("stdout", "stderr"):
            fail(404, render.error_body(f"no output channel '{channel}' (stdout or stderr)"))
        job = job_in_org(org, job_id)
        output = job.outputs.get(node)
        if output is None:
            fail(
                404, render.error_body(f"no {channel} captured for node '{node}' in job '{job_id}'")
            )
        text = output[0] if channel == "stdout" else output[1]
        return Response(text.encode("utf-8", "surrogatepass"), content_type=OCTETS)

    # node states -----------------------------------------------------------------------------
    node_states_cache: dict[str, tuple[int, bytes]] = {}

    @bp.route(PREFIX + "/node_states", methods=["GET"], strict_slashes=False)
    async def node_states(org: str) -> Response:
        await reader(org)
        require_accept(JSON)
        version = ctx.dispatcher.availability_version.get(org, 0)
        cached = node_states_cache.get(org)
        if cached is None or cached[0] != version:
            # rebuilt only after an availability change: polling this list must stay cheap
            # with thousands of nodes (it was most of the server's CPU under a polling load)
            items = [
                render.node_state_item(key[1], "available" if node.available else "unavailable")
                for key, node in sorted(ctx.dispatcher.table.nodes.items())
                if key[0] == org and not node.ghost
            ]
            cached = (version, orjson.dumps(items))
            node_states_cache[org] = cached
        return Response(cached[1], content_type=JSON)

    @bp.route(PREFIX + "/node_states/<node>", methods=["GET"], strict_slashes=False)
    async def node_state(org: str, node: str) -> Response:
        await reader(org)
        require_accept(JSON)
        found = ctx.dispatcher.table.online((org, node))
        if found is None:
            return json_response(render.node_state(node, "offline", "unavailable"))
        availability = "available" if found.available else "unavailable"
        return json_response(render.node_state(node, "online", availability))

    # feeds -----------------------------------------------------------------------------------
    @bp.route(PREFIX + "/job_status_feed/<job_id>", methods=["GET"], strict_slashes=False)
    @bp.route(PREFIX + "/jobs_status_feed/<job_id>", methods=["GET"], strict_slashes=False)
    async def job_feed(org: str, job_id: str) -> Response:
        await reader(org)
        require_accept(EVENT_STREAM)
        job = job_in_org(org, job_id)
        if job_id not in ctx.live:
            data = {"timestamp": render.sse_timestamp(ctx.clock.now()), **render.job_detail(job)}
            return _stream_response(render.sse_event("summary", "job-1", data))
        sub = ctx.hub.subscribe(("job", job_id))
        start = _after_id(request.headers.get("Last-Event-ID"), "job-", len(job.events))
        backlog = list(job.events[start:])

        async def events() -> AsyncIterator[bytes]:
            try:
                last = start
                chunk = b"".join(
                    render.sse_event(name, f"job-{n}", data) for n, name, data in backlog
                )
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

    @bp.route(PREFIX + "/job_status_feed", methods=["GET"], strict_slashes=False)
    @bp.route(PREFIX + "/jobs_status_feed", methods=["GET"], strict_slashes=False)
    async def org_feed(org: str) -> Response:
        s = ctx.settings
        await reader(org)
        require_accept(EVENT_STREAM)
        sub = ctx.hub.subscribe(("org", org))
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

    return bp


def status_blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("status", __name__)

    @bp.route("/pushy/_status", methods=["GET"], strict_slashes=False)
    async def status() -> Response:
        server = ctx.state.server
        body = {
            "status": "it's alive",
            "incarnation_id": server.incarnation if server else None,
            "node_fsm_count": ctx.dispatcher.table.online_count(),
            "job_processes": sorted(ctx.live),
            # the last check of server_name: why nodes may not connect (docs/troubleshooting.md)
            "advertised": ctx.advertiser.report(ctx.ports),
        }
        if request.args.get("counters") == "true":  # `pushy bench` reads the message rates
            body["counters"] = {
                "received": dict(ctx.reactor.received),
                "dropped": dict(ctx.reactor.dropped),
            }
        return json_response(body)

    @bp.route("/pushy/openapi.json", methods=["GET"], strict_slashes=False)
    async def openapi_document() -> Response:
        """The OpenAPI 3.1 description of every route (unauthenticated, like _status)."""
        from appliance.server.openapi import openapi_json

        return Response(openapi_json(), content_type=JSON)

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


def _z85_ok(text: str) -> bool:
    try:
        return len(zmq.utils.z85.decode(text.encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError, KeyError, IndexError, TypeError, struct.error):
        return False  # struct.error: a 5-char group above 2**32 - 1 (e.g. '#####')


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
