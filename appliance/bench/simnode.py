"""One simulated node: what the real client (``appliance/client/agent.py``) keeps and decides.

The bytes it sends are the client's: ``wire.node_message`` in the client's key order, HMAC-signed
two-frame messages on a CURVE DEALER with SNDHWM 3, one SUB for the server's heartbeats. Its
behaviour follows the agent: heartbeat every interval while the server is online (the agent's
own `ServerWatch`: stop after ``offline_threshold`` missed server beats, start again after
``online_threshold``), reconfigure
(new config fetch, new session key, new sockets; same incarnation and CURVE key) after a server
restart (random splay within one interval), when the watchdog sees no command message within
4 s, when a send cannot be queued (after 60 s) and when the config's lifetime ends; never while a
job is committed or running. Jobs go through the client's own state machine (``jobstate``);
"commands" are fakes that succeed at once or after ``job_seconds``.

A job result that could not be queued (SNDHWM) or may have been dropped with a socket is sent
again with the next heartbeat on another connection, as the agent's ``unsent`` does.
Not simulated: node records for search, whitelist locks, legacy (1.x, no CURVE) servers.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from appliance.client import jobstate
from appliance.client.serverwatch import ServerWatch
from appliance.client.whitelist import Resolved
from appliance.core import wire
from appliance.zmqio import TrioSocket

WATCHDOG_SECONDS = 4.0
SEND_FAILURE_DEADLINE_SECONDS = 60.0
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 120.0


@dataclass
class Connection:
    """One fetched configuration and its two sockets (the agent's ``Connection``)."""

    generation: int
    config: dict[str, Any]
    session_key: bytes
    server_key: RSAPublicKey
    incarnation: str
    interval: float
    max_skew: float
    lifetime: float
    dealer: TrioSocket | None = None
    sub: TrioSocket | None = None
    sequence: int = 0
    got_command_message: bool = False
    channel_up: bool = False

    def close(self) -> None:
        for sock in (self.dealer, self.sub):
            if sock is not None:
                sock.close()


@dataclass
class SimNode:
    index: int
    name: str
    org: str
    key: RSAPrivateKey
    start_at: float  # monotonic
    hostname: str = ""
    incarnation: str = field(default_factory=lambda: str(uuid.uuid4()))
    curve_public: bytes = b""
    curve_secret: bytes = b""
    conn: Connection | None = None
    generation: int = 0
    watch: ServerWatch = field(default_factory=ServerWatch)  # reset with each connection
    reconfigure_due: float | None = None
    heartbeat_due: float | None = None  # monotonic
    jobs: jobstate.JobState = field(default_factory=jobstate.JobState)
    running_job: str | None = None  # the fake process's job id
    available_reported: bool = False
    # a job result not known to have left: (reply, generation of the connection it was queued
    # on, or None when it could not be queued); sent again like the agent's ``unsent``
    unsent: tuple[jobstate.Reply, int | None] | None = None

    def __post_init__(self) -> None:
        self.hostname = self.hostname or self.name
        if not self.curve_public:
            self.curve_public, self.curve_secret = zmq.curve_keypair()

    # Messages --------------------------------------------------------------------------------
    def frames(self, conn: Connection, kind: str, job_id: str | None, **extra: Any) -> list[bytes]:
        conn.sequence += 1
        body = wire.node_message(
            node=self.name,
            client=self.hostname,
            org=self.org,
            type=kind,
            sequence=conn.sequence,
            t=time.time(),
            incarnation=self.incarnation,
            job_id=job_id,
            **extra,
        )
        return wire.hmac_frames(conn.session_key, body)

    def heartbeat_frames(self, conn: Connection) -> list[bytes]:
        job_state, job_id = self.jobs.heartbeat_fields()
        return self.frames(conn, "heartbeat", job_id, job_state=job_state)

    def check_command(self, conn: Connection, frames: list[bytes]) -> dict[str, Any] | None:
        if len(frames) != 2:
            return None
        try:
            return wire.check_client_inbound(
                frames[0],
                frames[1],
                session_key=conn.session_key,
                server_public_key=conn.server_key,
                now=time.time(),
                max_skew=conn.max_skew,
            )
        except wire.MessageError:
            return None

    def request_reconfigure(self, delay: float = 0.0) -> float | None:
        """The earliest request wins; returns the new due time if it moved (monotonic)."""
        due = time.monotonic() + delay
        if self.reconfigure_due is None or due < self.reconfigure_due:
            self.reconfigure_due = due
            return due
        return None

    # Server heartbeats (the agent's _receive_heartbeats) ---------------------------------------
    def on_server_heartbeat(self, conn: Connection, body: dict[str, Any]) -> float | None:
        """Returns a reconfigure delay when the server restarted, else None."""
        self.watch.server_heartbeat()
        if body.get("incarnation_id") != conn.incarnation:
            return random.random() * conn.interval
        return None


@dataclass
class FakeWhitelist:
    """The commands a simulated node accepts; each "runs" for ``job_seconds``."""

    commands: frozenset[str]

    def resolve(self, command: str) -> Resolved | None:
        return Resolved(command, None) if command in self.commands else None

    def checks(self) -> dict[str, Callable[..., Any]]:
        return {
            "resolve": self.resolve,
            "user_exists": lambda _user: True,
            "dir_exists": lambda _dir: True,
            "lock_free": lambda _lock: True,
        }


def backoff(delay: float) -> tuple[float, float]:
    """(wait now, next delay): the agent's capped exponential backoff with jitter."""
    return delay * (1 - random.random() * 0.1), min(delay * 2, BACKOFF_MAX_SECONDS)
