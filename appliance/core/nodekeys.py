"""A node's secrets, in a module of their own: the edges hold a copy of every node's and need
nothing else of the server's state (importing it would cost each edge's start a tenth of a
second: identity, x509)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NodeKeys"]


@dataclass
class NodeKeys:
    """Per-node secrets: the HMAC session key (and the previous one during a rotation) and CURVE key."""

    session_key: bytes | None = None
    previous_key: bytes | None = None
    previous_until: float = 0.0
    ccpk: str | None = None

    def accepted_keys(self, now: float) -> list[bytes]:
        keys = [self.session_key] if self.session_key else []
        if self.previous_key and now < self.previous_until:
            keys.append(self.previous_key)
        return keys
