"""The appliance's own Chef-style identity authority, as pure state and request handlers.

There is no Chef server behind the appliance, so it answers the subset of the Chef Server
API (version 1) that knife, chef-client and the push client need: organizations, users,
clients with several RSA public keys each, groups (nested, cycle-safe) and node records.

Handlers never touch the state. Each returns ``Result(status, body, records)``; the shell
appends ``records`` to the durable log and then folds them in with `apply`, so the log is
the only source of truth and a restart replays it to the same state. Keys, GUIDs and the
time come in as parameters (key generation is slow and random; it belongs to the shell,
which asks `needs_new_key` first).

Who may do what (the superuser, ``pivotal``, may do everything):

=============================================  ===============================================
route                                          allowed
=============================================  ===============================================
GET/POST /organizations, POST /users,          superuser only
GET /users, POST /organizations/ORG/users
GET /users/NAME, GET/POST/DELETE               the user itself
/users/NAME/keys[/KEY]
GET /organizations/ORG, GET .../users,         org readers: associated users and the org's
GET .../clients[/NAME], .../groups[/NAME],     non-validator clients
GET .../nodes[/NAME], GET client keys
POST .../clients                               org admins; the org's validator (for
                                               non-validator clients: chef-client bootstrap)
DELETE .../clients/NAME, groups POST/PUT/      org admins (members of ``admins``)
DELETE, DELETE .../nodes/NAME
GET .../clients/NAME[/keys[/KEY]],             org admins; the client itself (key rotation)
POST/DELETE .../clients/NAME/keys[/KEY]
POST .../nodes, PUT .../nodes/NAME             org admins; a client for the node of its own name
=============================================  ===============================================

Checks run in the order: organization exists (404), requester is an org member (403
"not associated"), permission (403 "missing ... permission"), body (400), object exists
(404) or already exists (409). Built-in groups (``admins``, ``users``, ``clients``) cannot
be deleted (400). Group POST ignores member lists (Chef does too); members are set by PUT.
"""

from __future__ import annotations

import calendar
import copy
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from appliance.core.keys import KeyFormatError, load_public_pem

__all__ = [
    "BUILTIN_GROUPS",
    "RECORD_TYPES",
    "Actor",
    "Group",
    "IdentityState",
    "Key",
    "Org",
    "Principal",
    "Result",
    "add_key",
    "apply",
    "associate_user",
    "bootstrap_superuser",
    "can_fetch_config",
    "can_read_jobs",
    "can_write_jobs",
    "create_client",
    "create_group",
    "create_node",
    "create_org",
    "create_user",
    "delete_client",
    "delete_group",
    "delete_key",
    "delete_node",
    "get_client",
    "get_group",
    "get_key",
    "get_node",
    "get_org",
    "get_user",
    "in_group",
    "is_org_admin",
    "is_org_member",
    "list_clients",
    "list_groups",
    "list_keys",
    "list_nodes",
    "list_org_users",
    "list_orgs",
    "list_users",
    "lookup_keys",
    "needs_new_key",
    "put_group",
    "put_node",
    "replay",
]

Kind = Literal["user", "client"]
BUILTIN_GROUPS = ("admins", "users", "clients")
MAX_NAME = 255

_ORG_NAME = re.compile(r"[a-z0-9_-]{1,255}")
_GROUP_NAME = re.compile(r"[a-z0-9_-]{1,255}")
_ACTOR_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_ENV_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RUN_LIST_ITEM = re.compile(r"(recipe|role)\[[^\[\]\s]+\]")
_BARE_RECIPE = re.compile(r"[A-Za-z0-9_.:@-]+")
_EXPIRATION = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_GUID = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------- model


@dataclass
class Key:
    name: str
    public_key: str
    expiration_date: str = "infinity"


@dataclass
class Actor:
    """A user (global) or a client (belongs to exactly one org)."""

    name: str
    kind: Kind
    keys: dict[str, Key] = field(default_factory=dict)
    org: str | None = None
    validator: bool = False
    superuser: bool = False
    display_name: str = ""
    email: str = ""
    first_name: str = ""
    last_name: str = ""


