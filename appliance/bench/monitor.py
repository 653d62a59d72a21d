"""The server's view of node availability, live, from its websocket status stream.

Counts every transition of a node that had become available to unavailable or offline (in a
steady fleet each one is a *false offline*), and when each node first became available. On a
reconnect the ``hello`` snapshot resynchronises: what changed unseen is counted as well.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from dataclasses import dataclass, field

import orjson
import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from appliance.signedhttp import signed_headers

CONNECT_SECONDS = 10.0
SILENCE_SECONDS = 120.0
MAX_BACKOFF = 2.0


@dataclass
class NodeMonitor:
    base_url: str
    org: str
    user: str
    key: RSAPrivateKey
    state: dict[str, str] = field(default_factory=dict)  # name -> available | unavailable
    first_available: dict[str, float] = field(default_factory=dict)
    downs: list[tuple[float, str, str]] = field(default_factory=list)  # (t, node, what)
    connections: int = 0
    messages: int = 0
    counting: bool = True  # False while a transition is expected (a server restart)
    connected: trio.Event = field(default_factory=trio.Event)

    def available(self) -> int:
        return sum(1 for v in self.state.values() if v == "available")

    def false_offline(self, since: float = 0.0) -> list[tuple[float, str, str]]:
        return [d for d in self.downs if d[0] >= since]

    async def run(self) -> None:
        """Follow the stream until cancelled, reconnecting (bounded backoff) when it ends."""
        parts = urllib.parse.urlsplit(self.base_url)
        path = f"{parts.path.rstrip('/')}/organizations/{self.org}/pushy/ws"
        url = f"ws://{parts.netloc}{path}"
        backoff = 0.2
        failing = False
        while True:
            try:
                await self._session(url, path)
                backoff, failing = 0.2, False
            except (OSError, ConnectionClosed, HandshakeError, trio.TooSlowError) as exc:
                if not failing:
                    print(f"bench: websocket: {exc!r}; reconnecting", file=sys.stderr)
                failing = True
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _session(self, url: str, path: str) -> None:
        headers = signed_headers(self.key, self.user, "GET", path, b"")
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        async with open_websocket_url(
            url,
            extra_headers=extra,
            connect_timeout=CONNECT_SECONDS,
            disconnect_timeout=CONNECT_SECONDS,
            max_message_size=64 * 1024 * 1024,
        ) as ws:
            await ws.send_message(orjson.dumps({"subscribe": {"jobs": [], "nodes": True}}).decode())
            self.connections += 1
            while True:
                with trio.fail_after(SILENCE_SECONDS):
                    text = await ws.get_message()
                self.messages += 1
                message = orjson.loads(text)
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "hello":
                    self._hello(message.get("nodes") or {})
                    self.connected.set()
                elif kind == "node":
                    name = message.get("node")
                    if isinstance(name, str):
                        self._set(name, str(message.get("availability")), message.get("status"))

    def _hello(self, nodes: dict[str, str]) -> None:
        now = time.time()
        for name in list(self.state):
            if name not in nodes:
                self._set(name, "unavailable", "offline", now)
        for name, availability in nodes.items():
            self._set(name, availability, "online", now)

    def _set(self, name: str, availability: str, status: object, now: float | None = None) -> None:
        now = time.time() if now is None else now
        before = self.state.get(name)
        if availability == "available":
            self.first_available.setdefault(name, now)
        elif before == "available" and self.counting:
            self.downs.append((now, name, f"{availability}/{status}"))
        if status == "offline":
            self.state.pop(name, None)
        else:
            self.state[name] = availability
