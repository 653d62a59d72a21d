"""Listening sockets several processes share (SO_REUSEPORT), for the edges' node ports.

Every edge on a host binds its own listener on ``command_port`` and ``server_heartbeat_port``
and hands it to libzmq (``ZMQ_USE_FD``); the kernel spreads new connections over the listeners,
so nodes and firewalls see the same two ports as with one process. The coordinator holds a
bound, never listening, socket on each port: it reserves the port (a port 0 becomes a real one)
while edges come and go, and takes no connections itself.
"""

from __future__ import annotations

import socket

BACKLOG = 4096


def _socket(host: str, port: int, *, share: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """A bound socket that never listens: holds ``port`` (0: a free one) for the edges."""
    return _socket(host, port)


def listener(host: str, port: int, *, share: bool = True) -> socket.socket:
    """A listening socket on ``host:port`` that shares the port with the other edges' (or,
    ``share=False``, one of its own).

    Handing libzmq a socket we bound also keeps it from resolving the address itself: for a
    bind to a literal address it first tries it as an interface name, through getifaddrs,
    which needs a netlink socket; the packaged unit's RestrictAddressFamilies denies that, and
    libzmq aborts ("Address family not supported by protocol", ip_resolver.cpp)."""
    sock = _socket(host, port, share=share)
    sock.listen(BACKLOG)
    return sock
