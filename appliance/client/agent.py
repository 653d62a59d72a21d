"""The node agent: configuration, the connection to the server, heartbeats, reconfigures, jobs.

One trio nursery per process. A *connection* is one fetched configuration with its session key
and its two sockets (DEALER for commands, SUB for server heartbeats); a reconfigure replaces the
whole connection (never two at once, never while a job is committed or running) and tears the
old sockets down. The job state machine (``jobstate``) decides; this module carries it out.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from appliance import sdnotify
from appliance.client import facts, jobfile, jobstate, reach, runner, whitelist
from appliance.client.config import ClientConfig, ConfigError, load_config
from appliance.client.probe import probe_address
from appliance.client.serverwatch import ServerWatch
from appliance.core import wire
from appliance.core.jobspec import decode_job_file
from appliance.core.keys import decrypt_session_key, load_private_pem, load_public_pem
from appliance.signedhttp import signed_request
from appliance.zmqio import TrioSocket

log = logging.getLogger("pushy.client")

PROTOCOL_VERSION = "2.0"
CONFIG_TIMEOUT_SECONDS = 5.0
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 120.0
WATCHDOG_SECONDS = 4.0
POLL_SECONDS = 5.0
SEND_FAILURE_DEADLINE_SECONDS = 60.0


def command_sockets(
    ctx: zmq.Context, hb: dict[str, Any], curve: tuple[dict[str, Any], bytes, bytes] | None
) -> tuple[zmq.Socket, zmq.Socket]:
    """The node's DEALER (command channel, CURVE unless legacy) and SUB (server heartbeats),
    connected, with the original client's options: SNDHWM 3 bounds what piles up while the
    server is away. ``curve`` is (config, our public key, our secret key)."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = 3
    dealer.rcvhwm = 0
    if curve is not None:
        config, public, secret = curve
        dealer.curve_serverkey = config["curve_public_key"].encode("ascii")
        dealer.curve_publickey = public
        dealer.curve_secretkey = secret
    dealer.connect(hb["command_addr"])
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(hb["out_addr"])
    return dealer, sub


