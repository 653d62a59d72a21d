"""Who a signed request is (candidate keys) and what a principal may do in an org.

Shared by the identity handlers and the server's auth, job and config routes, so a rule is
written once.
"""

from __future__ import annotations

import calendar
import time

from appliance.core.identity.model import Actor, IdentityState, Key, Org, Principal

# --------------------------------------------------------------------------- authentication


def key_expired(key: Key, now: float) -> bool:
    """Whether ``key`` has expired at ``now``; an unreadable date counts as expired."""
    if key.expiration_date == "infinity":
        return False
    try:
        when = calendar.timegm(time.strptime(key.expiration_date, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return True
    return when <= now


def _pems(actor: Actor, now: float | None) -> list[str]:
    return [k.public_key for k in actor.keys.values() if now is None or not key_expired(k, now)]


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


def is_validator(o: Org, p: Principal) -> bool:
    """The org's validator client, which may register clients and do nothing else."""
    return (
        p.kind == "client"
        and p.org == o.name
        and o.clients.get(p.name, Actor("", "client")).validator
    )


def is_reader(state: IdentityState, o: Org, p: Principal) -> bool:
    """Members may read the org's objects, except the validator, which may only register."""
    return is_org_member(state, o.name, p) and not is_validator(o, p)


def is_self_client(o: Org, p: Principal, name: str) -> bool:
    return p.kind == "client" and p.org == o.name and p.name == name
