"""The shell half of ``reach``: resolve a ``tcp://HOST:PORT`` the server advertised and open
(then close) one TCP connection to it, each step bounded, so the agent can say why its command
channel is silent. ``reach`` turns the outcomes into log lines."""

from __future__ import annotations

import os

import trio

from appliance.client import reach


async def probe_address(address: str) -> reach.Outcome:
    """Resolve ``address`` and open (then close) one TCP connection to it, each step bounded,
    the way libzmq connects with our sockets' options: IPv4 only, the first address found."""
    endpoint = reach.parse_tcp_address(address)
    if endpoint is None:
        return reach.NotChecked()
    host, port = endpoint
    try:
        with trio.fail_after(reach.RESOLVE_SECONDS):
            infos = await trio.socket.getaddrinfo(
                host, port, family=trio.socket.AF_INET, type=trio.socket.SOCK_STREAM
            )
    except trio.TooSlowError:
        return reach.Unresolved(host, f"no answer within {reach.RESOLVE_SECONDS:.0f} s")
    except OSError as exc:  # socket.gaierror
        return reach.Unresolved(host, str(exc), await _ipv6_addresses(host, port))
    if not infos:
        return reach.Unresolved(host, "no IPv4 address", await _ipv6_addresses(host, port))
    family, kind, proto, _, sockaddr = infos[0]
    ip = str(sockaddr[0])
    sock = trio.socket.socket(family, kind, proto)
    try:
        with trio.fail_after(reach.CONNECT_SECONDS):
            await sock.connect(sockaddr)
    except trio.TooSlowError:
        return reach.Unconnected(
            host, ip, port, None, f"no answer within {reach.CONNECT_SECONDS:.0f} s"
        )
    except OSError as exc:  # trio words strerror as "Error connecting to …": keep the OS's
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return reach.Unconnected(host, ip, port, exc.errno, why)
    finally:
        sock.close()
    return reach.Connected(host, ip, port)


async def diagnose(command_addr: str, heartbeat_addr: str) -> list[tuple[int, str]]:
    """Probe both addresses of a config at once (at most one TCP connection each, a few
    seconds at most): the (log level, text) lines saying whether this node can reach them."""
    addresses = {"command": command_addr, "heartbeat": heartbeat_addr}
    outcomes: dict[str, reach.Outcome] = {}

    async def probe(role: str) -> None:
        outcomes[role] = await probe_address(addresses[role])

    async with trio.open_nursery() as nursery:
        for role in addresses:
            nursery.start_soon(probe, role)
    return reach.report(
        (addresses["command"], outcomes["command"]),
        (addresses["heartbeat"], outcomes["heartbeat"]),
    )


async def _ipv6_addresses(host: str, port: int) -> tuple[str, ...]:
    """The host's IPv6 addresses (bounded; none on any failure): the probe says so when the
    host has no IPv4 address but these."""
    try:
        with trio.fail_after(reach.RESOLVE_SECONDS):
            infos = await trio.socket.getaddrinfo(
                host, port, family=trio.socket.AF_INET6, type=trio.socket.SOCK_STREAM
            )
    except (OSError, trio.TooSlowError):
        return ()
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))
