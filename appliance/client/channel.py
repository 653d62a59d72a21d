"""The node's ZeroMQ channel to the server: the two sockets of one connection, what belongs to
that connection, and the checking and framing of its messages (``core.wire`` holds the bytes).

Apart from the agent's loop so that the simulated fleet (``bench.fleet``) opens its sockets with
the same options, checks and frames its messages and keeps the same deadlines as the real client.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from appliance.core import wire
from appliance.zmqio import TrioSocket

log = logging.getLogger("pushy.client")

WATCHDOG_SECONDS = 4.0  # no command message on a new connection by then: reconfigure
SEND_FAILURE_DEADLINE_SECONDS = 60.0  # a message could not be queued: reconfigure after this


def jittered(seconds: float) -> float:
    """``seconds`` less up to 10 %: nodes that share a cause (a lost server, one config
    lifetime) spread out instead of acting in the same instant."""
    return seconds * (1 - random.random() * 0.1)


def lifetime_seconds(config: dict[str, Any]) -> float:
    """When to fetch a new configuration (jittered): at the end of the answer's ``lifetime``."""
    return jittered(float(config.get("lifetime", 3600)))


def command_sockets(
    ctx: zmq.Context, hb: dict[str, Any], curve: tuple[dict[str, Any], bytes, bytes] | None
) -> tuple[zmq.Socket, zmq.Socket]:
    """The node's DEALER (command channel, CURVE unless legacy) and SUB (server heartbeats),
    connected, with the original client's options: SNDHWM 3 bounds what piles up while the
    server is away. ``curve`` is (config, our public key, our secret key)."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = 3
    dealer.rcvhwm = 0
    if curve is not None:
        config, public, secret = curve
        dealer.curve_serverkey = config["curve_public_key"].encode("ascii")
        dealer.curve_publickey = public
        dealer.curve_secretkey = secret
    dealer.connect(hb["command_addr"])
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(hb["out_addr"])
    return dealer, sub


@dataclass
class Connection:
    """Everything that belongs to one fetched configuration."""

    config: dict[str, Any]
    session_key: bytes
    server_key: RSAPublicKey
    incarnation: str
    interval: float
    legacy: bool
    dealer: TrioSocket | None = None
    sub: TrioSocket | None = None
    sequence: int = 0
    got_command_message: trio.Event = field(default_factory=trio.Event)
    channel_up: bool = False  # a valid message arrived on the command channel
    diagnosed: trio.Event | None = None  # set once the silent addresses were probed and logged

    def close(self) -> None:
        for sock in (self.dealer, self.sub):
            if sock is not None:
                sock.close()


def verified_body(
    conn: Connection, frames: list[bytes], *, session_key: bool = True
) -> dict[str, Any]:
    """The body of a two-frame server message on ``conn`` once its signature and time window
    are checked; raises ``wire.MessageError``. ``session_key=False``: only the server's RSA
    signature is accepted (the fleet checks one SUB message once for all its nodes)."""
    return wire.check_client_inbound(
        frames[0],
        frames[1],
        session_key=conn.session_key if session_key else None,
        server_public_key=conn.server_key,
        now=time.time(),
        max_skew=float(conn.config.get("max_message_skew", 300)),
    )


def check_inbound(conn: Connection, frames: list[bytes], node: str) -> dict[str, Any] | None:
    """The body of a valid server message on ``conn`` (header, signature, time window), or
    None after logging why it was dropped."""
    if len(frames) != 2:
        log.warning("[%s] dropped a message of %d frames", node, len(frames))
        return None
    try:
        return verified_body(conn, frames)
    except wire.MessageError as exc:
        log.warning("[%s] Received invalid message (%s)", node, exc)
        return None


def outbound_frames(
    conn: Connection,
    kind: str,
    job_id: str | None,
    *,
    node: str,
    client: str,
    org: str,
    incarnation: str,
    **extra: Any,
) -> list[bytes]:
    """The next message of ``conn`` (its sequence number taken), HMAC-signed with its session
    key, as the frames the DEALER sends."""
    conn.sequence += 1
    body = wire.node_message(
        node=node,
        client=client,
        org=org,
        type=kind,
        sequence=conn.sequence,
        t=time.time(),
        incarnation=incarnation,
        job_id=job_id,
        **extra,
    )
    return wire.hmac_frames(conn.session_key, body)
