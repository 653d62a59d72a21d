"""The Quart application: identity API, Push Jobs API and feeds, JSON errors everywhere."""

from __future__ import annotations

import logging
from typing import Any, cast

import orjson
import trio
from quart import Response, current_app, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from appliance.core.settings import Settings
from appliance.server import (
    dashboard_routes,
    feed_routes,
    identity_routes,
    metrics,
    openapi,
    pushy_routes,
    search_routes,
    status_routes,
    ws_routes,
)
from appliance.server.context import ServerContext
from appliance.server.stalls import abort_connection

MAX_REST_BODY = 1_000_000
# after an error sent before the body was read (413, 408): how long the rest may still arrive
LINGER_SECONDS = 1.0
log = logging.getLogger("pushy.http")
STATUS_PATH = "/pushy/_status"
NOT_ACTIVE = "this pushy server is stepping down to standby; the active server answers"


def create_app(ctx: ServerContext) -> QuartTrio:
    app = QuartTrio("pushy", static_folder=None)  # no /static/ route serving files from the cwd
    app.config["MAX_CONTENT_LENGTH"] = MAX_REST_BODY
    app.config["BODY_TIMEOUT"] = 30
    app.register_blueprint(status_routes.blueprint(ctx))
    app.register_blueprint(pushy_routes.blueprint(ctx))
    app.register_blueprint(feed_routes.blueprint(ctx))
    app.register_blueprint(ws_routes.blueprint(ctx))
    app.register_blueprint(identity_routes.blueprint(ctx))
    app.register_blueprint(search_routes.blueprint(ctx))
    app.register_blueprint(metrics.blueprint(ctx))
    app.register_blueprint(dashboard_routes.blueprint(ctx))

    @app.before_request
    async def read_body_first() -> None:
        """Read the whole body (at most MAX_REST_BODY) before routing: hypercorn stalls a
        keep-alive connection when a reply (a 405, a 404) goes out before the body was read."""
        await request.get_data(cache=True)
        if ctx.lease is not None and not ctx.lease.valid() and request.path != STATUS_PATH:
            # a PostgreSQL store's active that cannot be sure of its lease any more (paused
            # past it, cut off from the database): another server may be active now
            return Response(
                orjson.dumps({"error": [NOT_ACTIVE]}),
                status=503,
                content_type="application/json",
                headers={"Retry-After": "5"},
            )
        return None

    @app.after_request
    async def durable_first(response: Response) -> Response:
        """No answer shows a change before its record is on disk: job steps are applied in
        memory before they are written, and this is the one place every HTTP answer waits
        for them (SSE chunks wait in ``pushy_routes._watched``, websocket messages in
        ``ws_routes``). Writes that waited for their own records find nothing left to wait for."""
        await ctx.store.barrier()
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.response is not None:  # raised by our own ``fail``: already a JSON response
            return exc.response
        status = exc.code or 500
        if status == 413:
            body: object = {"error": f"JSON must be no more than {MAX_REST_BODY} bytes."}
        elif status == 404:
            body = {"error": "not found"}
        elif status == 405:
            body = {"error": "method not allowed"}
        else:
            body = {"error": exc.description or exc.name}
        # an oversized (or too slow) body is never read: close rather than leave the connection
        # stalled, and cut it after a moment, for hypercorn would read the rest forever
        headers = {}
        if status in (408, 413):
            headers = {"Connection": "close"}
            current_app.nursery.start_soon(_abort_later, request.scope)
        return Response(
            orjson.dumps(body), status=status, content_type="application/json", headers=headers
        )

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error in a request")
        body = {"error": "internal server error; see the server log"}
        return Response(orjson.dumps(body), status=500, content_type="application/json")

    return app


class _Unserved:
    """What building the app reads of a context (handlers read the rest per request)."""

    settings = Settings()

    def __init__(self) -> None:
        self.shutdown = trio.Event()


def api_document() -> dict[str, Any]:
    """The OpenAPI document of every route, without a server (tests, docs)."""
    return openapi.document(create_app(cast(ServerContext, _Unserved())))


async def _abort_later(scope: dict) -> None:
    """Close a connection whose response went out before its request body was read.

    hypercorn then means to close it, but that close is cancelled along with the request's
    task: the connection would stay open, reading and discarding whatever the client sends,
    for as long as it sends (an endless body). Waiting a moment first lets the client read the
    response before the close (which resets a connection with unread data)."""
    await trio.sleep(LINGER_SECONDS)
    abort_connection(scope)
