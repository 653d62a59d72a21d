"""Request authentication for every signed route: X-Ops headers → clock → org → key → signature.

The order fixes which error wins (server-protocol.md §6.1, DESIGN.md): body size (413, enforced
by Quart before we run) → missing/unsupported headers (400) → clock (401) → unknown org (404) →
unknown principal / bad signature (401) → not a member (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from quart import Response, abort, request

from appliance.core import chefauth, identity
from appliance.core.render import error_list
from appliance.server.context import ServerContext, public_key

JSON = "application/json"


@dataclass(frozen=True)
class Authenticated:
    principal: identity.Principal
    key: RSAPublicKey  # the key that verified the signature (session keys are encrypted to it)
    signature: bytes = b""  # as sent: a replay of the request sends the same
    signed_at: float = 0.0  # X-Ops-Timestamp: the signature is valid within the skew of it


def fail(status: int, body: object, headers: dict[str, str] | None = None) -> NoReturn:
    response = Response(orjson.dumps(body), status=status, content_type=JSON, headers=headers or {})
    abort(response)


async def authenticate(ctx: ServerContext, org: str | None) -> Authenticated:
    body = await request.get_data(cache=True)
    return verify(ctx, org, request.headers, request.method, request.path, body)


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
                if org is not None and not identity.is_org_member(ids, org, principal):
                    fail(
                        403,
                        error_list(f"'{req.user_id}' is not associated with organization '{org}'"),
                    )
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
