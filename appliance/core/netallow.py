"""Address allow-lists (``metrics_allow``): CIDR networks, and whether a peer is in one.

Pure: the settings check the list once, the route asks per request with the peer's address
as the ASGI scope gives it (an IPv4 peer of a dual-stack socket arrives as ``::ffff:a.b.c.d``
and is matched as the IPv4 address it is).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["Network", "allowed", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``texts`` (``"10.0.0.0/8"``, ``"::1/128"``; a bare address is its own
    /32 or /128). ValueError names the first bad one, e.g. host bits set (``10.0.0.1/8``)."""
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a CIDR network ({exc})") from None
    return tuple(out)


def allowed(peer: str | None, networks: Iterable[Network]) -> bool:
    """Whether the address ``peer`` is in one of ``networks`` (no address: never)."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])  # a zone id (fe80::1%eth0) aside
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
