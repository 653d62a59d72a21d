"""What the server sends to nodes, whichever process holds their sockets: a node's messages
signed with its session key and numbered per session, and the RSA-signed server heartbeat.

In single-process mode the reactor sends these frames itself; with edges the coordinator
signs them here and an edge only puts them on the wire (``server.edges``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from appliance.core import nodes as corenodes
from appliance.core import wire
from appliance.core.settings import Settings
from appliance.server.clock import Clock

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from appliance.core.state import State


class NodeSigner:
    """A node's next message as frames, and where it is (its address in the node table)."""

    def __init__(self, state: State, table: corenodes.NodeTable) -> None:
        self.state = state
        self.table = table
        self.sequences: dict[corenodes.NodeKey, int] = {}

    def frames_for(
        self, key: corenodes.NodeKey, body: dict[str, Any], now: float
    ) -> tuple[bytes, list[bytes]] | None:
        """(address, frames), or None when the node is not online or has no session key."""
        node = self.table.online(key)
        keys = self.state.node_keys.get(key)
        if node is None or node.address is None or keys is None or keys.session_key is None:
            return None
        seq = self.sequences.get(key, 0) + 1
        self.sequences[key] = seq
        return node.address, wire.hmac_frames(keys.session_key, wire.server_message(seq, now, body))

    def forget(self, key: corenodes.NodeKey) -> None:
        """The node went offline: its next session starts its message numbers again."""
        self.sequences.pop(key, None)


class ServerBeat:
    """The server heartbeat every node's SUB socket receives: RSA-signed, numbered."""

    def __init__(self, server_key: RSAPrivateKey, hostname: str, incarnation: str) -> None:
        self.server_key = server_key
        self.hostname = hostname
        self.incarnation = incarnation
        self.sequence = 0

    async def run(
        self, settings: Callable[[], Settings], clock: Clock, publish: Callable[[list[bytes]], Any]
    ) -> None:
        """Sign (in a thread: RSA) and publish a beat every ``heartbeat_interval``, forever."""
        next_beat = trio.current_time()
        while True:
            body = wire.server_heartbeat(
                self.sequence, clock.now(), self.hostname, self.incarnation
            )
            frames = await trio.to_thread.run_sync(wire.rsa_frames, self.server_key, body)
            publish(frames)
            self.sequence += 1
            next_beat += settings().heartbeat_interval / 1000.0
            await trio.sleep_until(max(next_beat, trio.current_time()))
