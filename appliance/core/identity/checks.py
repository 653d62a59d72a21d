"""What every identity handler shares: the error replies, the org gate, body field checks
(driven by ``identity.schemas``).

The replies carry Chef's exact error texts; handlers build on these so a text is written once.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any

from appliance.core.identity.acl import is_org_member
from appliance.core.identity.model import IdentityState, Org, Principal, Result
from appliance.core.keys import KeyFormatError, load_public_pem
from appliance.core.schemacheck import Schema, first_problem


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


def body_problem(
    schema: Schema, body: dict[str, Any], *, only: Container[str] | None = None
) -> Result | None:
    """Chef's reply to the first field of ``body`` that ``schema`` (``identity.schemas``)
    refuses, in the schema's order (``only``: some fields), or None when all fit."""
    problem = first_problem(schema, body, only=only)
    if problem is None:
        return None
    return missing_field(problem.field) if problem.missing else bad_field(problem.field)


def with_alias_value(body: dict[str, Any], field: str, alias: str) -> dict[str, Any]:
    """``body`` with ``alias``'s value standing in for a missing ``field`` (the document's
    form of the same rule: ``schemas.with_alias``)."""
    if field not in body and alias in body:
        return {**body, field: body[alias]}
    return body


def key_material(
    body: dict, new_key: tuple[str, str] | None, *, allow_none: bool = True
) -> tuple[str | None, str | None] | Result:
    """(private_pem or None, public_pem or None) from ``create_key`` / ``public_key``, whose
    types the caller's schema has checked (``body_problem``)."""
    create = body.get("create_key", False)
    public = body.get("public_key")
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
