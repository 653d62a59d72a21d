"""The identity authority's state: orgs, actors (users and clients), keys, groups.

Plain dataclasses that only `records.apply` changes; handlers read them and never write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Kind = Literal["user", "client"]
BUILTIN_GROUPS = ("admins", "users", "clients")
MAX_NAME = 255


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
