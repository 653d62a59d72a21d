"""The ZeroMQ side of the server: ZAP handler, ROUTER command channel, PUB heartbeat.

Sockets only: a node message that passes the wire checks (``core.wire``) is handed to the
``deliver`` callable given to ``run`` (the dispatcher), which decides; the dispatcher sends
through ``send_to_node``. One task per socket receives; sends are NOBLOCK from any task.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio
import zmq
import zmq.utils.z85
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.core import nodes as corenodes
from appliance.core import wire
from appliance.core.settings import Settings
from appliance.core.state import State
from appliance.server.clock import Clock
from appliance.zmqio import TrioSocket

# (node key, ROUTER address, validated body, now): the dispatcher's ``node_message``
Deliver = Callable[[corenodes.NodeKey, bytes, dict[str, Any], float], None]

log = logging.getLogger("pushy.reactor")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DROP_LOG_WINDOW_SECONDS = 60.0
DROP_LOG_LINES_PER_WINDOW = 20
MAX_SUBSCRIPTION_BYTES = 256  # inbound on the heartbeat port: only subscriptions, a few bytes
HEARTBEAT_HEADER = wire.format_header(wire.RSA, "")  # every heartbeat's first frame starts so


def zmq_endpoint(listen: str, port: int) -> str:
    return f"{listen.rstrip('/')}:{port}"


class Reactor:
    def __init__(
        self,
        settings: Settings,
        state: State,
        server_key: RSAPrivateKey,
        hostname: str,
        clock: Clock,
        table: corenodes.NodeTable,
    ) -> None:
        self.settings = settings
        self.state = state
        self.server_key = server_key
        self.hostname = hostname
        self.clock = clock
        self.table = table  # read only: where each node's ROUTER address is
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.max_sockets = 51200
        self.router: TrioSocket | None = None
        self.pub: TrioSocket | None = None
        self.dropped: Counter[str] = Counter()
        self.received: Counter[str] = Counter()  # validated node messages by type (bench)
        self._drop_log: dict[str, tuple[float, int, int]] = {}  # reason -> (since, logged, hidden)
        self.sequences: dict[corenodes.NodeKey, int] = {}
        self.heartbeat_sequence = 0
        self.bound: dict[str, int] = {}

    # Lifecycle -------------------------------------------------------------------------------
    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind and serve the sockets, handing every valid node message to ``deliver``."""
        s = self.settings
        curve = not s.disable_curve_encryption and self.state.server is not None
        async with trio.open_nursery() as nursery:
            try:
                if curve:
                    zap = TrioSocket(self.ctx.socket(zmq.REP))
                    zap.sock.linger = 0
                    zap.sock.bind(ZAP_ENDPOINT)
                    nursery.start_soon(self._zap_loop, zap)
                router = self.ctx.socket(zmq.ROUTER)
                router.linger = 0
                router.setsockopt(zmq.ROUTER_MANDATORY, 1)
                router.setsockopt(zmq.MAXMSGSIZE, s.max_body_size + 2 * wire.MAX_HEADER_BYTES)
                router.setsockopt(zmq.RCVHWM, 100_000)
                router.setsockopt(zmq.SNDHWM, 100_000)
                if curve:
                    router.curve_server = True
                    router.curve_secretkey = self.state.server.curve_secret.encode("ascii")
                self.bound["command_port"] = _bind(router, s.zeromq_listen_address, s.command_port)
                self.router = TrioSocket(router)
                # XPUB in manual mode, not PUB: anyone may connect here (no CURVE), and libzmq
                # keeps every distinct subscription in a trie of ~47 bytes per topic byte, so
                # random subscriptions grew the server without bound (a 50 MB one cost 2.3 GB).
                pub = self.ctx.socket(zmq.XPUB)
                pub.linger = 0
                pub.setsockopt(zmq.XPUB_MANUAL, 1)
                pub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
                self.bound["server_heartbeat_port"] = _bind(
                    pub, s.zeromq_listen_address, s.server_heartbeat_port
                )
                self.pub = TrioSocket(pub)
                nursery.start_soon(self._subscription_loop)
                nursery.start_soon(self._router_loop, deliver)
                nursery.start_soon(self._heartbeat_loop)
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
    async def _zap_loop(self, zap: TrioSocket) -> None:
        try:
            while True:
                frames = await zap.recv_multipart()
                zap.send_nowait(self.zap_reply(frames))
        finally:
            zap.close()

    def zap_reply(self, frames: list[bytes]) -> list[bytes]:
        """RFC 27: allow a CURVE client whose key a node sent as ``ccpk`` in an authenticated fetch."""
        version = frames[0] if frames else b"1.0"
        request_id = frames[1] if len(frames) > 1 else b""
        if len(frames) >= 7 and frames[5] == b"CURVE" and len(frames[6]) == 32:
            z85 = zmq.utils.z85.encode(frames[6]).decode("ascii")
            if z85 in self.state.curve_index:
                return [version, request_id, b"200", b"OK", b"", b""]
        self.dropped["zap_denied"] += 1
        return [version, request_id, b"400", b"No such client", b"", b""]

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
            found = self.state.node_keys.get(key)
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
        node = self.table.online(key)
        keys = self.state.node_keys.get(key)
        if node is None or node.address is None or keys is None or keys.session_key is None:
            return False
        seq = self.sequences.get(key, 0) + 1
        self.sequences[key] = seq
        frames = wire.hmac_frames(keys.session_key, wire.server_message(seq, now, body))
        assert self.router is not None
        if not self.router.send_nowait([node.address, *frames]):
            self.dropped["unroutable"] += 1
            return False
        return True

    def forget(self, key: corenodes.NodeKey) -> None:
        """The node went offline: its next session starts its message numbers again."""
        self.sequences.pop(key, None)

    # Timers ----------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        assert self.pub is not None and self.state.server is not None
        interval = self.settings.heartbeat_interval / 1000.0
        next_beat = trio.current_time()
        while True:
            now = self.clock.now()
            body = wire.server_heartbeat(
                self.heartbeat_sequence, now, self.hostname, self.state.server.incarnation
            )
            frames = await trio.to_thread.run_sync(wire.rsa_frames, self.server_key, body)
            self.pub.send_nowait(frames)
            self.heartbeat_sequence += 1
            next_beat += interval
            await trio.sleep_until(max(next_beat, trio.current_time()))


def _bind(sock: zmq.Socket, listen: str, port: int) -> int:
    """Bind ``listen:port`` (port 0 picks a free one, for tests) and return the bound port."""
    if port == 0:
        return sock.bind_to_random_port(listen.rstrip("/"))
    sock.bind(zmq_endpoint(listen, port))
    return port
