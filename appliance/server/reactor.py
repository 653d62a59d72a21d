"""The ZeroMQ side of the server: ZAP handler, ROUTER command channel, PUB heartbeat.

Sockets only: a node message that passes the wire checks (``core.wire``) is handed to the
``deliver`` callable given to ``run`` (the dispatcher), which decides; the dispatcher sends
through ``send_to_node``. One task per socket receives; sends are NOBLOCK from any task.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import trio
import zmq
import zmq.utils.z85

from appliance.core import nodes as corenodes
from appliance.core import wire
from appliance.core.nodekeys import NodeKeys
from appliance.core.settings import Settings
from appliance.server.clock import Clock
from appliance.server.outbound import NodeSigner, ServerBeat
from appliance.zmqio import TrioSocket, serve_zap, zap_socket, zap_verdict

# (node key, ROUTER address, validated body, now): the dispatcher's ``node_message``
Deliver = Callable[[corenodes.NodeKey, bytes, dict[str, Any], float], None]

log = logging.getLogger("pushy.reactor")
DROP_LOG_WINDOW_SECONDS = 60.0
DROP_LOG_LINES_PER_WINDOW = 20
MAX_SUBSCRIPTION_BYTES = 256  # inbound on the heartbeat port: only subscriptions, a few bytes
HEARTBEAT_HEADER = wire.format_header(wire.RSA, "")  # every heartbeat's first frame starts so


def zmq_endpoint(listen: str, port: int) -> str:
    return f"{listen.rstrip('/')}:{port}"


class KeyView(Protocol):
    """Where the sockets find each node's keys: the server's State, or an edge's copy."""

    node_keys: dict[corenodes.NodeKey, NodeKeys]
    curve_index: dict[str, corenodes.NodeKey]


