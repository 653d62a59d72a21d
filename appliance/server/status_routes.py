"""The unauthenticated routes: the health check (server-protocol.md §6.9) and the API document."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, request

from appliance.server import openapi
from appliance.server.apidoc import json_reply, operation, ref, register, resp
from appliance.server.auth import JSON
from appliance.server.context import ServerContext
from appliance.server.edges import EdgeHub
from appliance.server.pushy_routes import json_response


@operation(
    "GET",
    "getStatus",
    "status",
    "Health check (no authentication)",
    {
        "200": json_reply(
            "The server is up (and the active one, with a PostgreSQL store).", ref("Status")
        ),
        "503": json_reply(
            "Not the active server: a standby, or stepping down.", ref("StandbyStatus")
        ),
        "500": resp("InternalError"),
    },
    signed=False,
)
async def status(ctx: ServerContext) -> Response:
    server = ctx.state.server
    if ctx.lease is not None and not ctx.lease.valid():
        # an active unsure of its lease: the load balancer must send requests elsewhere
        return json_response(
            {
                "status": "stepping down",
                "role": "standby",
                "incarnation_id": server.incarnation if server else None,
            },
            status=503,
        )
    body = {
        "status": "it's alive",
        "incarnation_id": server.incarnation if server else None,
        "node_fsm_count": ctx.dispatcher.table.online_count(),
        "job_processes": sorted(ctx.live),
        # the last check of server_name: why nodes may not connect (docs/troubleshooting.md)
        "advertised": ctx.advertiser.report(ctx.ports),
        "role": "active",  # a standby answers 503 "standby" (``server.standby``)
    }
    if request.args.get("counters") == "true":  # `pushy bench` reads the message rates
        received, dropped = ctx.reactor.counters()
        body["counters"] = {"received": dict(received), "dropped": dict(dropped)}
        if isinstance(ctx.reactor, EdgeHub):
            body["counters"]["edges"] = ctx.reactor.report()
    return json_response(body)


@operation(
    "GET",
    "getOpenApi",
    "status",
    "The OpenAPI document (no authentication)",
    {"200": json_reply("The OpenAPI 3.1 document.", ref("OpenApiDocument"))},
    signed=False,
)
async def openapi_document(ctx: ServerContext) -> Response:
    """The OpenAPI 3.1 description of every route (unauthenticated, like _status)."""
    return Response(openapi.openapi_json(current_app), content_type=JSON)


ROUTES = (
    ("/pushy/_status", status),
    ("/pushy/openapi.json", openapi_document),
)


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("status", __name__)
    register(bp, ROUTES, ctx)
    return bp
