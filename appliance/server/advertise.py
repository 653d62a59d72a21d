"""The name the server advertises to nodes: the one running value, and the check behind it.

`Advertiser` is the one place the running server_name is read from (the config route, the
job commits, ``/pushy/_status``); `Advertiser.check` sets it at start and on every reload
(SIGHUP). The check is the I/O around the pure verdict (``appliance.core.advertise``):
getaddrinfo on the name, then a UDP socket bound to (address, 0) for each address tells
whether it is an address of this host (binding works inside a hardened systemd unit, where
reading the interfaces may not; the socket is closed at once and sends nothing). Both may
block on a slow resolver, so they run in a thread, bounded in time: a timeout is a verdict
of its own (``unresolved``), never a stuck start or reload.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from functools import partial
from typing import Any

import trio

from appliance.core import advertise as coreadvertise
from appliance.core.settings import Settings

__all__ = ["RESOLVE_TIMEOUT_SECONDS", "Advertiser", "look_up"]

log = logging.getLogger("pushy.server")
RESOLVE_TIMEOUT_SECONDS = 5.0

# (server name, its addresses or the resolver's error, the addresses that are local)
Lookup = tuple[str, list[str] | str, frozenset[str]]


def look_up(configured: str | None) -> Lookup:
    """Blocking: the name to advertise (``configured``, else the FQDN), what it resolves to,
    and which of those addresses belong to this host."""
    name = configured or socket.getfqdn()
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # ValueError: UnicodeError (IDNA), a NUL
        return name, str(getattr(exc, "strerror", None) or exc), frozenset()
    addresses: list[str] = []
    local: set[str] = set()
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if address in addresses:
            continue
        addresses.append(address)
        if _bindable(family, sockaddr):
            local.add(address)
    return name, addresses, frozenset(local)


def _bindable(family: int, sockaddr: tuple[Any, ...]) -> bool:
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((sockaddr[0], 0, *sockaddr[2:]))  # IPv6: keep flowinfo and scope id
    except OSError:
        return False
    return True


class Advertiser:
    """The running advertised name and the verdict of its last check."""

    def __init__(self, server_name: str, *, timeout: float = RESOLVE_TIMEOUT_SECONDS) -> None:
        self.server_name = server_name  # a placeholder until the first check
        self.timeout = timeout
        self.verdict: coreadvertise.Verdict | None = None

    def endpoint(self, port: int) -> str:
        """The ZeroMQ address nodes are told to connect to for ``port``."""
        return f"tcp://{self.server_name}:{port}"

    async def check(self, settings: Settings, ports: Mapping[str, int]) -> coreadvertise.Verdict:
        """Look the name up (bounded), make it the running one, log the verdict."""
        configured = settings.server_name
        with trio.move_on_after(self.timeout):
            found = await trio.to_thread.run_sync(
                partial(look_up, configured), abandon_on_cancel=True
            )
            return self._take(found, settings, ports)
        # the resolver did not answer: the name stays what was configured (or the host name)
        name = configured or socket.gethostname()
        reason = f"no answer from the resolver within {self.timeout:g} s"
        return self._take((name, reason, frozenset()), settings, ports)

    def _take(
        self, found: Lookup, settings: Settings, ports: Mapping[str, int]
    ) -> coreadvertise.Verdict:
        name, resolved, local = found
        verdict = coreadvertise.assess(
            name,
            explicit=settings.server_name is not None,
            resolved=resolved,
            local=local,
            listen_address=settings.zeromq_listen_address,
        )
        self.server_name, self.verdict = name, verdict
        if verdict.ok:
            log.info(
                "nodes are told to connect to %s and %s (server_name '%s' resolves to %s here)",
                self.endpoint(ports.get("command_port", settings.command_port)),
                self.endpoint(ports.get("server_heartbeat_port", settings.server_heartbeat_port)),
                name,
                ", ".join(verdict.addresses),
            )
        else:
            log.warning("%s", verdict.problem)
        return verdict

    def status_suffix(self) -> str:
        """What the ``systemctl status`` line adds while the name is wrong."""
        if self.verdict is None or self.verdict.ok:
            return ""
        return f"; WARNING: {self.verdict.short} (see /pushy/_status)"

    def report(self, ports: Mapping[str, int]) -> dict[str, Any]:
        """The ``advertised`` field of ``/pushy/_status``."""
        verdict = self.verdict
        assert verdict is not None, "the first check comes before the API serves"
        return {
            "server_name": self.server_name,
            "addresses": list(verdict.addresses),
            "status": verdict.status,
            "problem": verdict.problem,
            "command_addr": self.endpoint(ports.get("command_port", 0)),
            "heartbeat_addr": self.endpoint(ports.get("server_heartbeat_port", 0)),
        }