class FatalConfigError(Exception):
    """The server's answer makes running impossible (exit with ``exit_status``)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class Connection:
    """Everything that belongs to one fetched configuration."""

    config: dict[str, Any]
    session_key: bytes
    server_key: RSAPublicKey
    incarnation: str
    interval: float
    legacy: bool
    dealer: TrioSocket | None = None
    sub: TrioSocket | None = None
    sequence: int = 0
    got_command_message: trio.Event = field(default_factory=trio.Event)
    channel_up: bool = False  # a valid message arrived on the command channel
    diagnosed: trio.Event | None = None  # set once the silent addresses were probed and logged

    def close(self) -> None:
        for sock in (self.dealer, self.sub):
            if sock is not None:
                sock.close()


class Agent:
    def __init__(
        self,
        config: ClientConfig,
        *,
        flags: dict[str, Any] | None = None,
        hostname: str | None = None,
    ) -> None:
        self.config = config
        self.flags = dict(flags or {})  # the command line's explicit flags, kept for reloads
        self.node = config.node_name or socket.getfqdn()
        self.hostname = hostname or socket.gethostname().split(".")[0]
        self.org = config.org
        self.incarnation = str(uuid.uuid4())
        self.key_pem = open(config.client_key, encoding="ascii").read()
        self.private_key = load_private_pem(self.key_pem)
        self.curve_public, self.curve_secret = zmq.curve_keypair()
        self.ctx = zmq.Context(io_threads=1)
        self.jobs = jobstate.JobState(max_body_size=config.max_body_size)
        self.conn: Connection | None = None
        self.watch = ServerWatch()  # missed server heartbeats, per connection
        self.lock: runner.Lock | None = None
        # A job's result not known to have left: not queued (the send queue was full: None),
        # or queued on a connection that the server has not spoken on since, so a reconfigure
        # may have dropped it with the socket. Sent again on the next connection, so that a
        # server that was away (and resumed the job) learns how the job ended.
        self.unsent: tuple[jobstate.Reply, Connection | None] | None = None
        self.kill_events: dict[str, trio.Event] = {}
        self.stopping = trio.Event()
        self.reconfigure_due: float | None = None  # monotonic deadline of the next reconfigure
        self._reconfigure_now = trio.Event()
        self._nursery: trio.Nursery | None = None

    # Lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        log.info("[%s] Using node name: %s", self.node, self.node)
        log.info("[%s] Using org name: %s", self.node, self.org)
        log.info("[%s] Using Chef server: %s", self.node, self.config.chef_server_url)
        log.info("[%s] Using private key: %s", self.node, self.config.client_key)
        self._warn_if_key_exposed()
        log.info("[%s] Incarnation ID: %s", self.node, self.incarnation)
        log.info(
            "[%s] Allowing fallback to unencrypted connection: %s",
            self.node,
            str(self.config.allow_unencrypted).lower(),
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._signals)
                nursery.start_soon(sdnotify.watchdog_task)
                # ready means "running": a node that boots before its server must not fail
                sdnotify.ready(f"connecting to {self._server_host()} as {self.node}")
                published = False
                while not self.stopping.is_set():
                    conn = await self._fetch_config_until_it_works()
                    if conn is None:
                        break
                    if not published:
                        published = True
                        nursery.start_soon(self._publish_node_record)
                    try:
                        await self._serve(conn)
                    except zmq.ZMQError as exc:  # e.g. an address in the config zmq refuses
                        log.error("[%s] cannot open the connection: %s", self.node, exc)
                        with trio.move_on_after(BACKOFF_MAX_SECONDS / 4):
                            await self.stopping.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self.conn is not None:
                self.conn.close()
            self.ctx.destroy(linger=0)
            if self.lock is not None:
                self.lock.release()

    def _warn_if_key_exposed(self) -> None:
        """Say so (as ssh would; Chef does not check) when others may read the node's key."""
        try:
            mode = os.stat(self.config.client_key).st_mode
        except OSError:
            return
        if mode & 0o077:
            log.warning(
                "[%s] The private key %s is accessible to group or others (mode %04o): "
                "anyone who reads it can act as this node; chmod 600 it",
                self.node,
                self.config.client_key,
                mode & 0o7777,
            )

    def stop(self) -> None:
        sdnotify.stopping("shutting down")
        self.stopping.set()
        for event in self.kill_events.values():
            event.set()
        self._reconfigure_now.set()

    def request_reconfigure(self, reason: str, *, delay: float = 0.0) -> None:
        """Schedule a reconfigure (de-duplicated: the earliest request wins)."""
        due = time.monotonic() + delay
        if self.reconfigure_due is None or due < self.reconfigure_due:
            log.info("[%s] reconfigure in %.1f s: %s", self.node, delay, reason)
            self.reconfigure_due = due
            self._reconfigure_now.set()

    # Configuration ---------------------------------------------------------------------------
    async def _fetch_config_until_it_works(self) -> Connection | None:
        """Retry forever (capped exponential backoff with jitter): a node may boot first."""
        delay = BACKOFF_FIRST_SECONDS
        while not self.stopping.is_set():
            try:
                return await self._fetch_config()
            except FatalConfigError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("[%s] Could not download push jobs config: %s", self.node, exc)
                why = "server unreachable" if isinstance(exc, OSError) else "no config"
                sdnotify.status(f"{why}, retrying in {delay:.0f} s: {str(exc)[:200]}")
            wait = delay * (1 - random.random() * 0.1)
            with trio.move_on_after(wait):
                await self.stopping.wait()
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)
        return None

    async def _fetch_config(self) -> Connection:
        base = self.config.chef_server_url.rstrip("/")
        path_prefix = urllib.parse.urlsplit(base).path
        ccpk = urllib.parse.quote_plus(self.curve_public.decode("ascii"))
        path = f"{path_prefix}/pushy/config/{self.node}?ccpk={ccpk}&version={PROTOCOL_VERSION}"
        origin = base[: len(base) - len(path_prefix)] if path_prefix else base
        log.info("[%s] Retrieving configuration from %s%s", self.node, origin, path)
        status, body = await trio.to_thread.run_sync(
            lambda: signed_request(
                origin, "GET", path, None, self.node, self.key_pem, timeout=CONFIG_TIMEOUT_SECONDS
            )
        )
        if status != 200 or not isinstance(body, dict):
            raise ValueError(f"HTTP {status}: {body}")
        legacy = "curve_public_key" not in body
        if legacy and not self.config.allow_unencrypted:
            raise FatalConfigError(
                "Exiting: No key returned from server; server may be using 1.x protocol. "
                "Set allow_unencrypted to true (or pass --allow_unencrypted) to connect to it "
                "without encryption.",
                1,
            )
        if legacy:
            log.warning(
                "[%s] No key returned from server; falling back to 1.x protocol (no encryption)",
                self.node,
            )
        try:
            session_key = decrypt_session_key(self.private_key, body["encoded_session_key"]["key"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FatalConfigError(f"No session key found in config: {exc}", 255) from exc
        hb = body["push_jobs"]["heartbeat"]
        return Connection(
            config=body,
            session_key=session_key,
            server_key=load_public_pem(body["public_key"]),
            incarnation=str(body["incarnation_id"]),
            interval=float(hb["interval"]),
            legacy=legacy,
        )

    async def _publish_node_record(self) -> None:
        """PUT (or create) this node's record so the server can search nodes."""
        base = self.config.chef_server_url.rstrip("/")
        prefix = urllib.parse.urlsplit(base).path
        origin = base[: len(base) - len(prefix)] if prefix else base
        record = facts.node_record(
            self.node,
            facts.automatic_attributes(base),
            attributes=dict(self.config.node_attributes),
            tags=self.config.tags,
            roles=self.config.roles,
        )

        def publish() -> int:
            status, _ = signed_request(
                origin,
                "PUT",
                f"{prefix}/nodes/{self.node}",
                record,
                self.node,
                self.key_pem,
                timeout=CONFIG_TIMEOUT_SECONDS,
            )
            if status == 404:
                status, _ = signed_request(
                    origin,
                    "POST",
                    f"{prefix}/nodes",
                    record,
                    self.node,
                    self.key_pem,
                    timeout=CONFIG_TIMEOUT_SECONDS,
                )
            return status

        try:
            status = await trio.to_thread.run_sync(publish)
        except OSError as exc:
            log.info("[%s] node record not published: %s", self.node, exc)
            return
        if status in (200, 201):
            log.info("[%s] published the node record for search", self.node)
        else:
            log.info("[%s] the server did not take the node record (HTTP %d)", self.node, status)

    # One connection --------------------------------------------------------------------------
    async def _serve(self, conn: Connection) -> None:
        hb = conn.config["push_jobs"]["heartbeat"]
        curve = None if conn.legacy else (conn.config, self.curve_public, self.curve_secret)
        dealer, sub = command_sockets(self.ctx, hb, curve)
        conn.dealer, conn.sub = TrioSocket(dealer), TrioSocket(sub)
        old, self.conn = self.conn, conn
        if old is not None:
            old.close()
        self.reconfigure_due = None
        lifetime = float(conn.config.get("lifetime", 3600))
        self.reconfigure_due = time.monotonic() + lifetime * (1 - random.random() * 0.1)
        self.watch = ServerWatch.from_heartbeat_config(hb)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_commands, conn)
                nursery.start_soon(self._receive_heartbeats, conn)
                nursery.start_soon(self._heartbeat, conn)
                if not conn.legacy:
                    nursery.start_soon(self._watchdog, conn)
                await self._wait_for_reconfigure()
                nursery.cancel_scope.cancel()
        finally:
            conn.close()

    async def _wait_for_reconfigure(self) -> None:
        """Return when a reconfigure is due and no job is committed or running (or at stop)."""
        delaying_logged = False
        while not self.stopping.is_set():
            self._reconfigure_now = trio.Event()
            due = self.reconfigure_due
            if due is not None and time.monotonic() >= due:
                if self.jobs.state == "idle":
                    return
                if not delaying_logged:
                    log.info("[%s] Job in flight, delaying reconfigure", self.node)
                    delaying_logged = True
            wait = (
                POLL_SECONDS if due is None else max(0.0, min(POLL_SECONDS, due - time.monotonic()))
            )
            with trio.move_on_after(wait):
                await self._reconfigure_now.wait()

    async def _watchdog(self, conn: Connection) -> None:
        """A failed CURVE handshake is silent: the server always says something soon. So is an
        address that does not resolve or answer here: say which one it is before guessing."""
        with trio.move_on_after(WATCHDOG_SECONDS):
            await conn.got_command_message.wait()
            return
        await self._diagnose_once(conn)
        log.error(
            "[%s] No messages being received on command port in %.0fs.  "
            "Possible encryption problem?",
            self.node,
            WATCHDOG_SECONDS,
        )
        self.request_reconfigure("no message on the command channel")

    async def _diagnose_once(self, conn: Connection) -> None:
        """Log whether this node can reach the config's addresses, once per connection.

        Two tasks notice a silent connection, at about the same time with the default 1 s
        heartbeat interval: the watchdog, and the heartbeat loop finding no server heartbeats.
        The first to ask probes; the other waits for its lines, so that whichever reconfigures
        first (and so cancels the other) does it after they are logged."""
        if conn.diagnosed is not None:
            await conn.diagnosed.wait()
            return
        conn.diagnosed = trio.Event()
        try:
            await self._diagnose_addresses(conn)
        finally:
            conn.diagnosed.set()

    async def _diagnose_addresses(self, conn: Connection) -> None:
        """Probe both addresses of the config at once (at most one TCP connection each, a few
        seconds at most) and log whether this node can reach them."""
        hb = conn.config["push_jobs"]["heartbeat"]
        addresses = {"command": str(hb["command_addr"]), "heartbeat": str(hb["out_addr"])}
        outcomes: dict[str, reach.Outcome] = {}

        async def probe(role: str) -> None:
            outcomes[role] = await probe_address(addresses[role])

        async with trio.open_nursery() as nursery:
            for role in addresses:
                nursery.start_soon(probe, role)
        for level, text in reach.report(
            (addresses["command"], outcomes["command"]),
            (addresses["heartbeat"], outcomes["heartbeat"]),
        ):
            log.log(level, "[%s] %s", self.node, text)

    async def _heartbeat(self, conn: Connection) -> None:
        """Send a heartbeat every interval while the server is online; detect it going away."""
        sent = 0
        while True:
            tick = self.watch.tick()
            if tick.went_offline:
                log.info(
                    "[%s] Server has missed %d heartbeats in a row.  Considering it offline, "
                    "and stopping heartbeat.",
                    self.node,
                    tick.missed,
                )
                if not conn.got_command_message.is_set():  # never heard: the address?
                    await self._diagnose_once(conn)
                self.request_reconfigure("server offline")
                sdnotify.status(f"server {self._server_host()} offline, reconnecting")
            if self.watch.online:  # read again: server heartbeats may have come meanwhile
                sent += 1
                if sent <= 3:
                    log.info("[%s] Sending heartbeat %d (logging first 3)", self.node, sent)
                if self.unsent is not None and self.unsent[1] is not conn:
                    self._send_result(conn, self.unsent[0])
                job_state, job_id = self.jobs.heartbeat_fields()
                self.send(conn, "heartbeat", job_id, job_state=job_state)
            await trio.sleep(conn.interval)

    async def _receive_heartbeats(self, conn: Connection) -> None:
        assert conn.sub is not None
        received = 0
        while True:
            frames = await conn.sub.recv_multipart()
            body = self._check(conn, frames)
            if body is None or body.get("type") != "heartbeat":
                continue
            received += 1
            if received <= 3:
                log.info(
                    "[%s] Received server heartbeat (sequence #%s) logging %d/3",
                    self.node,
                    body.get("sequence"),
                    received,
                )
            if self.watch.server_heartbeat():
                log.info("[%s] Server is online again: starting to heartbeat", self.node)
            if body.get("incarnation_id") != conn.incarnation:
                log.info(
                    "[%s] Server restart detected (incarnation %s, was %s)",
                    self.node,
                    body.get("incarnation_id"),
                    conn.incarnation,
                )
                self.request_reconfigure("server restarted", delay=random.random() * conn.interval)

    async def _receive_commands(self, conn: Connection) -> None:
        assert conn.dealer is not None
        while True:
            frames = await conn.dealer.recv_multipart()
            if len(frames) == 2:
                conn.got_command_message.set()
            body = self._check(conn, frames)
            if body is None:
                continue
            if not conn.channel_up:
                conn.channel_up = True
                log.info("[%s] Command channel up (first message: %s)", self.node, body.get("type"))
                sdnotify.status(f"connected to {self._server_host()} as {self.node}")
            if self.unsent is not None and self.unsent[1] is conn:
                self.unsent = None  # the server talks to us: what we queued went out before
            kind = body.get("type")
            # the job state machine logs "Received commit/run/abort" itself
            if kind == "commit":
                self._execute(self.jobs.on_commit(body, **self._commit_checks()))
            elif kind == "run":
                self._execute(self.jobs.on_run(body))
            elif kind == "abort":
                self._execute(self.jobs.on_abort(body))
            elif kind != "ack":
                log.warning("[%s] Missing type in ZMQ message: %r", self.node, kind)

    def _check(self, conn: Connection, frames: list[bytes]) -> dict[str, Any] | None:
        if len(frames) != 2:
            log.warning("[%s] dropped a message of %d frames", self.node, len(frames))
            return None
        try:
            return wire.check_client_inbound(
                frames[0],
                frames[1],
                session_key=conn.session_key,
                server_public_key=conn.server_key,
                now=time.time(),
                max_skew=float(conn.config.get("max_message_skew", 300)),
            )
        except wire.MessageError as exc:
            log.warning("[%s] Received invalid message (%s)", self.node, exc)
            return None

    # Sending ---------------------------------------------------------------------------------
    def send(self, conn: Connection | None, kind: str, job_id: str | None, **extra: Any) -> bool:
        if conn is None or conn.dealer is None:
            log.warning("[%s] not connected: %s for %s not sent", self.node, kind, job_id)
            return False
        conn.sequence += 1
        body = wire.node_message(
            node=self.node,
            client=self.hostname,
            org=self.org,
            type=kind,
            sequence=conn.sequence,
            t=time.time(),
            incarnation=self.incarnation,
            job_id=job_id,
            **extra,
        )
        if conn.dealer.send_nowait(wire.hmac_frames(conn.session_key, body)):
            return True
        log.error("[%s] ZMQ socket enqueue error. Triggering reconfigure", self.node)
        self.request_reconfigure(
            "a message could not be queued",
            delay=SEND_FAILURE_DEADLINE_SECONDS * (1 - random.random() * 0.1),
        )
        return False

    def _send_result(self, conn: Connection | None, reply: jobstate.Reply) -> None:
        """Send a job's result; ``unsent`` keeps it until the server speaks on ``conn``."""
        if self.unsent is not None:
            log.info("[%s] Sending the result of job %s again", self.node, reply.job_id)
        queued = self.send(conn, reply.type, reply.job_id, **reply.extra)
        self.unsent = (reply, conn if queued else None)

    # Jobs ------------------------------------------------------------------------------------
    def _commit_checks(self) -> dict[str, Any]:
        return {
            "resolve": lambda command: whitelist.resolve(self.config.whitelist, command),
            "user_exists": jobfile.user_exists,
            "dir_exists": jobfile.dir_exists,
            "lock_free": self._take_lock,
        }

    def _take_lock(self, lock: bool | str) -> bool:
        path = runner.Lock.path_for(
            lock, lockfile=self.config.lockfile, file_cache_path=self.config.file_cache_path
        )
        candidate = runner.Lock(path)
        if not candidate.try_acquire():
            return False
        if self.lock is not None:
            self.lock.release()
        self.lock = candidate
        return True

    def _execute(self, actions: list) -> None:
        assert self._nursery is not None
        for action in actions:
            match action:
                case jobstate.Reply(type="succeeded" | "failed"):
                    self._send_result(self.conn, action)
                case jobstate.Reply(type=kind, job_id=job_id, extra=extra):
                    self.send(self.conn, kind, job_id, **extra)
                case jobstate.StartProcess(job=job):
                    kill = self.kill_events[job.id] = trio.Event()
                    self._nursery.start_soon(self._run_job, job, kill)
                case jobstate.KillProcess(job_id=job_id):
                    event = self.kill_events.get(job_id)
                    if event is not None:
                        event.set()
                case jobstate.ReleaseLock():
                    # before the command starts: chef-client must be able to take its own lock
                    if self.lock is not None:
                        self.lock.release()
                        self.lock = None
                case jobstate.Log(level=level, text=text):
                    log.log(logging.getLevelName(level.upper()), "[%s] %s", self.node, text)
        if self.jobs.state == "idle" and self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.jobs.state == "idle":
            self._reconfigure_now.set()  # a deferred reconfigure may go ahead now

    async def _run_job(self, job: jobstate.Job, kill: trio.Event) -> None:
        path = None
        try:
            if job.file is not None:
                uid, gid = jobfile.ids_of(job.user)
                path = jobfile.write_job_file(
                    self.config.file_dir, job.id, decode_job_file(job.file), uid=uid, gid=gid
                )
            env = jobfile.build_env(
                os.environ,
                job.env,
                allowed_overwritable=self.config.allowed_overwritable_env_vars,
                node_name=self.node,
                job_id=job.id,
                job_file=path,
            )
            outcome = await runner.run_job(
                job.command_line,
                env=env,
                user=job.user,
                dir=job.dir,
                capture=job.capture,
                kill_event=kill,
                on_started=lambda: self._execute(self.jobs.on_started(job.id)),
            )
        except Exception as exc:  # a job that cannot be set up ends failed, never stuck
            log.exception("[%s] job %s could not be started", self.node, job.id)
            outcome = runner.Outcome(None, None, b"", b"", False, str(exc))
        finally:
            if path is not None:
                jobfile.remove_job_file(path)
            self.kill_events.pop(job.id, None)
        self._execute(
            self.jobs.on_finished(
                job.id,
                outcome.exit_code,
                outcome.stdout,
                outcome.stderr,
                start_failed=outcome.start_error,
            )
        )

    # Signals ---------------------------------------------------------------------------------
    async def _signals(self) -> None:
        wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP]
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR1:
                    print("received USR1, reconfiguring", flush=True)
                    self.request_reconfigure("SIGUSR1")
                elif signum == signal.SIGHUP:
                    log.info("[%s] received HUP: re-reading the configuration", self.node)
                    sdnotify.reloading("re-reading the configuration")
                    self.reload_config()
                    sdnotify.ready(self._connection_status())
                else:
                    print(f"received {name.removeprefix('SIG')}, shutting down", flush=True)
                    self.stop()
                    return

    def _server_host(self) -> str:
        return urllib.parse.urlsplit(self.config.chef_server_url).netloc or "the server"

    def _connection_status(self) -> str:
        conn = self.conn
        if conn is not None and conn.channel_up:
            return f"connected to {self._server_host()} as {self.node}"
        return f"connecting to {self._server_host()} as {self.node}"

    def reload_config(self) -> None:
        """Re-read the config file: whitelist and job settings apply to the next job."""
        try:
            self.config = load_config(self.config.source, self.flags)
        except (OSError, ConfigError) as exc:
            log.error("[%s] keeping the previous configuration: %s", self.node, exc)
