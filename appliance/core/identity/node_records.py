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
    body_problem,
    error_reply,
    exists,
    missing_perm,
    name_map,
    not_found,
    not_object,
    org_gate,
)
from appliance.core.identity.model import (
    IdentityState,
    Org,
    Principal,
    Result,
)
from appliance.core.identity.schemas import (
    NODE_CREATE_REQUEST,
    NODE_REQUEST,
    QUALIFIED_RUN_LIST_ITEM,
)

_QUALIFIED = re.compile(QUALIFIED_RUN_LIST_ITEM)
_ENVIRONMENT: str = NODE_REQUEST["properties"]["chef_environment"]["default"]
_ATTRS = ("automatic", "normal", "default", "override")
_AFTER_NAME = tuple(NODE_REQUEST["properties"])[1:]


def _canonical_node(body: dict, url_name: str | None) -> dict | Result:
    """Chef node JSON with defaults filled in; bare run-list names become ``recipe[...]``."""
    schema = NODE_CREATE_REQUEST if url_name is None else NODE_REQUEST
    problem = body_problem(schema, body, only=("name",))
    if problem is not None:
        return problem
    name = body.get("name", url_name)
    if url_name is not None and name != url_name:
        return error_reply(400, "Node name mismatch.")
    problem = body_problem(schema, body, only=_AFTER_NAME)
    if problem is not None:
        return problem
    node: dict[str, Any] = {
        "name": name,
        "chef_environment": body.get("chef_environment", _ENVIRONMENT),
        "json_class": "Chef::Node",
        "chef_type": "node",
        "run_list": [
            item if _QUALIFIED.fullmatch(item) else f"recipe[{item}]"
            for item in body.get("run_list", [])
        ],
    }
    for attr in _ATTRS:
        node[attr] = copy.deepcopy(body.get(attr, {}))
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
