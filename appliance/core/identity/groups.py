"""Handlers for an org's groups: nested, cycle-safe, built-ins undeletable."""

from __future__ import annotations

from appliance.core.identity.acl import (
    is_org_admin,
    is_reader,
)
from appliance.core.identity.checks import (
    bad_field,
    body_problem,
    exists,
    missing_perm,
    name_map,
    not_found,
    not_object,
    org_gate,
    with_alias_value,
)
from appliance.core.identity.model import (
    BUILTIN_GROUPS,
    Group,
    IdentityState,
    Org,
    Principal,
    Result,
)
from appliance.core.identity.schemas import GROUP_ACTORS, GROUP_MEMBERS, GROUP_REQUEST
from appliance.core.schemacheck import fits


def _group_json(org: str, g: Group) -> dict:
    users, clients = sorted(g.users), sorted(g.clients)
    return {
        "actors": users + clients,
        "users": users,
        "clients": clients,
        "groups": sorted(g.groups),
        "orgname": org,
        "name": g.name,
        "groupname": g.name,
    }


def list_groups(state: IdentityState, requester: Principal, org: str, *, base_url: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_reader(state, o, requester):
        return missing_perm("read")
    return Result(200, name_map(o.groups, f"{base_url}/organizations/{org}/groups"), [])


def create_group(
    state: IdentityState, requester: Principal, org: str, body: object, *, base_url: str
) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return missing_perm("create")
    if not isinstance(body, dict):
        return not_object()
    body = with_alias_value(body, "groupname", "name")
    problem = body_problem(GROUP_REQUEST, body)
    if problem is not None:
        return problem
    name = body["groupname"]
    if name in o.groups:
        return exists("group", name)
    record = {"type": "group_created", "org": org, "name": name}
    return Result(201, {"uri": f"{base_url}/organizations/{org}/groups/{name}"}, [record])


def get_group(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_reader(state, o, requester):
        return missing_perm("read")
    g = o.groups.get(name)
    if g is None:
        return not_found("group", name)
    return Result(200, _group_json(org, g), [])


def _creates_cycle(o: Org, name: str, new_groups: set[str]) -> bool:
    """Whether ``name`` becomes reachable from itself once its subgroups are ``new_groups``."""
    pending, seen = list(new_groups), set()
    while pending:  # bounded: each group is expanded at most once
        g = pending.pop()
        if g == name:
            return True
        if g in seen:
            continue
        seen.add(g)
        sub = o.groups.get(g)
        if sub is not None:
            pending.extend(sub.groups - seen)
    return False


def put_group(
    state: IdentityState, requester: Principal, org: str, name: str, body: object
) -> Result:
    """Replace the members; missing lists mean empty (PUT), as Chef does.

    Accepts ``{"actors": {"users", "clients", "groups"}}`` and the flat form (also what GET
    returns, whose ``actors`` list is then ignored). Renaming via ``groupname`` is refused.
    """
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return missing_perm("update")
    if not isinstance(body, dict):
        return not_object()
    if "groupname" in body and body["groupname"] != name:
        return bad_field("groupname", "renaming a group is not supported")
    actors = body.get("actors")
    if isinstance(actors, dict):
        source = actors  # its lists are checked below, each with its own message
    elif fits(GROUP_ACTORS, actors):
        source = body
    else:
        return bad_field("actors")
    problem = body_problem(GROUP_MEMBERS, source)
    if problem is not None:
        return problem
    lists: dict[str, list[str]] = {key: source.get(key, []) for key in GROUP_MEMBERS["properties"]}
    if name not in o.groups:
        return not_found("group", name)
    for u in lists["users"]:
        if u not in o.users:
            return bad_field("users", f"user '{u}' is not a member of organization '{org}'")
    for c in lists["clients"]:
        if c not in o.clients:
            return bad_field("clients", f"client '{c}' not found in organization '{org}'")
    for g in lists["groups"]:
        if g not in o.groups:
            return bad_field("groups", f"group '{g}' not found in organization '{org}'")
    new_groups = set(lists["groups"])
    if _creates_cycle(o, name, new_groups):
        return bad_field("groups", f"group '{name}' would contain itself (cycle)")
    record = {
        "type": "group_updated",
        "org": org,
        "name": name,
        "users": sorted(set(lists["users"])),
        "clients": sorted(set(lists["clients"])),
        "groups": sorted(new_groups),
    }
    new = Group(name, set(record["users"]), set(record["clients"]), new_groups)
    return Result(200, _group_json(org, new), [record])


def delete_group(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return missing_perm("delete")
    g = o.groups.get(name)
    if g is None:
        return not_found("group", name)
    if name in BUILTIN_GROUPS:
        return bad_field("groupname", f"the built-in group '{name}' cannot be deleted")
    record = {"type": "group_deleted", "org": org, "name": name}
    return Result(200, _group_json(org, g), [record])
