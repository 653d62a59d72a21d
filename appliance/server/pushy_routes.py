"""The Push Jobs REST API (server-protocol.md §6.2–6.7), with DESIGN.md's fixes.

Each handler is a module-level function taking the server context first, with its OpenAPI
operation declared above it (``apidoc``); ``blueprint`` is the registration table. Handlers
read ``ctx.settings`` per request: a reload (SIGHUP) replaces it. The SSE feeds are in
``feed_routes``, the health check and the API document in ``status_routes``.
"""

from __future__ import annotations

import logging
import os
import struct
from functools import partial
from typing import Any

import orjson
import trio
import zmq
import zmq.utils.z85
from quart import Blueprint, Response, request

from appliance.core import configfetch, identity, jobfsm, render, servedfetches
from appliance.core.jobspec import JobRequestError, parse_job_request
from appliance.core.keys import encrypt_session_key
from appliance.server.apidoc import (
    alias,
    json_reply,
    operation,
    path_param,
    query,
    ref,
    register,
    request_body,
    resp,
)
from appliance.server.auth import JSON, Authenticated, authenticate, fail, forbidden, require_accept
from appliance.server.context import ServerContext, server_public_pem
from appliance.server.schemas import JOB, NODE, ORG, STRING, URI
from appliance.store.errors import StorageError

OCTETS = "application/octet-stream"
PREFIX = "/organizations/<org>/pushy"
ABORT_SYNC_WAIT_SECONDS = 5.0
TAG = "push jobs"
log = logging.getLogger("pushy.http")


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


# access ----------------------------------------------------------------------------------


async def reader(ctx: ServerContext, org: str) -> identity.Principal:
    auth = await authenticate(ctx, org, session=True)
    if not identity.can_read_jobs(ctx.state.identity, org, auth.principal):
        forbidden(auth.principal.name)
    return auth.principal


async def writer(ctx: ServerContext, org: str) -> identity.Principal:
    auth = await authenticate(ctx, org, session=True)
    if not identity.can_write_jobs(ctx.state.identity, org, auth.principal):
        forbidden(auth.principal.name)
    return auth.principal


def job_in_org(ctx: ServerContext, org: str, job_id: str) -> jobfsm.Job:
    job = ctx.state.jobs.get(job_id)
    if job is None or job.org != org:
        fail(404, render.error_body(f"job '{job_id}' not found"))
    return job


# config ------------------------------------------------------------------------------------


@operation(
    "GET",
    "getNodeConfig",
    TAG,
    "A node's connection settings and session key",
    {
        "200": json_reply("The node config; keys in this order.", ref("NodeConfig")),
        "401": json_reply(
            "Not authenticated (with WWW-Authenticate), or a ccpk that is not a "
            '40-character Z85 key ({"error": ["Bad ccpk"]}, without).',
            ref("ErrorList"),
        ),
        "503": resp("Unavailable"),
    },
    description="Given to the node's own client (any client of the org when "
    "validate_client_node_name is false) and to the superuser; other users get 403 (the "
    "session key goes to no one else). A node's own fetch registers its CURVE key (ccpk) "
    "and rotates its session key (the previous one stays valid for session_key_grace "
    "seconds); the same signed request sent again within the signing window gets the key it "
    "was given then, without a rotation (with another ccpk: 401).",
    parameters=[
        ORG,
        NODE,
        query(
            "ccpk",
            "The node's CURVE public key, Z85 (40 characters; one that is not a key: 401 "
            '{"error": ["Bad ccpk"]}). Missing: 400 {"error": ["Missing ccpk"]}, unless the '
            "server runs with disable_curve_encryption (it is then ignored).",
            {"type": "string", "pattern": "^[0-9a-zA-Z.:+=^!/*?&<>()\\[\\]{}@%$#-]{40}$"},
            required=True,
        ),
        query("version", "Client protocol version (sent by clients, ignored).", STRING),
    ],
)
async def config(ctx: ServerContext, org: str, node: str) -> Response:
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
    registered = ccpk if curve else None
    if configfetch.own_fetch((p.kind, p.name), node):
        session = await _own_session_key(ctx, org, node, auth, registered)
    else:
        session = await _session_key(ctx, org, node, auth, registered)
    server = ctx.state.server
    assert server is not None
    out_addr, command_addr = ctx.node_endpoints((org, node))
    body: dict[str, Any] = {
        "type": "config",
        "host": ctx.advertiser.server_name,  # the running server_name: a reload may change it
        "push_jobs": {
            "heartbeat": {
                "out_addr": out_addr,
                "command_addr": command_addr,
                "interval": s.heartbeat_interval / 1000.0,
                "offline_threshold": 3,
                "online_threshold": 2,
            }
        },
        "node": node,
        "organization": org,
        "public_key": server_public_pem(ctx.server_key),
    }
    if not s.disable_curve_encryption:
        body["curve_public_key"] = server.curve_public
    # inline: an RSA public-key encryption (e = 65537) costs ~70 µs, a trip through a worker
    # thread several times that (docs/benchmarks.md, "config fetch")
    body["encoded_session_key"] = {
        "method": "hmac_sha256",
        "key": encrypt_session_key(auth.key, session),
    }
    body["lifetime"] = _number(s.config_lifetime)
    body["max_message_skew"] = _number(s.max_time_skew)
    body["max_body_size"] = s.max_body_size
    body["incarnation_id"] = server.incarnation
    body["max_output_bytes"] = s.max_output_bytes  # beyond the original: live output taken
    return json_response(body)


