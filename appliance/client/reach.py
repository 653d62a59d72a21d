"""Why the command channel is silent: can this node reach the address the server gave it?

The server names itself in every node's config (``tcp://SERVER_NAME:10002`` for commands,
``tcp://SERVER_NAME:10000`` for its heartbeats). When that name does not resolve on the node, or
resolves to an address where nothing answers, ZeroMQ retries quietly forever: the client only
sees silence, and the original's only line about it ("Possible encryption problem?") points the
operator the wrong way. So when a connection stays silent (the watchdog fires, or the server's
heartbeats stop before the command channel ever spoke), the agent probes each address once
(resolve, then one TCP connect, each bounded) and logs what this module makes of the outcome.

Rules of this file: it is pure (no sockets, no clocks); the agent does the probe and hands the
outcome in as one of the small classes below; ``report`` says which lines to log, at what level.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

RESOLVE_SECONDS = 2.0
CONNECT_SECONDS = 2.0

# role in the config → the server setting that gives the port
ROLES = {"command": "command_port", "heartbeat": "server_heartbeat_port"}


@dataclass(frozen=True)
class NotChecked:
    """The address is not ``tcp://HOST:PORT``: there is nothing this client can probe."""


@dataclass(frozen=True)
class Unresolved:
    """The host name did not resolve to an IPv4 address, the only kind libzmq connects to
    with our sockets' options; ``ipv6``: the IPv6 addresses it has instead, if any."""

    host: str
    error: str  # the resolver's words, e.g. "[Errno -2] Name or service not known"
    ipv6: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unconnected:
    """The host resolved, but a TCP connection to it failed; ``code`` (an errno) None: no
    answer in time."""

    host: str
    ip: str
    port: int
    code: int | None
    error: str  # e.g. "Connection refused", "no answer within 2 s"


@dataclass(frozen=True)
class Connected:
    """A TCP connection opened: the address is right, the silence is further in."""

    host: str
    ip: str
    port: int


Outcome = NotChecked | Unresolved | Unconnected | Connected


def parse_tcp_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a ZeroMQ ``tcp://`` connect address, as libzmq reads it; None otherwise.

    ``tcp://SOURCE;HOST:PORT`` names a source address first; ``[…]`` wraps an IPv6 literal."""
    if not address.startswith("tcp://"):
        return None
    rest = address[len("tcp://") :].rsplit(";", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isascii() or not port.isdigit():
        return None
    if not 0 < int(port) < 65536:
        return None
    return host, int(port)


def describe(role: str, address: str, outcome: Outcome, *, hint: bool = True) -> tuple[int, str]:
    """The line (logging level, text) an operator reads about one address and its probe:
    what was found, then (unless ``hint`` is False) what to check."""
    level, finding, advice = _finding(outcome)
    said = f"The server's config gave {role} address {address} ({ROLES.get(role, role)})"
    return level, f"{said}: {finding}; {advice}" if hint and advice else f"{said}: {finding}"


def _finding(outcome: Outcome) -> tuple[int, str, str]:
    """(level, what the probe found, what to check) for one outcome."""
    match outcome:
        case Unresolved(host=host, ipv6=ipv6) if ipv6:
            return (
                logging.ERROR,
                f"the host '{host}' has only IPv6 addresses here ({', '.join(ipv6)}), and the "
                "client connects over IPv4",
                "set the server's server_name to a name or address with IPv4",
            )
        case Unresolved(host=host, error=error):
            return (
                logging.ERROR,
                f"the host '{host}' does not resolve here ({error})",
                "check the server's server_name setting (the name it gives its nodes), or "
                "this node's DNS or /etc/hosts",
            )
        case Unconnected(host=host, ip=ip, port=port, code=code, error=error):
            resolved = f"the host '{host}' resolves to {ip}, but " if host != ip else ""
            if code == errno.ECONNREFUSED:
                advice = (
                    "nothing listens there: check that the server runs on that machine, that "
                    "its server_name names it and that its zeromq_listen_address includes "
                    "that address"
                )
            elif code is None:
                advice = (
                    f"check for a firewall dropping port {port}, and that the server's "
                    "server_name names an address of the server that this node can reach"
                )
            else:
                advice = "check this node's network route to the server and its server_name"
            return (
                logging.ERROR,
                f"{resolved}could not connect to {ip}:{port} ({error})",
                advice,
            )
        case Connected(ip=ip, port=port):
            return (
                logging.INFO,
                f"reachable from here (a TCP connection to {ip}:{port} opened), yet nothing "
                "came back on it",
                "",
            )
        case _:
            return logging.WARNING, "not a tcp://HOST:PORT address, not checked", ""


def report(
    command: tuple[str, Outcome], heartbeat: tuple[str, Outcome] | None = None
) -> list[tuple[int, str]]:
    """The lines to log after a silent period: always the command address (the one that was
    silent); the heartbeat address only when it fails, not twice for one unknown host, and
    without the advice when the line above already gave the same."""
    lines = [describe("command", *command)]
    if heartbeat is not None:
        outcome = heartbeat[1]
        same_unknown_host = (
            isinstance(outcome, Unresolved)
            and isinstance(command[1], Unresolved)
            and outcome.host == command[1].host
        )
        if not isinstance(outcome, Connected) and not same_unknown_host:
            advised = _finding(outcome)[2] != _finding(command[1])[2]
            lines.append(describe("heartbeat", *heartbeat, hint=advised))
    return lines
