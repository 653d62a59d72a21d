"""The Chef Server API subset (standalone identity): thin routes over ``core.identity``.

Each route authenticates, parses the JSON body, lets the pure handler decide, makes its records
durable, applies them, and answers. Key pairs are generated here (off the trio thread) only when
the handler will need one. Handlers are module-level functions taking the server context first,
each with its OpenAPI operation declared above it (``apidoc``); ``blueprint`` lists the paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import trio
from quart import Blueprint, Response, request

from appliance.core import identity
from appliance.core.keys import generate_rsa, private_pem, public_pem
from appliance.server.apidoc import json_reply, operation, ref, register, request_body, resp
from appliance.server.auth import authenticate, fail, require_accept
from appliance.server.context import ServerContext
from appliance.server.pushy_routes import base_url, durable, json_response
from appliance.server.schemas import KEY_P, NAME_P
from appliance.server.schemas import ORG as ORG_P

ORG = "/organizations/<org>"
# orjson reads up to 1024 levels but writes at most 254 (a log record adds a few), and the
# handlers deepcopy bodies recursively: a deeper node record was a 500 and was not stored
# (tests/e2e/test_rest_fuzz.py::test_deeply_nested_identity_body_is_a_400_not_a_500)
MAX_BODY_DEPTH = 100
Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])


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


TAG = "identity"


def _get(op_id: str, summary: str, schema: Schema, params: list[Schema]) -> Callable[[F], F]:
    return operation(
        "GET", op_id, TAG, summary, {"200": json_reply("OK.", schema)}, parameters=params
    )


def _post(
    op_id: str, summary: str, request: str, reply: Schema, params: list[Schema], **kw: Any
) -> Callable[[F], F]:
    return operation(
        "POST",
        op_id,
        TAG,
        summary,
        {"201": json_reply("Created.", reply), "409": resp("Conflict")},
        parameters=params,
        body=request_body(ref(request), "The object."),
        writes=True,
        **kw,
    )


def _delete(op_id: str, summary: str, schema: Schema, params: list[Schema]) -> Callable[[F], F]:
    return operation(
        "DELETE",
        op_id,
        TAG,
        summary,
        {"200": json_reply("Deleted; the object as it was.", schema)},
        parameters=params,
        writes=True,
    )


async def _body_json() -> Any:
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


async def _handle(
    ctx: ServerContext,
    org: str | None,
    route: str,
    call: Callable[..., identity.Result],
    *,
    body: bool = False,
    keyed: bool = False,
) -> Response:
    auth = await authenticate(ctx, org)
    require_accept("application/json")
    payload = await _body_json() if body else None
    extra: dict[str, Any] = {}
    if keyed:
        needs = identity.needs_new_key(route, payload)
        extra["new_key"] = await trio.to_thread.run_sync(_new_keypair) if needs else None
    args = (payload,) if body else ()
    result = call(ctx.state.identity, auth.principal, *args, **extra)
    if result.records:
        await durable(ctx, result.records)
    return json_response(result.body, result.status)


@_get("listOrgs", "Organizations (superuser)", ref("NameMap"), [])
async def orgs_list(ctx: ServerContext) -> Response:
    return await _handle(
        ctx, None, "list_orgs", lambda s, p: identity.list_orgs(s, p, base_url=base_url())
    )


@_post(
    "createOrg",
    "Create an organization (superuser)",
    "OrgRequest",
    ref("OrgCreated"),
    [],
    description="Also creates the groups admins, users, clients and the client "
    "ORG-validator, whose private key is in the answer.",
)
async def orgs_create(ctx: ServerContext) -> Response:
    auth = await authenticate(ctx, None)
    payload = await _body_json()
    private, public = await trio.to_thread.run_sync(_new_keypair)
    result = identity.create_org(
        ctx.state.identity,
        auth.principal,
        payload,
        guid=os.urandom(16).hex(),
        validator_key_pem_private=private,
        validator_key_pem_public=public,
        base_url=base_url(),
    )
    if result.records:
        await durable(ctx, result.records)
    return json_response(result.body, result.status)


@_get("getOrg", "An organization", ref("Org"), [ORG_P])
async def org_get(ctx: ServerContext, org: str) -> Response:
    return await _handle(ctx, org, "get_org", lambda s, p: identity.get_org(s, p, org))


@_get("listUsers", "Users (superuser)", ref("NameMap"), [])
async def users_list(ctx: ServerContext) -> Response:
    return await _handle(
        ctx, None, "list_users", lambda s, p: identity.list_users(s, p, base_url=base_url())
    )


@_post("createUser", "Create a user (superuser)", "UserRequest", ref("CreatedWithKey"), [])
async def users_create(ctx: ServerContext) -> Response:
    return await _handle(
        ctx,
        None,
        "create_user",
        lambda s, p, b, new_key: identity.create_user(
            s, p, b, new_key=new_key, base_url=base_url()
        ),
        body=True,
        keyed=True,
    )


@_get("getUser", "A user", ref("User"), [NAME_P])
async def user_get(ctx: ServerContext, name: str) -> Response:
    return await _handle(ctx, None, "get_user", lambda s, p: identity.get_user(s, p, name))


@_get("listUserKeys", "A user's keys", ref("KeyList"), [NAME_P])
async def user_keys(ctx: ServerContext, name: str) -> Response:
    return await _handle(
        ctx,
        None,
        "list_keys",
        lambda s, p: identity.list_keys(s, p, None, name, now=ctx.clock.now(), base_url=base_url()),
    )


@_post("addUserKey", "Add a key to a user", "KeyRequest", ref("KeyCreated"), [NAME_P])
async def user_key_add(ctx: ServerContext, name: str) -> Response:
    return await _handle(
        ctx,
        None,
        "add_key",
        lambda s, p, b, new_key: identity.add_key(
            s, p, None, name, b, new_key=new_key, base_url=base_url()
        ),
        body=True,
        keyed=True,
    )


@_get("getUserKey", "One key of a user", ref("Key"), [NAME_P, KEY_P])
async def user_key_get(ctx: ServerContext, name: str, key: str) -> Response:
    return await _handle(ctx, None, "get_key", lambda s, p: identity.get_key(s, p, None, name, key))


@_delete("deleteUserKey", "Delete a user's key", ref("Key"), [NAME_P, KEY_P])
async def user_key_delete(ctx: ServerContext, name: str, key: str) -> Response:
    return await _handle(
        ctx, None, "delete_key", lambda s, p: identity.delete_key(s, p, None, name, key)
    )


@_get("listOrgUsers", "Users of an organization", ref("OrgUsers"), [ORG_P])
async def org_users(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx, org, "list_org_users", lambda s, p: identity.list_org_users(s, p, org)
    )


@_post(
    "associateUser",
    "Add a user to an organization (superuser)",
    "Association",
    ref("Created"),
    [ORG_P],
)
async def org_users_add(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx,
        org,
        "associate_user",
        lambda s, p, b: identity.associate_user(s, p, org, b, base_url=base_url()),
        body=True,
    )


@_get("listClients", "Clients (nodes' API identities)", ref("NameMap"), [ORG_P])
async def clients_list(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx, org, "list_clients", lambda s, p: identity.list_clients(s, p, org, base_url=base_url())
    )


@_post(
    "createClient",
    "Create a client (admins, or the validator)",
    "ClientRequest",
    ref("CreatedWithKey"),
    [ORG_P],
)
async def clients_create(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx,
        org,
        "create_client",
        lambda s, p, b, new_key: identity.create_client(
            s, p, org, b, new_key=new_key, base_url=base_url()
        ),
        body=True,
        keyed=True,
    )


@_get("getClient", "A client", ref("Client"), [ORG_P, NAME_P])
async def client_get(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(ctx, org, "get_client", lambda s, p: identity.get_client(s, p, org, name))


@_delete(
    "deleteClient", "Delete a client (its node is disconnected)", ref("Client"), [ORG_P, NAME_P]
)
async def client_delete(ctx: ServerContext, org: str, name: str) -> Response:
    response = await _handle(
        ctx, org, "delete_client", lambda s, p: identity.delete_client(s, p, org, name)
    )
    if response.status_code == 200:
        ctx.dispatcher.drop_node((org, name))
    return response


@_get("listClientKeys", "A client's keys", ref("KeyList"), [ORG_P, NAME_P])
async def client_keys(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(
        ctx,
        org,
        "list_keys",
        lambda s, p: identity.list_keys(s, p, org, name, now=ctx.clock.now(), base_url=base_url()),
    )


@_post("addClientKey", "Add a key to a client", "KeyRequest", ref("KeyCreated"), [ORG_P, NAME_P])
async def client_key_add(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(
        ctx,
        org,
        "add_key",
        lambda s, p, b, new_key: identity.add_key(
            s, p, org, name, b, new_key=new_key, base_url=base_url()
        ),
        body=True,
        keyed=True,
    )


@_get("getClientKey", "One key of a client", ref("Key"), [ORG_P, NAME_P, KEY_P])
async def client_key_get(ctx: ServerContext, org: str, name: str, key: str) -> Response:
    return await _handle(ctx, org, "get_key", lambda s, p: identity.get_key(s, p, org, name, key))


@_delete("deleteClientKey", "Delete a client's key", ref("Key"), [ORG_P, NAME_P, KEY_P])
async def client_key_delete(ctx: ServerContext, org: str, name: str, key: str) -> Response:
    return await _handle(
        ctx, org, "delete_key", lambda s, p: identity.delete_key(s, p, org, name, key)
    )


@_get("listGroups", "Groups", ref("NameMap"), [ORG_P])
async def groups_list(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx, org, "list_groups", lambda s, p: identity.list_groups(s, p, org, base_url=base_url())
    )


@_post("createGroup", "Create a group (admins)", "GroupRequest", ref("Created"), [ORG_P])
async def groups_create(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx,
        org,
        "create_group",
        lambda s, p, b: identity.create_group(s, p, org, b, base_url=base_url()),
        body=True,
    )


@_get("getGroup", "A group", ref("Group"), [ORG_P, NAME_P])
async def group_get(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(ctx, org, "get_group", lambda s, p: identity.get_group(s, p, org, name))


@operation(
    "PUT",
    "updateGroup",
    TAG,
    "Set a group's members (admins)",
    {"200": json_reply("The group as updated.", ref("Group"))},
    parameters=[ORG_P, NAME_P],
    body=request_body(ref("GroupUpdate"), "The members."),
    writes=True,
)
async def group_put(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(
        ctx, org, "put_group", lambda s, p, b: identity.put_group(s, p, org, name, b), body=True
    )


@_delete(
    "deleteGroup",
    "Delete a group (admins; not admins, users, clients)",
    ref("Group"),
    [ORG_P, NAME_P],
)
async def group_delete(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(
        ctx, org, "delete_group", lambda s, p: identity.delete_group(s, p, org, name)
    )


@_get("listNodes", "Node records", ref("NameMap"), [ORG_P])
async def nodes_list(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx, org, "list_nodes", lambda s, p: identity.list_nodes(s, p, org, base_url=base_url())
    )


@_post(
    "createNode",
    "Create a node record (admins, or the node's own client)",
    "NodeCreateRequest",
    ref("Created"),
    [ORG_P],
)
async def nodes_create(ctx: ServerContext, org: str) -> Response:
    return await _handle(
        ctx,
        org,
        "create_node",
        lambda s, p, b: identity.create_node(s, p, org, b, base_url=base_url()),
        body=True,
    )


@_get("getNode", "A node record", ref("Node"), [ORG_P, NAME_P])
async def node_get(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(ctx, org, "get_node", lambda s, p: identity.get_node(s, p, org, name))


@operation(
    "PUT",
    "updateNode",
    TAG,
    "Replace a node record (admins, or the node's own client)",
    {"200": json_reply("The node as stored.", ref("Node"))},
    parameters=[ORG_P, NAME_P],
    body=request_body(ref("NodeRequest"), "The node."),
    writes=True,
)
async def node_put(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(
        ctx, org, "put_node", lambda s, p, b: identity.put_node(s, p, org, name, b), body=True
    )


@_delete("deleteNode", "Delete a node record", ref("Node"), [ORG_P, NAME_P])
async def node_delete(ctx: ServerContext, org: str, name: str) -> Response:
    return await _handle(
        ctx, org, "delete_node", lambda s, p: identity.delete_node(s, p, org, name)
    )


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("identity", __name__)
    register(
        bp,
        [
            ("/organizations", orgs_list),
            ("/organizations", orgs_create),
            (ORG, org_get),
            ("/users", users_list),
            ("/users", users_create),
            ("/users/<name>", user_get),
            ("/users/<name>/keys", user_keys),
            ("/users/<name>/keys", user_key_add),
            ("/users/<name>/keys/<key>", user_key_get),
            ("/users/<name>/keys/<key>", user_key_delete),
            (ORG + "/users", org_users),
            (ORG + "/users", org_users_add),
            (ORG + "/clients", clients_list),
            (ORG + "/clients", clients_create),
            (ORG + "/clients/<name>", client_get),
            (ORG + "/clients/<name>", client_delete),
            (ORG + "/clients/<name>/keys", client_keys),
            (ORG + "/clients/<name>/keys", client_key_add),
            (ORG + "/clients/<name>/keys/<key>", client_key_get),
            (ORG + "/clients/<name>/keys/<key>", client_key_delete),
            (ORG + "/groups", groups_list),
            (ORG + "/groups", groups_create),
            (ORG + "/groups/<name>", group_get),
            (ORG + "/groups/<name>", group_put),
            (ORG + "/groups/<name>", group_delete),
            (ORG + "/nodes", nodes_list),
            (ORG + "/nodes", nodes_create),
            (ORG + "/nodes/<name>", node_get),
            (ORG + "/nodes/<name>", node_put),
            (ORG + "/nodes/<name>", node_delete),
        ],
        ctx,
    )
    return bp