async def _session_key(
    ctx: ServerContext, org: str, node: str, auth: Authenticated, ccpk: str | None
) -> bytes:
    """The fetch's decision, made durable (and known to the edges) before the answer."""
    decision = configfetch.decide(
        ctx.state,
        org,
        node,
        principal=(auth.principal.kind, auth.principal.name),
        ccpk=ccpk,
        curve=not ctx.settings.disable_curve_encryption,
        fresh_key=os.urandom(32),
        now=ctx.clock.now(),
        grace=ctx.settings.session_key_grace,
    )
    if isinstance(decision, configfetch.Refused):
        fail(decision.status, render.error_list(decision.message))
    if decision.records:
        await durable(ctx, decision.records)
        await ctx.reactor.keys_ready((org, node))  # the edges check its messages with them
    return decision.session_key


async def _own_session_key(
    ctx: ServerContext, org: str, node: str, auth: Authenticated, ccpk: str | None
) -> bytes:
    """A node's own fetch rotates its session key, but not when it replays a signature
    already served (core.servedfetches): that gets the key it was given then, so a captured
    request sent again cannot cut the node off. Nothing is written for a replay: the key is
    the one the first answer recorded."""
    sig, at = auth.signature, auth.signed_at
    while (pending := ctx.fetches_in_flight.get(sig)) is not None:
        await pending.wait()  # the same signed request is being answered: take its answer
    seen = ctx.served_fetches.check((org, node), sig, at, ctx.clock.now())
    if isinstance(seen, servedfetches.Replay) and seen.served.ccpk == ccpk:
        log.info("config fetch of %s/%s: a signature already served; key not rotated", org, node)
        return seen.served.session_key
    if seen is not None:  # with another ccpk (not signed), or dropped from a full memory
        log.warning("config fetch of %s/%s: a replayed signature refused", org, node)
        fail(401, render.error_list(servedfetches.REPLAYED))
    done = ctx.fetches_in_flight[sig] = trio.Event()
    try:
        session = await _session_key(ctx, org, node, auth, ccpk)
        served = servedfetches.Served(session, ccpk)
        ctx.served_fetches.remember((org, node), sig, at, served, ctx.clock.now())
        return session
    finally:
        del ctx.fetches_in_flight[sig]
        done.set()


# jobs --------------------------------------------------------------------------------------


