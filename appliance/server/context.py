"""What the HTTP routes share with the rest of the server: one object, built by ``main``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from appliance.core.chefauth import DEFAULT_SKEW
from appliance.core.keys import load_public_pem, public_pem
from appliance.core.nodes import NodeKey
from appliance.core.servedfetches import ServedFetches
from appliance.core.settings import Settings
from appliance.core.state import State
from appliance.core.websessions import SessionBook
from appliance.server.advertise import Advertiser
from appliance.server.clock import Clock
from appliance.server.dispatcher import Dispatcher
from appliance.server.edges import EdgeHub
from appliance.server.feeds import Hub
from appliance.server.livejobs import LiveJobs
from appliance.server.reactor import Reactor
from appliance.server.store import Store
from appliance.server.timers import Timers
from appliance.server.tls import ServerTls

if TYPE_CHECKING:  # psycopg is imported only with a PostgreSQL store
    from appliance.server.lease import LeaseKeeper


@dataclass
class ServerContext:
    """Who owns what: ``reactor`` the sockets, ``timers`` the timers, ``dispatcher`` every
    decision's effects (and the node table), ``store`` the log, ``hub`` the event fan-out,
    ``clock`` the time everything reads."""

    settings: Settings
    state: State
    store: Store
    reactor: Reactor | EdgeHub  # the node sockets, or the edges that hold them
    dispatcher: Dispatcher
    timers: Timers
    server_key: RSAPrivateKey
    advertiser: Advertiser  # the running server_name (a reload may change it)
    clock: Clock
    hub: Hub
    shutdown: trio.Event = field(default_factory=trio.Event)
    lease: LeaseKeeper | None = None  # a PostgreSQL store's active: its lease
    ports: dict[str, int] = field(default_factory=dict)
    # nodes' own config fetches by signature, so a replay does not rotate the session key
    served_fetches: ServedFetches = field(default_factory=lambda: ServedFetches(DEFAULT_SKEW))
    fetches_in_flight: dict[bytes, trio.Event] = field(default_factory=dict)
    tls: ServerTls | None = None  # HTTPS on the API port (a reload loads its certificate again)
    # the web dashboard's log-in links and sessions (in memory: a restart ends them)
    sessions: SessionBook = field(default_factory=SessionBook)

    @property
    def live(self) -> LiveJobs:
        return self.dispatcher.live

    def node_endpoints(self, key: NodeKey) -> tuple[str, str]:
        """(heartbeat address, command address) a node is told to connect to: this server's
        (``server_name``), or those of the remote edge that serves the node."""
        if isinstance(self.reactor, EdgeHub) and (remote := self.reactor.remote_for(key)):
            host = remote["host"]
            host = f"[{host}]" if ":" in host else host
            return (
                f"tcp://{host}:{remote['server_heartbeat_port']}",
                f"tcp://{host}:{remote['command_port']}",
            )
        return (
            self.advertiser.endpoint(self.ports["server_heartbeat_port"]),
            self.advertiser.endpoint(self.ports["command_port"]),
        )


@lru_cache(maxsize=4096)
def public_key(pem: str) -> RSAPublicKey:
    """Parsed public keys, cached: verifying a request should not re-parse PEM every time."""
    return load_public_pem(pem)


@lru_cache(maxsize=4)
def server_public_pem(key: RSAPrivateKey) -> str:
    """The config body's ``public_key`` (PEM and a newline), serialised once per key rather
    than on every config fetch."""
    return public_pem(key) + "\n"
