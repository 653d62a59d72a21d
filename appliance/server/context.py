"""What the HTTP routes share with the rest of the server: one object, built by ``main``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from appliance.core.keys import load_public_pem
from appliance.core.settings import Settings
from appliance.core.state import State
from appliance.server.advertise import Advertiser
from appliance.server.jobs import JobManager
from appliance.server.reactor import Reactor
from appliance.server.store import Store


@dataclass
class ServerContext:
    settings: Settings
    state: State
    store: Store
    reactor: Reactor
    jobs: JobManager
    server_key: RSAPrivateKey
    advertiser: Advertiser  # the running server_name (a reload may change it)
    shutdown: trio.Event = field(default_factory=trio.Event)
    ports: dict[str, int] = field(default_factory=dict)


@lru_cache(maxsize=4096)
def public_key(pem: str) -> RSAPublicKey:
    """Parsed public keys, cached: verifying a request should not re-parse PEM every time."""
    return load_public_pem(pem)
