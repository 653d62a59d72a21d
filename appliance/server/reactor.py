"""The ZeroMQ side of the server: ZAP handler, ROUTER command channel, PUB heartbeat, scanner.

Everything here is I/O and timers; decisions come from ``core.nodes`` (availability) and the
job manager (jobs). One task per socket receives; sends are NOBLOCK from any task.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio
import zmq
import zmq.utils.z85
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.core import nodes as corenodes
from appliance.core import wire
from appliance.core.render import sse_timestamp
from appliance.core.settings import Settings
from appliance.core.state import State
from appliance.zmqio import TrioSocket

if TYPE_CHECKING:
    from appliance.server.jobs import JobManager
    from appliance.server.store import Store

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
        table: corenodes.NodeTable,
        store: Store,
        server_key: RSAPrivateKey,
        hostname: str,
    ) -> None:
        self.settings = settings
        self.state = state
        self.table = table
        self.store = store
        self.server_key = server_key
        self.hostname = hostname
        self.jobs: JobManager | None = None
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
        self._rehab_wakeup = trio.Event()
        # what the websocket stream last said of each online node: 1 unavailable, 2 available
        self.announced: dict[corenodes.NodeKey, int] = {}
        # bumped per org whenever a node's listed availability changes (node_states caches on it)
        self.availability_version: dict[str, int] = {}

    # Lifecycle -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
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
                nursery.start_soon(self._router_loop)
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._scanner_loop)
                nursery.start_soon(self._rehab_loop)
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
    async def _router_loop(self) -> None:
        assert self.router is not None
        while True:
            frames = await self.router.recv_multipart()
            try:
                self.handle_frames(frames, time.time())
            except Exception:  # a bug must not take the command channel down
                self.dropped["internal_error"] += 1
                log.exception("error while handling a node message")

    def handle_frames(self, frames: list[bytes], now: float) -> None:
        if len(frames) != 3:
            self._drop("bad_frames", f"{len(frames)} frames")
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
            self._drop(exc.reason, str(exc))
            return
        key = claimed[-1]
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in corenodes.MESSAGE_TYPES:  # a list: unhashable
            self._drop("bad_type", repr(kind)[:40])
            return
        self.received[body["type"]] += 1
        assert self.jobs is not None
        effects = self.table.on_message(key, address, body, now, self.jobs.view)
        self.execute(effects, now)
        self.announce(key, now)

    def _drop(self, reason: str, detail: str) -> None:
        """Count every dropped message; log the first few per reason per window (a flood of
        garbage must not turn into a flood of log lines)."""
        self.dropped[reason] += 1
        now = time.monotonic()
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

    def execute(self, effects: list, now: float) -> None:
        """Carry out node-table effects; job effects come back through the job manager."""
        assert self.jobs is not None
        for effect in effects:
            match effect:
                case corenodes.Send(key=key, type=kind):
                    self.send_to_node(key, {"type": kind}, now)
                    if kind == "abort":
                        self._rehab_wakeup.set()
                case corenodes.Up(key=key, incarnation=incarnation):
                    log.info("node %s/%s is online", *key)
                    self.store.record(
                        {
                            "type": "node_up",
                            "org": key[0],
                            "node": key[1],
                            "incarnation": incarnation,
                        }
                    )
                case corenodes.Down(key=key, reason=reason):
                    log.info("node %s/%s is offline: %s", *key, reason)
                    self.sequences.pop(key, None)
                    self.store.record({"type": "node_down", "org": key[0], "node": key[1]})
                    self.jobs.node_down(key, now)
                    self.announce(key, now)
                case corenodes.ToJob(key=key, job_id=job_id, type=kind, body=body):
                    self.jobs.node_message(job_id, key, kind, body, now)
                case corenodes.LostJob(key=key, job_id=job_id):
                    self.jobs.node_lost_job(job_id, key, now)

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

    def rehab(self, key: corenodes.NodeKey, now: float) -> None:
        self.execute(self.table.do_rehab(key, now), now)
        self.announce(key, now)

    def announce(self, key: corenodes.NodeKey, now: float) -> None:
        """Publish the node's availability on ("nodes", org) if it changed since last said.

        Called after every message (the hot path): nothing is allocated when nothing changed."""
        node = self.table.nodes.get(key)
        code = 0 if node is None or node.ghost else 2 if node.state == "idle" else 1
        if self.announced.get(key, 0) == code:
            return
        if code:
            self.announced[key] = code
        else:
            del self.announced[key]
        self.availability_version[key[0]] = self.availability_version.get(key[0], 0) + 1
        assert self.jobs is not None
        self.jobs.hub.publish(
            ("nodes", key[0]),
            {
                "type": "node",
                "node": key[1],
                "availability": "available" if code == 2 else "unavailable",
                "status": "online" if code else "offline",
                "timestamp": sse_timestamp(now),
            },
        )

    # Timers ----------------------------------------------------------------------------------
    async def _rehab_loop(self) -> None:
        while True:
            due = self.table.next_rehab_due()
            self._rehab_wakeup = trio.Event()
            if due is None:
                await self._rehab_wakeup.wait()
                continue
            with trio.move_on_after(max(0.0, due - time.time())):
                await self._rehab_wakeup.wait()
            now = time.time()
            self.execute(self.table.on_rehab_timer(now), now)

    async def _heartbeat_loop(self) -> None:
        assert self.pub is not None and self.state.server is not None
        interval = self.settings.heartbeat_interval / 1000.0
        next_beat = trio.current_time()
        while True:
            now = time.time()
            body = wire.server_heartbeat(
                self.heartbeat_sequence, now, self.hostname, self.state.server.incarnation
            )
            frames = await trio.to_thread.run_sync(wire.rsa_frames, self.server_key, body)
            self.pub.send_nowait(frames)
            self.heartbeat_sequence += 1
            next_beat += interval
            await trio.sleep_until(max(next_beat, trio.current_time()))

    async def _scanner_loop(self) -> None:
        s = self.settings
        period = s.heartbeat_interval / 1000.0 * s.detect_offline_nodes_interval
        while True:
            await trio.sleep(period)
            now = time.time()
            self.execute(self.table.scan(now), now)


def _bind(sock: zmq.Socket, listen: str, port: int) -> int:
    """Bind ``listen:port`` (port 0 picks a free one, for tests) and return the bound port."""
    if port == 0:
        return sock.bind_to_random_port(listen.rstrip("/"))
    sock.bind(zmq_endpoint(listen, port))
    return port
