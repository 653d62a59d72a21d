"""The config fetch's decision (server-protocol.md §6.2): which CURVE key a node may register,
and when its HMAC session key is rotated. Pure: the route authenticates, checks the ccpk's
shape, calls ``decide`` and writes the records it returns before answering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.core import records
from appliance.core.state import State


@dataclass(frozen=True)
class Refused:
    status: int
    message: str  # the one item of the error list the original answers


@dataclass(frozen=True)
class Granted:
    session_key: bytes  # what the config body carries, encrypted to the requester's key
    records: list[records.Record] = field(default_factory=list)  # durable before the answer


def own_fetch(principal: tuple[str, str], node: str) -> bool:
    """The node's own client fetching: the fetch that registers its key and rotates."""
    return principal == ("client", node)


def decide(
    state: State,
    org: str,
    node: str,
    *,
    principal: tuple[str, str],
    ccpk: str | None,
    curve: bool,
    fresh_key: bytes,
    now: float,
    grace: float,
) -> Refused | Granted:
    """What a permitted fetch of ``node``'s config by ``principal`` (kind "user" or "client",
    name) does.

    - With CURVE on, the fetch must carry the node's CURVE public key (``ccpk``, already
      checked to be 40 Z85 characters). Another node's key is refused: taking it over would
      drop that node from the allow-list (tests/e2e/test_impersonation.py). Only the node's
      own client registers its key: a superuser's fetch must not replace the node's entry and
      cut the node off.
    - The session key is rotated (to ``fresh_key``) when the node has none or when the node
      itself fetches (a restarted client must not keep a key an old process knew); anyone
      else who may fetch (a superuser, a validator-less admin) gets the current key.
    """
    kind = principal[0]
    out: list[records.Record] = []
    keys = state.node_keys.get((org, node))
    if curve:
        if ccpk is None:
            return Refused(400, "Missing ccpk")
        owner = state.curve_index.get(ccpk)
        if owner is not None and owner != (org, node):
            return Refused(401, "Bad ccpk")
        if kind == "client" and (keys is None or keys.ccpk != ccpk):
            out.append(records.ccpk(org, node, ccpk))
    if keys is None or keys.session_key is None or own_fetch(principal, node):
        out.append(records.session_key(org, node, fresh_key, t=now, grace=grace))
        return Granted(fresh_key, out)
    return Granted(keys.session_key, out)