class Reactor:
    """The node sockets. In the server (single-process mode) it signs and sends through
    ``signer`` and publishes its own ``beat``; in an edge both are None: the coordinator sends
    signed frames (`send_frames`) and beats (`publish`)."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyView,
        clock: Clock,
        *,
        curve_secret: str | None,
        signer: NodeSigner | None = None,
        beat: ServerBeat | None = None,
        listen_fds: dict[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.curve_secret = curve_secret
        self.clock = clock
        self.signer = signer
        self.beat = beat
        self.listen_fds = listen_fds or {}  # port name -> a listening socket (edges: USE_FD)
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.max_sockets = 51200
        self.router: TrioSocket | None = None
        self.pub: TrioSocket | None = None
        self.dropped: Counter[str] = Counter()
        self.received: Counter[str] = Counter()  # validated node messages by type (bench)
        self._drop_log: dict[str, tuple[float, int, int]] = {}  # reason -> (since, logged, hidden)
        self.bound: dict[str, int] = {}

    # Lifecycle -------------------------------------------------------------------------------
    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind and serve the sockets, handing every valid node message to ``deliver``."""
        s = self.settings
        curve = not s.disable_curve_encryption and self.curve_secret is not None
        async with trio.open_nursery() as nursery:
            try:
                if curve:
                    nursery.start_soon(serve_zap, zap_socket(self.ctx), self.zap_reply)
                router = self.ctx.socket(zmq.ROUTER)
                router.linger = 0
                router.setsockopt(zmq.ROUTER_MANDATORY, 1)
                router.setsockopt(zmq.MAXMSGSIZE, s.max_body_size + 2 * wire.MAX_HEADER_BYTES)
                router.setsockopt(zmq.RCVHWM, 100_000)
                router.setsockopt(zmq.SNDHWM, 100_000)
                if curve:
                    router.curve_server = True
                    router.curve_secretkey = self.curve_secret.encode("ascii")
                self.bound["command_port"] = self._bind(router, "command_port")
                self.router = TrioSocket(router)
                # XPUB in manual mode, not PUB: anyone may connect here (no CURVE), and libzmq
                # keeps every distinct subscription in a trie of ~47 bytes per topic byte, so
                # random subscriptions grew the server without bound (a 50 MB one cost 2.3 GB).
                pub = self.ctx.socket(zmq.XPUB)
                pub.linger = 0
                pub.setsockopt(zmq.XPUB_MANUAL, 1)
                pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
                self.bound["server_heartbeat_port"] = self._bind(pub, "server_heartbeat_port")
                self.pub = TrioSocket(pub)
                nursery.start_soon(self._subscription_loop)
                nursery.start_soon(self._router_loop, deliver)
                if self.beat is not None:
                    nursery.start_soon(
                        self.beat.run, lambda: self.settings, self.clock, self.publish
                    )
                task_status.started(dict(self.bound))
                await trio.sleep_forever()
            finally:
                for sock in (self.router, self.pub):
                    if sock is not None:
                        sock.close()
                nursery.cancel_scope.cancel()

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    # ZAP -------------------------------------------------------------------------------------
    def zap_reply(self, frames: list[bytes]) -> list[bytes]:
        """RFC 27: allow a CURVE client whose key a node sent as ``ccpk`` in an authenticated fetch."""
        reply = zap_verdict(frames, self.keys.curve_index.__contains__, b"No such client")
        if reply[2] != b"200":
            self.dropped["zap_denied"] += 1
        return reply

    # Heartbeat channel -----------------------------------------------------------------------
    async def _subscription_loop(self) -> None:
        """Honour only subscriptions that match the heartbeat (nodes subscribe to ""): a
        bounded set of topics, whatever peers send. Unsubscribing is left to the disconnect."""
        assert self.pub is not None
        while True:
            frames = await self.pub.recv_multipart()
            message = frames[0] if len(frames) == 1 else b""
            if message[:1] == b"\x01" and HEARTBEAT_HEADER.startswith(message[1:]):
                self.pub.sock.setsockopt(zmq.SUBSCRIBE, message[1:])  # for the sending peer

    # Command channel -------------------------------------------------------------------------
    async def _router_loop(self, deliver: Deliver) -> None:
        assert self.router is not None
        while True:
            frames = await self.router.recv_multipart()
            try:
                self.handle_frames(frames, self.clock.now(), deliver)
            except Exception:  # a bug must not take the command channel down
                self.dropped["internal_error"] += 1
                log.exception("error while handling a node message")

    def handle_frames(self, frames: list[bytes], now: float, deliver: Deliver) -> None:
        if len(frames) != 3:
            self._drop("bad_frames", f"{len(frames)} frames", now)
            return
        address, header, body_raw = frames
        claimed: list[corenodes.NodeKey] = []

        def keys_for(body: dict[str, Any]) -> list[bytes]:
            org, node = body.get("org"), body.get("node")
            if not isinstance(org, str) or not isinstance(node, str):
                return []
            key = (org, node)
            claimed.append(key)
            found = self.keys.node_keys.get(key)
            return found.accepted_keys(now) if found else []

        try:
            body = wire.check_server_inbound(
                header,
                body_raw,
                max_body=self.settings.max_body_size,
                keys_for=keys_for,
                now=now,
                max_skew=self.settings.max_time_skew,
            )
        except wire.MessageError as exc:
            self._drop(exc.reason, str(exc), now)
            return
        key = claimed[-1]
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in corenodes.MESSAGE_TYPES:  # a list: unhashable
            self._drop("bad_type", repr(kind)[:40], now)
            return
        self.received[body["type"]] += 1
        deliver(key, address, body, now)

    def _drop(self, reason: str, detail: str, now: float) -> None:
        """Count every dropped message; log the first few per reason per window (a flood of
        garbage must not turn into a flood of log lines)."""
        self.dropped[reason] += 1
        window_start, logged, suppressed = self._drop_log.get(reason, (now, 0, 0))
        if now - window_start >= DROP_LOG_WINDOW_SECONDS:
            if suppressed:
                log.warning(
                    "dropped %d more node messages (%s) in the last %.0f s without logging them",
                    suppressed,
                    reason,
                    now - window_start,
                )
            window_start, logged, suppressed = now, 0, 0
        if logged < DROP_LOG_LINES_PER_WINDOW:
            log.info("dropped a node message (%s): %s", reason, detail)
            logged += 1
        else:
            suppressed += 1
        self._drop_log[reason] = (window_start, logged, suppressed)

    def send_to_node(self, key: corenodes.NodeKey, body: dict[str, Any], now: float) -> bool:
        assert self.signer is not None
        signed = self.signer.frames_for(key, body, now)
        return signed is not None and self.send_frames(*signed)

    def send_frames(self, address: bytes, frames: list[bytes]) -> bool:
        """Frames already signed for the node at ``address`` (a ROUTER address here)."""
        assert self.router is not None
        if not self.router.send_nowait([address, *frames]):
            self.dropped["unroutable"] += 1
            return False
        return True

    def behind(self) -> bool:
        """Whether node messages wait to be read (the liveness scan waits for them)."""
        return self.router is not None and self.router.pending()

    def forget(self, key: corenodes.NodeKey) -> None:
        if self.signer is not None:
            self.signer.forget(key)

    def keys_changed(self, key: corenodes.NodeKey) -> None:
        """The sockets read the server's own State: nothing to copy."""

    async def keys_ready(self, key: corenodes.NodeKey) -> None:
        """Nothing to wait for (see ``EdgeHub.keys_ready``)."""

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings

    def counters(self) -> tuple[Counter[str], Counter[str]]:
        """Node messages received (by type) and dropped (by reason)."""
        return self.received, self.dropped

    def publish(self, frames: list[bytes]) -> None:
        """A signed server heartbeat, to every subscribed node."""
        if self.pub is not None:
            self.pub.send_nowait(frames)

    def _bind(self, sock: zmq.Socket, name: str) -> int:
        """Bind the port ``name`` (port 0 picks a free one, for tests); returns the bound port.
        An edge binds a listening socket it was handed (``ZMQ_USE_FD``): several edges share
        one port through SO_REUSEPORT."""
        listen = self.settings.zeromq_listen_address.rstrip("/")
        port = getattr(self.settings, name)
        fd = self.listen_fds.get(name)
        if fd is not None:
            sock.setsockopt(zmq.USE_FD, fd)
            sock.bind(zmq_endpoint(listen, port))
            return port
        if port == 0:
            return sock.bind_to_random_port(listen)
        sock.bind(zmq_endpoint(listen, port))
        return port