@dataclass
class Group:
    name: str
    users: set[str] = field(default_factory=set)
    clients: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)


@dataclass
class Org:
    name: str
    full_name: str
    guid: str
    users: set[str] = field(default_factory=set)
    clients: dict[str, Actor] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    nodes: dict[str, dict] = field(default_factory=dict)


@dataclass
class IdentityState:
    orgs: dict[str, Org] = field(default_factory=dict)
    users: dict[str, Actor] = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    """Who signed a request; ``org`` is the client's org, None for users."""

    name: str
    kind: Kind
    superuser: bool = False
    org: str | None = None


class Result(NamedTuple):
    status: int
    body: Any
    records: list[dict]


# --------------------------------------------------------------------------- reducer


def _key_from(rec: dict) -> Key:
    return Key(rec["name"], rec["public_key"], rec.get("expiration_date", "infinity"))


def _key_record(key: Key) -> dict:
    return {"name": key.name, "public_key": key.public_key, "expiration_date": key.expiration_date}


def _r_org_created(s: IdentityState, r: dict) -> None:
    s.orgs[r["name"]] = Org(
        r["name"], r["full_name"], r["guid"], groups={g: Group(g) for g in BUILTIN_GROUPS}
    )


def _r_user_created(s: IdentityState, r: dict) -> None:
    s.users[r["name"]] = Actor(
        name=r["name"],
        kind="user",
        keys={k["name"]: _key_from(k) for k in r.get("keys", [])},
        superuser=bool(r.get("superuser", False)),
        display_name=r.get("display_name", ""),
        email=r.get("email", ""),
        first_name=r.get("first_name", ""),
        last_name=r.get("last_name", ""),
    )


def _r_user_associated(s: IdentityState, r: dict) -> None:
    org = s.orgs[r["org"]]
    org.users.add(r["user"])
    org.groups["users"].users.add(r["user"])


def _r_client_created(s: IdentityState, r: dict) -> None:
    org = s.orgs[r["org"]]
    validator = bool(r.get("validator", False))
    org.clients[r["name"]] = Actor(
        name=r["name"],
        kind="client",
        keys={k["name"]: _key_from(k) for k in r.get("keys", [])},
        org=r["org"],
        validator=validator,
    )
    if not validator and "clients" in org.groups:
        org.groups["clients"].clients.add(r["name"])


def _r_client_deleted(s: IdentityState, r: dict) -> None:
    org = s.orgs[r["org"]]
    del org.clients[r["name"]]
    for g in org.groups.values():
        g.clients.discard(r["name"])


def _actor_of(s: IdentityState, r: dict) -> Actor:
    if r.get("org") is None:
        return s.users[r["actor"]]
    return s.orgs[r["org"]].clients[r["actor"]]


def _r_key_added(s: IdentityState, r: dict) -> None:
    key = _key_from(r["key"])
    _actor_of(s, r).keys[key.name] = key


def _r_key_deleted(s: IdentityState, r: dict) -> None:
    del _actor_of(s, r).keys[r["key_name"]]


def _r_group_created(s: IdentityState, r: dict) -> None:
    s.orgs[r["org"]].groups[r["name"]] = Group(r["name"])


def _r_group_updated(s: IdentityState, r: dict) -> None:
    g = s.orgs[r["org"]].groups[r["name"]]
    g.users = set(r["users"])
    g.clients = set(r["clients"])
    g.groups = set(r["groups"])


def _r_group_deleted(s: IdentityState, r: dict) -> None:
    org = s.orgs[r["org"]]
    del org.groups[r["name"]]
    for g in org.groups.values():
        g.groups.discard(r["name"])


def _r_node_saved(s: IdentityState, r: dict) -> None:
    s.orgs[r["org"]].nodes[r["name"]] = copy.deepcopy(r["node"])


def _r_node_deleted(s: IdentityState, r: dict) -> None:
    del s.orgs[r["org"]].nodes[r["name"]]


