"""Cutting off stream readers that stop reading (SSE feeds and the websocket).

hypercorn's socket writes are shielded from cancellation, so a client whose TCP window stays
closed would hold its handler, and the server's graceful shutdown, forever. A stream therefore
marks when each send starts; a send that has not finished within ``stall_limit`` has its TCP
connection shut down under it (``abort_connection``): the write fails and hypercorn ends the
connection. A reader that fell behind by a whole subscriber buffer (``Subscriber.dropped``) is
logged and given less time.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import trio

from appliance.server.feeds import SUBSCRIBER_BUFFER, Subscriber

log = logging.getLogger("pushy.stalls")
WATCH_SECONDS = 0.5  # how often dropped flags and stalled sends are looked at
SEND_STALL_SECONDS = 60.0  # a reader whose socket accepts nothing for this long is cut off
DROPPED_STALL_SECONDS = 10.0  # ... once dropped (time for what is in flight to get through)
SHUTDOWN_STALL_SECONDS = 1.0  # ... once the server is stopping (before hypercorn's deadline)


def stall_limit(*, stopping: bool, dropped: bool) -> float:
    """How long one send may take before its connection is cut."""
    if stopping:
        return SHUTDOWN_STALL_SECONDS
    return DROPPED_STALL_SECONDS if dropped else SEND_STALL_SECONDS


def peer(scope: dict[str, Any]) -> str:
    """``host:port`` of an ASGI scope's client, for log lines."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "(unknown)"


def abort_connection(scope: dict[str, Any]) -> bool:
    """Shut down the TCP connection of an ASGI scope (see ``abort_connections``)."""
    return abort_connections([scope]) == 1


def abort_connections(scopes: list[dict[str, Any]]) -> int:
    """Shut down the TCP connections of ASGI scopes, found by their addresses among our sockets
    (Linux /proc, one pass for all): the sends blocked on them fail, and hypercorn ends the
    connections. Returns how many were found."""
    wanted = set()
    for scope in scopes:
        client, server = scope.get("client"), scope.get("server")
        if client and server:
            wanted.add((tuple(client)[:2], tuple(server)[:2]))
    if not wanted:
        return 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    found = 0
    for name in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.type != socket.SOCK_STREAM:
                    continue
                pair = (sock.getpeername()[:2], sock.getsockname()[:2])
                if pair in wanted:
                    sock.shutdown(socket.SHUT_RDWR)
                    wanted.discard(pair)
                    found += 1
                    if not wanted:
                        break
        except (OSError, ValueError):
            continue
    return found


@dataclass(eq=False)
class Watched:
    """One open stream as the watcher sees it: ``sending_since`` is set while a send is in
    progress (the stream's generator is suspended at a ``yield``)."""

    scope: dict[str, Any]
    what: str  # e.g. "SSE job feed reader 127.0.0.1:5000 of org acme"
    sub: Subscriber
    sending_since: float | None = None
    noted_drop: bool = False


class StallWatch:
    """The open SSE streams of one server and the task that cuts off stalled ones; it runs in
    the app's nursery, which outlives hypercorn's graceful shutdown."""

    def __init__(self, shutdown: trio.Event) -> None:
        self.shutdown = shutdown
        self.streams: set[Watched] = set()

    def open(self, scope: dict[str, Any], what: str, sub: Subscriber) -> Watched:
        stream = Watched(scope, what, sub)
        self.streams.add(stream)
        return stream

    def close(self, stream: Watched) -> None:
        self.streams.discard(stream)

    def check(self, now: float) -> list[Watched]:
        """Log newly dropped readers; the streams whose send has stalled past its limit
        (no longer watched: the caller cuts them off)."""
        stopping = self.shutdown.is_set()
        stalled = []
        for stream in list(self.streams):
            if stream.sub.dropped and not stream.noted_drop:
                stream.noted_drop = True
                log.warning(
                    "%s fell more than %d events behind: dropped", stream.what, SUBSCRIBER_BUFFER
                )
            since = stream.sending_since
            limit = stall_limit(stopping=stopping, dropped=stream.sub.dropped)
            if since is not None and now - since > limit:
                log.warning(
                    "%s has read nothing for %.0f s: disconnected", stream.what, now - since
                )
                self.streams.discard(stream)
                stalled.append(stream)
        return stalled

    async def run(self) -> None:
        while True:
            await trio.sleep(WATCH_SECONDS)
            stalled = self.check(trio.current_time())
            if stalled:
                abort_connections([s.scope for s in stalled])
