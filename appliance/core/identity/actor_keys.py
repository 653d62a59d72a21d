"""Handlers for the named RSA keys of users and clients, and when the shell must make one."""

from __future__ import annotations

import re
import time
from typing import Any

from appliance.core.identity.acl import (
    is_org_admin,
    is_reader,
    is_self_client,
    key_expired,
)
from appliance.core.identity.checks import (
    bad_field,
    body_problem,
    exists,
    key_material,
    missing_perm,
    not_found,
    not_object,
    org_gate,
)
from appliance.core.identity.model import (
    Actor,
    IdentityState,
    Key,
    Principal,
    Result,
)
from appliance.core.identity.records import key_record
from appliance.core.identity.schemas import KEY_REQUEST

#: The original's rule, not the schema's pattern: its ``\d`` takes any Unicode digit (as
#: does strptime), which no ECMA pattern can say; the ASCII dates both accept are the same.
_EXPIRATION = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_NO_EXPIRATION: str = KEY_REQUEST["properties"]["expiration_date"]["default"]


KEY_ROUTES = frozenset({"create_user", "create_client", "add_key"})


def needs_new_key(route: str, body: object) -> bool:
    """Whether the shell must generate a key pair before calling the handler for ``route``.

    ``create_org`` always needs one (the validator's); ``create_user``, ``create_client`` and
    ``add_key`` when the body asks for ``"create_key": true``.
    """
    if route == "create_org":
        return True
    return route in KEY_ROUTES and isinstance(body, dict) and body.get("create_key") is True


# --------------------------------------------------------------------------- organizations


def _key_owner(
    state: IdentityState, requester: Principal, org: str | None, actor: str, write: bool
) -> tuple[Actor | None, Result]:
    """The actor whose keys are addressed (org None: a user), after the permission check."""
    what = "update" if write else "read"
    if org is None:
        if not (requester.superuser or (requester.kind == "user" and requester.name == actor)):
            return None, missing_perm(what)
        u = state.users.get(actor)
        return (u, Result(200, {}, [])) if u is not None else (None, not_found("user", actor))
    o, err = org_gate(state, org, requester)
    if o is None:
        return None, err
    allowed = is_org_admin(state, org, requester) or is_self_client(o, requester, actor)
    if not write:
        allowed = allowed or is_reader(state, o, requester)
    if not allowed:
        return None, missing_perm(what)
    c = o.clients.get(actor)
    return (c, Result(200, {}, [])) if c is not None else (None, not_found("client", actor))


def _keys_prefix(base_url: str, org: str | None, actor: str) -> str:
    if org is None:
        return f"{base_url}/users/{actor}/keys"
    return f"{base_url}/organizations/{org}/clients/{actor}/keys"


def list_keys(
    state: IdentityState,
    requester: Principal,
    org: str | None,
    actor: str,
    *,
    now: float,
    base_url: str,
) -> Result:
    owner, err = _key_owner(state, requester, org, actor, write=False)
    if owner is None:
        return err
    prefix = _keys_prefix(base_url, org, actor)
    body = [
        {"name": k.name, "uri": f"{prefix}/{k.name}", "expired": key_expired(k, now)}
        for k in sorted(owner.keys.values(), key=lambda k: k.name)
    ]
    return Result(200, body, [])


def get_key(
    state: IdentityState, requester: Principal, org: str | None, actor: str, key: str
) -> Result:
    owner, err = _key_owner(state, requester, org, actor, write=False)
    if owner is None:
        return err
    k = owner.keys.get(key)
    if k is None:
        return not_found("key", key)
    return Result(200, key_record(k), [])


def add_key(
    state: IdentityState,
    requester: Principal,
    org: str | None,
    actor: str,
    body: object,
    *,
    new_key: tuple[str, str] | None,
    base_url: str,
) -> Result:
    owner, err = _key_owner(state, requester, org, actor, write=True)
    if owner is None:
        return err
    if not isinstance(body, dict):
        return not_object()
    problem = body_problem(KEY_REQUEST, body, only=("name",))
    if problem is not None:
        return problem
    name = body["name"]
    expiration = body.get("expiration_date", _NO_EXPIRATION)
    if not isinstance(expiration, str) or not (
        expiration == _NO_EXPIRATION or _valid_expiration(expiration)
    ):
        return bad_field("expiration_date")
    problem = body_problem(KEY_REQUEST, body, only=("create_key", "public_key"))
    if problem is not None:
        return problem
    material = key_material(body, new_key, allow_none=False)
    if isinstance(material, Result):
        return material
    if name in owner.keys:
        return exists("key", name)
    private, public = material
    assert public is not None
    record = {
        "type": "key_added",
        "org": org,
        "actor": actor,
        "key": key_record(Key(name, public, expiration)),
    }
    reply: dict[str, Any] = {"uri": f"{_keys_prefix(base_url, org, actor)}/{name}"}
    if private is not None:
        reply["private_key"] = private
    return Result(201, reply, [record])


def _valid_expiration(text: str) -> bool:
    if not _EXPIRATION.fullmatch(text):
        return False
    try:
        time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def delete_key(
    state: IdentityState, requester: Principal, org: str | None, actor: str, key: str
) -> Result:
    owner, err = _key_owner(state, requester, org, actor, write=True)
    if owner is None:
        return err
    k = owner.keys.get(key)
    if k is None:
        return not_found("key", key)
    record = {"type": "key_deleted", "org": org, "actor": actor, "key_name": key}
    return Result(200, key_record(k), [record])


# --------------------------------------------------------------------------- groups
