"""Handlers for organizations and their user memberships (superuser-run)."""

from __future__ import annotations

import re

from appliance.core.identity.acl import (
    is_reader,
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
    Key,
    Principal,
    Result,
)
from appliance.core.identity.records import key_record
from appliance.core.identity.schemas import ASSOCIATION, ORG_REQUEST

_GUID = re.compile(r"[0-9a-f]{32}")


def list_orgs(state: IdentityState, requester: Principal, *, base_url: str) -> Result:
    if not requester.superuser:
        return missing_perm("read")
    return Result(200, name_map(state.orgs, f"{base_url}/organizations"), [])


def create_org(
    state: IdentityState,
    requester: Principal,
    body: object,
    *,
    guid: str,
    validator_key_pem_private: str,
    validator_key_pem_public: str,
    base_url: str,
) -> Result:
    if not _GUID.fullmatch(guid):
        raise ValueError("guid must be 32 lowercase hex digits")
    if not requester.superuser:
        return missing_perm("create")
    if not isinstance(body, dict):
        return not_object()
    problem = body_problem(ORG_REQUEST, body)
    if problem is not None:
        return problem
    name, full_name = body["name"], body["full_name"]
    if name in state.orgs:
        return exists("organization", name)
    validator = f"{name}-validator"
    records = [
        {"type": "org_created", "name": name, "full_name": full_name, "guid": guid},
        {
            "type": "client_created",
            "org": name,
            "name": validator,
            "validator": True,
            "keys": [key_record(Key("default", validator_key_pem_public))],
        },
    ]
    return Result(
        201,
        {
            "uri": f"{base_url}/organizations/{name}",
            "clientname": validator,
            "private_key": validator_key_pem_private,
        },
        records,
    )


def get_org(state: IdentityState, requester: Principal, org: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_reader(state, o, requester):
        return missing_perm("read")
    return Result(200, {"name": o.name, "full_name": o.full_name, "guid": o.guid}, [])


# --------------------------------------------------------------------------- users


def associate_user(
    state: IdentityState, requester: Principal, org: str, body: object, *, base_url: str
) -> Result:
    o = state.orgs.get(org)
    if o is None:
        return error_reply(404, f"organization '{org}' does not exist.")
    if not requester.superuser:
        return missing_perm("create")
    if not isinstance(body, dict):
        return not_object()
    problem = body_problem(ASSOCIATION, body)
    if problem is not None:
        return problem
    name = body["username"]
    if name not in state.users:
        return not_found("user", name)
    if name in o.users:
        return exists("association of user with organization", f"{name}/{org}")
    record = {"type": "user_associated", "org": org, "user": name}
    return Result(201, {"uri": f"{base_url}/organizations/{org}/users/{name}"}, [record])


def list_org_users(state: IdentityState, requester: Principal, org: str) -> Result:
    o, err = org_gate(state, org, requester)
    if o is None:
        return err
    if not is_reader(state, o, requester):
        return missing_perm("read")
    return Result(200, [{"user": {"username": n}} for n in sorted(o.users)], [])