_REDUCERS: dict[str, Callable[[IdentityState, dict], None]] = {
    "org_created": _r_org_created,
    "user_created": _r_user_created,
    "user_associated": _r_user_associated,
    "client_created": _r_client_created,
    "client_deleted": _r_client_deleted,
    "key_added": _r_key_added,
    "key_deleted": _r_key_deleted,
    "group_created": _r_group_created,
    "group_updated": _r_group_updated,
    "group_deleted": _r_group_deleted,
    "node_saved": _r_node_saved,
    "node_deleted": _r_node_deleted,
}
RECORD_TYPES = frozenset(_REDUCERS)


def apply(state: IdentityState, record: dict) -> None:
    """Fold one identity record into ``state``; unknown types raise (filter by RECORD_TYPES)."""
    reducer = _REDUCERS.get(record.get("type", ""))
    if reducer is None:
        raise ValueError(f"not an identity record type: {record.get('type')!r}")
    reducer(state, record)


def replay(records: Iterable[dict]) -> IdentityState:
    """A fresh state with ``records`` applied in order."""
    state = IdentityState()
    for rec in records:
        apply(state, rec)
    return state


def export_records(state: IdentityState) -> list[dict]:
    """Records that rebuild ``state`` exactly (for snapshots): creations, then exact memberships."""
    out: list[dict] = []
    for user in state.users.values():
        out.append(
            {
                "type": "user_created",
                "name": user.name,
                "display_name": user.display_name,
                "email": user.email,
                "first_name": user.first_name,
                "last_name": user.last_name,
                "superuser": user.superuser,
                "keys": [_key_record(k) for k in user.keys.values()],
            }
        )
    for org in state.orgs.values():
        out.append(
            {"type": "org_created", "name": org.name, "full_name": org.full_name, "guid": org.guid}
        )
        for client in org.clients.values():
            out.append(
                {
                    "type": "client_created",
                    "org": org.name,
                    "name": client.name,
                    "validator": client.validator,
                    "keys": [_key_record(k) for k in client.keys.values()],
                }
            )
        out.extend(
            {"type": "user_associated", "org": org.name, "user": u} for u in sorted(org.users)
        )
        out.extend(
            {"type": "group_created", "org": org.name, "name": g}
            for g in org.groups
            if g not in BUILTIN_GROUPS
        )
        for removed in (g for g in BUILTIN_GROUPS if g not in org.groups):
            out.append({"type": "group_deleted", "org": org.name, "name": removed})
        for group in org.groups.values():
            out.append(
                {
                    "type": "group_updated",
                    "org": org.name,
                    "name": group.name,
                    "users": sorted(group.users),
                    "clients": sorted(group.clients),
                    "groups": sorted(group.groups),
                }
            )
        out.extend(
            {"type": "node_saved", "org": org.name, "name": n, "node": node}
            for n, node in org.nodes.items()
        )
    return out


def bootstrap_superuser(
    state: IdentityState, public_key_pem: str, *, name: str = "pivotal"
) -> list[dict]:
    """Records creating the superuser on first start; empty when it already exists."""
    if name in state.users:
        return []
    return [
        {
            "type": "user_created",
            "name": name,
            "display_name": name,
            "email": "",
            "first_name": "",
            "last_name": "",
            "superuser": True,
            "keys": [_key_record(Key("default", public_key_pem))],
        }
    ]


# --------------------------------------------------------------------------- authentication


