"""The web dashboard's one-time log-in links and sessions, kept by their tokens' hashes.

A link (``pushy admin login-link``) is redeemed once for a session; a session is what the
dashboard's cookie names. Both are held only as SHA-256 digests of their tokens, so neither
the memory of a running server nor anything derived from it (a core dump, a debug print)
holds a usable credential. Expired entries are dropped as new ones come, and each kind is
capped (the oldest goes first), so memory stays bounded whatever is asked.

Pure: tokens and the time come in from the shell (``secrets``, the server's clock).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MAX_LINKS = 1000
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Grant:
    """Who a link or a session logs in: a user, looking at one organization."""

    user: str
    org: str
    expires: float


@dataclass(frozen=True)
class Session(Grant):
    csrf: str  # sent back by the page in X-CSRF-Token on every write


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class SessionBook:
    def __init__(self, max_links: int = MAX_LINKS, max_sessions: int = MAX_SESSIONS) -> None:
        self._links: dict[str, Grant] = {}
        self._sessions: dict[str, Session] = {}
        self.max_links = max_links
        self.max_sessions = max_sessions

    def add_link(self, token: str, user: str, org: str, *, now: float, ttl: float) -> Grant:
        grant = Grant(user, org, now + ttl)
        _insert(self._links, digest(token), grant, now, self.max_links)
        return grant

    def redeem(self, token: str, *, now: float) -> Grant | None:
        """The link's grant, once: a second use, an unknown or an expired token is None."""
        grant = self._links.pop(digest(token), None)
        if grant is None or grant.expires <= now:
            return None
        return grant

    def open(self, token: str, csrf: str, grant: Grant, *, now: float, ttl: float) -> Session:
        session = Session(grant.user, grant.org, now + ttl, csrf)
        _insert(self._sessions, digest(token), session, now, self.max_sessions)
        return session

    def find(self, token: str, *, now: float) -> Session | None:
        key = digest(token)
        session = self._sessions.get(key)
        if session is not None and session.expires <= now:
            del self._sessions[key]
            return None
        return session

    def close(self, token: str) -> bool:
        return self._sessions.pop(digest(token), None) is not None

    def counts(self) -> tuple[int, int]:
        """(links, sessions) held, expired ones included until they are dropped."""
        return len(self._links), len(self._sessions)


def _insert(table: dict[str, Grant], key: str, value: Grant, now: float, cap: int) -> None:
    if len(table) >= cap:
        for stale in [k for k, v in table.items() if v.expires <= now]:
            del table[stale]
    while len(table) >= cap:
        del table[next(iter(table))]  # the oldest (dicts keep insertion order)
    table[key] = value
