"""The link between the coordinator and its edges, as values: message kinds, node addresses,
the key rows an edge checks messages with, the edge's forwarding rule and node assignment.

An edge holds the node sockets (docs/architecture.md "Edges"). It checks every node message
(CURVE, HMAC, JSON) and keeps each node's liveness, and forwards to the coordinator only what
the coordinator's node table needs: every non-heartbeat message, and a heartbeat only when it
says something the table acts on — the node's first message here (a first contact, or a node
to reconcile after a restart or a lost edge), a new ROUTER address, a new incarnation, or a job
the coordinator does not know as live (a stray job: rehab). Job progress comes in the job
messages themselves, so heartbeats that only say "still here" or "still running J" end at the
edge, and the coordinator's loop does no per-heartbeat work.

Link messages are ZeroMQ multipart: ``[KIND, ...frames]``; JSON parts are encoded by the shell.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.core import liveness
from appliance.core.nodekeys import NodeKeys
from appliance.core.nodes import Liveness, NodeKey
from appliance.core.wire import job_id_of

__all__ = [
    "EdgeNodes",
    "assign",
    "key_row",
    "keys_of_row",
    "pack_address",
    "unpack_address",
]

# coordinator -> edge
SETUP = b"setup"  # [SETUP, json]: settings, CURVE secret, every node's keys, the live jobs
KEYS = b"keys"  # [KEYS, json rows, seq]: changed node keys (a row without keys removes the node)
SEND = b"send"  # [SEND, router address, header, body]: signed frames for one node
BEAT = b"beat"  # [BEAT, header, body]: the signed server heartbeat, to publish
JOBS = b"jobs"  # [JOBS, json {"add": [...], "remove": [...]}]: the live job ids changed
FORGET = b"forget"  # [FORGET, json [org, node]]: the coordinator took the node offline
SETTINGS = b"settings"  # [SETTINGS, json]: live settings the edges apply (a reload)
WHO = b"who"  # [WHO]: "I do not know you" (the coordinator restarted): say hello again
# edge -> coordinator
HELLO = b"hello"  # [HELLO, json]: name, pid, where nodes reach it (remote edges)
MSG = b"msg"  # [MSG, router address, body json]: a checked node message to forward
DOWN = b"down"  # [DOWN, router address, json [org, node, reason]]: the node stopped beating
STATS = b"stats"  # [STATS, json]: counters, CPU, descriptors, RSS (also the edge's beat)
KEYS_ACK = b"keys-ack"  # [KEYS_ACK, seq]: the KEYS up to seq are applied (a node may connect)

# the live settings an edge applies when the server reloads (the edge checks timestamps)
LIVE_AT_EDGES = ("max_time_skew",)


def pack_address(edge: bytes, address: bytes) -> bytes:
    """A node's address as the coordinator keeps it: which edge, and its ROUTER address there.

    A ROUTER address made by libzmq starts with a zero byte; a packed one starts with the
    length of the edge's id (1..255), so the two never collide."""
    if not 0 < len(edge) < 256:
        raise ValueError("an edge id is 1 to 255 bytes")
    return bytes([len(edge)]) + edge + address


def unpack_address(packed: bytes) -> tuple[bytes, bytes]:
    n = packed[0] if packed else 0
    if n == 0 or len(packed) < 1 + n:
        raise ValueError("not an edge address")
    return packed[1 : 1 + n], packed[1 + n :]


def key_row(key: NodeKey, keys: NodeKeys | None) -> list[Any]:
    """One node's keys as JSON (``None``: the node is gone)."""
    if keys is None:
        return [key[0], key[1]]
    return [
        key[0],
        key[1],
        _b64(keys.session_key),
        _b64(keys.previous_key),
        keys.previous_until,
        keys.ccpk,
    ]


def keys_of_row(row: list[Any]) -> tuple[NodeKey, NodeKeys | None]:
    key = (row[0], row[1])
    if len(row) == 2:
        return key, None
    return key, NodeKeys(
        session_key=_unb64(row[2]), previous_key=_unb64(row[3]), previous_until=row[4], ccpk=row[5]
    )


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def assign(key: NodeKey, groups: Iterable[str]) -> str | None:
    """Which group of edges serves a node: rendezvous hashing, so a node moves only when its
    own group comes or goes, never because another one did."""
    best: tuple[bytes, str] | None = None
    name = f"{key[0]}/{key[1]}".encode()
    for group in groups:
        score = hashlib.blake2b(group.encode() + b"\0" + name, digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, group)
    return None if best is None else best[1]


@dataclass(slots=True)
class Seen:
    """What the edge last forwarded of a node, and its liveness here."""

    address: bytes
    incarnation: Any
    health: liveness.Health | None = None


class EdgeNodes:
    """The edge's memory of its nodes: which messages to forward, and who stopped beating."""

    def __init__(self, params: Liveness) -> None:
        self.params = params
        self.attention = liveness.Attention(params.tick)
        self.seen: dict[NodeKey, Seen] = {}
        self.live_jobs: set[str] = set()
        self.forwarded = 0
        self.absorbed = 0

    def on_message(
        self, key: NodeKey, address: bytes, body: dict[str, Any], now: float
    ) -> tuple[bool, str | None]:
        """(forward it?, the reason the node is down or None) for a message checked for ``key``.

        A node whose heartbeat rate fell below the threshold is down (the coordinator is told;
        this heartbeat is not forwarded); its next message is a first contact again."""
        now = self.attention.at(now)
        seen = self.seen.get(key)
        is_beat = body.get("type") == "heartbeat"
        incarnation = body.get("incarnation_id")
        if seen is None:
            seen = self.seen[key] = Seen(address, incarnation)
            if is_beat:
                seen.health = liveness.create(now, self.params.threshold)
            return True, None
        forward = not is_beat or address != seen.address or incarnation != seen.incarnation
        if is_beat:
            p = self.params
            if seen.health is None:
                seen.health = liveness.create(now, p.threshold)
            elif not liveness.on_heartbeat(
                seen.health, now, p.interval, p.decay_window, p.threshold
            ):
                del self.seen[key]
                return False, "heartbeat rate fell below the threshold"
            job_id = job_id_of(body)
            if job_id is not None and job_id not in self.live_jobs:
                forward = True
        seen.address, seen.incarnation = address, incarnation
        if forward:
            self.forwarded += 1
        else:
            self.absorbed += 1
        return forward, None

    def scan(self, now: float) -> list[tuple[NodeKey, bytes, str]]:
        """The liveness scanner: the nodes that stopped beating, forgotten here."""
        p = self.params
        now = self.attention.at(now)
        dead = [
            (key, seen.address, "missed heartbeats")
            for key, seen in self.seen.items()
            if seen.health is not None
            and liveness.is_dead(seen.health, now, p.interval, p.decay_window, p.threshold)
        ]
        for key, _, _ in dead:
            del self.seen[key]
        return dead

    def attend(self, now: float) -> None:
        """The shell's regular reading of the time (every ``params.tick``)."""
        self.attention.at(now)

    def forget(self, key: NodeKey) -> None:
        self.seen.pop(key, None)

    def reset(self) -> None:
        """A (new) coordinator: every node's next message is forwarded as a first contact."""
        self.seen.clear()
