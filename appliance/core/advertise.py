"""Is the address the server advertises to nodes one that works? A verdict, as a value.

Every node connects its ZeroMQ sockets to ``tcp://SERVER_NAME:command_port`` and
``tcp://SERVER_NAME:server_heartbeat_port``, the names the server hands out in its config. When
that name is wrong nothing fails on the server: the nodes loop on "Possible encryption
problem?" and every job ends ``quorum_failed``. So the server checks the name at start and on
every reload, and says what is wrong in one line, with the fix.

Rules (everything that decides the verdict lives in this file; it resolves nothing, binds
nothing, reads no clock: the shell, ``appliance.server.advertise``, looks the name up and tells
which of its addresses are local, then calls `assess`):

1. ``unresolved`` — the resolver gave an error (or a timeout, or no address): nodes probably
   cannot resolve it either.
2. ``loopback_only`` — every address is a loopback (127.0.0.0/8, ::1) or unspecified one
   (0.0.0.0, ::), and server_name was not explicitly set to a loopback name or literal
   (``localhost``, ``127.0.0.1``, ``::1``, ...). This is the Debian ``/etc/hosts`` trap:
   ``127.0.1.1 host.example.com``; a node on another host connecting there connects to
   itself. An explicit ``localhost`` is the operator's choice (a one-machine setup, tests).
3. ``not_local`` — it resolves, but to no address of this host: nodes would connect to
   another machine.
4. ``not_listening`` — some addresses are local, but ``zeromq_listen_address`` binds a
   different specific address, or IPv4 only (ZeroMQ sockets take IPv6 only with
   ``ZMQ_IPV6``, which the server does not set) while every local address is IPv6. An
   interface or host name in ``zeromq_listen_address`` is not judged (ZeroMQ resolves it).
5. ``ok`` — otherwise.

Each non-ok verdict carries ``problem``: one line naming server_name, its addresses and the
fix, fit for a log line and ``/pushy/_status``; and ``short``, a few words for the
``systemctl status`` line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["CONFIG_EXAMPLE", "STATUSES", "Verdict", "assess"]

STATUSES = ("ok", "unresolved", "not_local", "loopback_only", "not_listening")
CONFIG_EXAMPLE = "/etc/pushy/pushy-server.toml"
FIX = (
    f"set server_name in the server's config (e.g. {CONFIG_EXAMPLE}) to a name or address of "
    "this host that the nodes can reach, then run 'systemctl reload pushy-server'"
)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_LISTEN = re.compile(r"tcp://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^/]+))/?")


@dataclass(frozen=True)
class Verdict:
    """The last check of server_name: what it is, what it resolves to, what is wrong."""

    status: str  # one of STATUSES
    server_name: str
    addresses: tuple[str, ...]  # as resolved, in the resolver's order; () when unresolved
    problem: str | None = None  # one line with the fix; None when ok
    short: str | None = None  # a few words for the STATUS= line; None when ok

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def assess(
    server_name: str,
    *,
    explicit: bool,
    resolved: Iterable[str] | str,
    local: Collection[str],
    listen_address: str,
    ipv6: bool = False,
) -> Verdict:
    """The verdict on advertising ``server_name`` (see the rules above).

    ``explicit``: server_name was set in the config (else it is the machine's FQDN);
    ``resolved``: the addresses it resolves to, or the resolver's error text; ``local``: those
    of them that are addresses of this host; ``listen_address``: ``zeromq_listen_address``;
    ``ipv6``: whether the ZeroMQ sockets accept IPv6."""
    who = f"server_name '{server_name}'" + ("" if explicit else " (not set: this machine's FQDN)")
    if isinstance(resolved, str) or not (addresses := tuple(dict.fromkeys(resolved))):
        reason = resolved if isinstance(resolved, str) and resolved else "no address"
        return Verdict(
            "unresolved",
            server_name,
            (),
            f"{who} does not resolve on this host ({reason}), so nodes cannot connect to it "
            f"either; {FIX}",
            f"server_name '{server_name}' does not resolve",
        )
    shown = ", ".join(addresses)
    ips = {a: _ip(a) for a in addresses}
    if all(ip is not None and _this_host_only(ip) for ip in ips.values()) and not (
        explicit and _loopback_name(server_name)
    ):
        loopback = all(ip is not None and _plain(ip).is_loopback for ip in ips.values())
        kind = "loopback" if loopback else "loopback or unspecified"
        return Verdict(
            "loopback_only",
            server_name,
            addresses,
            f"{who} resolves only to {kind} addresses ({shown}): nodes on other hosts would "
            f"connect to themselves; {FIX}",
            f"server_name '{server_name}' resolves to loopback only",
        )
    mine = [a for a in addresses if a in local]
    if not mine:
        return Verdict(
            "not_local",
            server_name,
            addresses,
            f"{who} resolves to {shown}, none of them an address of this host: nodes would "
            f"connect to another machine; {FIX}",
            f"server_name '{server_name}' is not an address of this host",
        )
    if not any(_listens_on(listen_address, ips[a], ipv6) for a in mine):
        where = listen_address + ("" if ipv6 else " (IPv4 only)")
        return Verdict(
            "not_listening",
            server_name,
            addresses,
            f"{who} resolves to {shown}, but the ZeroMQ sockets listen on {where} "
            f"(zeromq_listen_address): nodes cannot connect; {FIX}, or change "
            "zeromq_listen_address (needs a restart)",
            f"ZeroMQ does not listen on server_name '{server_name}'",
        )
    return Verdict("ok", server_name, addresses)


def _ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _plain(ip: IP) -> IP:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _this_host_only(ip: IP) -> bool:
    ip = _plain(ip)
    return ip.is_loopback or ip.is_unspecified


def _loopback_name(name: str) -> bool:
    """``localhost`` and friends, or a loopback literal (``127.0.0.1``, ``::1``, ``[::1]``)."""
    name = name.lower().rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):  # RFC 6761
        return True
    ip = _ip(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
    return ip is not None and _plain(ip).is_loopback


def _listens_on(listen_address: str, ip: IP | None, ipv6: bool) -> bool:
    """Whether ZeroMQ sockets bound to ``listen_address`` accept connections to ``ip``;
    True when it cannot be told (an interface or host name, an odd form)."""
    match = _LISTEN.fullmatch(listen_address)
    if match is None or ip is None:
        return True
    ip = _plain(ip)
    if not ipv6 and ip.version == 6:
        return False  # an IPv4-only socket never accepts an IPv6 connection
    host = match["v6"] or match["host"]
    if host == "*":
        return True
    bound = _ip(host)
    if bound is None:
        return True  # an interface or host name: ZeroMQ resolves it, we do not guess
    bound = _plain(bound)
    if bound.is_unspecified:
        # 0.0.0.0 takes IPv4; :: takes IPv6, and IPv4 too (dual-stack) when IPv6 is on
        return bound.version == ip.version or (bound.version == 6 and ipv6)
    return bound == ip