def _expired(key: Key, now: float) -> bool:
    if key.expiration_date == "infinity":
        return False
    try:
        when = calendar.timegm(time.strptime(key.expiration_date, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return True
    return when <= now


def _pems(actor: Actor, now: float | None) -> list[str]:
    return [k.public_key for k in actor.keys.values() if now is None or not _expired(k, now)]


def lookup_keys(
    state: IdentityState, org: str | None, name: str, *, now: float | None = None
) -> list[tuple[Principal, list[str]]]:
    """Candidate principals for a signed request, the org's client first, then the user.

    Any listed key that verifies the signature wins, and its principal is the requester.
    Users are returned whether or not they belong to ``org``: a valid signature from an
    outsider is a 403 (not associated), not a 401. With ``now``, expired keys are left out.
    """
    out: list[tuple[Principal, list[str]]] = []
    o = state.orgs.get(org) if org is not None else None
    if o is not None and name in o.clients:
        out.append((Principal(name, "client", False, org), _pems(o.clients[name], now)))
    user = state.users.get(name)
    if user is not None:
        out.append((Principal(name, "user", user.superuser, None), _pems(user, now)))
    return out


# --------------------------------------------------------------------------- authorization


def is_org_member(state: IdentityState, org: str, principal: Principal) -> bool:
    """Users associated with the org, the org's clients (validator included), the superuser."""
    if principal.superuser:
        return True
    o = state.orgs.get(org)
    if o is None:
        return False
    if principal.kind == "client":
        return principal.org == org and principal.name in o.clients
    return principal.name in o.users


def in_group(state: IdentityState, org: str, group: str, principal: Principal) -> bool:
    """Membership through nested groups; a visited set makes cycles terminate."""
    o = state.orgs.get(org)
    if o is None:
        return False
    if principal.kind == "client" and principal.org != org:
        return False
    pending, seen = [group], set()
    while pending:  # bounded: each group is expanded at most once
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        g = o.groups.get(name)
        if g is None:
            continue
        members = g.users if principal.kind == "user" else g.clients
        if principal.name in members:
            return True
        pending.extend(g.groups - seen)
    return False


def is_org_admin(state: IdentityState, org: str, principal: Principal) -> bool:
    if principal.superuser:
        return True
    return is_org_member(state, org, principal) and in_group(state, org, "admins", principal)


def can_read_jobs(state: IdentityState, org: str, principal: Principal) -> bool:
    """§6.1: no ``pushy_job_readers`` group → any org member; else its members only."""
    if principal.superuser:
        return True
    if not is_org_member(state, org, principal):
        return False
    if "pushy_job_readers" not in state.orgs[org].groups:
        return True
    return in_group(state, org, "pushy_job_readers", principal)


def can_write_jobs(state: IdentityState, org: str, principal: Principal) -> bool:
    """§6.1: ``pushy_job_writers`` members; without it ``admins`` members; neither → no one."""
    if principal.superuser:
        return True
    if not is_org_member(state, org, principal):
        return False
    groups = state.orgs[org].groups
    if "pushy_job_writers" in groups:
        return in_group(state, org, "pushy_job_writers", principal)
    if "admins" in groups:
        return in_group(state, org, "admins", principal)
    return False


def can_fetch_config(
    state: IdentityState,
    org: str,
    node: str,
    principal: Principal,
    *,
    validate_client_node_name: bool = True,
) -> bool:
    """The config carries the node's session key: only that node's client or the superuser.

    Users are refused (DESIGN: the session key goes to no one else). With
    ``validate_client_node_name`` false, any client of the org passes, as in the original.
    """
    if principal.superuser:
        return True
    if principal.kind != "client" or not is_org_member(state, org, principal):
        return False
    return not validate_client_node_name or principal.name == node


# --------------------------------------------------------------------------- helpers


def _err(status: int, message: str) -> Result:
    return Result(status, {"error": [message]}, [])


def _missing_perm(what: str) -> Result:
    return _err(403, f"missing {what} permission")


def _bad_field(name: str, detail: str = "") -> Result:
    return _err(400, f"Field '{name}' invalid" + (f": {detail}" if detail else ""))


def _missing_field(name: str) -> Result:
    return _err(400, f"Field '{name}' missing")


def _not_found(kind: str, name: str) -> Result:
    return _err(404, f"{kind} '{name}' not found")


def _exists(kind: str, name: str) -> Result:
    return _err(409, f"{kind} '{name}' already exists")


def _not_object() -> Result:
    return _err(400, "JSON body must be an object")


def _org_gate(state: IdentityState, org: str, requester: Principal) -> tuple[Org | None, Result]:
    """The org if it exists and the requester belongs to it, else the error to return."""
    o = state.orgs.get(org)
    if o is None:
        return None, _err(404, f"organization '{org}' does not exist.")
    if not is_org_member(state, org, requester):
        return None, _err(403, f"'{requester.name}' is not associated with organization '{org}'")
    return o, Result(200, {}, [])


def _is_validator(o: Org, p: Principal) -> bool:
    return (
        p.kind == "client"
        and p.org == o.name
        and o.clients.get(p.name, Actor("", "client")).validator
    )


def _is_reader(state: IdentityState, o: Org, p: Principal) -> bool:
    """Members may read the org's objects, except the validator, which may only register."""
    return is_org_member(state, o.name, p) and not _is_validator(o, p)


def _is_self_client(o: Org, p: Principal, name: str) -> bool:
    return p.kind == "client" and p.org == o.name and p.name == name


def _string(body: dict, name: str, *, required: bool, default: str = "") -> str | Result:
    if name not in body:
        return _missing_field(name) if required else default
    value = body[name]
    if not isinstance(value, str):
        return _bad_field(name)
    return value


def _name(body: dict, field_name: str, pattern: re.Pattern[str]) -> str | Result:
    value = _string(body, field_name, required=True)
    if isinstance(value, Result):
        return value
    if not pattern.fullmatch(value):
        return _bad_field(field_name)
    return value


def _key_material(
    body: dict, new_key: tuple[str, str] | None, *, allow_none: bool = True
) -> tuple[str | None, str | None] | Result:
    """(private_pem or None, public_pem or None) from ``create_key`` / ``public_key``."""
    create = body.get("create_key", False)
    if not isinstance(create, bool):
        return _bad_field("create_key")
    public = body.get("public_key")
    if public is not None and not isinstance(public, str):
        return _bad_field("public_key")
    if create and public is not None:
        return _bad_field("create_key", "cannot be combined with 'public_key'")
    if create:
        if new_key is None:
            raise ValueError("create_key requested but no key pair was passed in")
        return new_key[0], new_key[1]
    if public is None:
        return (None, None) if allow_none else _missing_field("public_key")
    try:
        load_public_pem(public)
    except KeyFormatError as exc:
        return _bad_field("public_key", str(exc))
    return None, public


def _chef_key(name: str, private: str | None, public: str, expiration: str) -> dict:
    out = {"name": name, "public_key": public, "expiration_date": expiration}
    if private is not None:
        out["private_key"] = private
    return out


def _name_map(names: Iterable[str], prefix: str) -> dict[str, str]:
    return {n: f"{prefix}/{n}" for n in sorted(names)}


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


def list_orgs(state: IdentityState, requester: Principal, *, base_url: str) -> Result:
    if not requester.superuser:
        return _missing_perm("read")
    return Result(200, _name_map(state.orgs, f"{base_url}/organizations"), [])


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
        return _missing_perm("create")
    if not isinstance(body, dict):
        return _not_object()
    name = _name(body, "name", _ORG_NAME)
    if isinstance(name, Result):
        return name
    full_name = _string(body, "full_name", required=True)
    if isinstance(full_name, Result):
        return full_name
    if not full_name or len(full_name) > 1023:
        return _bad_field("full_name")
    if name in state.orgs:
        return _exists("organization", name)
    validator = f"{name}-validator"
    records = [
        {"type": "org_created", "name": name, "full_name": full_name, "guid": guid},
        {
            "type": "client_created",
            "org": name,
            "name": validator,
            "validator": True,
            "keys": [_key_record(Key("default", validator_key_pem_public))],
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
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _is_reader(state, o, requester):
        return _missing_perm("read")
    return Result(200, {"name": o.name, "full_name": o.full_name, "guid": o.guid}, [])


# --------------------------------------------------------------------------- users


def list_users(state: IdentityState, requester: Principal, *, base_url: str) -> Result:
    if not requester.superuser:
        return _missing_perm("read")
    return Result(200, _name_map(state.users, f"{base_url}/users"), [])


def create_user(
    state: IdentityState,
    requester: Principal,
    body: object,
    *,
    new_key: tuple[str, str] | None,
    base_url: str,
) -> Result:
    if not requester.superuser:
        return _missing_perm("create")
    if not isinstance(body, dict):
        return _not_object()
    name = _name(body, "username", _ACTOR_NAME)
    if isinstance(name, Result):
        return name
    fields: dict[str, str] = {}
    for f in ("display_name", "email", "first_name", "last_name"):
        value = _string(body, f, required=False, default=name if f == "display_name" else "")
        if isinstance(value, Result):
            return value
        fields[f] = value
    material = _key_material(body, new_key)
    if isinstance(material, Result):
        return material
    if name in state.users:
        return _exists("user", name)
    private, public = material
    keys = [] if public is None else [_key_record(Key("default", public))]
    record = {"type": "user_created", "name": name, "superuser": False, "keys": keys, **fields}
    reply: dict[str, Any] = {"uri": f"{base_url}/users/{name}"}
    if public is not None:
        reply["chef_key"] = _chef_key("default", private, public, "infinity")
    return Result(201, reply, [record])


def get_user(state: IdentityState, requester: Principal, name: str) -> Result:
    is_self = requester.kind == "user" and requester.name == name
    if not (requester.superuser or is_self):
        return _missing_perm("read")
    u = state.users.get(name)
    if u is None:
        return _not_found("user", name)
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


def associate_user(
    state: IdentityState, requester: Principal, org: str, body: object, *, base_url: str
) -> Result:
    o = state.orgs.get(org)
    if o is None:
        return _err(404, f"organization '{org}' does not exist.")
    if not requester.superuser:
        return _missing_perm("create")
    if not isinstance(body, dict):
        return _not_object()
    name = _name(body, "username", _ACTOR_NAME)
    if isinstance(name, Result):
        return name
    if name not in state.users:
        return _not_found("user", name)
    if name in o.users:
        return _exists("association of user with organization", f"{name}/{org}")
    record = {"type": "user_associated", "org": org, "user": name}
    return Result(201, {"uri": f"{base_url}/organizations/{org}/users/{name}"}, [record])


def list_org_users(state: IdentityState, requester: Principal, org: str) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _is_reader(state, o, requester):
        return _missing_perm("read")
    return Result(200, [{"user": {"username": n}} for n in sorted(o.users)], [])


# --------------------------------------------------------------------------- clients


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
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _is_reader(state, o, requester):
        return _missing_perm("read")
    return Result(200, _name_map(o.clients, f"{base_url}/organizations/{org}/clients"), [])


def create_client(
    state: IdentityState,
    requester: Principal,
    org: str,
    body: object,
    *,
    new_key: tuple[str, str] | None,
    base_url: str,
) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    admin = is_org_admin(state, org, requester)
    if not (admin or _is_validator(o, requester)):
        return _missing_perm("create")
    if not isinstance(body, dict):
        return _not_object()
    if "name" not in body and "clientname" in body:
        body = {**body, "name": body["clientname"]}
    name = _name(body, "name", _ACTOR_NAME)
    if isinstance(name, Result):
        return name
    validator = body.get("validator", False)
    if not isinstance(validator, bool):
        return _bad_field("validator")
    if validator and not admin:
        return _missing_perm("create")
    material = _key_material(body, new_key)
    if isinstance(material, Result):
        return material
    if name in o.clients:
        return _exists("client", name)
    private, public = material
    keys = [] if public is None else [_key_record(Key("default", public))]
    record = {"type": "client_created", "org": org, "name": name, "validator": validator}
    record["keys"] = keys
    reply: dict[str, Any] = {"uri": f"{base_url}/organizations/{org}/clients/{name}"}
    if public is not None:
        reply["chef_key"] = _chef_key("default", private, public, "infinity")
    return Result(201, reply, [record])


def get_client(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not (_is_reader(state, o, requester) or _is_self_client(o, requester, name)):
        return _missing_perm("read")
    c = o.clients.get(name)
    if c is None:
        return _not_found("client", name)
    return Result(200, _client_json(c), [])


def delete_client(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return _missing_perm("delete")
    c = o.clients.get(name)
    if c is None:
        return _not_found("client", name)
    return Result(200, _client_json(c), [{"type": "client_deleted", "org": org, "name": name}])


# --------------------------------------------------------------------------- keys


def _key_owner(
    state: IdentityState, requester: Principal, org: str | None, actor: str, write: bool
) -> tuple[Actor | None, Result]:
    """The actor whose keys are addressed (org None: a user), after the permission check."""
    what = "update" if write else "read"
    if org is None:
        if not (requester.superuser or (requester.kind == "user" and requester.name == actor)):
            return None, _missing_perm(what)
        u = state.users.get(actor)
        return (u, Result(200, {}, [])) if u is not None else (None, _not_found("user", actor))
    o, err = _org_gate(state, org, requester)
    if o is None:
        return None, err
    allowed = is_org_admin(state, org, requester) or _is_self_client(o, requester, actor)
    if not write:
        allowed = allowed or _is_reader(state, o, requester)
    if not allowed:
        return None, _missing_perm(what)
    c = o.clients.get(actor)
    return (c, Result(200, {}, [])) if c is not None else (None, _not_found("client", actor))


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
        {"name": k.name, "uri": f"{prefix}/{k.name}", "expired": _expired(k, now)}
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
        return _not_found("key", key)
    return Result(200, _key_record(k), [])


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
        return _not_object()
    name = _name(body, "name", _ACTOR_NAME)
    if isinstance(name, Result):
        return name
    expiration = _string(body, "expiration_date", required=False, default="infinity")
    if isinstance(expiration, Result):
        return expiration
    if expiration != "infinity" and not _valid_expiration(expiration):
        return _bad_field("expiration_date")
    material = _key_material(body, new_key, allow_none=False)
    if isinstance(material, Result):
        return material
    if name in owner.keys:
        return _exists("key", name)
    private, public = material
    assert public is not None
    record = {
        "type": "key_added",
        "org": org,
        "actor": actor,
        "key": _key_record(Key(name, public, expiration)),
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
        return _not_found("key", key)
    record = {"type": "key_deleted", "org": org, "actor": actor, "key_name": key}
    return Result(200, _key_record(k), [record])


# --------------------------------------------------------------------------- groups


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
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _is_reader(state, o, requester):
        return _missing_perm("read")
    return Result(200, _name_map(o.groups, f"{base_url}/organizations/{org}/groups"), [])


def create_group(
    state: IdentityState, requester: Principal, org: str, body: object, *, base_url: str
) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return _missing_perm("create")
    if not isinstance(body, dict):
        return _not_object()
    if "groupname" not in body and "name" in body:
        body = {**body, "groupname": body["name"]}
    name = _name(body, "groupname", _GROUP_NAME)
    if isinstance(name, Result):
        return name
    if name in o.groups:
        return _exists("group", name)
    record = {"type": "group_created", "org": org, "name": name}
    return Result(201, {"uri": f"{base_url}/organizations/{org}/groups/{name}"}, [record])


def get_group(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _is_reader(state, o, requester):
        return _missing_perm("read")
    g = o.groups.get(name)
    if g is None:
        return _not_found("group", name)
    return Result(200, _group_json(org, g), [])


def _name_list(container: dict, key: str) -> list[str] | Result:
    value = container.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return _bad_field(key)
    return value


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
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return _missing_perm("update")
    if not isinstance(body, dict):
        return _not_object()
    if "groupname" in body and body["groupname"] != name:
        return _bad_field("groupname", "renaming a group is not supported")
    actors = body.get("actors")
    if isinstance(actors, dict):
        source = actors
    elif actors is None or isinstance(actors, list):
        source = body
    else:
        return _bad_field("actors")
    lists: dict[str, list[str]] = {}
    for key in ("users", "clients", "groups"):
        value = _name_list(source, key)
        if isinstance(value, Result):
            return value
        lists[key] = value
    if name not in o.groups:
        return _not_found("group", name)
    for u in lists["users"]:
        if u not in o.users:
            return _bad_field("users", f"user '{u}' is not a member of organization '{org}'")
    for c in lists["clients"]:
        if c not in o.clients:
            return _bad_field("clients", f"client '{c}' not found in organization '{org}'")
    for g in lists["groups"]:
        if g not in o.groups:
            return _bad_field("groups", f"group '{g}' not found in organization '{org}'")
    new_groups = set(lists["groups"])
    if _creates_cycle(o, name, new_groups):
        return _bad_field("groups", f"group '{name}' would contain itself (cycle)")
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
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return _missing_perm("delete")
    g = o.groups.get(name)
    if g is None:
        return _not_found("group", name)
    if name in BUILTIN_GROUPS:
        return _bad_field("groupname", f"the built-in group '{name}' cannot be deleted")
    record = {"type": "group_deleted", "org": org, "name": name}
    return Result(200, _group_json(org, g), [record])


# --------------------------------------------------------------------------- nodes

_ATTRS = ("automatic", "normal", "default", "override")


def _canonical_node(body: dict, url_name: str | None) -> dict | Result:
    """Chef node JSON with defaults filled in; bare run-list names become ``recipe[...]``."""
    if "name" in body or url_name is None:
        name = _name(body, "name", _ACTOR_NAME)
        if isinstance(name, Result):
            return name
        if url_name is not None and name != url_name:
            return _err(400, "Node name mismatch.")
    else:
        name = url_name
    env = _string(body, "chef_environment", required=False, default="_default")
    if isinstance(env, Result):
        return env
    if not _ENV_NAME.fullmatch(env):
        return _bad_field("chef_environment")
    for key, expected in (("json_class", "Chef::Node"), ("chef_type", "node")):
        if key in body and body[key] != expected:
            return _bad_field(key)
    run_list = body.get("run_list", [])
    if not isinstance(run_list, list):
        return _bad_field("run_list")
    items: list[str] = []
    for item in run_list:
        if isinstance(item, str) and _RUN_LIST_ITEM.fullmatch(item):
            items.append(item)
        elif isinstance(item, str) and _BARE_RECIPE.fullmatch(item):
            items.append(f"recipe[{item}]")
        else:
            return _bad_field("run_list")
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
            return _bad_field(attr)
        node[attr] = copy.deepcopy(value)
    return node


def list_nodes(state: IdentityState, requester: Principal, org: str, *, base_url: str) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _is_reader(state, o, requester):
        return _missing_perm("read")
    return Result(200, _name_map(o.nodes, f"{base_url}/organizations/{org}/nodes"), [])


def get_node(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _is_reader(state, o, requester):
        return _missing_perm("read")
    node = o.nodes.get(name)
    if node is None:
        return _not_found("node", name)
    return Result(200, copy.deepcopy(node), [])


def _may_write_node(state: IdentityState, o: Org, requester: Principal) -> bool:
    """Admins, or a non-validator client (whose node name is checked once the body is read)."""
    if is_org_admin(state, o.name, requester):
        return True
    return requester.kind == "client" and not _is_validator(o, requester)


def create_node(
    state: IdentityState, requester: Principal, org: str, body: object, *, base_url: str
) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not _may_write_node(state, o, requester):
        return _missing_perm("create")
    if not isinstance(body, dict):
        return _not_object()
    node = _canonical_node(body, None)
    if isinstance(node, Result):
        return node
    name = node["name"]
    if not is_org_admin(state, org, requester) and requester.name != name:
        return _missing_perm("create")
    if name in o.nodes:
        return _exists("node", name)
    record = {"type": "node_saved", "org": org, "name": name, "node": node}
    return Result(201, {"uri": f"{base_url}/organizations/{org}/nodes/{name}"}, [record])


def put_node(
    state: IdentityState, requester: Principal, org: str, name: str, body: object
) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not (is_org_admin(state, org, requester) or _is_self_client(o, requester, name)):
        return _missing_perm("update")
    if not isinstance(body, dict):
        return _not_object()
    node = _canonical_node(body, name)
    if isinstance(node, Result):
        return node
    if name not in o.nodes:
        return _not_found("node", name)
    record = {"type": "node_saved", "org": org, "name": name, "node": node}
    return Result(200, copy.deepcopy(node), [record])


def delete_node(state: IdentityState, requester: Principal, org: str, name: str) -> Result:
    o, err = _org_gate(state, org, requester)
    if o is None:
        return err
    if not is_org_admin(state, org, requester):
        return _missing_perm("delete")
    node = o.nodes.get(name)
    if node is None:
        return _not_found("node", name)
    record = {"type": "node_deleted", "org": org, "name": name}
    return Result(200, copy.deepcopy(node), [record])
