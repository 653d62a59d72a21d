"""Identity records: the reducer that folds them into state, and the records a state rebuilds from.

The log is the only source of truth, so these functions are the only writers of
`IdentityState`; a restart replays the same records to the same state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from appliance.core.identity.model import BUILTIN_GROUPS, Actor, Group, IdentityState, Key, Org


def key_from(rec: dict) -> Key:
    """A `Key` from its record form."""
    return Key(rec["name"], rec["public_key"], rec.get("expiration_date", "infinity"))


def key_record(key: Key) -> dict:
    """The record (and Chef API) form of a key."""
    return {"name": key.name, "public_key": key.public_key, "expiration_date": key.expiration_date}


def _r_org_created(s: IdentityState, r: dict) -> None:
    s.orgs[r["name"]] = Org(
        r["name"], r["full_name"], r["guid"], groups={g: Group(g) for g in BUILTIN_GROUPS}
    )


def _r_user_created(s: IdentityState, r: dict) -> None:
    s.users[r["name"]] = Actor(
        name=r["name"],
        kind="user",
        keys={k["name"]: key_from(k) for k in r.get("keys", [])},
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
        keys={k["name"]: key_from(k) for k in r.get("keys", [])},
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
    key = key_from(r["key"])
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
                "keys": [key_record(k) for k in user.keys.values()],
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
                    "keys": [key_record(k) for k in client.keys.values()],
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
            "keys": [key_record(Key("default", public_key_pem))],
        }
    ]


# --------------------------------------------------------------------------- authentication
