"""What every identity handler shares: the error replies, the org gate, body field checks.

The replies carry Chef's exact error texts; handlers build on these so a text is written once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from appliance.core.identity.acl import is_org_member
from appliance.core.identity.model import IdentityState, Org, Principal, Result
from appliance.core.keys import KeyFormatError, load_public_pem

ACTOR_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


def error_reply(status: int, message: str) -> Result:
    return Result(status, {"error": [message]}, [])


def missing_perm(what: str) -> Result:
    return error_reply(403, f"missing {what} permission")


def bad_field(name: str, detail: str = "") -> Result:
    return error_reply(400, f"Field '{name}' invalid" + (f": {detail}" if detail else ""))


def missing_field(name: str) -> Result:
    return error_reply(400, f"Field '{name}' missing")


def not_found(kind: str, name: str) -> Result:
    return error_reply(404, f"{kind} '{name}' not found")


def exists(kind: str, name: str) -> Result:
    return error_reply(409, f"{kind} '{name}' already exists")


def not_object() -> Result:
    return error_reply(400, "JSON body must be an object")


def org_gate(state: IdentityState, org: str, requester: Principal) -> tuple[Org | None, Result]:
    """The org if it exists and the requester belongs to it, else the error to return."""
    o = state.orgs.get(org)
    if o is None:
        return None, error_reply(404, f"organization '{org}' does not exist.")
    if not is_org_member(state, org, requester):
        return None, error_reply(
            403, f"'{requester.name}' is not associated with organization '{org}'"
        )
    return o, Result(200, {}, [])


def string_field(body: dict, name: str, *, required: bool, default: str = "") -> str | Result:
    if name not in body:
        return missing_field(name) if required else default
    value = body[name]
    if not isinstance(value, str):
        return bad_field(name)
    return value


def name_field(body: dict, field_name: str, pattern: re.Pattern[str]) -> str | Result:
    value = string_field(body, field_name, required=True)
    if isinstance(value, Result):
        return value
    if not pattern.fullmatch(value):
        return bad_field(field_name)
    return value


def key_material(
    body: dict, new_key: tuple[str, str] | None, *, allow_none: bool = True
) -> tuple[str | None, str | None] | Result:
    """(private_pem or None, public_pem or None) from ``create_key`` / ``public_key``."""
    create = body.get("create_key", False)
    if not isinstance(create, bool):
        return bad_field("create_key")
    public = body.get("public_key")
    if public is not None and not isinstance(public, str):
        return bad_field("public_key")
    if create and public is not None:
        return bad_field("create_key", "cannot be combined with 'public_key'")
    if create:
        if new_key is None:
            raise ValueError("create_key requested but no key pair was passed in")
        return new_key[0], new_key[1]
    if public is None:
        return (None, None) if allow_none else missing_field("public_key")
    try:
        load_public_pem(public)
    except KeyFormatError as exc:
        return bad_field("public_key", str(exc))
    return None, public


def chef_key(name: str, private: str | None, public: str, expiration: str) -> dict:
    out = {"name": name, "public_key": public, "expiration_date": expiration}
    if private is not None:
        out["private_key"] = private
    return out


def name_map(names: Iterable[str], prefix: str) -> dict[str, str]:
    return {n: f"{prefix}/{n}" for n in sorted(names)}
