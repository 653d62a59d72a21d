"""Request authentication for every signed route: X-Ops headers → clock → org → key → signature.

The order fixes which error wins (server-protocol.md §6.1, DESIGN.md): body size (413, enforced
by Quart before we run) → missing/unsupported headers (400) → clock (401) → unknown org (404) →
unknown principal / bad signature (401) → not a member (403).

The routes the web dashboard uses (``session=True``) also take its session cookie instead of
signed headers: only a request that carries the cookie and no ``X-Ops-Authorization-1`` is
authenticated that way, so signed requests (knife, the original clients) are checked exactly
as before. A write by cookie must carry the session's CSRF token in ``X-CSRF-Token`` and an
``Origin`` equal to the server's own; so must a websocket handshake (Origin).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from quart import Response, abort, g, request

from appliance.core import chefauth, identity
from appliance.core.render import error_list
from appliance.server.context import ServerContext, public_key

JSON = "application/json"
SESSION_COOKIE = "pushy_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_ENDED = "no dashboard session (it ended or was never opened): log in again"
CHALLENGE = {"WWW-Authenticate": chefauth.WWW_AUTHENTICATE}  # on every 401, as §6.1 has it


@dataclass(frozen=True)
class Authenticated:
    principal: identity.Principal
    # the key that verified the signature (session keys are encrypted to it); None for a
    # dashboard session, which no route that encrypts to a key accepts
    key: RSAPublicKey | None
    signature: bytes = b""  # as sent: a replay of the request sends the same
    signed_at: float = 0.0  # X-Ops-Timestamp: the signature is valid within the skew of it


def fail(status: int, body: object, headers: dict[str, str] | None = None) -> NoReturn:
    response = Response(orjson.dumps(body), status=status, content_type=JSON, headers=headers or {})
    abort(response)


async def authenticate(
    ctx: ServerContext, org: str | None, *, session: bool = False
) -> Authenticated:
    """The requester; with ``session``, a dashboard session cookie is accepted too."""
    body = await request.get_data(cache=True)
    if session and by_session(request.headers, request.cookies):
        return verify_session(
            ctx, org, request.headers, request.cookies, request.method, request.scheme
        )
    return verify(ctx, org, request.headers, request.method, request.path, body)


def by_session(headers: Any, cookies: Any) -> bool:
    """Whether a request is to be authenticated by its session cookie (a signed one never is)."""
    return SESSION_COOKIE in cookies and "X-Ops-Authorization-1" not in headers


def verify_session(
    ctx: ServerContext, org: str | None, headers: Any, cookies: Any, method: str, scheme: str
) -> Authenticated:
    """The checks of a cookie request: live session, CSRF and Origin on writes and websocket
    handshakes (``method`` "WEBSOCKET"), then the same org checks as a signed request."""
    g.dashboard_session = True  # answered with Cache-Control: no-store (dashboard_routes)
    found = ctx.sessions.find(cookies[SESSION_COOKIE], now=ctx.clock.now())
    user = ctx.state.identity.users.get(found.user) if found is not None else None
    if found is None or user is None:
        fail(401, error_list(SESSION_ENDED), CHALLENGE)
    if method not in SAFE_METHODS and headers.get("Origin") != own_origin(headers, scheme):
        fail(403, error_list("cross-site request refused: Origin is not this server"))
    if method not in SAFE_METHODS and method != "WEBSOCKET":
        token = headers.get(CSRF_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(token, found.csrf.encode()):
            fail(403, error_list(f"missing or wrong {CSRF_HEADER} header"))
    principal = identity.Principal(user.name, "user", user.superuser, None)
    _check_member(ctx, org, principal)
    return Authenticated(principal, None)


def own_origin(headers: Any, scheme: str) -> str:
    """This server's origin as a browser serialises it (``scheme://host[:port]``, the default
    port left out); ``scheme`` is the request's (``ws``/``wss`` for a websocket)."""
    scheme = headers.get("X-Forwarded-Proto") or ("https" if scheme in ("https", "wss") else "http")
    host = headers.get("Host", "")
    name, colon, port = host.rpartition(":")
    if colon and name and (scheme, port) in (("http", "80"), ("https", "443")):
        host = name
    return f"{scheme}://{host}"


def _check_member(ctx: ServerContext, org: str | None, principal: identity.Principal) -> None:
    ids = ctx.state.identity
    if org is not None and org not in ids.orgs:
        fail(404, error_list(f"organization '{org}' does not exist."))
    if org is not None and not identity.is_org_member(ids, org, principal):
        fail(403, error_list(f"'{principal.name}' is not associated with organization '{org}'"))


def verify(
    ctx: ServerContext, org: str | None, headers: Any, method: str, path: str, body: bytes
) -> Authenticated:
    """The checks of `authenticate` on given request parts (a websocket handshake has no
    ``request``); a failure aborts with the JSON error response."""
    try:
        now = ctx.clock.now()
        req = chefauth.parse_auth_headers(headers, method, path, body, now=now)
        chefauth.check_time(req, now)
    except chefauth.AuthError as exc:
        challenge = {"WWW-Authenticate": chefauth.WWW_AUTHENTICATE} if exc.status == 401 else None
        fail(exc.status, error_list(exc.message), challenge)
    ids = ctx.state.identity
    if org is not None and org not in ids.orgs:
        fail(404, error_list(f"organization '{org}' does not exist."))
    candidates = identity.lookup_keys(ids, org, req.user_id, now=now)  # no expired keys
    if not candidates:
        fail(
            401,
            error_list(
                f"Failed to authenticate as '{req.user_id}'. "
                "Ensure that your node_name and client key are correct."
            ),
            {"WWW-Authenticate": chefauth.WWW_AUTHENTICATE},
        )
    for principal, pems in candidates:
        for pem in pems:
            try:
                key = public_key(pem)
            except ValueError:
                continue
            if chefauth.verify_signature(req, [key]):
                _check_member(ctx, org, principal)
                signed_at = chefauth.parse_timestamp(req.timestamp)
                return Authenticated(principal, key, req.signature, signed_at)
    fail(
        401,
        error_list(f"Invalid signature for user or client '{req.user_id}'"),
        {"WWW-Authenticate": chefauth.WWW_AUTHENTICATE},
    )


def forbidden(name: str) -> NoReturn:
    fail(
        403,
        error_list(f"User or client '{name}' does not have access to that action on this server."),
    )


def require_accept(mimetype: str) -> None:
    """A missing Accept means */*; only an Accept that excludes the route's type gets 406."""
    accept = request.headers.get("Accept")
    if accept is None or accept == mimetype or accept == "*/*":  # what clients send: no parse
        return
    if request.accept_mimetypes.quality(mimetype) <= 0:
        fail(406, {"error": f"this resource is only available as {mimetype}"})
