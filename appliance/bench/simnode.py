"""One simulated node: what the real client (``appliance/client/agent.py``) keeps and decides.

The bytes it sends are the client's (``client.channel``: the same framing, checks, sockets and
deadlines; ``client.fetch``: the same config request and reading of its answer): HMAC-signed
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
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.client import jobstate
from appliance.client.channel import Connection, outbound_frames, verified_body
from appliance.client.serverwatch import ServerWatch
from appliance.client.whitelist import Resolved
from appliance.core import wire


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
    watch: ServerWatch = field(default_factory=ServerWatch)  # reset with each connection
    reconfigure_due: float | None = None
    heartbeat_due: float | None = None  # monotonic
    jobs: jobstate.JobState = field(default_factory=jobstate.JobState)
    running_job: str | None = None  # the fake process's job id
    available_reported: bool = False
    # a job result not known to have left: (reply, the connection it was queued on, or None
    # when it could not be queued); sent again like the agent's ``unsent``
    unsent: tuple[jobstate.Reply, Connection | None] | None = None

    def __post_init__(self) -> None:
        self.hostname = self.hostname or self.name
        if not self.curve_public:
            self.curve_public, self.curve_secret = zmq.curve_keypair()

    # Messages (the client's framing and checks) ----------------------------------------------
    def frames(self, conn: Connection, kind: str, job_id: str | None, **extra: Any) -> list[bytes]:
        return outbound_frames(
            conn,
            kind,
            job_id,
            node=self.name,
            client=self.hostname,
            org=self.org,
            incarnation=self.incarnation,
            **extra,
        )

    def heartbeat_frames(self, conn: Connection) -> list[bytes]:
        job_state, job_id = self.jobs.heartbeat_fields()
        # straight to the client's framing: one call, no extra keyword dict, per heartbeat
        return outbound_frames(
            conn,
            "heartbeat",
            job_id,
            node=self.name,
            client=self.hostname,
            org=self.org,
            incarnation=self.incarnation,
            job_state=job_state,
        )

    def check_command(self, conn: Connection, frames: list[bytes]) -> dict[str, Any] | None:
        """The body of a valid command, or None (counted by the caller, not logged: a fleet
        of thousands would flood the log)."""
        if len(frames) != 2:
            return None
        try:
            return verified_body(conn, frames)
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
