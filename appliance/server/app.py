"""The Quart application: identity API, Push Jobs API and feeds, JSON errors everywhere."""

from __future__ import annotations

import logging

import orjson
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from appliance.server import identity_routes, pushy_routes, search_routes, ws_routes
from appliance.server.context import ServerContext

MAX_REST_BODY = 1_000_000
log = logging.getLogger("pushy.http")


def create_app(ctx: ServerContext) -> QuartTrio:
    app = QuartTrio("pushy", static_folder=None)  # no /static/ route serving files from the cwd
    app.config["MAX_CONTENT_LENGTH"] = MAX_REST_BODY
    app.config["BODY_TIMEOUT"] = 30
    app.register_blueprint(pushy_routes.status_blueprint(ctx))
    app.register_blueprint(pushy_routes.blueprint(ctx))
    app.register_blueprint(identity_routes.blueprint(ctx))
    app.register_blueprint(search_routes.blueprint(ctx))
    app.register_blueprint(ws_routes.blueprint(ctx))

    @app.before_request
    async def read_body_first() -> None:
        """Read the whole body (at most MAX_REST_BODY) before routing: hypercorn stalls a
        keep-alive connection when a reply (a 405, a 404) goes out before the body was read."""
        await request.get_data(cache=True)

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
        # an oversized body is never read: close rather than leave the connection stalled
        headers = {"Connection": "close"} if status == 413 else {}
        return Response(
            orjson.dumps(body), status=status, content_type="application/json", headers=headers
        )

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error in a request")
        body = {"error": "internal server error; see the server log"}
        return Response(orjson.dumps(body), status=500, content_type="application/json")

    return app
