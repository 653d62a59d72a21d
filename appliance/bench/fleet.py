"""The simulated fleet: N nodes over K worker processes, each worker one ``trio.run``.

A worker holds its nodes' sockets in one ZeroMQ context (one I/O thread) and drives them from
one trio loop: a receiving task per socket parked on the socket's FD (epoll: the cost follows
traffic, not the node count), one timer task for every heartbeat, watchdog, reconfigure and fake
job end (a heap, ticking every ``TICK`` seconds), config fetches in a few threads with
keep-alive connections. The server's heartbeat is the same bytes for every SUB of a worker, so
its RSA check is done once per distinct message, not once per node.

Nodes start spread over ``ramp`` seconds (like machines booting). Workers report to the
controller over a pipe, in batches: when each node's command channel came up, when it got a
``run`` and sent ``ack_run``, every reconfigure and why, and counters.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
import zmq

from appliance.bench import procstat, provision
from appliance.bench.simnode import FakeWhitelist, SimNode
from appliance.client import jobstate
from appliance.client.channel import (
    SEND_FAILURE_DEADLINE_SECONDS,
    WATCHDOG_SECONDS,
    Connection,
    command_sockets,
    jittered,
    lifetime_seconds,
    verified_body,
)
from appliance.client.fetch import (
    BACKOFF_FIRST_SECONDS,
    FatalConfigError,
    backoff,
    config_path,
    connection_from_answer,
)
from appliance.client.liveoutput import WINDOW_BYTES
from appliance.client.serverwatch import ServerWatch
from appliance.core import output as coreoutput
from appliance.core import wire
from appliance.core.keys import load_private_pem
from appliance.signedhttp import Presigner, SignedClient
from appliance.zmqio import TrioSocket

TICK = 0.02
REPORT_SECONDS = 0.25
FETCH_TIMEOUT = 30.0
FDS_PER_NODE = 5  # 2 TCP connections, 2 socket mailboxes, slack
# One source address reaches one server port through at most this many connections: Linux's
# ephemeral port range (32768-60999 by default: 28,232 ports). Past it, each worker's nodes
# connect from a loopback address of their own (127.0.0.2, .3, ...): a fleet on one host is
# what runs out, not the server (real nodes come from their own addresses).
PORTS_PER_SOURCE = 25_000
STOP_SECONDS = 30.0
BACKOFF_MAX_WAIT = 30.0  # after a socket error (e.g. an address zmq refuses)


@dataclass
class WorkerSpec:
    worker: int
    server_url: str
    org: str
    names: list[str]
    key_indices: list[int]
    key_file: str
    start_offsets: list[float]  # seconds after the fleet's start, per node
    job_seconds: float = 0.0
    whitelist: tuple[str, ...] = ("true",)
    fetch_threads: int = 8
    source: str | None = None  # the loopback address its node sockets connect from
    nice: int = 0  # added to the worker's niceness (--clients-nice)
    output_bytes: int = 0  # a capturing job prints this much on stdout, sent as live output


# Worker process ------------------------------------------------------------------------------
def worker_entry(pipe: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
    procstat.raise_open_files(len(spec.names) * FDS_PER_NODE + 256)
    if spec.nice:
        os.nice(spec.nice)
    try:
        trio.run(Worker(pipe, spec).run)
    except BaseException:  # tell the controller, then die
        try:
            pipe.send(("error", spec.worker, traceback.format_exc()))
        except OSError:
            pass
        raise


class Worker:
    def __init__(self, pipe: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
        self.pipe = pipe
        self.spec = spec
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.max_sockets = 2 * len(spec.names) + 64
        self.api = SignedClient(spec.server_url, timeout=FETCH_TIMEOUT)
        # each node's config request is signed once and sent again while valid: a real node
        # signs on its own CPU, and here that CPU is the server's (docs/benchmarks.md)
        self.presigned = Presigner(self.api)
        self.fetch_limiter = trio.CapacityLimiter(spec.fetch_threads)
        self.whitelist = FakeWhitelist(frozenset(spec.whitelist))
        self.nodes: list[SimNode] = []
        self.wakes: dict[int, trio.Event] = {}
        self.heap: list[tuple[float, int, Callable[..., None], tuple]] = []
        self.seq = itertools.count()
        self.events: list[tuple] = []
        self.counters: Counter[str] = Counter()
        self.stopping = trio.Event()
        self.verified: dict[bytes, dict[str, Any] | None] = {}
        self.acked: dict[int, int] = {}  # node index -> live output acknowledged up to

    async def run(self) -> None:
        pems = provision.read_keys(Path(self.spec.key_file))
        started = time.monotonic()
        t0, start_wall = await self._wait_start()
        for i, name in enumerate(self.spec.names):
            self.nodes.append(
                SimNode(
                    index=i,
                    name=name,
                    org=self.spec.org,
                    key=load_private_pem(pems[self.spec.key_indices[i]], trusted=True),
                    start_at=t0 + self.spec.start_offsets[i],
                )
            )
            self.wakes[i] = trio.Event()
        del pems
        del start_wall
        self.counters["setup_ms"] = int((time.monotonic() - started) * 1000)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._control)
                nursery.start_soon(self._timers)
                nursery.start_soon(self._reporter)
                async with trio.open_nursery() as nodes:
                    for node in sorted(self.nodes, key=lambda n: n.start_at):
                        with trio.move_on_at(_trio_time(node.start_at)):
                            await self.stopping.wait()
                        if self.stopping.is_set():
                            break
                        nodes.start_soon(self._node_task, node)
                    await self.stopping.wait()
                    nodes.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            for node in self.nodes:
                if node.conn is not None:
                    node.conn.close()
            self.ctx.destroy(linger=0)
            self._flush()
            self.pipe.send(("final", self.spec.worker, self._stats()))

    async def _wait_start(self) -> tuple[float, float]:
        """The controller sends ("start", wall_time): all workers share one t0."""
        while True:
            await trio.lowlevel.wait_readable(self.pipe.fileno())
            message = self.pipe.recv()
            if message[0] == "start":
                wall = float(message[1])
                return time.monotonic() + max(0.0, wall - time.time()), wall
            if message[0] == "stop":
                raise SystemExit(0)

    async def _control(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.pipe.fileno())
            while self.pipe.poll():
                message = self.pipe.recv()
                if message[0] == "stop":
                    self.stopping.set()
                    for event in self.wakes.values():
                        event.set()
                    return

    async def _reporter(self) -> None:
        while True:
            await trio.sleep(REPORT_SECONDS)
            self._flush()

    def _flush(self) -> None:
        events, self.events = self.events, []
        self.pipe.send(("events", self.spec.worker, events, self._stats()))

    def _stats(self) -> dict[str, Any]:
        stats = dict(self.counters)
        stats["cpu_seconds"] = procstat.cpu_seconds(os.getpid())
        stats["niceness"] = os.nice(0)
        stats["signatures"] = self.presigned.signatures
        stats["rss_kib"] = procstat.memory_kib(os.getpid()).get("VmRSS")
        stats["connected"] = sum(1 for n in self.nodes if n.conn and n.conn.channel_up)
        return stats

    # Timers ----------------------------------------------------------------------------------
    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.heap, (when, next(self.seq), fn, args))

    async def _timers(self) -> None:
        while True:
            await trio.sleep(TICK)
            now = time.monotonic()
            heap = self.heap
            # bounded per tick, so that a backlog cannot starve the receivers
            for _ in range(200_000):
                if not heap or heap[0][0] > now:
                    break
                _, _, fn, args = heapq.heappop(heap)
                try:
                    fn(*args)
                except Exception:
                    self.counters["timer_errors"] += 1
                    traceback.print_exc(file=sys.stderr)

    def _wake(self, node: SimNode) -> None:
        self.wakes[node.index].set()

    def _reconfigure(self, node: SimNode, reason: str, delay: float = 0.0) -> None:
        due = node.request_reconfigure(delay)
        if due is not None:
            self.counters[f"reconfigure_{reason}"] += 1
            self.events.append(("reconfigure", node.name, time.time(), reason))
            self.at(due, self._wake, node)

    # One node --------------------------------------------------------------------------------
    async def _node_task(self, node: SimNode) -> None:
        delay = BACKOFF_FIRST_SECONDS
        self.events.append(("started", node.name, time.time()))
        while not self.stopping.is_set():
            try:
                conn = await self._fetch_config(node)
            except (OSError, ValueError, KeyError, TypeError, FatalConfigError) as exc:
                self.counters["fetch_failures"] += 1
                if self.counters["fetch_failures"] <= 5:
                    print(f"bench worker: {node.name}: config: {exc}", file=sys.stderr)
                wait, delay = backoff(delay)
                with trio.move_on_after(wait):
                    await self.stopping.wait()
                continue
            delay = BACKOFF_FIRST_SECONDS
            try:
                await self._serve(node, conn)
            except zmq.ZMQError as exc:
                self.counters["zmq_errors"] += 1
                print(f"bench worker: {node.name}: {exc}", file=sys.stderr)
                with trio.move_on_after(BACKOFF_MAX_WAIT):
                    await self.stopping.wait()

    async def _fetch_config(self, node: SimNode) -> Connection:
        """The client's request and reading of the answer, over this worker's pooled client
        (in a thread: the answer's RSA work stays off the loop)."""
        path = config_path(f"/organizations/{node.org}", node.name, node.curve_public)

        def fetch() -> Connection:
            reply = self.presigned.send("GET", path, node.name, node.key)
            body = orjson.loads(reply.data) if reply.status == 200 else reply.data[:200]
            return connection_from_answer(
                reply.status, body, node.key, allow_unencrypted=False, node=node.name
            )

        conn = await trio.to_thread.run_sync(fetch, limiter=self.fetch_limiter)
        self.counters["config_fetches"] += 1
        return conn

    async def _serve(self, node: SimNode, conn: Connection) -> None:
        hb = conn.config["push_jobs"]["heartbeat"]
        curve = (conn.config, node.curve_public, node.curve_secret)
        if self.spec.source:
            hb = {
                k: _from_source(v, self.spec.source) if k.endswith("_addr") else v
                for k, v in hb.items()
            }
        dealer, sub = command_sockets(self.ctx, hb, curve)
        conn.dealer, conn.sub = TrioSocket(dealer), TrioSocket(sub)
        old, node.conn = node.conn, conn
        if old is not None:
            old.close()
        now = time.monotonic()
        node.reconfigure_due = None
        node.request_reconfigure(lifetime_seconds(conn.config))
        self.at(node.reconfigure_due, self._wake, node)
        node.watch = ServerWatch.from_heartbeat_config(hb)
        node.heartbeat_due = now
        self.at(now, self._heartbeat, node, conn)
        self.at(now + WATCHDOG_SECONDS, self._watchdog, node, conn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_commands, node, conn)
                nursery.start_soon(self._receive_heartbeats, node, conn)
                await self._wait_for_reconfigure(node)
                nursery.cancel_scope.cancel()
        finally:
            conn.close()

    async def _wait_for_reconfigure(self, node: SimNode) -> None:
        while not self.stopping.is_set():
            self.wakes[node.index] = trio.Event()
            due = node.reconfigure_due
            if due is not None and time.monotonic() >= due and node.jobs.state == "idle":
                return
            await self.wakes[node.index].wait()

    def _watchdog(self, node: SimNode, conn: Connection) -> None:
        if node.conn is not conn or conn.got_command_message.is_set():
            return
        self._reconfigure(node, "watchdog")

    @staticmethod
    def due_of(node: SimNode, now: float) -> float:
        due = node.heartbeat_due
        return due if due is not None and now - due < 1.0 else now

    def _heartbeat(self, node: SimNode, conn: Connection) -> None:
        if node.conn is not conn or conn.dealer is None:
            return
        if conn.dealer.closed:
            return
        tick = node.watch.tick()
        if tick.went_offline:
            self._reconfigure(node, "server_offline")
        if tick.send:
            if node.unsent is not None and node.unsent[1] is not conn:
                self.counters["results_resent"] += 1
                self._send_result(node, conn, node.unsent[0])
            self.counters["heartbeats"] += 1
            self._send(node, conn, node.heartbeat_frames(conn))
        # keep the phase (a late tick does not push every later beat back), unless far behind
        now = time.monotonic()
        due = max(self.due_of(node, now) + conn.interval, now)
        node.heartbeat_due = due
        self.at(due, self._heartbeat, node, conn)

    def _send(self, node: SimNode, conn: Connection, frames: list[bytes]) -> bool:
        assert conn.dealer is not None
        if conn.dealer.send_nowait(frames):
            return True
        self.counters["send_failures"] += 1
        self._reconfigure(node, "send_failure", jittered(SEND_FAILURE_DEADLINE_SECONDS))
        return False

    async def _receive_heartbeats(self, node: SimNode, conn: Connection) -> None:
        assert conn.sub is not None
        while True:
            frames = await conn.sub.recv_multipart()
            body = self._verified_server_message(conn, frames)
            if body is None or body.get("type") != "heartbeat":
                continue
            splay = node.on_server_heartbeat(conn, body)
            if splay is not None:
                self._reconfigure(node, "server_restarted", splay)

    def _verified_server_message(
        self, conn: Connection, frames: list[bytes]
    ) -> dict[str, Any] | None:
        """The server's (RSA-signed) heartbeat: identical bytes on every SUB, checked once."""
        if len(frames) != 2:
            return None
        cache_key = frames[0] + b"\n" + frames[1]
        if cache_key in self.verified:
            return self.verified[cache_key]
        try:
            body = verified_body(conn, frames, session_key=False)
        except wire.MessageError:
            self.counters["invalid_server_heartbeats"] += 1
            body = None
        if len(self.verified) > 16:
            self.verified.clear()
        self.verified[cache_key] = body
        return body

    async def _receive_commands(self, node: SimNode, conn: Connection) -> None:
        assert conn.dealer is not None
        while True:
            frames = await conn.dealer.recv_multipart()
            if len(frames) == 2:
                conn.got_command_message.set()
            body = node.check_command(conn, frames)
            if body is None:
                self.counters["invalid_commands"] += 1
                continue
            self.counters["commands"] += 1
            if node.unsent is not None and node.unsent[1] is conn:
                node.unsent = None  # the server talks to us: what we queued went out before
            kind = body.get("type")
            if not conn.channel_up:
                conn.channel_up = True
                if not node.available_reported:
                    node.available_reported = True
                    self.events.append(("up", node.name, time.time(), kind))
            if kind == "commit":
                self._execute(node, node.jobs.on_commit(body, **self.whitelist.checks()))
            elif kind == "run":
                t = time.time()
                self._execute(node, node.jobs.on_run(body))
                self.events.append(("run", node.name, body.get("job_id"), t, time.time()))
            elif kind == "abort":
                self._execute(node, node.jobs.on_abort(body))
            elif kind == "output_ack":
                offset = body.get("offset")
                if isinstance(offset, int):
                    self.acked[node.index] = max(self.acked.get(node.index, 0), offset)
            elif kind != "ack":
                self.counters["unknown_commands"] += 1

    # Jobs ------------------------------------------------------------------------------------
    def _execute(self, node: SimNode, actions: list) -> None:
        conn = node.conn
        for action in actions:
            match action:
                case jobstate.Reply(type="succeeded" | "failed"):
                    self.counters[f"sent_{action.type}"] += 1
                    if conn is not None and conn.dealer is not None:
                        self._send_result(node, conn, action)
                    else:
                        node.unsent = (action, None)
                case jobstate.Reply(type=kind, job_id=job_id, extra=extra):
                    self.counters[f"sent_{kind}"] += 1
                    if conn is not None and conn.dealer is not None:
                        self._send(node, conn, node.frames(conn, kind, job_id, **extra))
                case jobstate.StartProcess(job=job):
                    node.running_job = job.id
                    self._execute(node, node.jobs.on_started(job.id))
                    if job.capture and self.spec.output_bytes > 0 and _takes_live_output(conn):
                        self._print(node, job.id, 0)
                    elif self.spec.job_seconds <= 0:
                        self._finish(node, job.id, 0)
                    else:
                        self.at(
                            time.monotonic() + self.spec.job_seconds, self._finish, node, job.id, 0
                        )
                case jobstate.KillProcess(job_id=job_id):
                    self._finish(node, job_id, None)
                case _:
                    pass  # locks and log lines: nothing to do for a fake
        if node.jobs.state == "idle":
            self._wake(node)  # a deferred reconfigure may go ahead now

    def _send_result(self, node: SimNode, conn: Connection, reply: jobstate.Reply) -> None:
        frames = node.frames(conn, reply.type, reply.job_id, **reply.extra)
        queued = self._send(node, conn, frames)
        node.unsent = (reply, conn if queued else None)

    def _finish(
        self, node: SimNode, job_id: str, exit_code: int | None, *, streamed: bool = False
    ) -> None:
        if node.running_job != job_id:
            return
        node.running_job = None
        self._execute(node, node.jobs.on_finished(job_id, exit_code, b"", b"", streamed=streamed))

    def _print(self, node: SimNode, job_id: str, offset: int) -> None:
        """The fake command's stdout as live output: at most a chunk per node per tick, at
        most ``WINDOW_BYTES`` not acknowledged; a chunk the socket does not take now is tried
        again next tick (as ``pushy client``, without its resends)."""
        if node.running_job != job_id:
            return  # aborted meanwhile
        size = self.spec.output_bytes
        acked = self.acked.get(node.index, 0)
        if offset >= size and acked >= size:
            self.acked.pop(node.index, None)
            self._finish(node, job_id, 0, streamed=True)
            return
        conn = node.conn
        if offset >= size or offset - acked >= WINDOW_BYTES:  # as pushy client: wait for acks
            self.counters["output_window_waits"] += 1
            self.at(time.monotonic() + TICK, self._print, node, job_id, offset)
            return
        data = output_pattern(node.name, offset, min(WINDOW_BYTES, size - offset))
        fields = coreoutput.chunk_fields("stdout", offset, data)
        if conn is not None and conn.dealer is not None:
            frames = node.frames(conn, "output", job_id, **fields)
            if conn.dealer.send_nowait(frames):
                self.counters["output_chunks"] += 1
                offset += len(data)
            else:
                self.counters["output_waits"] += 1
        self.at(time.monotonic() + TICK, self._print, node, job_id, offset)


def _takes_live_output(conn: Connection | None) -> bool:
    return conn is not None and isinstance(conn.config.get("max_output_bytes"), int)


def output_pattern(name: str, offset: int, size: int) -> bytes:
    """Bytes ``offset`` to ``offset + size`` of node ``name``'s flood output: numbered lines
    naming the node, so a byte lost, doubled or misplaced changes what the server returns."""
    line = 64
    first, last = offset // line, (offset + size + line - 1) // line
    text = b"".join(
        f"{name} {i:010d} ".encode().ljust(line - 1, b".") + b"\n" for i in range(first, last)
    )
    start = offset - first * line
    return text[start : start + size]


def _trio_time(monotonic_at: float) -> float:
    return trio.current_time() + (monotonic_at - time.monotonic())


# Controller side -----------------------------------------------------------------------------
@dataclass
class Fleet:
    """The controller's view of the workers: spawn, start, collect reports, stop."""

    server_url: str
    org: str
    names: list[str]
    key_file: Path
    workers: int = 0
    ramp: float = 5.0
    job_seconds: float = 0.0
    whitelist: tuple[str, ...] = ("true",)
    fetch_threads: int = 8
    nice: int = 0  # added to each worker's niceness (--clients-nice)
    output_bytes: int = 0  # live output per node of a capturing job (bench flood)
    started: dict[str, float] = field(default_factory=dict)
    up: dict[str, float] = field(default_factory=dict)
    runs: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    reconfigures: list[tuple[float, str, str]] = field(default_factory=list)
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    t0: float = 0.0

    def __post_init__(self) -> None:
        if self.workers <= 0:
            self.workers = os.cpu_count() or 1
        self.workers = max(1, min(self.workers, len(self.names)))
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._final: set[int] = set()

    def spawn(self) -> None:
        """Start the worker processes (they load keys, then wait for ``start``)."""
        ctx = multiprocessing.get_context("spawn")
        n = len(self.names)
        for w in range(self.workers):
            indices = list(range(w, n, self.workers))  # round robin: each worker's ramp is even
            spec = WorkerSpec(
                worker=w,
                server_url=self.server_url,
                org=self.org,
                names=[self.names[i] for i in indices],
                key_indices=indices,
                key_file=str(self.key_file),
                start_offsets=[self.ramp * i / n for i in indices],
                job_seconds=self.job_seconds,
                whitelist=self.whitelist,
                fetch_threads=self.fetch_threads,
                source=worker_source(w, len(self.names)),
                nice=self.nice,
                output_bytes=self.output_bytes,
            )
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=worker_entry, args=(child, spec), name=f"bench-worker-{w}")
            proc.daemon = True
            proc.start()
            child.close()
            self._procs.append(proc)
            self._pipes.append(parent)

    def start(self, delay: float = 0.5) -> float:
        """Tell every worker the shared start time; returns it (wall clock)."""
        self.t0 = time.time() + delay
        for pipe in self._pipes:
            pipe.send(("start", self.t0))
        return self.t0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    async def pump(self) -> None:
        """Read every worker's reports until all sent their final stats."""
        async with trio.open_nursery() as nursery:
            for pipe in self._pipes:
                nursery.start_soon(self._read, pipe)

    async def _read(self, pipe: multiprocessing.connection.Connection) -> None:
        while True:
            await trio.lowlevel.wait_readable(pipe.fileno())
            while pipe.poll():
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    return
                if self._handle(message):
                    return

    def _handle(self, message: tuple) -> bool:
        kind, worker = message[0], message[1]
        if kind == "error":
            self.errors.append(message[2])
            print(f"bench: worker {worker} failed:\n{message[2]}", file=sys.stderr)
            self._final.add(worker)
            return True
        if kind == "final":
            self.stats[worker] = message[2]
            self._final.add(worker)
            return True
        for event in message[2]:
            match event:
                case ("started", name, t):
                    self.started[name] = t
                case ("up", name, t, _):
                    self.up[name] = t
                case ("run", name, job_id, t_run, t_ack):
                    self.runs.setdefault(job_id, {})[name] = (t_run, t_ack)
                case ("reconfigure", name, t, reason):
                    self.reconfigures.append((t, name, reason))
        self.stats[worker] = message[3]
        return False

    def total(self, counter: str) -> int:
        return sum(int(s.get(counter) or 0) for s in self.stats.values())

    def connected(self) -> int:
        return self.total("connected")

    def cpu_seconds(self) -> float:
        return sum(float(s.get("cpu_seconds") or 0.0) for s in self.stats.values())

    def cpu_seconds_now(self) -> float:
        """The workers' CPU read from /proc now (``cpu_seconds`` lags by a report)."""
        return sum(procstat.cpu_seconds(pid) or 0.0 for pid in self.pids)

    def alive(self) -> bool:
        return all(p.is_alive() for p in self._procs) and not self.errors

    async def stop(self) -> None:
        """Stop the workers (bounded), wait for their final reports, reap them."""
        for pipe in self._pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        with trio.move_on_after(STOP_SECONDS):
            while len(self._final) < len(self._procs) and any(p.is_alive() for p in self._procs):
                await trio.sleep(0.1)
        for proc in self._procs:
            await trio.to_thread.run_sync(proc.join, 5)
            if proc.is_alive():
                proc.kill()
                await trio.to_thread.run_sync(proc.join, 5)


def worker_source(worker: int, nodes: int) -> str | None:
    """The loopback address worker ``worker`` connects its nodes from (None: the kernel's
    choice, 127.0.0.1), for a fleet of ``nodes``."""
    return f"127.0.0.{2 + worker}" if nodes > PORTS_PER_SOURCE else None


def _from_source(address: str, source: str) -> str:
    """A loopback ``tcp://HOST:PORT`` as libzmq's ``tcp://SOURCE:0;HOST:PORT`` (connect from
    SOURCE); any other address as it is."""
    host = address.removeprefix("tcp://").rsplit(":", 1)[0]
    if not address.startswith("tcp://") or not host.startswith("127."):
        return address
    return f"tcp://{source}:0;{address.removeprefix('tcp://')}"
