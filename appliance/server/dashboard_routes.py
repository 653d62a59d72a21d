"""The web dashboard: its page at ``/``, its files under ``/dashboard/``, and its log-in.

Log-in never sends a private key to the server: ``pushy admin login-link USER`` asks (signed
as the superuser, or as USER itself) ``POST /pushy/dashboard/login_links`` for a one-time
link, ``BASE/#login=TOKEN``. The token rides in the URL's fragment, which browsers never send
to a server, so it reaches no access log or proxy; the page sends it in a POST body to
``/pushy/dashboard/session``, which spends it (once, within its ttl) for a session cookie
(HttpOnly, SameSite=Strict, Secure under HTTPS, Max-Age ``dashboard_session_lifetime``) and a
CSRF token. Links and sessions are kept in memory, by their tokens' hashes only
(``core.websessions``): a restart or a fail-over ends every session (users log in again).

The page and its files go out with a Content-Security-Policy that allows only this server's
own scripts, styles and connections, and forbids framing; every answer to the dashboard's
API calls (session routes, cookie requests) is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import orjson
from quart import Blueprint, Response, g, request

from appliance.core import identity
from appliance.core.chefauth import format_timestamp
from appliance.core.render import error_list
from appliance.core.schemacheck import first_problem
from appliance.core.websessions import Grant, Session
from appliance.server.apidoc import json_reply, operation, path_param, ref, register, request_body
from appliance.server.auth import (
    CHALLENGE,
    SAFE_METHODS,
    SESSION_COOKIE,
    SESSION_ENDED,
    authenticate,
    by_session,
    fail,
    own_origin,
    require_accept,
    verify_session,
)
from appliance.server.context import ServerContext
from appliance.server.pushy_routes import base_url, json_response
from appliance.server.schemas import SCHEMAS

log = logging.getLogger("pushy.dashboard")
TAG = "dashboard"
STATIC = Path(__file__).with_name("dashboard")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: The dashboard's files, read once: only these names are ever served (no path from a request
#: reaches the file system).
FILES = {p.name: p.read_bytes() for p in sorted(STATIC.iterdir()) if p.suffix in _TYPES}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: an upgrade's new files are seen at once
}
LINK_TTL, MAX_LINK_TTL = 300, 3600
_LINK = SCHEMAS["LoginLinkRequest"]
_HTML = "text/html"


def _file(name: str) -> Response:
    content = FILES.get(name)
    if content is None:
        fail(404, {"error": "not found"})
    ctype = _TYPES[Path(name).suffix]
    return Response(content, content_type=ctype, headers=PAGE_HEADERS)


@operation(
    "GET",
    "dashboardPage",
    TAG,
    "The web dashboard (no authentication; it logs in with a link)",
    {"200": {"description": "The dashboard's page.", "content": {_HTML: {}}}},
    signed=False,
)
async def page(ctx: ServerContext) -> Response:
    return _file("index.html")


@operation(
    "GET",
    "dashboardFile",
    TAG,
    "One of the dashboard's files (scripts, styles)",
    {
        "200": {"description": "The file."},
        "404": json_reply("No such file.", ref("ErrorString")),
    },
    parameters=[path_param("name", "The file's name, e.g. app.js.")],
    signed=False,
)
async def asset(ctx: ServerContext, name: str) -> Response:
    return _file(name)


@operation(
    "POST",
    "createLoginLink",
    TAG,
    "A one-time log-in link to the dashboard (superuser, or the user itself)",
    {
        "201": json_reply("The link; it is shown once and never logged.", ref("LoginLink")),
        "400": json_reply("A malformed body, or no organization to show.", ref("ErrorList")),
    },
    description="`pushy admin login-link USER` calls it. The link opens the dashboard, "
    "which spends it for a session (POST /pushy/dashboard/session): once, within ttl.",
    body=request_body(ref("LoginLinkRequest"), "Whom to log in.", {"user": "alice"}),
    writes=True,
)
async def login_link(ctx: ServerContext) -> Response:
    auth = await authenticate(ctx, None)
    require_accept("application/json")
    body = await _json_body()
    problem = first_problem(_LINK, body)
    if problem is not None:
        fail(400, error_list(f"Field '{problem.field}' invalid"))
    name, ids, requester = body["user"], ctx.state.identity, auth.principal
    if not (requester.superuser or (requester.kind == "user" and requester.name == name)):
        fail(403, error_list("only the superuser, or the user itself, may make a log-in link"))
    if name not in ids.users:
        fail(404, error_list(f"user '{name}' not found"))
    org = body.get("org") or _only_org(ctx, name)
    if org not in ids.orgs:
        fail(404, error_list(f"organization '{org}' does not exist."))
    principal = _principal(ctx, name)
    if not identity.is_org_member(ids, org, principal):
        fail(400, error_list(f"'{name}' is not associated with organization '{org}'"))
    token = secrets.token_urlsafe(32)
    grant = ctx.sessions.add_link(
        token, name, org, now=ctx.clock.now(), ttl=body.get("ttl", LINK_TTL)
    )
    log.info(
        "dashboard log-in link for %s (org %s) made by %s, valid until %s",
        name,
        org,
        requester.name,
        format_timestamp(grant.expires),
    )
    out = {"url": f"{base_url()}/#login={token}", **_grant_json(grant)}
    return json_response(out, 201)


@operation(
    "POST",
    "openDashboardSession",
    TAG,
    "Spend a log-in link's token for a session cookie",
    {
        "200": json_reply(
            "Logged in: Set-Cookie pushy_session (HttpOnly, SameSite=Strict, Secure under "
            "HTTPS, Path=/, Max-Age dashboard_session_lifetime).",
            ref("DashboardSession"),
        ),
        "400": json_reply("A malformed body.", ref("ErrorList")),
        "401": json_reply("The token is unknown, used or expired.", ref("ErrorList")),
        "403": json_reply("Origin is not this server.", ref("ErrorList")),
    },
    description="The dashboard's page sends the token of the link it was opened with.",
    body=request_body(ref("SessionOpen"), "The token.", {"token": "..."}),
    signed=False,
    writes=True,
)
async def open_session(ctx: ServerContext) -> Response:
    if request.headers.get("Origin") != own_origin(request.headers, request.scheme):
        fail(403, error_list("cross-site request refused: Origin is not this server"))
    body = await _json_body()
    if first_problem(SCHEMAS["SessionOpen"], body) is not None:
        fail(400, error_list("Field 'token' invalid"))
    now = ctx.clock.now()
    grant = ctx.sessions.redeem(body["token"], now=now)
    if grant is None or grant.user not in ctx.state.identity.users:
        log.warning("a dashboard log-in link was refused: unknown, already used or expired")
        fail(
            401,
            error_list("this log-in link is unknown, used or expired: ask for a new one"),
            CHALLENGE,
        )
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    lifetime = ctx.settings.dashboard_session_lifetime
    session = ctx.sessions.open(token, csrf, grant, now=now, ttl=lifetime)
    log.info("dashboard session opened for %s (org %s)", session.user, session.org)
    response = json_response(_session_json(ctx, session))
    secure = own_origin(request.headers, request.scheme).startswith("https:")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(lifetime),
        path="/",
        secure=secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@operation(
    "GET",
    "getDashboardSession",
    TAG,
    "The session's user, organization, permissions and CSRF token",
    {
        "200": json_reply("The session.", ref("DashboardSession")),
        "401": json_reply("No session (ended, expired, or never opened).", ref("ErrorList")),
    },
    signed=False,
    extra={"security": [{"dashboardSession": []}]},
)
@operation(
    "DELETE",
    "closeDashboardSession",
    TAG,
    "Log out: the session is deleted on the server and its cookie cleared",
    {
        "200": json_reply("Logged out; the session as it was.", ref("DashboardSession")),
        "401": json_reply("No session (ended, expired, or never opened).", ref("ErrorList")),
        "403": json_reply("Missing or wrong X-CSRF-Token, or a foreign Origin.", ref("ErrorList")),
    },
    signed=False,
    extra={"security": [{"dashboardSession": []}]},
)
async def session(ctx: ServerContext) -> Response:
    cookies = request.cookies
    if not by_session(request.headers, cookies):
        fail(401, error_list(SESSION_ENDED), CHALLENGE)
    method = request.method
    verify_session(ctx, None, request.headers, cookies, method, request.scheme)
    token = cookies[SESSION_COOKIE]
    found = ctx.sessions.find(token, now=ctx.clock.now())
    assert found is not None  # verify_session has just found it
    body = _session_json(ctx, found)
    if method in SAFE_METHODS:
        return json_response(body)
    ctx.sessions.close(token)
    log.info("dashboard session of %s (org %s) closed: logged out", found.user, found.org)
    response = json_response(body)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
    return response


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("dashboard", __name__)
    register(
        bp,
        [
            ("/", page),
            ("/dashboard/<name>", asset),
            ("/pushy/dashboard/login_links", login_link),
            ("/pushy/dashboard/session", open_session),
            ("/pushy/dashboard/session", session),
        ],
        ctx,
    )

    @bp.after_app_request
    async def no_store(response: Response) -> Response:
        """What the dashboard's API calls answer is never kept by a browser or a proxy."""
        if g.get("dashboard_session") or request.path.startswith("/pushy/dashboard/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    return bp


# ---------------------------------------------------------------------------------------------


async def _json_body() -> dict[str, Any]:
    raw = await request.get_data(cache=True)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        fail(400, error_list("invalid JSON in request body"))
    if not isinstance(body, dict):
        fail(400, error_list("request body must be a JSON object"))
    return body


def _principal(ctx: ServerContext, name: str) -> identity.Principal:
    user = ctx.state.identity.users[name]
    return identity.Principal(user.name, "user", user.superuser, None)


def _only_org(ctx: ServerContext, name: str) -> str:
    orgs = sorted(o for o, org in ctx.state.identity.orgs.items() if name in org.users)
    if len(orgs) != 1:
        where = "no organization" if not orgs else f"organizations {', '.join(orgs)}"
        fail(400, error_list(f"'{name}' is a member of {where}: say which org to show"))
    return orgs[0]


def _grant_json(grant: Grant) -> dict[str, Any]:
    return {"user": grant.user, "org": grant.org, "expires_at": format_timestamp(grant.expires)}


def _session_json(ctx: ServerContext, session: Session) -> dict[str, Any]:
    ids = ctx.state.identity
    principal = _principal(ctx, session.user)
    known = session.org in ids.orgs
    return {
        **_grant_json(session),
        "superuser": principal.superuser,
        "can_read": known and identity.can_read_jobs(ids, session.org, principal),
        "can_write": known and identity.can_write_jobs(ids, session.org, principal),
        "csrf_token": session.csrf,
    }