@operation(
    "GET",
    "listJobs",
    TAG,
    "Every job of the org, newest first",
    {"200": json_reply("Job summaries.", {"type": "array", "items": ref("JobSummary")})},
    description="Needs read access (pushy_job_readers when that group exists).",
    parameters=[ORG],
    session=True,
)
async def list_jobs(ctx: ServerContext, org: str) -> Response:
    await reader(ctx, org)
    require_accept(JSON)
    jobs = [j for j in ctx.state.jobs.values() if j.org == org]
    jobs.sort(key=lambda j: j.created_at, reverse=True)
    body = [render.job_summary(j) for j in jobs]
    return json_response(body)


@operation(
    "POST",
    "createJob",
    TAG,
    "Start a job",
    {
        "201": json_reply(
            "The job was started (stored, commits sent).",
            ref("JobCreated"),
            {"Location": {"description": "The job's URL.", "schema": URI}},
        ),
        "415": json_reply("Content-Type is not application/json.", ref("ErrorString")),
    },
    description="Needs write access (pushy_job_writers when that group exists, else admins).",
    parameters=[ORG],
    body=request_body(
        ref("JobRequest"),  # core.jobschema.JOB_REQUEST: what parse_job_request checks
        "The job.",
        {"command": "chef-client", "nodes": ["web1", "web2"], "quorum": 1},
    ),
    writes=True,
    session=True,
)
async def create_job(ctx: ServerContext, org: str) -> Response:
    s = ctx.settings
    principal = await writer(ctx, org)
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
        fail(503, render.error_body(f"the server cannot write its state: {exc.strerror or exc}"))
    uri = f"{base_url()}/organizations/{org}/pushy/jobs/{job.id}"
    return json_response({"uri": uri, "id": job.id}, 201, {"Location": uri})


@operation(
    "GET",
    "getJob",
    TAG,
    "One job with its nodes by status",
    {"200": json_reply("The job.", ref("Job"))},
    parameters=[
        ORG,
        JOB,
        query(
            "include_file",
            "Exactly 'true': include file (as submitted) instead of file_specified.",
            STRING,
        ),
    ],
    session=True,
)
async def get_job(ctx: ServerContext, org: str, job_id: str) -> Response:
    await reader(ctx, org)
    require_accept(JSON)
    job = job_in_org(ctx, org, job_id)
    include = request.args.get("include_file") == "true"
    body = render.job_detail(job, include_file=include)
    return json_response(body)


@operation(
    "POST",
    "abortJob",
    TAG,
    "Abort a live job",
    {
        "200": json_reply("The job, now aborted.", ref("Job")),
        "409": json_reply("The job has already finished.", ref("ErrorString")),
    },
    description="Needs write access. Live nodes are told to abort (aborted, rehab). "
    "No request body.",
    parameters=[ORG, JOB],
    writes=True,
    session=True,
)
async def abort_job(ctx: ServerContext, org: str, job_id: str) -> Response:
    await writer(ctx, org)
    require_accept(JSON)
    job = job_in_org(ctx, org, job_id)
    if jobfsm.job_finished(job):
        fail(409, render.error_body(f"job '{job_id}' has already finished ({job.status})"))
    seq = ctx.dispatcher.abort(job)
    body = render.job_detail(job)  # before any checkpoint: all of it is logged up to seq
    # The abort is in effect (nodes told, state changed); answer once it is on disk, or after
    # a bound when the disk is full (the committer keeps retrying the write).
    with trio.move_on_after(ABORT_SYNC_WAIT_SECONDS):
        await ctx.store.wait_synced(seq)
    return json_response(body)


