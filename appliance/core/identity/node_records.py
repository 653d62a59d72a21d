"""Handlers for Chef node records (what search indexes), with their canonical form."""

from __future__ import annotations

import copy
import re
from typing import Any

from appliance.core.identity.acl import (
    is_org_admin,
    is_reader,
    is_self_client,
    is_validator,
)
from appliance.core.identity.checks import (
    ACTOR_NAME,
    bad_field,
    error_reply,
    exists,
    missing_perm,
    name_field,
    name_map,
    not_found,
    not_object,
    org_gate,
    string_field,
)
from appliance.core.identity.model import (
    IdentityState,
    Org,
    Principal,
    Result,
)

_ENV_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RUN_LIST_ITEM = re.compile(r"(recipe|role)\[[^\[\]\s]+\]")
_BARE_RECIPE = re.compile(r"[A-Za-z0-9_.:@-]+")


_ATTRS = ("automatic", "normal", "default", "override")


def _canonical_node(body: dict, url_name: str | None) -> dict | Result:
    """Chef node JSON with defaults filled in; bare run-list names become ``recipe[...]``."""
    if "name" in body or url_name is None:
        name = name_field(body, "name", ACTOR_NAME)
        if isinstance(name, Result):
            return name
        if url_name is not None and name != url_name:
            return error_reply(400, "Node name mismatch.")
    else:
        name = url_name
    env = string_field(body, "chef_environment", required=False, default="_default")
    if isinstance(env, Result):
        return env
    if not _ENV_NAME.fullmatch(env):
        return bad_field("chef_environment")
    for key, expected in (("json_class", "Chef::Node"), ("chef_type", "node")):
        if key in body and body[key] != expected:
            return bad_field(key)
    run_list = body.get("run_list", [])
    if not isinstance(run_list, list):
        return bad_field("run_list")
    items: list[str] = []
    for item in run_list:
        if isinstance(item, str) and _RUN_LIST_ITEM.fullmatch(item):
            items.append(item)
        elif isinstance(item, str) and _BARE_RECIPE.fullmatch(item):
            items.append(f"recipe[{item}]")
        else:
            return bad_field("run_list")
    node: dict[str, Any] = {
        "name": name,
        "chef_environment": env,
        "json_class": "Chef::Node",
        "chef_type": "node",
        "run_list": items,
    }
    for attr in _ATTRS:
        value = body.get(attr, {})
        if not isinstance(value, dict):
            return bad_field(attr)
        node[attr] = copy.deepcopy(value)
    return node


def list_nodes(state: IdentityState, requester: Principal, org: str, *, base_url: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_reader(state, o, requester):
        return missing_perm("read")
    return Result(200, name_map(o.nodes, f"{base_url}/organizations/{org}/nodes"), [])


def get_node(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_reader(state, o, requester):
        return missing_perm("read")
    node = o.nodes.get(name)
    if node is None:
        return not_found("node", name)
    return Result(200, copy.deepcopy(node), [])


def _may_write_node(state: IdentityState, o: Org, requester: Principal) -> bool:
    """Admins, or a non-validator client (whose node name is checked once the body is read)."""
    if is_org_admin(state, o.name, requester):
        return True
    return requester.kind == "client" and not is_validator(o, requester)


def create_node(
    state: IdentityState, requester: Principal, org: str, body: object, *, base_url: str
) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not _may_write_node(state, o, requester):
        return missing_perm("create")
    if not isinstance(body, dict):
        return not_object()
    node = _canonical_node(body, None)
    if isinstance(node, Result):
        return node
    name = node["name"]
    if not is_org_admin(state, org, requester) and requester.name != name:
        return missing_perm("create")
    if name in o.nodes:
        return exists("node", name)
    record = {"type": "node_saved", "org": org, "name": name, "node": node}
    return Result(201, {"uri": f"{base_url}/organizations/{org}/nodes/{name}"}, [record])


def put_node(
    state: IdentityState, requester: Principal, org: str, name: str, body: object
) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not (is_org_admin(state, org, requester) or is_self_client(o, requester, name)):
        return missing_perm("update")
    if not isinstance(body, dict):
        return not_object()
    node = _canonical_node(body, name)
    if isinstance(node, Result):
        return node
    if name not in o.nodes:
        return not_found("node", name)
    record = {"type": "node_saved", "org": org, "name": name, "node": node}
    return Result(200, copy.deepcopy(node), [record])


def delete_node(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return missing_perm("delete")
    node = o.nodes.get(name)
    if node is None:
        return not_found("node", name)
    record = {"type": "node_deleted", "org": org, "name": name}
    return Result(200, copy.deepcopy(node), [record])
