"""Handlers for an org's API clients (the validator included)."""

from __future__ import annotations

from typing import Any

from appliance.core.identity.acl import (
    is_org_admin,
    is_reader,
    is_self_client,
    is_validator,
)
from appliance.core.identity.checks import (
    body_problem,
    chef_key,
    exists,
    key_material,
    missing_perm,
    name_map,
    not_found,
    not_object,
    org_gate,
    with_alias_value,
)
from appliance.core.identity.model import (
    Actor,
    IdentityState,
    Key,
    Principal,
    Result,
)
from appliance.core.identity.records import key_record
from appliance.core.identity.schemas import CLIENT_REQUEST


def _client_json(c: Actor) -> dict:
    return {
        "name": c.name,
        "clientname": c.name,
        "orgname": c.org,
        "validator": c.validator,
        "json_class": "Chef::ApiClient",
        "chef_type": "client",
    }


def list_clients(state: IdentityState, requester: Principal, org: str, *, base_url: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_reader(state, o, requester):
        return missing_perm("read")
    return Result(200, name_map(o.clients, f"{base_url}/organizations/{org}/clients"), [])


def create_client(
    state: IdentityState,
    requester: Principal,
    org: str,
    body: object,
    *,
    new_key: tuple[str, str] | None,
    base_url: str,
) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    admin = is_org_admin(state, org, requester)
    if not (admin or is_validator(o, requester)):
        return missing_perm("create")
    if not isinstance(body, dict):
        return not_object()
    body = with_alias_value(body, "name", "clientname")
    problem = body_problem(CLIENT_REQUEST, body, only=("name", "validator"))
    if problem is not None:
        return problem
    name, validator = body["name"], body.get("validator", False)
    if validator and not admin:
        return missing_perm("create")
    problem = body_problem(CLIENT_REQUEST, body, only=("create_key", "public_key"))
    if problem is not None:
        return problem
    material = key_material(body, new_key)
    if isinstance(material, Result):
        return material
    if name in o.clients:
        return exists("client", name)
    private, public = material
    keys = [] if public is None else [key_record(Key("default", public))]
    record = {"type": "client_created", "org": org, "name": name, "validator": validator}
    record["keys"] = keys
    reply: dict[str, Any] = {"uri": f"{base_url}/organizations/{org}/clients/{name}"}
    if public is not None:
        reply["chef_key"] = chef_key("default", private, public, "infinity")
    return Result(201, reply, [record])


def get_client(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not (is_reader(state, o, requester) or is_self_client(o, requester, name)):
        return missing_perm("read")
    c = o.clients.get(name)
    if c is None:
        return not_found("client", name)
    return Result(200, _client_json(c), [])


def delete_client(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return missing_perm("delete")
    c = o.clients.get(name)
    if c is None:
        return not_found("client", name)
    return Result(200, _client_json(c), [{"type": "client_deleted", "org": org, "name": name}])


# --------------------------------------------------------------------------- keys
