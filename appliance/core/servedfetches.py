"""The config fetches a node made itself, remembered by signature while that signature can
still be replayed (issue 17, "Replayed config fetches").

Chef signing has no nonce and leaves the query out, so the signed bytes of a node's own
``GET .../pushy/config/NODE`` can be sent again by anyone who saw them, for as long as the
signed ``X-Ops-Timestamp`` is within the server's window (``chefauth.DEFAULT_SKEW``). A node's
own fetch rotates its session key: a replay would cut the node off. Here a signature already
served gets back the session key it was given then (no rotation, nothing written); only a new
signature rotates.

Bounded: an entry lives until its signed time leaves the window, each node keeps at most
``per_node`` entries and the whole memory at most ``cap``; beyond either the entry that leaves
the window first is forgotten, and that node's ``floor`` rises to its signed time. An unknown
signature signed at or before the floor may be a forgotten replay: it is refused (the caller
answers 401; a real client signs again, with a newer time) rather than rotating. Only a
holder of the node's own key adds entries for that node, so flooding one node's memory takes
that node's key, and filling the whole memory takes the keys of ``cap // per_node`` nodes.
Besides the entries, a node whose memory dropped one keeps its floor for one window.

Pure: time is passed in. Per process: a restart or a failover forgets (docs/reliability.md).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from appliance.core.nodes import NodeKey

# the 401's text for a replay the server will not answer (a client recognises it: a fetch
# signed again within the same second is one)
REPLAYED = "This signed request was already answered; sign a new one"
MARGIN = 60.0  # kept this much past the window: the clock read by the check and by us differ
PER_NODE = 16  # a node fetches after a restart, a reconfigure or a lost server: a few a window
CAP = 100_000  # entries in all (~200 bytes each)


@dataclass(frozen=True)
class Served:
    """What the fetch was given: the answer a replay of it gets again."""

    session_key: bytes
    ccpk: str | None


@dataclass(frozen=True)
class Replay:
    served: Served


@dataclass(frozen=True)
class Forgotten:
    """Not remembered, but signed no later than a signature this node's memory had to drop."""


@dataclass
class _Node:
    entries: dict[bytes, tuple[float, Served]] = field(default_factory=dict)  # sig → (until, …)
    floor: float = float("-inf")  # signed time of the newest entry dropped before its time
    floor_until: float = float("-inf")


class ServedFetches:
    def __init__(self, window: float, *, per_node: int = PER_NODE, cap: int = CAP) -> None:
        if per_node < 1 or cap < 1:
            raise ValueError("per_node and cap must be at least 1")
        self.window = window + MARGIN
        self.per_node = per_node
        self.cap = cap
        self.dropped = 0  # entries forgotten before their time (at a cap)
        self._nodes: dict[NodeKey, _Node] = {}
        self._expiry: list[tuple[float, NodeKey, bytes]] = []  # heap: the next to leave first
        self._floors: list[tuple[float, NodeKey]] = []  # heap: when a node's floor ends
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def check(
        self, node: NodeKey, signature: bytes, signed_at: float, now: float
    ) -> Replay | Forgotten | None:
        """A replay (its answer), a signature that may be a forgotten replay, or None: new."""
        self._expire(now)
        kept = self._nodes.get(node)
        if kept is None:
            return None
        entry = kept.entries.get(signature)
        if entry is not None:
            return Replay(entry[1])
        if signed_at <= kept.floor and now < kept.floor_until:
            return Forgotten()
        return None

    def remember(
        self, node: NodeKey, signature: bytes, signed_at: float, served: Served, now: float
    ) -> None:
        """Record what a new signature was served, dropping what the bounds require."""
        self._expire(now)
        until = signed_at + self.window
        if until <= now:
            return  # cannot be replayed any more (a clock that jumped)
        kept = self._nodes.setdefault(node, _Node())
        if signature not in kept.entries:
            self._size += 1
        kept.entries[signature] = (until, served)
        heapq.heappush(self._expiry, (until, node, signature))
        if len(kept.entries) > self.per_node:
            sig = min(kept.entries, key=lambda s: kept.entries[s][0])
            self._drop(node, sig)
        while self._size > self.cap:
            self._drop_first()

    def forget(self, node: NodeKey, signature: bytes) -> None:
        """Take back an entry whose answer was not given (the write failed)."""
        kept = self._nodes.get(node)
        if kept is not None and kept.entries.pop(signature, None) is not None:
            self._size -= 1
            self._prune(node, float("-inf"))

    def _drop(self, node: NodeKey, signature: bytes) -> None:
        kept = self._nodes[node]
        until, _ = kept.entries.pop(signature)
        self._size -= 1
        self.dropped += 1
        if until - self.window > kept.floor:
            kept.floor, kept.floor_until = until - self.window, until
            heapq.heappush(self._floors, (until, node))

    def _drop_first(self) -> None:
        while self._expiry:
            until, node, sig = item = heapq.heappop(self._expiry)
            if self._holds(item):
                self._drop(node, sig)
                return

    def _holds(self, item: tuple[float, NodeKey, bytes]) -> bool:
        until, node, sig = item
        kept = self._nodes.get(node)
        return kept is not None and kept.entries.get(sig, (None,))[0] == until

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            item = heapq.heappop(self._expiry)
            if self._holds(item):
                del self._nodes[item[1]].entries[item[2]]
                self._size -= 1
            self._prune(item[1], now)
        while self._floors and self._floors[0][0] <= now:
            self._prune(heapq.heappop(self._floors)[1], now)
        if len(self._expiry) > 2 * self._size + 64:  # items of entries a cap dropped
            self._expiry = [item for item in self._expiry if self._holds(item)]
            heapq.heapify(self._expiry)
        if len(self._floors) > 2 * len(self._nodes) + 64:  # floors a later drop raised
            self._floors = [
                (until, node)
                for until, node in self._floors
                if node in self._nodes and self._nodes[node].floor_until == until
            ]
            heapq.heapify(self._floors)

    def _prune(self, node: NodeKey, now: float) -> None:
        kept = self._nodes.get(node)
        if kept is not None and not kept.entries and now >= kept.floor_until:
            del self._nodes[node]