@operation(
    "GET",
    "getJobOutput",
    TAG,
    "A node's captured stdout or stderr",
    {
        "200": {
            "description": "The raw bytes (may be empty).",
            "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
        },
        "406": json_reply("Accept excludes application/octet-stream.", ref("ErrorString")),
    },
    description="Only for jobs started with capture_output. While the node runs, and after "
    "an abort, a timeout or a crash, what arrived so far (live output, from pushy client); "
    "an original client's output once the node has finished. 404 when the job captures "
    "nothing, the node has not started, or the channel is not stdout/stderr.",
    parameters=[
        ORG,
        JOB,
        NODE,
        path_param(
            "channel", "stdout or stderr.", {"type": "string", "enum": ["stdout", "stderr"]}
        ),
    ],
    session=True,
)
async def job_output(
    ctx: ServerContext, org: str, job_id: str, node: str, channel: str
) -> Response:
    await reader(ctx, org)
    require_accept(OCTETS)
    if channel not in ("stdout", "stderr"):
        fail(404, render.error_body(f"no output channel '{channel}' (stdout or stderr)"))
    job = job_in_org(ctx, org, job_id)
    output = job.outputs.get(node)  # an original client's, sent at the end
    if output is not None:
        text = output[0] if channel == "stdout" else output[1]
        return Response(text.encode("utf-8", "surrogatepass"), content_type=OCTETS)
    status = job.nodes.get(node)
    if job.capture and status in _STARTED:
        outputs = ctx.dispatcher.outputs
        data = await outputs.read(job_id, node, channel)
        # a node of ours that printed nothing (on this channel) has an empty output; one of an
        # original client that has not finished has none yet
        ours = node in job.details or await outputs.streamed(job_id, node)
        if data is not None or status == "running" or ours:
            text = (data or b"").decode("utf-8", "replace")  # as the events show it
            return Response(text.encode("utf-8"), content_type=OCTETS)
    fail(404, render.error_body(f"no {channel} captured for node '{node}' in job '{job_id}'"))


_STARTED = frozenset({"running", "succeeded", "failed", "aborted", "crashed", "timed_out"})


# node states -------------------------------------------------------------------------------


@operation(
    "GET",
    "listNodeStates",
    TAG,
    "Online nodes of the org and their availability",
    {"200": json_reply("Online nodes, by name.", {"type": "array", "items": ref("NodeStateItem")})},
    parameters=[ORG],
    session=True,
)
async def node_states(
    ctx: ServerContext, org: str, *, cache: dict[str, tuple[int, bytes]]
) -> Response:
    await reader(ctx, org)
    require_accept(JSON)
    version = ctx.dispatcher.availability_version.get(org, 0)
    cached = cache.get(org)
    if cached is None or cached[0] != version:
        # rebuilt only after an availability change: polling this list must stay cheap
        # with thousands of nodes (it was most of the server's CPU under a polling load)
        items = [
            render.node_state_item(key[1], "available" if node.available else "unavailable")
            for key, node in sorted(ctx.dispatcher.table.nodes.items())
            if key[0] == org and not node.ghost
        ]
        cached = (version, orjson.dumps(items))
        cache[org] = cached
    return Response(cached[1], content_type=JSON)


@operation(
    "GET",
    "getNodeState",
    TAG,
    "One node's state (never 404: an unknown node is offline)",
    {"200": json_reply("The node's state.", ref("NodeState"))},
    parameters=[ORG, NODE],
    session=True,
)
async def node_state(ctx: ServerContext, org: str, node: str) -> Response:
    await reader(ctx, org)
    require_accept(JSON)
    found = ctx.dispatcher.table.online((org, node))
    if found is None:
        return json_response(render.node_state(node, "offline", "unavailable"))
    availability = "available" if found.available else "unavailable"
    return json_response(render.node_state(node, "online", availability))


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("pushy", __name__)
    register(
        bp,
        [
            (PREFIX + "/config/<node>", config),
            (PREFIX + "/connect/<node>", alias(config, "getNodeConnect", "alias of config")),
            (PREFIX + "/jobs", list_jobs),
            (PREFIX + "/jobs", create_job),
            (PREFIX + "/jobs/<job_id>", get_job),
            (PREFIX + "/jobs/<job_id>/abort", abort_job),
            (PREFIX + "/jobs/<job_id>/output/<node>/<channel>", job_output),
            # rebuilt only after an availability change (see node_states)
            (PREFIX + "/node_states", partial(node_states, cache={})),
            (PREFIX + "/node_states/<node>", node_state),
        ],
        ctx,
    )
    return bp


def _z85_ok(text: str) -> bool:
    try:
        return len(zmq.utils.z85.decode(text.encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError, KeyError, IndexError, TypeError, struct.error):
        return False  # struct.error: a 5-char group above 2**32 - 1 (e.g. '#####')


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
