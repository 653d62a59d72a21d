"""The Chef Server API subset (standalone identity): thin routes over ``core.identity``.

Each route authenticates, parses the JSON body, lets the pure handler decide, makes its records
durable, applies them, and answers. Key pairs are generated here (off the trio thread) only when
the handler will need one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson
import trio
from quart import Blueprint, Response, request

from appliance.core import identity
from appliance.core.keys import generate_rsa, private_pem, public_pem
from appliance.server.auth import authenticate, fail, require_accept
from appliance.server.context import ServerContext
from appliance.server.pushy_routes import base_url, durable, json_response

ORG = "/organizations/<org>"
# orjson reads up to 1024 levels but writes at most 254 (a log record adds a few), and the
# handlers deepcopy bodies recursively: a deeper node record was a 500 and was not stored
# (tests/e2e/test_rest_fuzz.py::test_deeply_nested_identity_body_is_a_400_not_a_500)
MAX_BODY_DEPTH = 100


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects in ``value`` nest more than ``limit`` levels (iterative)."""
    stack = [(value, 1)]
    for _ in range(10_000_000):  # bounded: a 1 MB body has far fewer values
        if not stack:
            return False
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return True


def _new_keypair() -> tuple[str, str]:
    key = generate_rsa(2048)
    return private_pem(key), public_pem(key)


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("identity", __name__)

    async def body_json() -> Any:
        raw = await request.get_data(cache=True)
        if not raw:
            return None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fail(400, {"error": ["invalid JSON in request body"]})
        if _deeper_than(body, MAX_BODY_DEPTH):
            fail(400, {"error": [f"JSON body nested more than {MAX_BODY_DEPTH} levels deep"]})
        return body

    async def handle(
        org: str | None,
        route: str,
        call: Callable[..., identity.Result],
        *,
        body: bool = False,
        keyed: bool = False,
    ) -> Response:
        auth = await authenticate(ctx, org)
        require_accept("application/json")
        payload = await body_json() if body else None
        extra: dict[str, Any] = {}
        if keyed:
            needs = identity.needs_new_key(route, payload)
            extra["new_key"] = await trio.to_thread.run_sync(_new_keypair) if needs else None
        args = (payload,) if body else ()
        result = call(ctx.state.identity, auth.principal, *args, **extra)
        if result.records:
            await durable(ctx, result.records)
        return json_response(result.body, result.status)

    url = base_url

    # organizations ---------------------------------------------------------------------------
    @bp.route("/organizations", methods=["GET"], strict_slashes=False)
    async def orgs_list() -> Response:
        return await handle(
            None, "list_orgs", lambda s, p: identity.list_orgs(s, p, base_url=url())
        )

    @bp.route("/organizations", methods=["POST"], strict_slashes=False)
    async def orgs_create() -> Response:
        auth = await authenticate(ctx, None)
        payload = await body_json()
        private, public = await trio.to_thread.run_sync(_new_keypair)
        result = identity.create_org(
            ctx.state.identity,
            auth.principal,
            payload,
            guid=os.urandom(16).hex(),
            validator_key_pem_private=private,
            validator_key_pem_public=public,
            base_url=url(),
        )
        if result.records:
            await durable(ctx, result.records)
        return json_response(result.body, result.status)

    @bp.route(ORG, methods=["GET"], strict_slashes=False)
    async def org_get(org: str) -> Response:
        return await handle(org, "get_org", lambda s, p: identity.get_org(s, p, org))

    # users -----------------------------------------------------------------------------------
    @bp.route("/users", methods=["GET"], strict_slashes=False)
    async def users_list() -> Response:
        return await handle(
            None, "list_users", lambda s, p: identity.list_users(s, p, base_url=url())
        )

    @bp.route("/users", methods=["POST"], strict_slashes=False)
    async def users_create() -> Response:
        return await handle(
            None,
            "create_user",
            lambda s, p, b, new_key: identity.create_user(s, p, b, new_key=new_key, base_url=url()),
            body=True,
            keyed=True,
        )

    @bp.route("/users/<name>", methods=["GET"], strict_slashes=False)
    async def user_get(name: str) -> Response:
        return await handle(None, "get_user", lambda s, p: identity.get_user(s, p, name))

    @bp.route("/users/<name>/keys", methods=["GET"], strict_slashes=False)
    async def user_keys(name: str) -> Response:
        return await handle(
            None,
            "list_keys",
            lambda s, p: identity.list_keys(s, p, None, name, now=ctx.clock.now(), base_url=url()),
        )

    @bp.route("/users/<name>/keys", methods=["POST"], strict_slashes=False)
    async def user_key_add(name: str) -> Response:
        return await handle(
            None,
            "add_key",
            lambda s, p, b, new_key: identity.add_key(
                s, p, None, name, b, new_key=new_key, base_url=url()
            ),
            body=True,
            keyed=True,
        )

    @bp.route("/users/<name>/keys/<key>", methods=["GET"], strict_slashes=False)
    async def user_key_get(name: str, key: str) -> Response:
        return await handle(None, "get_key", lambda s, p: identity.get_key(s, p, None, name, key))

    @bp.route("/users/<name>/keys/<key>", methods=["DELETE"], strict_slashes=False)
    async def user_key_delete(name: str, key: str) -> Response:
        return await handle(
            None, "delete_key", lambda s, p: identity.delete_key(s, p, None, name, key)
        )

    @bp.route(ORG + "/users", methods=["GET"], strict_slashes=False)
    async def org_users(org: str) -> Response:
        return await handle(org, "list_org_users", lambda s, p: identity.list_org_users(s, p, org))

    @bp.route(ORG + "/users", methods=["POST"], strict_slashes=False)
    async def org_users_add(org: str) -> Response:
        return await handle(
            org,
            "associate_user",
            lambda s, p, b: identity.associate_user(s, p, org, b, base_url=url()),
            body=True,
        )

    # clients ---------------------------------------------------------------------------------
    @bp.route(ORG + "/clients", methods=["GET"], strict_slashes=False)
    async def clients_list(org: str) -> Response:
        return await handle(
            org, "list_clients", lambda s, p: identity.list_clients(s, p, org, base_url=url())
        )

    @bp.route(ORG + "/clients", methods=["POST"], strict_slashes=False)
    async def clients_create(org: str) -> Response:
        return await handle(
            org,
            "create_client",
            lambda s, p, b, new_key: identity.create_client(
                s, p, org, b, new_key=new_key, base_url=url()
            ),
            body=True,
            keyed=True,
        )

    @bp.route(ORG + "/clients/<name>", methods=["GET"], strict_slashes=False)
    async def client_get(org: str, name: str) -> Response:
        return await handle(org, "get_client", lambda s, p: identity.get_client(s, p, org, name))

    @bp.route(ORG + "/clients/<name>", methods=["DELETE"], strict_slashes=False)
    async def client_delete(org: str, name: str) -> Response:
        response = await handle(
            org, "delete_client", lambda s, p: identity.delete_client(s, p, org, name)
        )
        if response.status_code == 200:
            ctx.dispatcher.drop_node((org, name))
        return response

    @bp.route(ORG + "/clients/<name>/keys", methods=["GET"], strict_slashes=False)
    async def client_keys(org: str, name: str) -> Response:
        return await handle(
            org,
            "list_keys",
            lambda s, p: identity.list_keys(s, p, org, name, now=ctx.clock.now(), base_url=url()),
        )

    @bp.route(ORG + "/clients/<name>/keys", methods=["POST"], strict_slashes=False)
    async def client_key_add(org: str, name: str) -> Response:
        return await handle(
            org,
            "add_key",
            lambda s, p, b, new_key: identity.add_key(
                s, p, org, name, b, new_key=new_key, base_url=url()
            ),
            body=True,
            keyed=True,
        )

    @bp.route(ORG + "/clients/<name>/keys/<key>", methods=["GET"], strict_slashes=False)
    async def client_key_get(org: str, name: str, key: str) -> Response:
        return await handle(org, "get_key", lambda s, p: identity.get_key(s, p, org, name, key))

    @bp.route(ORG + "/clients/<name>/keys/<key>", methods=["DELETE"], strict_slashes=False)
    async def client_key_delete(org: str, name: str, key: str) -> Response:
        return await handle(
            org, "delete_key", lambda s, p: identity.delete_key(s, p, org, name, key)
        )

    # groups ----------------------------------------------------------------------------------
    @bp.route(ORG + "/groups", methods=["GET"], strict_slashes=False)
    async def groups_list(org: str) -> Response:
        return await handle(
            org, "list_groups", lambda s, p: identity.list_groups(s, p, org, base_url=url())
        )

    @bp.route(ORG + "/groups", methods=["POST"], strict_slashes=False)
    async def groups_create(org: str) -> Response:
        return await handle(
            org,
            "create_group",
            lambda s, p, b: identity.create_group(s, p, org, b, base_url=url()),
            body=True,
        )

    @bp.route(ORG + "/groups/<name>", methods=["GET"], strict_slashes=False)
    async def group_get(org: str, name: str) -> Response:
        return await handle(org, "get_group", lambda s, p: identity.get_group(s, p, org, name))

    @bp.route(ORG + "/groups/<name>", methods=["PUT"], strict_slashes=False)
    async def group_put(org: str, name: str) -> Response:
        return await handle(
            org, "put_group", lambda s, p, b: identity.put_group(s, p, org, name, b), body=True
        )

    @bp.route(ORG + "/groups/<name>", methods=["DELETE"], strict_slashes=False)
    async def group_delete(org: str, name: str) -> Response:
        return await handle(
            org, "delete_group", lambda s, p: identity.delete_group(s, p, org, name)
        )

    # nodes -----------------------------------------------------------------------------------
    @bp.route(ORG + "/nodes", methods=["GET"], strict_slashes=False)
    async def nodes_list(org: str) -> Response:
        return await handle(
            org, "list_nodes", lambda s, p: identity.list_nodes(s, p, org, base_url=url())
        )

    @bp.route(ORG + "/nodes", methods=["POST"], strict_slashes=False)
    async def nodes_create(org: str) -> Response:
        return await handle(
            org,
            "create_node",
            lambda s, p, b: identity.create_node(s, p, org, b, base_url=url()),
            body=True,
        )

    @bp.route(ORG + "/nodes/<name>", methods=["GET"], strict_slashes=False)
    async def node_get(org: str, name: str) -> Response:
        return await handle(org, "get_node", lambda s, p: identity.get_node(s, p, org, name))

    @bp.route(ORG + "/nodes/<name>", methods=["PUT"], strict_slashes=False)
    async def node_put(org: str, name: str) -> Response:
        return await handle(
            org, "put_node", lambda s, p, b: identity.put_node(s, p, org, name, b), body=True
        )

    @bp.route(ORG + "/nodes/<name>", methods=["DELETE"], strict_slashes=False)
    async def node_delete(org: str, name: str) -> Response:
        return await handle(org, "delete_node", lambda s, p: identity.delete_node(s, p, org, name))

    return bp
