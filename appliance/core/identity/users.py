"""Handlers for users, which are global (not in an org)."""

from __future__ import annotations

from typing import Any

from appliance.core.identity.checks import (
    body_problem,
    chef_key,
    exists,
    key_material,
    missing_perm,
    name_map,
    not_found,
    not_object,
)
from appliance.core.identity.model import (
    IdentityState,
    Key,
    Principal,
    Result,
)
from appliance.core.identity.records import key_record
from appliance.core.identity.schemas import USER_REQUEST


def list_users(state: IdentityState, requester: Principal, *, base_url: str) -> Result:
    if not requester.superuser:
        return missing_perm("read")
    return Result(200, name_map(state.users, f"{base_url}/users"), [])


def create_user(
    state: IdentityState,
    requester: Principal,
    body: object,
    *,
    new_key: tuple[str, str] | None,
    base_url: str,
) -> Result:
    if not requester.superuser:
        return missing_perm("create")
    if not isinstance(body, dict):
        return not_object()
    problem = body_problem(USER_REQUEST, body)
    if problem is not None:
        return problem
    name = body["username"]
    fields = {
        f: body.get(f, name if f == "display_name" else "")
        for f in ("display_name", "email", "first_name", "last_name")
    }
    material = key_material(body, new_key)
    if isinstance(material, Result):
        return material
    if name in state.users:
        return exists("user", name)
    private, public = material
    keys = [] if public is None else [key_record(Key("default", public))]
    record = {"type": "user_created", "name": name, "superuser": False, "keys": keys, **fields}
    reply: dict[str, Any] = {"uri": f"{base_url}/users/{name}"}
    if public is not None:
        reply["chef_key"] = chef_key("default", private, public, "infinity")
    return Result(201, reply, [record])


def get_user(state: IdentityState, requester: Principal, name: str) -> Result:
    is_self = requester.kind == "user" and requester.name == name
    if not (requester.superuser or is_self):
        return missing_perm("read")
    u = state.users.get(name)
    if u is None:
        return not_found("user", name)
    return Result(
        200,
        {
            "username": u.name,
            "display_name": u.display_name,
            "email": u.email,
            "first_name": u.first_name,
            "last_name": u.last_name,
        },
        [],
    )
